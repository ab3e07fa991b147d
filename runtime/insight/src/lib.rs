//! Process insight from recorded histories: what the process *really* does.
//!
//! - [`ProcessMap::mine`] turns the histories of one workflow type into a map: each
//!   step as a node and each observed hand-over from one step to the next as an arrow,
//!   with counts, durations, waiting times, the share of instances on each path, and the
//!   slowest hand-overs marked as bottlenecks.
//! - [`bpmn`] writes a map as BPMN 2.0 XML with a diagram (a computed layout), so
//!   modelling tools open the process as it runs; [`svg`] draws the same layout.
//! - [`report::Report::build`] counts, per period, runs started and how they ended, their
//!   durations, overdue tasks and escalations, and why runs failed; as CSV too.
//! - [`waits::waits`] tells what an unfinished run waits for (a person, a timer, a
//!   signal with a deadline, a child, a retry), for the instance list's filters.
//!
//! Everything here is pure computation over [`cairn_core::journal::StoredEvent`]s: no
//! store, no clock, no tokio. The host decides which histories to read.

#![deny(unsafe_code)]

pub mod bpmn;
mod layout;
mod mine;
pub mod report;
pub mod svg;
pub mod waits;

pub use layout::{Layout, Placed, Route, Shape};
pub use mine::{
    human_ms, Edge, Node, NodeKind, ProcessMap, Spread, Variant, BOTTLENECKS_MAX, VARIANTS_SHOWN,
};
