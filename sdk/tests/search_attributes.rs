//! Instances publish their stage and searchable attributes as recorded events; hosts
//! list and filter instances by type, status, start time and attributes from the
//! indexes alone, without replaying any history.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use cairn::{workflow, AttrValue, Ctx, ListFilter, Runtime, StatusKind, WorkflowError};

#[workflow]
async fn claim(ctx: Ctx, customer: String, amount: i64) -> Result<String, WorkflowError> {
    ctx.set_attributes([
        ("customer", AttrValue::from(customer.clone())),
        ("amount", AttrValue::Int(amount)),
    ])
    .await;
    ctx.set_stage("assessment").await;
    if amount > 1_000 {
        ctx.set_stage("awaiting approval").await;
        let approved: bool = ctx.signal("approve").await?;
        ctx.set_stage(if approved { "paid" } else { "rejected" })
            .await;
    } else {
        ctx.set_stage("paid").await;
    }
    Ok(customer)
}

fn by(attributes: &[(&str, AttrValue)]) -> ListFilter {
    ListFilter {
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..ListFilter::default()
    }
}

async fn ids(rt: &Runtime, filter: &ListFilter) -> Vec<String> {
    rt.list(filter)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

#[tokio::test]
async fn instances_are_found_by_attributes_stage_status_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = Runtime::builder()
        .workflow(claim)
        .open_store(&path)
        .await
        .unwrap();
    for (id, customer, amount) in [
        ("c-1", "acme", 500),
        ("c-2", "acme", 5_000),
        ("c-3", "globex", 80),
    ] {
        rt.start(claim, id, (customer.to_owned(), amount))
            .await
            .unwrap();
    }
    for id in ["c-1", "c-3"] {
        rt.handle(claim, id).result().await.unwrap().unwrap();
    }
    // c-2 waits for approval; wait until it says so.
    let mut spins = 0u32;
    while rt.status("c-2").await.unwrap().attributes.get("stage")
        != Some(&AttrValue::from("awaiting approval"))
    {
        spins += 1;
        assert!(spins < 1_000_000, "c-2 never reached its approval stage");
        tokio::task::yield_now().await;
    }

    assert_eq!(
        ids(&rt, &by(&[("customer", "acme".into())])).await,
        ["c-1", "c-2"]
    );
    assert_eq!(
        ids(
            &rt,
            &by(&[("customer", "acme".into()), ("stage", "paid".into())])
        )
        .await,
        ["c-1"]
    );
    assert_eq!(
        ids(&rt, &by(&[("amount", AttrValue::Int(80))])).await,
        ["c-3"]
    );
    let waiting = ListFilter {
        statuses: vec![StatusKind::Running],
        ..by(&[("stage", "awaiting approval".into())])
    };
    assert_eq!(ids(&rt, &waiting).await, ["c-2"]);
    let started = rt.status("c-1").await.unwrap().created_at_ms;
    let none_before = ListFilter {
        created_until_ms: Some(started),
        ..ListFilter::default()
    };
    assert!(ids(&rt, &none_before).await.is_empty());
    let all_since = ListFilter {
        created_from_ms: Some(started),
        workflow_type: Some("claim".into()),
        ..ListFilter::default()
    };
    assert_eq!(ids(&rt, &all_since).await.len(), 3);

    rt.signal("c-2", "approve", &true).await.unwrap();
    rt.handle(claim, "c-2").result().await.unwrap().unwrap();
    let info = rt.status("c-2").await.unwrap();
    assert_eq!(info.attributes.get("stage"), Some(&AttrValue::from("paid")));
    assert_eq!(
        info.attributes.get("amount"),
        Some(&AttrValue::Int(5_000)),
        "earlier attributes are kept"
    );
    rt.shutdown().await;

    // The index is on disk: a host without the workflow code can still query it.
    let rt = Runtime::builder().open_store(&path).await.unwrap();
    assert_eq!(
        ids(&rt, &by(&[("stage", "paid".into())])).await,
        ["c-1", "c-2", "c-3"]
    );
    rt.shutdown().await;
}
