//! The loan approval process: a credit check, a risk decision from a table business
//! staff edit (`risk.csv`), an underwriter's review above a threshold with a deadline of
//! two business days that escalates to a senior underwriter (and, after five, declines on
//! its own), the applicant's signature as a typed signal, and the payout. A rejection
//! notifies the applicant.
//!
//! Shared by the example's command line (`main.rs`) and its tests
//! (`tests/loan_approval.rs`).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use cairn::calendar::{BusinessCalendar, BusinessTime};
use cairn::decision::{DecisionTable, HitPolicy};
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, Deadline, Escalate, Signal, TaskKind,
    WorkflowError,
};
use serde::{Deserialize, Serialize};

/// What an applicant asks for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Application {
    /// Who applies.
    pub applicant: String,
    /// The amount, in whole euros.
    pub amount: u64,
    /// Yearly income, in whole euros.
    pub income: u64,
}

/// What the credit bureau says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CreditReport {
    /// 300 to 850.
    pub score: u32,
}

/// What the underwriter is shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Review {
    /// The application.
    pub application: Application,
    /// The bureau's score.
    pub score: u32,
    /// Why a person must look at it.
    pub reason: String,
    /// The rate the table priced it at, in percent.
    pub rate: f64,
}

/// The underwriter's decision. Its JSON Schema is recorded with the task, so a form can
/// be drawn from it and a decision that does not fit is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Underwriting {
    /// Lend or not.
    pub approve: bool,
    /// Why; the applicant reads it.
    pub note: String,
}

/// The applicant's signature on the contract.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Signature {
    /// Who signed.
    pub signed_by: String,
}

/// How an application ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// Paid out at this rate (percent), with the payout's reference.
    PaidOut {
        /// The rate.
        rate: f64,
        /// The bank's reference for the transfer.
        reference: String,
    },
    /// Declined, and why.
    Declined {
        /// Why.
        reason: String,
    },
    /// Approved, but not signed within the offer's validity.
    OfferExpired,
}

/// The underwriter's review.
pub(crate) const UNDERWRITE: TaskKind<Review, Underwriting> = TaskKind::new("underwrite");

/// The applicant signs the contract.
pub(crate) const SIGNED: Signal<Signature> = Signal::new("contract_signed");

/// Roles.
pub(crate) const UNDERWRITER: &str = "underwriter";
/// Who gets the review when an underwriter did not decide in time.
pub(crate) const SENIOR_UNDERWRITER: &str = "senior_underwriter";

/// Amounts above this always go to an underwriter, whatever the table says.
pub(crate) const REVIEW_ABOVE: u64 = 100_000;

/// How long an offer waits for the signature.
pub(crate) const OFFER_VALID: Duration = Duration::from_secs(14 * 24 * 3600);

/// The risk table, as business staff edit it.
pub(crate) const RISK_CSV: &str = include_str!("risk.csv");

static RISK: LazyLock<DecisionTable> = LazyLock::new(|| {
    DecisionTable::from_csv("risk", HitPolicy::First, RISK_CSV)
        .unwrap_or_else(|err| panic!("risk.csv does not check: {err}"))
});

/// The bank's working days: Frankfurt, Monday to Friday, 09:00-17:00.
pub(crate) static OFFICE: LazyLock<Arc<BusinessCalendar>> = LazyLock::new(|| {
    let calendar = BusinessCalendar::new("Europe/Berlin")
        .and_then(|c| c.holiday("2026-12-24"))
        .and_then(|c| c.holiday("2026-12-25"))
        .and_then(|c| c.holiday("2026-12-26"))
        .unwrap_or_else(|err| panic!("the office calendar does not build: {err}"));
    Arc::new(calendar)
});

/// Checks the risk table now rather than at the first decision (the command line calls
/// it at start).
pub(crate) fn check_tables() -> &'static DecisionTable {
    &RISK
}

/// The credit bureau, simulated: a score derived from the applicant's name, so the
/// same applicant always gets the same score.
#[activity(start_to_close = "10s", max_attempts = 5)]
pub(crate) async fn credit_check(
    _ctx: ActivityCtx,
    application: Application,
) -> Result<CreditReport, ActivityError> {
    let seed: u32 = application.applicant.bytes().map(u32::from).sum();
    Ok(CreditReport {
        score: 540 + seed % 260,
    })
}

/// Pays the loan out; the idempotency key makes a retried transfer one transfer.
#[activity(start_to_close = "30s", max_attempts = 10)]
pub(crate) async fn pay_out(
    ctx: ActivityCtx,
    application: Application,
) -> Result<String, ActivityError> {
    Ok(format!(
        "transfer-{}-{}",
        application.amount,
        ctx.idempotency_key()
    ))
}

#[derive(Serialize)]
struct RiskInput {
    score: u32,
    debt_ratio: f64,
}

#[derive(Deserialize)]
struct Priced {
    risk: String,
    rate: f64,
}

/// One application, from credit check to payout.
#[workflow]
pub(crate) async fn loan_approval(
    ctx: Ctx,
    application: Application,
) -> Result<Outcome, WorkflowError> {
    ctx.set_stage("credit check").await;
    let report = ctx.activity(credit_check, application.clone()).await?;
    let input = RiskInput {
        score: report.score,
        debt_ratio: application.amount as f64 / application.income.max(1) as f64 / 5.0,
    };
    let priced: Priced = ctx
        .decide(&RISK, &input)
        .await
        .and_then(|decision| decision.output())
        .map_err(|err| WorkflowError::business("risk", err.to_string()))?;

    if priced.risk == "decline" {
        return decline(
            &ctx,
            &application,
            "the risk assessment does not allow this loan",
        )
        .await;
    }
    if priced.risk == "review" || application.amount > REVIEW_ABOVE {
        ctx.set_stage("underwriting").await;
        let reason = if priced.risk == "review" {
            "the risk table asks for a review".to_owned()
        } else {
            format!("amounts above {REVIEW_ABOVE} are always reviewed")
        };
        let review = Review {
            application: application.clone(),
            score: report.score,
            reason,
            rate: priced.rate,
        };
        let title = format!(
            "Underwrite {} ({} EUR)",
            application.applicant, application.amount
        );
        let task = UNDERWRITE
            .task(review)
            .title(title)
            .description("Check income, score and purpose; approve or decline with a note for the applicant.")
            .roles([UNDERWRITER])
            .priority(if application.amount > REVIEW_ABOVE { 2 } else { 1 })
            .due_in(Deadline::business(&OFFICE, BusinessTime::days(2)))
            .escalate_after(
                Deadline::business(&OFFICE, BusinessTime::days(2)),
                Escalate::to_roles([SENIOR_UNDERWRITER]),
            )
            .escalate_after(
                Deadline::business(&OFFICE, BusinessTime::days(5)),
                Escalate::Decide(Underwriting {
                    approve: false,
                    note: "no underwriter decided within five business days".into(),
                }),
            );
        let decided = ctx.human_task(task).await?;
        if !decided.decision.approve {
            return decline(&ctx, &application, &decided.decision.note).await;
        }
    }

    ctx.set_stage("awaiting signature").await;
    ctx.notify(
        "loan.offered",
        &serde_json::json!({ "applicant": application.applicant, "rate": priced.rate }),
    )
    .await;
    let Some(signature) = ctx.receive_or_timeout(SIGNED, OFFER_VALID).await? else {
        ctx.set_stage("offer expired").await;
        return Ok(Outcome::OfferExpired);
    };
    ctx.set_stage("paying out").await;
    let reference = ctx.activity(pay_out, application.clone()).await?;
    ctx.set_stage(&format!("paid out, signed by {}", signature.signed_by))
        .await;
    Ok(Outcome::PaidOut {
        rate: priced.rate,
        reference,
    })
}

async fn decline(
    ctx: &Ctx,
    application: &Application,
    reason: &str,
) -> Result<Outcome, WorkflowError> {
    ctx.set_stage("declined").await;
    ctx.notify(
        "loan.declined",
        &serde_json::json!({ "applicant": application.applicant, "reason": reason }),
    )
    .await;
    Ok(Outcome::Declined {
        reason: reason.to_owned(),
    })
}
