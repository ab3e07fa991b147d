//! Arbitrary bytes as an event envelope; the body and its properties are in
//! `cairn_testkit::fuzzing::event_decode`, shared with the corpus test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_testkit::fuzzing::event_decode(data));
