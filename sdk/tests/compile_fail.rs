//! Every diagnostic of `#[workflow]` and `#[activity]` is pinned by a compile-fail case
//! with its expected compiler output committed beside it (`tests/ui/*.stderr`).
//! Regenerate after an intended change with `TRYBUILD=overwrite cargo test -p cairn --test compile_fail`.

#[test]
fn macro_misuse_is_a_clear_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/workflow_*calls.rs");
    cases.compile_fail("tests/ui/workflow_not_async.rs");
    cases.compile_fail("tests/ui/workflow_without_ctx.rs");
    cases.compile_fail("tests/ui/workflow_bad_signature.rs");
    cases.compile_fail("tests/ui/workflow_non_serde_types.rs");
    cases.compile_fail("tests/ui/activity_misuse.rs");
    // And no false alarms on code that only looks like a forbidden call.
    cases.pass("tests/ui/workflow_deterministic_lookalikes.rs");
}
