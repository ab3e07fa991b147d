//! Every diagnostic of `#[workflow]` and `#[activity]` is pinned by a compile-fail case
//! with its expected compiler output committed beside it (`tests/ui/*.stderr`).
//! Regenerate after an intended change with `TRYBUILD=overwrite cargo test -p cairn --test compile_fail`.

#[test]
fn macro_misuse_is_a_clear_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
