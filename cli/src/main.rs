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

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tabi_libos::host::StdHost;
use tabi_libos::{Engine, Exit, Kernel, Process};

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
    let wasm = std::fs::read(&args.input)
        .with_context(|| format!("cannot read module `{}`", args.input.display()))?;
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
    eprintln!(
        "tabi: instrumented {} functions ({} sites); {} -> {} bytes ({:+.1}%)",
        out.manifest.instrumented_functions,
        out.manifest.sites,
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

#[derive(Parser)]
struct RunArgs {
    /// The engine to run on.
    #[arg(long, value_enum, default_value = "wasmtime")]
    backend: Backend,
    /// Grant a host directory, as HOST::GUEST (or HOST, seen under the same path); writes land
    /// on the host.
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    dirs: Vec<String>,
    /// Copy a host directory into the in-memory file system, as HOST::GUEST.
    #[arg(long = "copy-dir", value_name = "HOST::GUEST")]
    copy_dirs: Vec<String>,
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
    /// The module to run.
    module: PathBuf,
    /// Arguments passed to the guest after its name.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn split_mapping(spec: &str) -> (String, String) {
    match spec.split_once("::") {
        Some((host, guest)) => (host.to_string(), guest.to_string()),
        None => (spec.to_string(), spec.to_string()),
    }
}

fn run(args: RunArgs) -> Result<Exit> {
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("cannot read module `{}`", args.module.display()))?;
    let mut kernel = Kernel::new();
    let mut host = StdHost::new();
    let mut argv = vec![args.module.display().to_string()];
    argv.extend(args.args.iter().cloned());
    kernel.set_args(argv);

    let mut env: Vec<(String, String)> = Vec::new();
    if args.inherit_env {
        env.extend(std::env::vars());
    }
    for e in &args.envs {
        match e.split_once('=') {
            Some((k, v)) => env.push((k.to_string(), v.to_string())),
            None => match std::env::var(e) {
                Ok(v) => env.push((e.clone(), v)),
                Err(_) => bail!("--env {e}: no such variable in the host environment"),
            },
        }
    }
    kernel.set_env(env);
    if args.deterministic {
        kernel.set_deterministic(args.seed);
    }
    let now = {
        use tabi_libos::Host;
        host.wall_clock_ns()
    };
    for spec in &args.dirs {
        let (h, g) = split_mapping(spec);
        let index = host
            .fs
            .grant(h.as_ref())
            .with_context(|| format!("--dir {spec}: cannot open host directory `{h}`"))?;
        kernel
            .mount_host(&g, index)
            .map_err(|e| anyhow::anyhow!("--dir {spec}: {e}"))?;
    }
    for spec in &args.copy_dirs {
        let (h, g) = split_mapping(spec);
        let root = tabi_vfs::import_host_dir(kernel.fs_mut(), h.as_ref(), now)
            .with_context(|| format!("--copy-dir {spec}: cannot copy host directory `{h}`"))?;
        kernel
            .mount_memory_root(&g, root)
            .map_err(|e| anyhow::anyhow!("--copy-dir {spec}: {e}"))?;
    }
    let process = Process::new(kernel, host);
    let engine: Box<dyn Engine> = match args.backend {
        Backend::Wasmtime => Box::new(tabi_wasmtime::Wasmtime::new()),
        Backend::Wasmi => Box::new(tabi_wasmi::Wasmi::new()),
    };
    let finished = engine
        .run(&wasm, process)
        .with_context(|| format!("cannot run `{}`", args.module.display()))?;
    Ok(finished.exit)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => match run(args) {
            Ok(exit) => {
                match &exit {
                    Exit::Trap(reason) => eprintln!("tabi: guest trapped: {reason}"),
                    Exit::Signal(sig) => eprintln!("tabi: guest terminated by signal {sig}"),
                    Exit::Code(_) => {}
                }
                // Statuses above 255 wrap as the host's own exit() would.
                ExitCode::from(exit.process_code() as u8)
            }
            Err(e) => {
                eprintln!("tabi: error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Instrument(args) => match instrument(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tabi: error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}
