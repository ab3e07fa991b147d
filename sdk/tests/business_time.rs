//! A deadline in business time: "answer within 2 business days" from a Friday afternoon
//! waits over the weekend (and a holiday), on the runtime's clock, and replays the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, UNIX_EPOCH};

use cairn::calendar::{BusinessCalendar, BusinessTime};
use cairn::testing::{Clock, VirtualClock};
use cairn::{workflow, Ctx, Runtime, Signal, WorkflowError};

static OFFICE: LazyLock<BusinessCalendar> = LazyLock::new(|| {
    BusinessCalendar::new("Europe/Berlin")
        .unwrap()
        .holiday("2026-11-30")
        .unwrap()
});

const ANSWER: Signal<String> = Signal::new("answer");

#[workflow]
async fn review(ctx: Ctx, _case: String) -> Result<String, WorkflowError> {
    let now = ctx.now().await;
    let due = OFFICE
        .after(now, BusinessTime::days(2))
        .map_err(|err| WorkflowError::business("calendar", err.to_string()))?;
    let timeout = due.duration_since(now).unwrap_or_default();
    Ok(match ctx.receive_or_timeout(ANSWER, timeout).await? {
        Some(answer) => answer,
        None => "escalated".to_owned(),
    })
}

#[tokio::test]
async fn two_business_days_from_friday_afternoon_end_on_wednesday_after_a_holiday() {
    // Friday 2026-11-27 15:00 in Berlin (14:00 UTC).
    let friday = UNIX_EPOCH + Duration::from_secs(1_795_788_000);
    let clock = VirtualClock::new(friday);
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(review)
        .clock(Arc::new(clock.clone()))
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let handle = rt.start(review, "case-1", "c".to_owned()).await.unwrap();
    let fired_at = tokio::time::timeout(Duration::from_secs(20), clock.skip_to_next_timer())
        .await
        .expect("the deadline is a timer on the runtime clock");
    // Monday is a holiday: Tuesday is the first business day, Wednesday the second,
    // at 15:00 in Berlin (14:00 UTC).
    let wednesday_ms = (1_795_788_000 + 5 * 86_400) * 1000;
    assert_eq!(fired_at, wednesday_ms);
    assert_eq!(clock.now_ms(), wednesday_ms);
    assert_eq!(handle.result().await.unwrap().unwrap(), "escalated");
    rt.shutdown().await;
}
