//! tabi for hosts: run a WebAssembly guest on tabi's kernel, pause it, write its snapshot,
//! resume it on either engine, and test that it survives migration.
//!
//! # Layers
//!
//! This crate is what an embedder links; the `tabi` command is clap and printing over it.
//! Under it: `tabi-libos` (the kernel and the pause protocol), `tabi-vfs` (files),
//! `tabi-instrument` (the rewrite that makes a call stack capturable), `tabi-snapshot` (the
//! file format), and one adapter per engine (`tabi-wasmtime`, `tabi-wasmi`, each behind a
//! cargo feature of the same name). A checkpoint goes from a [`Pause`] in the guest's own
//! instance through `tabi-snapshot`'s writer to a file or any writer, and back through
//! [`Resume`], which reads it straight into a fresh instance of either engine.
//!
//! - [`Engine`]: an engine as a value (wasmtime or wasmi, default or the caller's
//!   configuration).
//! - [`GuestBuilder`] → [`Guest`]: module, arguments, environment, directories, streams, the
//!   caller's own [`Host`], deterministic mode, rewrite options, limits.
//! - [`Guest::run`], [`Guest::run_with`]: to the end, or to each [`Pause`], which can write a
//!   snapshot and let the guest go on or stop. A [`PauseHandle`] asks for a pause from
//!   another thread or a signal handler.
//! - [`Resume`], [`read_snapshot`], [`read_chain`], [`Inspection`]: snapshots as values.
//! - [`migrate_test`]: the migration harness, with its [`Report`] as data.
//! - [`RewriteCache`]: the rewritten modules, in a bounded cache the caller owns.
//!
//! No state is process-wide: two differently configured engines, caches or limits can be used
//! side by side.
//!
//! # Example: checkpoint, then resume on the other engine
//!
//! ```
//! use tabi::{Backend, Ended, Engine, GuestBuilder, Resume, Stdio};
//!
//! let wat = r#"(module
//!   (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
//!   (memory (export "memory") 1)
//!   (data (i32.const 16) "tick\n")
//!   (func (export "_start")
//!     (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5))
//!     (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
//!     (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
//! let first = Engine::new(Backend::Wasmi)?;
//! let (out, printed) = Stdio::buffer();
//! let guest = GuestBuilder::new(&first, wat.as_bytes())?.stdout(out.clone()).pause_after(1).build()?;
//! let Ended::Paused(paused) = guest.run()? else { panic!("no pause") };
//! assert_eq!(&*printed.lock().unwrap(), b"tick\n");
//! let snapshot = paused.snapshot_bytes()?;
//!
//! let second = Engine::new(Backend::preferred())?;
//! let resumed = Resume::new(&second).stdout(out).from_reader(&snapshot[..])?;
//! assert_eq!(resumed.run()?.exit(), Some(&tabi::Exit::Code(0)));
//! assert_eq!(&*printed.lock().unwrap(), b"tick\ntick\n");
//! # Ok::<(), tabi::Error>(())
//! ```

mod checkpoint;
mod engine;
mod error;
mod guest;
mod harness;
mod module;
mod nn;
mod outfile;
mod resume;

pub use checkpoint::{Chain, ChainWritten, fingerprint};
pub use engine::{Backend, Engine, Engines};
pub use error::{Error, Result};
pub use guest::{
    CheckpointFiles, Ended, Exited, Guest, GuestBuilder, HostFactory, Pause, PauseHandle,
    PausedGuest, WrittenFile,
};
pub use harness::{Divergence, Report, migrate_test};
pub use module::{
    CacheRefusal, PointRule, RewriteCache, RewriteOptions, describe_options, export_params,
    invoke_values, options_of_identity, parse_module, parse_value, points_for, private_dir,
    read_module, rewrite_options, show_value, user_cache_dir,
};
#[cfg(feature = "nn")]
pub use nn::PlanCache;
pub use nn::{Encoding as NnEncoding, NnGraph, NnLimits};
pub use resume::{
    Inspection, Resume, describe_object, read_chain, read_snapshot, read_snapshot_from,
};

pub use tabi_libos::host::{Host, StdHost, Stdio};
pub use tabi_libos::machine::{AfterPause, PauseReason, Value};
pub use tabi_libos::{Errno, Exit, Kernel, Process};
pub use tabi_snapshot::{Error as SnapshotError, Key, Limits, Snapshot, Summary};

/// The rewrite itself (`tabi instrument`), for a caller that writes rewritten modules out.
pub use tabi_instrument as instrument;

/// The exit status of `tabi run` after it wrote a checkpoint and stopped the guest
/// (`EX_TEMPFAIL`: the run is not over, resume it).
pub const CHECKPOINT_EXIT: u8 = 75;
