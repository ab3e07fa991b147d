//! The replay gate: recorded histories replayed against current code from the host's own
//! binary (`cairn::audit::command`): the code that recorded them passes, a changed step
//! order is caught with the step named, and the exit code says which.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use cairn::audit::{command, replay_file, Selection};
use cairn::{Runtime, Signal};

const GO: Signal<bool> = Signal::new("go");

mod v1 {
    use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, WorkflowError};

    #[activity]
    pub async fn check_credit(_ctx: ActivityCtx, customer: String) -> Result<u32, ActivityError> {
        Ok(customer.len() as u32 * 100)
    }

    #[workflow]
    pub async fn onboard(ctx: Ctx, customer: String) -> Result<u32, WorkflowError> {
        let score = ctx.activity(check_credit, customer.clone()).await?;
        if customer.starts_with("wait") {
            ctx.receive(super::GO).await?;
        }
        Ok(score)
    }
}

mod v2 {
    use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, WorkflowError};

    #[activity]
    pub async fn check_fraud(_ctx: ActivityCtx, customer: String) -> Result<bool, ActivityError> {
        Ok(customer.is_empty())
    }

    #[activity]
    pub async fn check_credit(_ctx: ActivityCtx, customer: String) -> Result<u32, ActivityError> {
        Ok(customer.len() as u32 * 100)
    }

    /// A fraud check inserted before the credit check, without a patch marker.
    #[workflow]
    pub async fn onboard(ctx: Ctx, customer: String) -> Result<u32, WorkflowError> {
        ctx.activity(check_fraud, customer.clone()).await?;
        let score = ctx.activity(check_credit, customer.clone()).await?;
        if customer.starts_with("wait") {
            ctx.receive(super::GO).await?;
        }
        Ok(score)
    }
}

fn args(path: &std::path::Path, what: &str) -> Vec<String> {
    ["myapp", "cairn", "replay", path.to_str().unwrap(), what]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

#[test]
fn the_gate_passes_the_recording_code_and_catches_a_changed_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recorded.redb");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let rt = Runtime::builder()
            .workflow(v1::onboard)
            .open(&path)
            .await
            .unwrap();
        for id in ["ada", "grace"] {
            let handle = rt.start(v1::onboard, id, id.to_owned()).await.unwrap();
            handle.result().await.unwrap().unwrap();
        }
        rt.start(v1::onboard, "waiting", "waiting".to_owned())
            .await
            .unwrap();
        // Let it record its credit check and wait for the signal.
        for _ in 0..500 {
            if rt.history("waiting").await.unwrap().len() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        rt.shutdown().await;

        let same = replay_file(
            Runtime::builder().workflow(v1::onboard),
            &path,
            &Selection::All,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!((same.matched, same.unfinished), (2, 1), "{same:?}");
        assert!(same.passed());

        let changed = replay_file(
            Runtime::builder().workflow(v2::onboard),
            &path,
            &Selection::All,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(changed.diverged.len(), 3, "{changed:?}");
        let (_, why) = &changed.diverged[0];
        assert_eq!(why.code(), "CAIRN-E0001", "{why}");
        let text = why.to_string();
        assert!(
            text.contains("check_credit") && text.contains("check_fraud"),
            "{text}"
        );

        let one = replay_file(
            Runtime::builder().workflow(v1::onboard),
            &path,
            &Selection::Id("grace".into()),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(one.matched, 1);
        let none = replay_file(
            Runtime::builder().workflow(v1::onboard),
            &path,
            &Selection::Id("nobody".into()),
            |_| {},
        )
        .await
        .unwrap_err();
        assert_eq!(none.code(), "CAIRN-E0007");
    });
    drop(runtime);

    // From the host's own binary: 0 for the recording code, 1 for the changed one.
    let pass = command(
        Runtime::builder().workflow(v1::onboard),
        args(&path, "--all"),
    );
    assert_eq!(pass, Some(ExitCode::SUCCESS));
    let fail = command(
        Runtime::builder().workflow(v2::onboard),
        args(&path, "--all"),
    );
    assert_eq!(fail, Some(ExitCode::from(1)));
    let one = command(Runtime::builder().workflow(v1::onboard), args(&path, "ada"));
    assert_eq!(one, Some(ExitCode::SUCCESS));
}
