//! Arbitrary bytes as a history and a script of step requests; the body, its input
//! format and its properties are in `cairn_testkit::fuzzing::history_replay`, shared with
//! the corpus test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_testkit::fuzzing::history_replay(data));
