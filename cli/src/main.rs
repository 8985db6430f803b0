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

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tabi_cli::checkpoint::{self, CHECKPOINT_EXIT, Setup};
use tabi_libos::Exit;
use tabi_libos::host::Stdio;
use tabi_libos::machine::{AfterPause, Outcome, PauseControl, Value};

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
    #[arg(long, value_enum, default_value = checkpoint::DEFAULT_BACKEND)]
    backend: Backend,
    /// Grant a host directory the guest had mounted, as HOST::GUEST.
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    dirs: Vec<String>,
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
    #[arg(long, value_delimiter = ',', default_value = checkpoint::DEFAULT_BACKENDS)]
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
    /// Authenticate snapshots with a key derived from this file's contents: those written
    /// carry a MAC, and one read without a valid MAC is refused.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

impl LimitArgs {
    /// Makes these the limits of every snapshot this process reads or writes.
    fn apply(&self) -> Result<()> {
        let mut limits = tabi_snapshot::Limits::default();
        if let Some(bytes) = self.max_memory {
            limits = limits.with_memory_bytes(bytes);
        }
        if let Some(bytes) = self.max_fs {
            limits.state.fs_bytes = bytes;
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
        checkpoint::set_snapshot_limits(limits);
        Ok(())
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
    let wasm = checkpoint::read_module(&args.input)?;
    let mut options = tabi_instrument::Options {
        safepoints: args.safepoints,
        ..Default::default()
    };
    if args.no_default_points {
        options.points.clear();
    }
    for p in &args.points {
        let (module, name) = match p.split_once("::") {
            Some((m, n)) => (m.to_string(), Some(n.to_string())),
            None => (p.clone(), None),
        };
        options
            .points
            .push(tabi_instrument::PointRule { module, name });
    }
    let out = tabi_instrument::instrument(&wasm, &options)
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

impl From<Backend> for checkpoint::Backend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Wasmtime => checkpoint::Backend::Wasmtime,
            Backend::Wasmi => checkpoint::Backend::Wasmi,
        }
    }
}

#[derive(Parser)]
struct RunArgs {
    /// The engine to run on.
    #[arg(long, value_enum, default_value = checkpoint::DEFAULT_BACKEND)]
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
    fn setup(&self, module: &std::path::Path, args: &[String]) -> Result<Setup> {
        let mut argv = vec![module.display().to_string()];
        argv.extend(args.iter().cloned());
        let mut env: Vec<(String, String)> = Vec::new();
        if self.inherit_env {
            env.extend(std::env::vars());
        }
        for e in &self.envs {
            match e.split_once('=') {
                Some((k, v)) => env.push((k.to_string(), v.to_string())),
                None => match std::env::var(e) {
                    Ok(v) => env.push((e.clone(), v)),
                    Err(_) => bail!("--env {e}: no such variable in the host environment"),
                },
            }
        }
        Ok(Setup {
            args: argv,
            env,
            dirs: self
                .dirs
                .iter()
                .map(|d| split_mapping(d))
                .map(|(h, g)| (h.into(), g))
                .collect(),
            copy_dirs: self
                .copy_dirs
                .iter()
                .map(|d| split_mapping(d))
                .map(|(h, g)| (h.into(), g))
                .collect(),
            memory_dirs: self.mem_dirs.clone(),
            deterministic: self.deterministic.then_some(self.seed),
            stdin: Stdio::Inherit,
            wake: None,
        })
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

fn run(args: RunArgs) -> Result<Ended> {
    args.checkpoint.limits.apply()?;
    signal_flag(&args.checkpoint)?;
    let wasm = checkpoint::read_module(&args.module)?;
    let mut setup = args.guest.setup(&args.module, &args.args)?;
    setup.wake = host_io(&args.checkpoint)?.wake;
    let mut process = setup.process(Stdio::Inherit, Stdio::Inherit)?;
    if args.checkpoint.limits.max_fs.is_some() {
        let limit = checkpoint::snapshot_limits().state.fs_bytes;
        if process.kernel.fs().used_bytes() > limit {
            bail!(
                "the in-memory files take {} bytes, over --max-fs {limit}",
                process.kernel.fs().used_bytes()
            );
        }
        process.kernel.fs_mut().set_limit_bytes(limit);
    }
    if let Some(export) = &args.invoke {
        return invoke(&args, export, &wasm, &setup.dirs, process);
    }
    if !args.checkpoint.wanted() {
        let finished = checkpoint::engine(args.backend.into())?
            .run(&wasm, process)
            .with_context(|| format!("cannot run `{}`", args.module.display()))?;
        return Ok(Ended::Exit(finished.exit, Vec::new()));
    }
    let instrumented = checkpoint::instrumented(&wasm, args.checkpoint.safepoints)?;
    drive(
        args.backend.into(),
        &args.checkpoint,
        &wasm,
        &instrumented,
        &setup.dirs,
        process,
    )
}

/// `tabi run --invoke`: calls `export` with `args.args` read as its parameters' types. Without
/// checkpoints that is a call of the module as it is; with them, of its rewrite, writing
/// snapshots as `args.checkpoint` asks.
fn invoke(
    args: &RunArgs,
    export: &str,
    wasm: &[u8],
    dirs: &[(PathBuf, String)],
    process: tabi_libos::Process,
) -> Result<Ended> {
    let values = checkpoint::invoke_values(wasm, export, &args.args)?;
    if !args.checkpoint.wanted() {
        let finished = checkpoint::on_guest_stack(|| {
            Ok(checkpoint::engine(args.backend.into())?.invoke(wasm, process, export, &values)?)
        })
        .with_context(|| format!("cannot run `{}`", args.module.display()))?;
        return Ok(Ended::Exit(finished.exit, finished.results));
    }
    let instrumented = checkpoint::instrumented(wasm, args.checkpoint.safepoints)?;
    let mut checkpointer = Checkpointer::new(&args.checkpoint, wasm, &instrumented, dirs);
    let outcome = checkpoint::invoke_with(
        args.backend.into(),
        &instrumented,
        process,
        control(&args.checkpoint)?,
        checkpoint::Invoke {
            export,
            args: &values,
        },
        &mut |view| checkpointer.at_pause(view),
    );
    ended(outcome, checkpointer.failure)
}

/// The flag SIGUSR1 raises, when checkpoints on signal are asked for. Installed once per
/// process, as early as possible: before it is, SIGUSR1 would end the process.
fn signal_flag(cp: &CheckpointArgs) -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    let flag = FLAG.get_or_init(Default::default).clone();
    if cp.checkpoint_on_signal {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        let mut result = Ok(());
        INSTALLED.call_once(|| {
            result = signal_hook::flag::register(signal_hook::consts::SIGUSR1, flag.clone())
                .map(|_| ())
                .context("cannot install the SIGUSR1 handler");
        });
        result?;
    }
    Ok(flag)
}

/// Runs (or resumes) an instrumented guest, writing snapshots as `cp` asks.
fn drive(
    backend: checkpoint::Backend,
    cp: &CheckpointArgs,
    original: &[u8],
    instrumented: &[u8],
    dirs: &[(PathBuf, String)],
    process: tabi_libos::Process,
) -> Result<Ended> {
    let mut checkpointer = Checkpointer::new(cp, original, instrumented, dirs);
    let outcome = checkpoint::run_with(
        backend,
        instrumented,
        process,
        control(cp)?,
        None,
        &mut |view| checkpointer.at_pause(view),
    );
    ended(outcome, checkpointer.failure)
}

/// How a run that wrote its checkpoints with a [`Checkpointer`] ended.
fn ended(outcome: Result<Outcome>, failure: Option<anyhow::Error>) -> Result<Ended> {
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(match outcome? {
        Outcome::Finished(f) => Ended::Exit(f.exit, f.results),
        Outcome::Paused(_) => Ended::Checkpointed,
    })
}

/// Writes a snapshot at each pause, straight from the paused instance, then lets the guest go
/// on in it or stops the run.
struct Checkpointer<'a> {
    path: Option<PathBuf>,
    stop_after_checkpoint: bool,
    /// With `--incremental`: the chain, and how many checkpoints it wrote.
    chain: Option<(checkpoint::Chain, u64)>,
    original: &'a [u8],
    instrumented: &'a [u8],
    dirs: &'a [(PathBuf, String)],
    /// Why the run had to stop at a pause (a pause with nowhere to write it).
    failure: Option<anyhow::Error>,
}

impl<'a> Checkpointer<'a> {
    fn new(
        cp: &CheckpointArgs,
        original: &'a [u8],
        instrumented: &'a [u8],
        dirs: &'a [(PathBuf, String)],
    ) -> Self {
        Checkpointer {
            path: cp.snapshot.clone(),
            stop_after_checkpoint: cp.stop_after_checkpoint,
            chain: cp.incremental.then(|| (checkpoint::Chain::new(), 0)),
            original,
            instrumented,
            dirs,
            failure: None,
        }
    }

    fn at_pause(
        &mut self,
        view: &tabi_libos::machine::PauseView<'_>,
    ) -> Result<AfterPause, tabi_libos::EngineError> {
        let Some(path) = &self.path else {
            if view.reason == tabi_libos::machine::PauseReason::Guest {
                // A checkpoint the guest asks for when none is to be written: as in a run
                // that is not instrumented, the request does nothing.
                return Ok(AfterPause::Continue);
            }
            self.failure = Some(anyhow!(
                "the guest paused, but no --snapshot file was given"
            ));
            return Ok(AfterPause::Stop);
        };
        let written = match &mut self.chain {
            None => {
                checkpoint::write_snapshot(path, view, self.original, self.instrumented, self.dirs)
                    .map(|summary| (path.clone(), summary, None))
            }
            Some((chain, n)) => {
                // The first checkpoint goes to FILE; each later one to FILE.N, incremental
                // when the chain can make it so (else full, and the chain starts again).
                let target = match *n {
                    0 => path.clone(),
                    n => {
                        let mut name = path.as_os_str().to_owned();
                        name.push(format!(".{n}"));
                        PathBuf::from(name)
                    }
                };
                chain
                    .write(&target, view, self.original, self.instrumented, self.dirs)
                    .map(|w| {
                        *n += 1;
                        (target, w.summary, w.parent)
                    })
            }
        };
        match written {
            Ok((target, summary, parent)) => eprintln!(
                "tabi: {} at migration point {} ({:?}) written to {} ({} bytes{})",
                if parent.is_some() {
                    "incremental checkpoint"
                } else {
                    "checkpoint"
                },
                view.points,
                view.reason,
                target.display(),
                summary.bytes,
                match parent {
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
                     goes on: {e:#}",
                    view.points
                );
                return Ok(AfterPause::Continue);
            }
        }
        let stop = match view.reason {
            tabi_libos::machine::PauseReason::AfterPoints => true,
            _ => self.stop_after_checkpoint,
        };
        Ok(if stop {
            AfterPause::Stop
        } else {
            AfterPause::Continue
        })
    }
}

/// The process's own streams, and the signal flag as the wake flag when checkpoints on signal
/// are asked for (a sleeping guest then reaches its migration point at once).
fn host_io(cp: &CheckpointArgs) -> Result<checkpoint::HostIo> {
    let flag = signal_flag(cp)?;
    Ok(checkpoint::HostIo {
        stdin: Stdio::Inherit,
        stdout: Stdio::Inherit,
        stderr: Stdio::Inherit,
        wake: cp.checkpoint_on_signal.then_some(flag),
    })
}

/// The pause policy of a run.
fn control(cp: &CheckpointArgs) -> Result<PauseControl> {
    let flag = signal_flag(cp)?;
    let mut control = PauseControl::never();
    if let Some(n) = cp.checkpoint_after {
        control = PauseControl::after(n);
    }
    if cp.checkpoint_on_signal {
        control.request = Some(flag);
    }
    Ok(control)
}

fn resume(args: ResumeArgs) -> Result<Ended> {
    args.checkpoint.limits.apply()?;
    signal_flag(&args.checkpoint)?;
    let dirs: Vec<(PathBuf, String)> = args
        .dirs
        .iter()
        .map(|d| split_mapping(d))
        .map(|(h, g)| (h.into(), g))
        .collect();
    if !args.links.is_empty() {
        return resume_chain(&args, &dirs);
    }
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open `{}`", args.file.display()))?;
    let mut src = tabi_snapshot::IoSource(std::io::BufReader::with_capacity(1 << 20, file));
    let loaded = checkpoint::load(
        args.backend.into(),
        &mut src,
        args.module.as_deref(),
        &dirs,
        host_io(&args.checkpoint)?,
        control(&args.checkpoint)?,
    )
    .with_context(|| format!("cannot resume `{}`", args.file.display()))?;
    let (original, instrumented) = (loaded.original.clone(), loaded.instrumented.clone());
    let mut checkpointer = Checkpointer::new(&args.checkpoint, &original, &instrumented, &dirs);
    let outcome = loaded
        .run(Some(&mut |view| checkpointer.at_pause(view)))
        .map(|(_, o)| o);
    ended(outcome, checkpointer.failure)
}

/// Resumes from a full snapshot and the incremental ones after it.
fn resume_chain(args: &ResumeArgs, dirs: &[(PathBuf, String)]) -> Result<Ended> {
    let chain = chain_paths(&args.file, &args.links);
    let last = chain.last().unwrap_or(&args.file);
    let mut snapshot = checkpoint::read_chain(&chain)?;
    let (original, instrumented) = checkpoint::modules_for(&snapshot, args.module.as_deref())
        .with_context(|| format!("cannot resume `{}`", last.display()))?;
    let process = checkpoint::resume_process(&snapshot, dirs, host_io(&args.checkpoint)?)
        .with_context(|| format!("cannot resume `{}`", last.display()))?;
    let state = snapshot.take_machine_state();
    let mut checkpointer = Checkpointer::new(&args.checkpoint, &original, &instrumented, dirs);
    let outcome = checkpoint::run_with(
        args.backend.into(),
        &instrumented,
        process,
        control(&args.checkpoint)?,
        Some(&state),
        &mut |view| checkpointer.at_pause(view),
    );
    ended(outcome, checkpointer.failure)
}

/// A full snapshot's path followed by its incremental ones'.
fn chain_paths(file: &std::path::Path, incremental: &[PathBuf]) -> Vec<PathBuf> {
    std::iter::once(file.to_path_buf())
        .chain(incremental.iter().cloned())
        .collect()
}

fn inspect(args: InspectArgs) -> Result<()> {
    args.limits.apply()?;
    let chain = chain_paths(&args.file, &args.links);
    let file = chain.last().unwrap_or(&args.file);
    let s = checkpoint::read_chain(&chain)?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    println!(
        "snapshot {} (format version {})",
        shown(&file.display().to_string()),
        s.version
    );
    println!("  content hash   {}", tabi_snapshot::hex(&s.hash));
    println!(
        "  original       sha256 {}",
        tabi_snapshot::hex(&s.identity.original_sha256)
    );
    println!(
        "  instrumented   sha256 {}",
        tabi_snapshot::hex(&s.identity.module_sha256)
    );
    println!(
        "  options        {}",
        shown(&String::from_utf8_lossy(&s.identity.options))
    );
    if let Some(p) = s.identity.parent {
        println!("  parent         {}", tabi_snapshot::hex(&p));
    }
    println!(
        "  entry          {}, after migration point {}",
        shown(&s.entry),
        s.points
    );
    println!("sections:");
    let (mut stored, mut raw) = (0u64, 0u64);
    for sec in &s.sections {
        println!(
            "  {:<9} {:>12} bytes stored {:>12} bytes raw",
            sec.id.name(),
            sec.stored,
            sec.raw
        );
        stored += sec.stored;
        raw += sec.raw;
    }
    let mem: u64 = s.memories.iter().map(|m| m.len() as u64).sum();
    println!(
        "total: {size} bytes on disk; {raw} bytes of contents ({:.2}x); memories {mem} bytes in all",
        raw as f64 / stored.max(1) as f64
    );
    if !s.tables.is_empty() {
        println!("tables:");
        for (i, t) in s.tables.iter().enumerate() {
            match t {
                tabi_libos::machine::TableImage::AsInstantiated => {
                    println!("  {i:>3} as instantiated")
                }
                tabi_libos::machine::TableImage::Funcs(e) => println!(
                    "  {i:>3} {} entries as written, {} of them null",
                    e.len(),
                    e.iter().filter(|f| f.is_none()).count()
                ),
            }
        }
    }
    println!("descriptors:");
    for (fd, d) in s.kernel.descriptors() {
        println!("  {fd:>3} {}", describe_object(&d.object));
    }
    if !s.mounts.is_empty() {
        println!("host mounts (grant again with --dir HOST::GUEST when resuming):");
        for m in &s.mounts {
            println!("  {}", shown(&m.guest_path));
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

/// A descriptor's object as `tabi inspect` prints it; its path is written as Rust debugs a
/// string, quoted and with control characters escaped.
fn describe_object(o: &tabi_libos::Object) -> String {
    use tabi_libos::Object;
    match o {
        Object::Stdin => "stdin".into(),
        Object::Stdout => "stdout".into(),
        Object::Stderr => "stderr".into(),
        Object::MemDir { ino } => format!("in-memory directory (inode {ino})"),
        Object::MemFile { ino, offset } => {
            format!("in-memory file (inode {ino}) at offset {offset}")
        }
        Object::HostDir { mount, path, .. } => format!("host directory {path:?} of mount {mount}"),
        Object::HostFile {
            mount,
            path,
            offset,
            ..
        } => {
            format!("host file {path:?} of mount {mount} at offset {offset}")
        }
    }
}

fn migrate_test(args: MigrateTestArgs) -> Result<bool> {
    let wasm = checkpoint::read_module(&args.module)?;
    let mut setup = args.guest.setup(&args.module, &args.args)?;
    let stdin = std::io::stdin();
    if !std::io::IsTerminal::is_terminal(&stdin) {
        let (input, buf) = Stdio::buffer();
        std::io::Read::read_to_end(&mut stdin.lock(), &mut buf.lock().expect("a new buffer"))
            .context("cannot read standard input")?;
        setup.stdin = input;
    }
    let backends: Vec<checkpoint::Backend> = args.backends.iter().map(|&b| b.into()).collect();
    let values = match &args.invoke {
        Some(export) => checkpoint::invoke_values(&wasm, export, &args.args)?,
        None => Vec::new(),
    };
    let invoke = args.invoke.as_deref().map(|export| checkpoint::Invoke {
        export,
        args: &values,
    });
    let report =
        tabi_cli::harness::migrate_test_with(&wasm, &setup, args.every, &backends, invoke)?;
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
                println!("{}", checkpoint::show_value(v));
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
