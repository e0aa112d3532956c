//! Compile-time errors of the macros as the user sees them (trybuild; the expected
//! messages are the committed `tests/ui/*.stderr`), and programs that must compile and
//! run. Regenerate the expectations with `TRYBUILD=overwrite cargo test --test ui`.

#[test]
fn macro_errors_and_passing_programs() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/derive_*.rs");
    t.compile_fail("tests/ui/model_*.rs");
}
