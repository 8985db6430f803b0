//! The migration test harness: does a guest survive being checkpointed and moved?
//!
//! [`migrate_test`] runs the guest once plainly (the original module, on wasmtime), then again,
//! instrumented, checkpointing at every N-th migration point: each snapshot is written to bytes
//! in the snapshot format, read back, and resumed on the next backend in turn, and so on to the
//! end of the run. It compares standard output, standard error, the exit status, the in-memory
//! file tree and the granted host directories' contents with the plain run's. After each
//! checkpoint it also checks that the output so far is a prefix of the plain run's, so that a
//! divergence is reported at the migration where it first shows.
//!
//! A library module is tested through one of its exports when the builder names one
//! ([`crate::GuestBuilder::invoke`]): the plain run calls it on the original module, the
//! migrated run pauses inside it, and the export's results are compared too.
//!
//! Host directories ([`crate::GuestBuilder::dir`]) are copied to a fresh temporary directory
//! for each run, so runs neither see nor disturb one another, and their contents are compared
//! at the end. Use [`crate::GuestBuilder::deterministic`] for guests that read clocks or random
//! numbers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tabi_libos::host::Stdio;
use tabi_libos::machine::Value;
use tabi_libos::{Exit, Kernel};

use crate::error::{Context as _, Error, Result};
use crate::{Backend, Ended, Engines, GuestBuilder, Resume};

/// A difference between the plain run and a migrated one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The migration point (counted over the whole run) of the checkpoint after which it
    /// showed.
    pub point: u64,
    /// The backend that wrote the checkpoint.
    pub from: Backend,
    /// The backend that resumed it.
    pub to: Backend,
    /// What differs.
    pub what: String,
}

/// What [`migrate_test`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The migration point (counted over the whole run) of the last checkpoint.
    pub last_point: u64,
    /// Checkpoints taken (and resumed).
    pub checkpoints: u64,
    /// Bytes of snapshot written over all checkpoints.
    pub snapshot_bytes: u64,
    /// Every divergence found (empty: the guest survived every migration).
    pub divergences: Vec<Divergence>,
}

/// What a run leaves that must not depend on migrations.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: String,
    /// An invoked export's results, as `tabi run --invoke` prints them.
    results: Vec<String>,
    memory_files: Vec<(String, String, Vec<u8>)>,
    host_files: Vec<Vec<(String, Vec<u8>)>>,
}

fn take(b: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()))
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = e.file_type()?;
        let dst = to.join(e.file_name());
        if t.is_dir() {
            copy_tree(&e.path(), &dst)?;
        } else if t.is_symlink() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dst)?;
        } else {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

fn read_tree(dir: &Path, rel: &str, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{rel}/{}", e.file_name().to_string_lossy());
        let t = e.file_type()?;
        if t.is_dir() {
            out.push((name.clone() + "/", Vec::new()));
            read_tree(&e.path(), &name, out)?;
        } else if t.is_symlink() {
            let target = std::fs::read_link(e.path())?;
            out.push((name, target.to_string_lossy().as_bytes().to_vec()));
        } else {
            out.push((name, std::fs::read(e.path())?));
        }
    }
    Ok(())
}

/// A copy of the builder whose host directories are fresh copies under `scratch`.
fn isolated(setup: &GuestBuilder, scratch: &Path) -> Result<GuestBuilder> {
    let mut s = setup.clone();
    for (i, (h, _)) in s.dirs.iter_mut().enumerate() {
        let copy = scratch.join(format!("dir{i}"));
        copy_tree(h, &copy).map_err(Error::io(format!("cannot copy `{}`", h.display())))?;
        *h = copy;
    }
    Ok(s)
}

/// How a run ended, as the runs are compared: a trap by its reason only. The message around it
/// names offsets in the module that ran (the migrated run runs the instrumented one) and the
/// engine's own wording of the backtrace.
fn exit_key(exit: &Exit) -> String {
    match exit {
        Exit::Trap(message) => {
            let last = message.lines().last().unwrap_or_default();
            let reason = last.rsplit("wasm trap: ").next().unwrap_or(last);
            format!("trap: {}", reason.trim())
        }
        other => format!("{other:?}"),
    }
}

fn observe(
    setup: &GuestBuilder,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: &Exit,
    results: &[Value],
    kernel: &Kernel,
) -> Result<Observed> {
    let mut host_files = Vec::new();
    for (h, _) in &setup.dirs {
        let mut v = Vec::new();
        read_tree(h, "", &mut v).map_err(Error::io(format!("cannot read `{}`", h.display())))?;
        host_files.push(v);
    }
    let has_memory_files = kernel
        .mounts()
        .iter()
        .any(|m| matches!(m.kind, tabi_libos::MountKind::Memory { .. }));
    Ok(Observed {
        stdout,
        stderr,
        exit: exit_key(exit),
        results: results.iter().map(crate::show_value).collect(),
        memory_files: if has_memory_files {
            kernel
                .fs()
                .tree(0)
                .map_err(|e| Error::Checkpoint(format!("cannot list the in-memory files: {e:?}")))?
                .into_iter()
                .map(|(p, t, d)| (p, format!("{t:?}"), d))
                .collect()
        } else {
            Vec::new()
        },
        host_files,
    })
}

fn describe(expected: &Observed, got: &Observed) -> String {
    let mut parts = Vec::new();
    if expected.stdout != got.stdout {
        parts.push(format!(
            "stdout differs: expected {:?}, got {:?}",
            String::from_utf8_lossy(&expected.stdout),
            String::from_utf8_lossy(&got.stdout)
        ));
    }
    if expected.stderr != got.stderr {
        parts.push(format!(
            "stderr differs: expected {:?}, got {:?}",
            String::from_utf8_lossy(&expected.stderr),
            String::from_utf8_lossy(&got.stderr)
        ));
    }
    if expected.exit != got.exit {
        parts.push(format!(
            "exit differs: expected {}, got {}",
            expected.exit, got.exit
        ));
    }
    if expected.results != got.results {
        parts.push(format!(
            "results differ: expected {:?}, got {:?}",
            expected.results, got.results
        ));
    }
    if expected.memory_files != got.memory_files {
        parts.push("the in-memory file tree differs".into());
    }
    if expected.host_files != got.host_files {
        parts.push("a host directory's contents differ".into());
    }
    parts.join("; ")
}

/// Runs the guest `setup` describes plainly, then migrating after every `every`-th migration
/// point across `backends` in turn (the first run starts on `backends[0]`), and reports how
/// the migrated run differs, if it does. `engines` gives the engine of each backend (the
/// plain run's is wasmtime's, or wasmi's in a build without it); the builder's own engine is
/// not used. The guest's standard streams are the harness's buffers: what the builder's
/// standard input holds ([`Stdio::Buffer`]) is given to each run whole. A host of the
/// caller's own ([`crate::GuestBuilder::host_factory`]; not a single
/// [`crate::GuestBuilder::host`] value, which one run uses up) serves every run and part, and
/// the streams it answers for are not compared.
///
/// ```
/// let mut engines = tabi::Engines::new();
/// let wat = r#"(module
///   (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))
///   (func (export "_start") (drop (call $y)) (drop (call $y)) (drop (call $y))))"#;
/// let builder = tabi::GuestBuilder::new(&engines.get(tabi::Backend::Wasmi)?, wat.as_bytes())?;
/// let report = tabi::migrate_test(&builder, 1, &[tabi::Backend::Wasmi], &mut engines)?;
/// assert!(report.divergences.is_empty());
/// assert_eq!(report.checkpoints, 3);
/// # Ok::<(), tabi::Error>(())
/// ```
pub fn migrate_test(
    setup: &GuestBuilder,
    every: u64,
    backends: &[Backend],
    engines: &mut Engines,
) -> Result<Report> {
    if every == 0 {
        return Err(Error::Config("--every must be at least 1".into()));
    }
    if backends.is_empty() {
        return Err(Error::Config("no backends to test on".into()));
    }
    // Each run reads the same input, from a buffer of its own that the migrated run's parts
    // share; the harness never reads its own standard input.
    let input = match &setup.host.stdin {
        Stdio::Buffer(b) => b
            .lock()
            .map_err(|_| Error::Config("input buffer poisoned".into()))?
            .clone(),
        _ => Vec::new(),
    };
    let input_for = || {
        let (stdin, buf) = Stdio::buffer();
        buf.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&input);
        stdin
    };

    // The plain run: the original module on wasmtime (on wasmi in a build without it).
    let scratch = tempfile::tempdir().map_err(Error::io("cannot create a scratch directory"))?;
    let plain_setup = isolated(setup, &scratch.path().join("plain"))?;
    let (out, out_buf) = Stdio::buffer();
    let (err, err_buf) = Stdio::buffer();
    let mut plain = plain_setup
        .clone()
        .stdin(input_for())
        .stdout(out)
        .stderr(err);
    plain.engine = engines.get(Backend::preferred())?;
    plain.rewrite = None;
    plain.pause_after = None;
    plain.pause = None;
    plain.host.wake = None;
    let Ended::Exited(finished) = plain.build()?.run().context("the plain run failed")? else {
        return Err(Error::Config("the plain run paused".into()));
    };
    let expected = observe(
        &plain_setup,
        take(&out_buf),
        take(&err_buf),
        &finished.exit,
        &finished.results,
        &finished.process.kernel,
    )?;

    // The migrated run: each part runs until `every` more points, is checkpointed through the
    // snapshot format, and the next part resumes it on the next backend.
    let run_setup = isolated(setup, &scratch.path().join("migrated"))?;
    let run_stdin = input_for();
    let mut report = Report::default();
    let (out, mut out_buf) = Stdio::buffer();
    let (err, mut err_buf) = Stdio::buffer();
    let mut first = run_setup
        .clone()
        .stdin(run_stdin.clone())
        .stdout(out)
        .stderr(err)
        .pause_after(every);
    first.engine = engines.get(backends[0])?;
    first.pause = None;
    first.host.wake = None;
    if first.rewrite.is_none() {
        first.rewrite = Some(crate::rewrite_options(false));
    }
    let mut guest = Some(first.build()?);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    // The snapshot the next part resumes from, as bytes.
    let mut snapshot: Option<Vec<u8>> = None;
    let mut turn = 0usize;
    // The backend that wrote the checkpoint the current part resumed.
    let previous = |turn: usize| backends[(turn + backends.len() - 1) % backends.len()];
    loop {
        let backend = backends[turn % backends.len()];
        let ended = match (guest.take(), snapshot.take()) {
            (Some(g), _) => g.run()?,
            (None, Some(bytes)) => {
                // Each part writes to buffers of its own host.
                let (out, ob) = Stdio::buffer();
                let (err, eb) = Stdio::buffer();
                (out_buf, err_buf) = (ob, eb);
                let mut resume = Resume::new(&engines.get(backend)?)
                    .stdin(run_stdin.clone())
                    .stdout(out)
                    .stderr(err)
                    .limits(run_setup.limits)
                    .rewrite_cache(run_setup.cache.clone())
                    .pause_after(every);
                for (h, g) in &run_setup.dirs {
                    resume = resume.dir(h.clone(), g.clone());
                }
                // A host of the caller's own serves every part, as it served the first.
                resume.host.factory = run_setup.host.factory.clone();
                // And the same preloaded models and plan cache.
                resume.host.nn = run_setup.host.nn.clone();
                resume
                    .from_reader(&bytes[..])
                    .and_then(crate::Guest::run)
                    .context("a snapshot the harness wrote does not resume")?
            }
            (None, None) => return Err(Error::Config("nothing to run".into())),
        };
        stdout.extend(take(&out_buf));
        stderr.extend(take(&err_buf));
        match ended {
            Ended::Exited(f) => {
                let got = observe(
                    &run_setup,
                    stdout,
                    stderr,
                    &f.exit,
                    &f.results,
                    &f.process.kernel,
                )?;
                if got != expected && report.divergences.is_empty() {
                    report.divergences.push(Divergence {
                        point: report.last_point,
                        from: previous(turn),
                        to: backend,
                        what: describe(&expected, &got),
                    });
                }
                return Ok(report);
            }
            Ended::Paused(p) => {
                report.checkpoints += 1;
                report.last_point += p.points();
                let bytes = p.snapshot_bytes()?;
                report.snapshot_bytes += bytes.len() as u64;
                if report.divergences.is_empty()
                    && (!expected.stdout.starts_with(&stdout)
                        || !expected.stderr.starts_with(&stderr))
                {
                    report.divergences.push(Divergence {
                        point: report.last_point,
                        from: previous(turn),
                        to: backend,
                        what: "the output so far is not a prefix of the plain run's".into(),
                    });
                }
                snapshot = Some(bytes);
                turn += 1;
            }
        }
    }
}
