//! Test aids for Cairn, kept out of the production crates: [`conformance`], the suite
//! every journal (store) must pass; [`fault::FaultDisk`], a redb storage backend that
//! loses power or fails I/O on purpose; [`postgres`], throwaway PostgreSQL clusters; and
//! [`fuzzing`], the bodies of the fuzz targets (shared by `fuzz/` and the corpus test in
//! this crate).

#![deny(unsafe_code)]

pub mod conformance;
pub mod fault;
pub mod fuzzing;
pub mod postgres;
