//! The building permit process: a citizen files an application and attaches documents
//! (site plan, ...), then submits; several departments review it in parallel (one task
//! each, each department its own role); a department may ask for more documents, which
//! sends the case back to the citizen and starts a new round of reviews once they
//! resubmit; when every department approves, a permit officer decides.
//!
//! Shared by the example's command line (`main.rs`) and its tests
//! (`tests/permit_approval.rs`).

use std::time::Duration;

use cairn::{workflow, Ctx, Signal, TaskKind, WorkflowError};
use serde::{Deserialize, Serialize};

/// What the citizen applies for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Application {
    /// Who applies.
    pub applicant: String,
    /// Where.
    pub site: String,
    /// What they want to build.
    pub works: String,
}

/// What a department reviews.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Submission {
    /// The application.
    pub application: Application,
    /// The round of review, from 1.
    pub round: u32,
    /// The department asked.
    pub department: String,
}

/// A department's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// No objection.
    Approve,
    /// An objection that ends the application.
    Reject,
    /// The documents do not allow a verdict yet.
    MoreDocuments,
}

/// A department's review. Its JSON Schema (with the three verdicts) is recorded with each
/// task, so a form can offer exactly them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Review {
    /// The verdict.
    pub verdict: Verdict,
    /// Why; the citizen reads it.
    pub note: String,
}

/// The permit officer's decision, once every department approved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Decision {
    /// Grant the permit.
    pub grant: bool,
    /// Conditions attached to it, or why not.
    pub conditions: String,
}

/// How an application ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// Granted, with conditions, after this many rounds of review.
    Granted {
        /// The conditions.
        conditions: String,
        /// Rounds of review.
        rounds: u32,
    },
    /// Refused, by whom and why.
    Refused {
        /// The department or `"permit office"`.
        by: String,
        /// Why.
        reason: String,
    },
    /// The citizen did not resubmit in time.
    Withdrawn,
}

/// A department's review.
pub(crate) const REVIEW: TaskKind<Submission, Review> = TaskKind::new("department_review");
/// The permit officer's decision.
pub(crate) const DECIDE: TaskKind<Application, Decision> = TaskKind::new("permit_decision");

/// The citizen says the documents are in (first time and after a request for more).
pub(crate) const SUBMITTED: Signal<String> = Signal::new("submitted");

/// The departments that review every application; each reviews with its own role.
pub(crate) const DEPARTMENTS: [&str; 3] = ["planning", "fire_safety", "environment"];

/// How long a request for more documents waits for the citizen.
pub(crate) const RESUBMIT_WITHIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// Rounds of review before the case is refused as unresolvable.
pub(crate) const ROUNDS_MAX: u32 = 3;

/// One application, from submission to decision.
#[workflow]
pub(crate) async fn permit_approval(
    ctx: Ctx,
    application: Application,
) -> Result<Outcome, WorkflowError> {
    ctx.set_stage("awaiting documents").await;
    ctx.receive(SUBMITTED).await?;
    for round in 1..=ROUNDS_MAX {
        ctx.set_stage(&format!("review round {round}")).await;
        // One task per department, all open at once; each call takes its step number
        // now, in this order, on every replay.
        let reviews = DEPARTMENTS.map(|department| {
            let task = REVIEW
                .task(Submission {
                    application: application.clone(),
                    round,
                    department: department.to_owned(),
                })
                .title(format!(
                    "{}: {} at {}",
                    department, application.works, application.site
                ))
                .description("Review the attached documents; approve, reject, or ask for more.")
                .roles([department]);
            ctx.human_task(task)
        });
        let decided = futures::future::join_all(reviews).await;
        let mut wanting = Vec::new();
        for (department, review) in DEPARTMENTS.iter().zip(decided) {
            let review = review?.decision;
            match review.verdict {
                Verdict::Approve => {}
                Verdict::Reject => {
                    return refuse(&ctx, &application, department, &review.note).await;
                }
                Verdict::MoreDocuments => wanting.push(format!("{department}: {}", review.note)),
            }
        }
        if wanting.is_empty() {
            ctx.set_stage("permit decision").await;
            let task = DECIDE
                .task(application.clone())
                .title(format!("Decide the permit for {}", application.site))
                .roles(["permit_officer"]);
            let decision = ctx.human_task(task).await?.decision;
            if !decision.grant {
                return refuse(&ctx, &application, "permit office", &decision.conditions).await;
            }
            ctx.notify(
                "permit.granted",
                &serde_json::json!({ "applicant": application.applicant, "conditions": decision.conditions }),
            )
            .await;
            ctx.set_stage("granted").await;
            return Ok(Outcome::Granted {
                conditions: decision.conditions,
                rounds: round,
            });
        }
        if round == ROUNDS_MAX {
            break;
        }
        ctx.set_stage("more documents requested").await;
        ctx.notify(
            "permit.documents_requested",
            &serde_json::json!({ "applicant": application.applicant, "requests": wanting }),
        )
        .await;
        if ctx
            .receive_or_timeout(SUBMITTED, RESUBMIT_WITHIN)
            .await?
            .is_none()
        {
            ctx.set_stage("withdrawn").await;
            return Ok(Outcome::Withdrawn);
        }
    }
    refuse(
        &ctx,
        &application,
        "permit office",
        &format!("the documents were still incomplete after {ROUNDS_MAX} rounds"),
    )
    .await
}

async fn refuse(
    ctx: &Ctx,
    application: &Application,
    by: &str,
    reason: &str,
) -> Result<Outcome, WorkflowError> {
    ctx.set_stage("refused").await;
    ctx.notify(
        "permit.refused",
        &serde_json::json!({ "applicant": application.applicant, "by": by, "reason": reason }),
    )
    .await;
    Ok(Outcome::Refused {
        by: by.to_owned(),
        reason: reason.to_owned(),
    })
}
