//! The IT ticket process: intake sorts the ticket into a queue, a first-line (L1) agent
//! answers it; if nobody has within the business-hour deadline it escalates to second
//! line (L2), then to third line (L3); the reporter is told the answer and asked for a
//! satisfaction score, which the ticket waits for a while and then closes without.
//!
//! Shared by the example's command line (`main.rs`) and its tests (`tests/it_ticket.rs`).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use cairn::calendar::{BusinessCalendar, BusinessTime};
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, Deadline, Escalate, Signal, TaskKind,
    WorkflowError,
};
use serde::{Deserialize, Serialize};

/// What the reporter files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Ticket {
    /// Who reports it.
    pub reporter: String,
    /// What is wrong.
    pub summary: String,
    /// Whether work is stopped by it.
    pub urgent: bool,
}

/// What the agent sees.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Triaged {
    /// The ticket.
    pub ticket: Ticket,
    /// The queue intake chose.
    pub queue: String,
}

/// The agent's answer. Its JSON Schema is recorded with the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Resolution {
    /// What was done, for the reporter.
    pub answer: String,
}

/// The reporter's satisfaction score, 1 (poor) to 5 (excellent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Survey {
    /// The score.
    pub score: u8,
}

/// How a ticket ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Closed {
    /// Who answered.
    pub resolved_by: String,
    /// The support line that answered: 1, 2 or 3.
    pub line: u32,
    /// The answer.
    pub answer: String,
    /// The reporter's score, if they gave one in time.
    pub satisfaction: Option<u8>,
}

/// Answer a ticket.
pub(crate) const RESOLVE: TaskKind<Triaged, Resolution> = TaskKind::new("resolve");

/// The reporter's survey answer.
pub(crate) const SURVEY: Signal<Survey> = Signal::new("survey");

/// How long the survey waits.
pub(crate) const SURVEY_WAIT: Duration = Duration::from_secs(5 * 24 * 3600);

/// The service desk's hours: Mon-Fri 08:00-18:00 in London.
pub(crate) static DESK: LazyLock<Arc<BusinessCalendar>> = LazyLock::new(|| {
    let desk = BusinessCalendar::new("Europe/London").and_then(|mut c| {
        for day in [
            cairn::calendar::Weekday::Mon,
            cairn::calendar::Weekday::Tue,
            cairn::calendar::Weekday::Wed,
            cairn::calendar::Weekday::Thu,
            cairn::calendar::Weekday::Fri,
        ] {
            c = c.hours(day, "08:00", "18:00")?;
        }
        Ok(c)
    });
    Arc::new(desk.unwrap_or_else(|err| panic!("the desk calendar does not build: {err}")))
});

/// Business hours a line has before the ticket moves on: (L1, L2), fewer when urgent.
pub(crate) fn deadlines(urgent: bool) -> (u32, u32) {
    if urgent {
        (2, 6)
    } else {
        (8, 24)
    }
}

/// Sorts the ticket into a queue by what it says.
#[activity(start_to_close = "10s", max_attempts = 5)]
pub(crate) async fn intake(_ctx: ActivityCtx, ticket: Ticket) -> Result<String, ActivityError> {
    let summary = ticket.summary.to_lowercase();
    let queue = if ["vpn", "wifi", "network"]
        .iter()
        .any(|w| summary.contains(w))
    {
        "network"
    } else if ["password", "login", "account"]
        .iter()
        .any(|w| summary.contains(w))
    {
        "identity"
    } else {
        "workplace"
    };
    Ok(queue.to_owned())
}

/// One ticket, from intake to its survey.
#[workflow]
pub(crate) async fn it_ticket(ctx: Ctx, ticket: Ticket) -> Result<Closed, WorkflowError> {
    ctx.set_stage("intake").await;
    let queue = ctx.activity(intake, ticket.clone()).await?;
    ctx.set_attributes([("queue", cairn::AttrValue::from(queue.as_str()))])
        .await;
    ctx.set_stage("with L1").await;
    let (l1_hours, l2_hours) = deadlines(ticket.urgent);
    let title = format!("[{queue}] {}", ticket.summary);
    let task = RESOLVE
        .task(Triaged {
            ticket: ticket.clone(),
            queue,
        })
        .title(title)
        .description("Answer the reporter; escalates to the next line if nobody does in time.")
        .roles(["l1_support"])
        .priority(if ticket.urgent { 3 } else { 1 })
        .due_in(Deadline::business(&DESK, BusinessTime::hours(l1_hours)))
        .escalate_after(
            Deadline::business(&DESK, BusinessTime::hours(l1_hours)),
            Escalate::to_roles(["l2_support"]),
        )
        .escalate_after(
            Deadline::business(&DESK, BusinessTime::hours(l1_hours + l2_hours)),
            Escalate::to_roles(["l3_support"]),
        );
    let resolved = ctx.human_task(task).await?;
    // Each escalation moved the ticket up a line; the history records which fired.
    let line = if resolved.by.has_role("l3_support") {
        3
    } else if resolved.by.has_role("l2_support") {
        2
    } else {
        1
    };
    ctx.set_stage("resolved, awaiting survey").await;
    ctx.notify(
        "ticket.resolved",
        &serde_json::json!({
            "reporter": ticket.reporter,
            "answer": resolved.decision.answer,
            "line": line,
        }),
    )
    .await;
    let satisfaction = ctx
        .receive_or_timeout(SURVEY, SURVEY_WAIT)
        .await?
        .map(|survey| survey.score.clamp(1, 5));
    ctx.set_stage("closed").await;
    Ok(Closed {
        resolved_by: resolved.by.id,
        line,
        answer: resolved.decision.answer,
        satisfaction,
    })
}
