//! A workflow decides with a decision table; the decision (matched rules, the table's
//! version, outputs) is recorded as a step, and a replay after the table changed returns
//! the recorded decision, not a new one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

use cairn::decision::{DecisionTable, HitPolicy};
use cairn::events::EventKind;
use cairn::{workflow, Ctx, Runtime, WorkflowError};
use serde::{Deserialize, Serialize};

const RISK_V1: &str = "rule,in:score:number,in:amount:number,out:band:text,out:rate:number\n\
                       poor score,< 600,-,high,9.5\n\
                       large loan,-,>= 50000,medium,6.0\n\
                       default,,,low,4.25\n";
/// The same table with the large-loan threshold moved: another version.
const RISK_V2: &str = "rule,in:score:number,in:amount:number,out:band:text,out:rate:number\n\
                       poor score,< 600,-,high,9.5\n\
                       large loan,-,>= 90000,medium,6.0\n\
                       default,,,low,4.25\n";

static RISK_V1_TABLE: LazyLock<DecisionTable> =
    LazyLock::new(|| DecisionTable::from_csv("risk", HitPolicy::First, RISK_V1).unwrap());
static RISK_V2_TABLE: LazyLock<DecisionTable> =
    LazyLock::new(|| DecisionTable::from_csv("risk", HitPolicy::First, RISK_V2).unwrap());
/// Which table the deployed code uses.
static DEPLOYED_V2: AtomicBool = AtomicBool::new(false);

fn risk_table() -> &'static DecisionTable {
    if DEPLOYED_V2.load(Ordering::SeqCst) {
        &RISK_V2_TABLE
    } else {
        &RISK_V1_TABLE
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Application {
    score: u32,
    amount: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Terms {
    band: String,
    rate: f64,
}

#[workflow]
async fn price_loan(ctx: Ctx, application: Application) -> Result<Terms, WorkflowError> {
    let decision = ctx
        .decide(risk_table(), &application)
        .await
        .map_err(|err| WorkflowError::business("no_decision", err.to_string()))?;
    let terms: Terms = decision
        .output()
        .map_err(|err| WorkflowError::business("bad_terms", err.to_string()))?;
    // The applicant signs before the terms are final: a wait across a restart.
    let _signed: bool = ctx.signal("signed").await?;
    Ok(terms)
}

fn decision_events(history: &[cairn::store::StoredEvent]) -> Vec<serde_json::Value> {
    history
        .iter()
        .filter_map(|event| match &event.record.kind {
            EventKind::SideEffect { label, value, .. } if label == "decision:risk" => {
                Some(serde_json::from_slice(&value.data).unwrap())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_decision_names_its_rules_and_version_and_survives_a_table_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loans.redb");
    let open = || async {
        Runtime::builder()
            .workflow(price_loan)
            .open_store(&path)
            .await
            .unwrap()
    };
    let rt = open().await;
    let application = Application {
        score: 720,
        amount: 60_000,
    };
    rt.start(price_loan, "loan-1", application.clone())
        .await
        .unwrap();
    let mut spins = 0;
    while decision_events(&rt.history("loan-1").await.unwrap()).is_empty() {
        spins += 1;
        assert!(spins < 100_000, "the decision was not recorded");
        tokio::task::yield_now().await;
    }
    let recorded = decision_events(&rt.history("loan-1").await.unwrap());
    assert_eq!(recorded.len(), 1);
    let decision = &recorded[0]["Ok"];
    assert_eq!(decision["matched"], serde_json::json!(["large loan"]));
    assert_eq!(decision["version"], RISK_V1_TABLE.version());
    assert_eq!(decision["outputs"]["band"], "medium");
    rt.shutdown().await;

    // A new version is deployed: under it this loan would be "low".
    DEPLOYED_V2.store(true, Ordering::SeqCst);
    assert_ne!(RISK_V1_TABLE.version(), RISK_V2_TABLE.version());
    assert_eq!(
        RISK_V2_TABLE.decide(&application).unwrap().outputs["band"],
        "low"
    );
    let rt = open().await;
    rt.signal("loan-1", "signed", &true).await.unwrap();
    let terms = rt
        .handle(price_loan, "loan-1")
        .result()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        terms,
        Terms {
            band: "medium".into(),
            rate: 6.0
        },
        "the replay kept the recorded decision"
    );
    let recorded = decision_events(&rt.history("loan-1").await.unwrap());
    assert_eq!(recorded.len(), 1, "decided once");

    // A new loan decides with the deployed version.
    rt.start(price_loan, "loan-2", application).await.unwrap();
    rt.signal("loan-2", "signed", &true).await.unwrap();
    let terms = rt
        .handle(price_loan, "loan-2")
        .result()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(terms.band, "low");
    let recorded = decision_events(&rt.history("loan-2").await.unwrap());
    assert_eq!(recorded[0]["Ok"]["version"], RISK_V2_TABLE.version());
    assert_eq!(recorded[0]["Ok"]["defaulted"], true);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_input_the_table_cannot_decide_is_recorded_as_the_reason() {
    #[derive(Serialize, Deserialize)]
    struct Partial {
        score: u32,
    }
    #[workflow]
    async fn partial(ctx: Ctx, input: u32) -> Result<String, WorkflowError> {
        match ctx.decide(risk_table(), &Partial { score: input }).await {
            Ok(_) => Ok("decided".into()),
            Err(err) => Ok(err.to_string()),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(partial)
        .open_store(dir.path().join("p.redb"))
        .await
        .unwrap();
    let handle = rt.start(partial, "p-1", 700).await.unwrap();
    let answer = handle.result().await.unwrap().unwrap();
    assert!(
        answer.contains("the input has no field `amount`"),
        "{answer}"
    );
    let recorded = decision_events(&rt.history("p-1").await.unwrap());
    assert!(
        recorded[0]["Err"]["MissingInput"]["column"] == "amount",
        "{recorded:?}"
    );
    rt.shutdown().await;
}
