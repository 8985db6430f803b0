//! Programs that embed tabi as its users do, built and run by this crate's tests:
//!
//! - `embed` (`src/bin/embed.rs`): a host runtime that runs a guest on a host of its own,
//!   checkpoints it from a timer thread, and resumes it on the other engine;
//! - `edge-app` (`src/bin/edge-app.rs`): an application that runs a guest stage in-process
//!   on an "edge" tabi, pauses it, and hands the snapshot to a second, "cloud" tabi that
//!   finishes it (across nodes in a later issue).
