//! The `tabi` command: run a WebAssembly guest on tabi's kernel, on wasmtime or wasmi.
//!
//! `tabi run` mirrors `wasmtime run`: preopened directories with `--dir HOST::GUEST`, the
//! environment with `--env`, and the guest's exit status passed through. It adds
//! `--copy-dir HOST::GUEST`, which copies a host directory into the in-memory file system so
//! that its contents travel with the guest, and `--deterministic`, which makes clocks virtual and
//! randomness seeded so that two runs print the same bytes.
//!
//! `tabi instrument IN -o OUT` rewrites a module with `tabi-instrument` so that its call stack
//! can be saved and rebuilt; the output still runs anywhere a plain module runs.
//!
//! Checkpoints: `tabi run --checkpoint-after N --snapshot FILE` (or `--checkpoint-on-signal`,
//! SIGUSR1) writes a snapshot and exits with status 75; `tabi resume FILE` carries on, on either
//! backend; `tabi inspect FILE` describes a snapshot; `tabi migrate-test` checks that a guest
//! survives migration at every N-th migration point.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tabi::{
    AfterPause, CHECKPOINT_EXIT, CheckpointFiles, Engine, Exit, GuestBuilder, PauseHandle,
    PauseReason, Stdio, Value,
};

#[derive(Parser)]
#[command(
    name = "tabi",
    version,
    about = "A library OS for WebAssembly: run WASI guests on wasmtime or wasmi"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a WASI preview-1 module's `_start`.
    Run(RunArgs),
    /// Rewrite a module so that its call stack can be saved and rebuilt (see tabi-instrument).
    Instrument(InstrumentArgs),
    /// Carry on a guest from a snapshot.
    Resume(ResumeArgs),
    /// Describe a snapshot; exits non-zero with the reason when it is invalid.
    Inspect(InspectArgs),
    /// Check that a guest survives being checkpointed and moved between backends.
    MigrateTest(MigrateTestArgs),
}

#[derive(Parser)]
struct ResumeArgs {
    /// The engine to resume on.
    #[arg(long, value_enum, default_value = DEFAULT_BACKEND)]
    backend: Backend,
    /// Grant a host directory the guest had mounted, as HOST::GUEST.
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    dirs: Vec<String>,
    /// Preload a wasi-nn model again, as ENCODING::DIR: a guest that loaded one by name
    /// before the checkpoint needs a model of the same content under the same name.
    #[arg(long = "nn-graph", value_name = "ENCODING::DIR")]
    nn_graphs: Vec<String>,
    /// The original module, when the snapshot does not carry it.
    #[arg(long)]
    module: Option<PathBuf>,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// The snapshot.
    file: PathBuf,
    /// Incremental snapshots to apply to it first, in order (as `--incremental` wrote them:
    /// FILE.1, FILE.2, ...); the run resumes from the last.
    #[arg(value_name = "INCREMENTAL")]
    links: Vec<PathBuf>,
}

#[derive(Parser)]
struct InspectArgs {
    #[command(flatten)]
    limits: LimitArgs,
    /// The snapshot.
    file: PathBuf,
    /// Incremental snapshots applied to it, in order; the last is described.
    #[arg(value_name = "INCREMENTAL")]
    links: Vec<PathBuf>,
}

/// The guest's standard input, when it is piped or redirected, is read in full first: the
/// uninterrupted run and the migrated run each read all of it. From a terminal, both read
/// nothing.
#[derive(Parser)]
struct MigrateTestArgs {
    /// Checkpoint at every N-th migration point.
    #[arg(long, default_value_t = 1)]
    every: u64,
    /// Backends to move between, in turn.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_BACKENDS)]
    backends: Vec<Backend>,
    #[command(flatten)]
    guest: GuestArgs,
    /// Call this function export of a library module instead of `_start`, with ARGS as its
    /// arguments (as `tabi run --invoke` does), and compare its results too.
    #[arg(long, value_name = "NAME")]
    invoke: Option<String>,
    /// The module to test.
    module: PathBuf,
    /// Arguments passed to the guest after its name.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// What a snapshot may make tabi do: the same limits for the snapshots a run writes and for
/// those it reads, so that a checkpoint a resume with these flags would refuse is refused when
/// it is taken, with the guest still running.
#[derive(Parser, Default)]
struct LimitArgs {
    /// Most guest memory a snapshot may hold, over all its memories (bytes, or with a K, M or
    /// G suffix, powers of 1024). A larger claim is refused before anything is allocated.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Most bytes the guest's in-memory file system may hold (names, links and metadata
    /// counted); the snapshot's own limit is never used.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_fs: Option<u64>,
    /// Most bytes of wasi-nn models the guest may load (one model, and all together); a
    /// larger `load` is `too_large`. Snapshots may then hold that much more kernel state.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_nn_models: Option<u64>,
    /// Authenticate snapshots with a key derived from this file's contents: those written
    /// carry a MAC, and one read without a valid MAC is refused.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

impl LimitArgs {
    /// The limits of every snapshot this command reads or writes.
    fn limits(&self) -> Result<tabi::Limits> {
        let mut limits = tabi_snapshot::Limits::default();
        if let Some(bytes) = self.max_memory {
            limits = limits.with_memory_bytes(bytes);
        }
        if let Some(bytes) = self.max_fs {
            limits.state.fs_bytes = bytes;
        }
        if let Some(bytes) = self.max_nn_models {
            limits.state.nn.model_bytes = bytes;
            limits.state.nn.models_bytes = bytes;
            // The models are in the kernel section, beside 48 MiB of tensors and the
            // rest of the state.
            let section = bytes.saturating_add(64 << 20).min(u64::from(u32::MAX));
            limits.section = limits.section.max(section as u32);
        }
        if let Some(path) = &self.key_file {
            let secret = std::fs::read(path)
                .with_context(|| format!("cannot read the key file `{}`", path.display()))?;
            if secret.len() < 16 {
                bail!(
                    "the key file `{}` holds {} bytes; a key needs at least 16",
                    path.display(),
                    secret.len()
                );
            }
            limits.key = Some(tabi_snapshot::Key::derive(&secret));
        }
        Ok(limits)
    }
}

/// A size in bytes: a number, optionally followed by K, M or G (powers of 1024, an optional
/// `iB` or `B` after it).
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (a number, optionally with K, M or G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// When to write a snapshot.
#[derive(Parser, Default)]
struct CheckpointArgs {
    #[command(flatten)]
    limits: LimitArgs,
    /// Pause at the N-th migration point (WASI call), write the snapshot and exit with status 75.
    #[arg(long, value_name = "N", requires = "snapshot")]
    checkpoint_after: Option<u64>,
    /// Write a snapshot each time the process receives SIGUSR1, then continue.
    #[arg(long, requires = "snapshot")]
    checkpoint_on_signal: bool,
    /// With --checkpoint-on-signal (or a checkpoint the guest asks for): stop after writing
    /// the first snapshot, with status 75.
    #[arg(long)]
    stop_after_checkpoint: bool,
    /// Where to write the snapshot.
    #[arg(long, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Write each checkpoint after the first as FILE.1, FILE.2, ...: an incremental snapshot
    /// holding only what changed since the one before. Resume with `tabi resume FILE FILE.1
    /// ...`. Where the host cannot track writes to the guest's memory, a checkpoint is full.
    #[arg(long, requires = "snapshot")]
    incremental: bool,
    /// Add safepoints, so that a signal can checkpoint a guest that loops without calling.
    #[arg(long)]
    safepoints: bool,
}

impl CheckpointArgs {
    fn wanted(&self) -> bool {
        self.checkpoint_after.is_some() || self.checkpoint_on_signal || self.snapshot.is_some()
    }
}

#[derive(Parser)]
struct InstrumentArgs {
    /// The module to rewrite.
    input: PathBuf,
    /// Where to write the result.
    #[arg(short, long)]
    output: PathBuf,
    /// Add safepoints at loop headers and recursive functions' entries, so that the host can
    /// pause a guest that makes no calls.
    #[arg(long)]
    safepoints: bool,
    /// Also treat calls of these imports as migration points: MODULE (all its imports) or
    /// MODULE::NAME.
    #[arg(long = "point", value_name = "MODULE[::NAME]")]
    points: Vec<String>,
    /// Drop the default migration points (every wasi_snapshot_preview1 and tabi import).
    #[arg(long)]
    no_default_points: bool,
}

fn instrument(args: InstrumentArgs) -> Result<()> {
    let wasm = tabi::read_module(&args.input)?;
    let mut options = tabi::rewrite_options(args.safepoints);
    if args.no_default_points {
        options.points.clear();
    }
    for p in &args.points {
        let (module, name) = match p.split_once("::") {
            Some((m, n)) => (m.to_string(), Some(n.to_string())),
            None => (p.clone(), None),
        };
        options.points.push(tabi::PointRule { module, name });
    }
    let out = tabi::instrument::instrument(&wasm, &options)
        .with_context(|| format!("cannot instrument `{}`", args.input.display()))?;
    std::fs::write(&args.output, &out.wasm)
        .with_context(|| format!("cannot write `{}`", args.output.display()))?;
    let count = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    eprintln!(
        "tabi: instrumented {} ({}); {} -> {} bytes ({:+.1}%)",
        count(
            out.manifest.instrumented_functions.into(),
            "function",
            "functions"
        ),
        count(out.manifest.sites.into(), "site", "sites"),
        wasm.len(),
        out.wasm.len(),
        (out.wasm.len() as f64 / wasm.len().max(1) as f64 - 1.0) * 100.0
    );
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Wasmtime,
    Wasmi,
}

impl From<Backend> for tabi::Backend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Wasmtime => tabi::Backend::Wasmtime,
            Backend::Wasmi => tabi::Backend::Wasmi,
        }
    }
}

/// The backend `tabi run` and `tabi resume` use unless told: wasmtime, or wasmi in a build
/// without it.
const DEFAULT_BACKEND: &str = if cfg!(feature = "wasmtime") {
    "wasmtime"
} else {
    "wasmi"
};

/// The backends `tabi migrate-test` moves a guest between unless told.
const DEFAULT_BACKENDS: &str = if cfg!(feature = "wasmtime") {
    "wasmtime,wasmi"
} else {
    "wasmi"
};

#[derive(Parser)]
struct RunArgs {
    /// The engine to run on.
    #[arg(long, value_enum, default_value = DEFAULT_BACKEND)]
    backend: Backend,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Call this function export of a library module (a reactor) instead of `_start`, with
    /// ARGS as its arguments, and print its results, one a line. The start function and
    /// `_initialize` run first; checkpoints are taken inside the export only, and `tabi
    /// resume` finishes the call and prints its results.
    #[arg(long, value_name = "NAME")]
    invoke: Option<String>,
    /// The module to run.
    module: PathBuf,
    /// Arguments passed to the guest after its name (with --invoke, the export's arguments
    /// too: integers in decimal or 0x hexadecimal, floats as 1.5, inf or NaN).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// How the guest's process is set up.
#[derive(Parser)]
struct GuestArgs {
    /// Grant a host directory, as HOST::GUEST (or HOST, seen under the same path); writes land
    /// on the host.
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    dirs: Vec<String>,
    /// Copy a host directory into the in-memory file system, as HOST::GUEST.
    #[arg(long = "copy-dir", value_name = "HOST::GUEST")]
    copy_dirs: Vec<String>,
    /// An empty in-memory directory at this guest path (it travels with a checkpoint).
    #[arg(long = "mem-dir", value_name = "GUEST")]
    mem_dirs: Vec<String>,
    /// Preload a wasi-nn model for the guest's `load_by_name`, as ENCODING::DIR (as
    /// wasmtime's `-S nn-graph`): `DIR/model.onnx`, under the name of DIR's last component.
    /// Its bytes stay on the host; a resume needs it again.
    #[arg(long = "nn-graph", value_name = "ENCODING::DIR")]
    nn_graphs: Vec<String>,
    /// Set an environment variable, as K=V (or K, to pass the host's value).
    #[arg(long = "env", value_name = "K=V")]
    envs: Vec<String>,
    /// Pass the whole host environment to the guest.
    #[arg(long)]
    inherit_env: bool,
    /// Virtual clocks and seeded randomness: the same run prints the same bytes.
    #[arg(long)]
    deterministic: bool,
    /// Seed of the random generator with --deterministic.
    #[arg(long, default_value_t = 0, requires = "deterministic")]
    seed: u64,
}

impl GuestArgs {
    /// A builder of the guest these options describe, on `engine`, named after `module`.
    fn builder(
        &self,
        engine: &Engine,
        wasm: Vec<u8>,
        module: &std::path::Path,
        args: &[String],
    ) -> Result<GuestBuilder> {
        let mut b = GuestBuilder::of_binary(engine, wasm)
            .program_name(module.display().to_string())
            .args(args.iter().cloned());
        if self.inherit_env {
            for (k, v) in std::env::vars() {
                b = b.env(k, v);
            }
        }
        for e in &self.envs {
            b = match e.split_once('=') {
                Some((k, v)) => b.env(k, v),
                None => match std::env::var(e) {
                    Ok(v) => b.env(e.clone(), v),
                    Err(_) => bail!("--env {e}: no such variable in the host environment"),
                },
            };
        }
        for d in &self.dirs {
            let (h, g) = split_mapping(d);
            b = b.dir(h, g);
        }
        for d in &self.copy_dirs {
            let (h, g) = split_mapping(d);
            b = b.copy_dir(h, g);
        }
        for g in &self.mem_dirs {
            b = b.memory_dir(g.clone());
        }
        for spec in &self.nn_graphs {
            b = b.nn_graph(tabi::NnGraph::from_dir(spec)?);
        }
        if self.deterministic {
            b = b.deterministic(self.seed);
        }
        Ok(b)
    }
}

fn split_mapping(spec: &str) -> (String, String) {
    match spec.split_once("::") {
        Some((host, guest)) => (host.to_string(), guest.to_string()),
        None => (spec.to_string(), spec.to_string()),
    }
}

/// How a run ended, for the exit status.
enum Ended {
    /// The guest exited; a call of a library module's export returned these results.
    Exit(Exit, Vec<Value>),
    Checkpointed,
}

/// Says once a process that a cache directory is not used, and why.
fn warn_untrusted(dir: &std::path::Path, refusal: &tabi::CacheRefusal) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let tabi::CacheRefusal::Untrusted(why) = refusal
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        eprintln!(
            "tabi: warning: not using the cache directory `{}`, as {why}; running without a \
             cache",
            dir.display()
        );
    }
}

/// The cache of rewritten modules: in the user's cache directory (see
/// [`tabi::user_cache_dir`]) when it is fit to hold code that runs, else in memory only.
fn rewrite_cache() -> tabi::RewriteCache {
    const KEPT: usize = 8;
    let Some(dir) = tabi::user_cache_dir() else {
        return tabi::RewriteCache::in_memory(KEPT);
    };
    tabi::RewriteCache::in_directory(&dir, KEPT).unwrap_or_else(|refusal| {
        warn_untrusted(&dir, &refusal);
        tabi::RewriteCache::in_memory(KEPT)
    })
}

/// The engine of `backend`. wasmtime keeps its compiled code in `compiled` under the user's
/// cache directory (created readable by its owner only), so that a module, and above all its
/// rewrite with safepoints, compiles once rather than at each start; without a cache
/// directory fit for it, nothing is kept.
fn engine(backend: tabi::Backend) -> Result<Engine> {
    #[cfg(feature = "wasmtime")]
    if backend == tabi::Backend::Wasmtime {
        let compiled = tabi::user_cache_dir().and_then(|dir| {
            let check = |d: &std::path::Path| {
                tabi::private_dir(d).map_err(|refusal| warn_untrusted(d, &refusal))
            };
            check(&dir).ok()?;
            let compiled = dir.join("compiled");
            check(&compiled).ok()?;
            Some(compiled)
        });
        if let Some(dir) = compiled
            && let Ok(engine) = Engine::wasmtime_with_code_cache(&dir)
        {
            return Ok(engine);
        }
    }
    Ok(Engine::new(backend)?)
}

fn run(args: RunArgs) -> Result<Ended> {
    let limits = args.checkpoint.limits.limits()?;
    let handle = pause_handle(&args.checkpoint)?;
    let wasm = tabi::read_module(&args.module)?;
    let engine = engine(args.backend.into())?;
    let mut builder = args
        .guest
        .builder(&engine, wasm.clone(), &args.module, &args.args)?
        .snapshot_limits(limits);
    if args.checkpoint.limits.max_fs.is_some() {
        builder = builder.max_fs_bytes(limits.state.fs_bytes);
    }
    if let Some(export) = &args.invoke {
        builder = builder.invoke(export, tabi::invoke_values(&wasm, export, &args.args)?);
    }
    if args.checkpoint.wanted() {
        builder = builder
            .rewrite(tabi::rewrite_options(args.checkpoint.safepoints))
            .rewrite_cache(rewrite_cache());
        if let Some(n) = args.checkpoint.checkpoint_after {
            builder = builder.pause_after(n);
        }
        if let Some(h) = &handle {
            builder = builder.pause_handle(h);
        }
    }
    let guest = builder.build()?;
    drive(guest, &args.checkpoint)
        .with_context(|| format!("cannot run `{}`", args.module.display()))
}

/// The pause handle SIGUSR1 sets, when checkpoints on signal are asked for. The handler is
/// installed once per process, as early as possible: before it is, SIGUSR1 would end the
/// process.
fn pause_handle(cp: &CheckpointArgs) -> Result<Option<PauseHandle>> {
    if !cp.checkpoint_on_signal {
        return Ok(None);
    }
    static HANDLE: std::sync::OnceLock<PauseHandle> = std::sync::OnceLock::new();
    let handle = HANDLE.get_or_init(PauseHandle::new).clone();
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        result = signal_hook::flag::register(signal_hook::consts::SIGUSR1, handle.flag())
            .map(|_| ())
            .context("cannot install the SIGUSR1 handler");
    });
    result?;
    Ok(Some(handle))
}

/// Runs `guest`, writing a checkpoint at each pause as `cp` asks, and printing what it wrote.
fn drive(guest: tabi::Guest, cp: &CheckpointArgs) -> Result<Ended> {
    let mut files = cp.snapshot.as_ref().map(|path| {
        if cp.incremental {
            CheckpointFiles::incremental(path)
        } else {
            CheckpointFiles::new(path)
        }
    });
    let ended = guest.run_with(|pause| {
        let Some(files) = &mut files else {
            if pause.reason() == PauseReason::Guest {
                // A checkpoint the guest asks for when none is to be written: as in a run
                // that is not instrumented, the request does nothing.
                return Ok(AfterPause::Continue);
            }
            return Err(tabi::Error::Config(
                "the guest paused, but no --snapshot file was given".into(),
            ));
        };
        match files.write(pause) {
            Ok(w) => eprintln!(
                "tabi: {} at migration point {} ({:?}) written to {} ({} bytes{})",
                if w.parent.is_some() {
                    "incremental checkpoint"
                } else {
                    "checkpoint"
                },
                pause.points(),
                pause.reason(),
                w.path.display(),
                w.summary.bytes,
                match w.parent {
                    Some(p) => format!(", parent {}", &tabi_snapshot::hex(&p)[..16]),
                    None => String::new(),
                }
            ),
            Err(e) => {
                // The guest is not lost to a checkpoint that cannot be written (a limit a
                // resume would refuse, a full disk): it goes on, as a process CRIU fails to
                // dump does, and ends with its own status.
                eprintln!(
                    "tabi: the checkpoint at migration point {} was not written, and the guest \
                     goes on: {e}",
                    pause.points()
                );
                return Ok(AfterPause::Continue);
            }
        }
        let stop = pause.reason() == PauseReason::AfterPoints || cp.stop_after_checkpoint;
        Ok(if stop {
            AfterPause::Stop
        } else {
            AfterPause::Continue
        })
    })?;
    Ok(match ended {
        tabi::Ended::Exited(e) => Ended::Exit(e.exit, e.results),
        tabi::Ended::Paused(_) => Ended::Checkpointed,
    })
}

fn resume(args: ResumeArgs) -> Result<Ended> {
    let limits = args.checkpoint.limits.limits()?;
    let handle = pause_handle(&args.checkpoint)?;
    let mut resume = tabi::Resume::new(&engine(args.backend.into())?)
        .limits(limits)
        .rewrite_cache(rewrite_cache());
    for d in &args.dirs {
        let (h, g) = split_mapping(d);
        resume = resume.dir(h, g);
    }
    for spec in &args.nn_graphs {
        resume = resume.nn_graph(tabi::NnGraph::from_dir(spec)?);
    }
    if let Some(m) = &args.module {
        resume = resume.module(tabi::read_module(m)?);
    }
    if let Some(n) = args.checkpoint.checkpoint_after {
        resume = resume.pause_after(n);
    }
    if let Some(h) = &handle {
        resume = resume.pause_handle(h);
    }
    let guest = if args.links.is_empty() {
        resume.from_file(&args.file)?
    } else {
        let chain = chain_paths(&args.file, &args.links);
        let last = chain.last().unwrap_or(&args.file);
        let snapshot = tabi::read_chain(&chain, &limits)?;
        resume
            .from_snapshot(snapshot)
            .with_context(|| format!("cannot resume `{}`", last.display()))?
    };
    drive(guest, &args.checkpoint)
}

/// A full snapshot's path followed by its incremental ones'.
fn chain_paths(file: &std::path::Path, incremental: &[PathBuf]) -> Vec<PathBuf> {
    std::iter::once(file.to_path_buf())
        .chain(incremental.iter().cloned())
        .collect()
}

fn inspect(args: InspectArgs) -> Result<()> {
    let limits = args.limits.limits()?;
    let chain = chain_paths(&args.file, &args.links);
    let file = chain.last().unwrap_or(&args.file);
    let s = tabi::Inspection::of(&tabi::read_chain(&chain, &limits)?);
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let hex = tabi_snapshot::hex;
    println!(
        "snapshot {} (format version {})",
        shown(&file.display().to_string()),
        s.version
    );
    println!("  content hash   {}", hex(&s.hash));
    println!("  original       sha256 {}", hex(&s.original_sha256));
    println!("  instrumented   sha256 {}", hex(&s.module_sha256));
    println!("  options        {}", shown(&s.options));
    if let Some(p) = s.parent {
        println!("  parent         {}", hex(&p));
    }
    println!(
        "  entry          {}, after migration point {}",
        shown(&s.entry),
        s.points
    );
    println!("sections:");
    let (mut stored, mut raw) = (0u64, 0u64);
    for (name, st, r) in &s.sections {
        println!("  {name:<9} {st:>12} bytes stored {r:>12} bytes raw");
        stored += st;
        raw += r;
    }
    println!(
        "total: {size} bytes on disk; {raw} bytes of contents ({:.2}x); memories {} bytes in all",
        raw as f64 / stored.max(1) as f64,
        s.memory_bytes
    );
    if !s.tables.is_empty() {
        println!("tables:");
        for (i, t) in s.tables.iter().enumerate() {
            match t {
                None => println!("  {i:>3} as instantiated"),
                Some((entries, nulls)) => {
                    println!("  {i:>3} {entries} entries as written, {nulls} of them null")
                }
            }
        }
    }
    println!("descriptors:");
    for (fd, d) in &s.descriptors {
        println!("  {fd:>3} {d}");
    }
    if !s.host_mounts.is_empty() {
        println!("host mounts (grant again with --dir HOST::GUEST when resuming):");
        for m in &s.host_mounts {
            println!("  {}", shown(m));
        }
    }
    Ok(())
}

/// `text`, a name from a snapshot, as `tabi inspect` prints it: control characters and the
/// others that do not print (which could move the cursor, clear the terminal or hide what
/// follows) escaped as Rust writes them (`\u{1b}`), and backslashes doubled so that the
/// escapes read back unambiguously; quotes are left as they are.
fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\'' => out.push(c),
            c => out.extend(c.escape_debug()),
        }
    }
    out
}

fn migrate_test(args: MigrateTestArgs) -> Result<bool> {
    let wasm = tabi::read_module(&args.module)?;
    let backends: Vec<tabi::Backend> = args.backends.iter().map(|&b| b.into()).collect();
    let mut engines = tabi::Engines::of(
        backends
            .iter()
            .chain([&tabi::Backend::preferred()])
            .map(|&b| engine(b))
            .collect::<Result<Vec<_>>>()?,
    );
    let mut builder = args
        .guest
        .builder(
            &engines.get(tabi::Backend::preferred())?,
            wasm.clone(),
            &args.module,
            &args.args,
        )?
        .rewrite_cache(rewrite_cache());
    let stdin = std::io::stdin();
    if !std::io::IsTerminal::is_terminal(&stdin) {
        let (input, buf) = Stdio::buffer();
        std::io::Read::read_to_end(&mut stdin.lock(), &mut buf.lock().expect("a new buffer"))
            .context("cannot read standard input")?;
        builder = builder.stdin(input);
    }
    if let Some(export) = &args.invoke {
        builder = builder.invoke(export, tabi::invoke_values(&wasm, export, &args.args)?);
    }
    let report = tabi::migrate_test(&builder, args.every, &backends, &mut engines)?;
    let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    let every = match args.every {
        1 => "at every migration point".to_string(),
        n => format!("every {n} migration points"),
    };
    println!(
        "migrate-test: {} checkpoint{} ({every}, across {}), {} snapshot bytes",
        report.checkpoints,
        if report.checkpoints == 1 { "" } else { "s" },
        names.join(", "),
        report.snapshot_bytes
    );
    for d in &report.divergences {
        println!(
            "DIVERGED after the checkpoint at migration point {} ({} -> {}): {}",
            d.point,
            d.from.name(),
            d.to.name(),
            d.what
        );
    }
    if report.divergences.is_empty() {
        println!(
            "ok: output, exit status{} and files match the uninterrupted run",
            if args.invoke.is_some() {
                ", results"
            } else {
                ""
            }
        );
    }
    Ok(report.divergences.is_empty())
}

fn status(r: Result<Ended>) -> ExitCode {
    match r {
        Ok(Ended::Exit(exit, results)) => {
            for v in &results {
                println!("{}", tabi::show_value(v));
            }
            match &exit {
                Exit::Trap(reason) => eprintln!("tabi: guest trapped: {}", escaped(reason)),
                Exit::Signal(sig) => eprintln!("tabi: guest terminated by signal {sig}"),
                Exit::Code(_) => {}
            }
            // Statuses above 255 wrap as the host's own exit() would.
            ExitCode::from(exit.process_code() as u8)
        }
        Ok(Ended::Checkpointed) => ExitCode::from(CHECKPOINT_EXIT),
        Err(e) => {
            eprintln!("tabi: error: {}", escaped(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

/// `text` with control characters other than line breaks escaped: an error may quote what a
/// snapshot says (a guest path, a name), which must not reach the terminal as escape sequences.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let fail = |e: anyhow::Error| {
        eprintln!("tabi: error: {}", escaped(&format!("{e:#}")));
        ExitCode::from(1)
    };
    match cli.command {
        Command::Run(args) => status(run(args)),
        Command::Resume(args) => status(resume(args)),
        Command::Instrument(args) => match instrument(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Inspect(args) => match inspect(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::MigrateTest(args) => match migrate_test(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(2),
            Err(e) => fail(e),
        },
    }
}
