//! tabi for hosts: set a guest up, run it so that it can be checkpointed, write and read
//! snapshots, resume them on either engine, and put a guest under the migration test harness.
//!
//! The `tabi` command is a thin layer over this crate; an embedding host or a `cargo test`
//! can call the same functions.

pub mod checkpoint;
pub mod harness;
mod outfile;

pub use checkpoint::{Backend, Setup};
pub use harness::{Divergence, Report, migrate_test, migrate_test_with};
