//! Checkpoint and resume: the pieces `tabi run --checkpoint-…`, `tabi resume` and the harness
//! share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use tabi_libos::host::{StdHost, Stdio};
use tabi_libos::machine::{
    self, AfterPause, Driven, Machine, MachineState, Outcome, PauseControl, PauseView, Points,
    Start, Value,
};
use tabi_libos::{Kernel, MountKind, Object, Process};
use tabi_snapshot::{HostMount, Snapshot};

/// The exit status of `tabi run` after it wrote a checkpoint and stopped the guest
/// (`EX_TEMPFAIL`: the run is not over, resume it).
pub const CHECKPOINT_EXIT: u8 = 75;

/// A Wasm engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// wasmtime (Cranelift).
    Wasmtime,
    /// wasmi (interpreter).
    Wasmi,
}

impl Backend {
    /// Both, wasmtime first.
    pub const ALL: [Backend; 2] = [Backend::Wasmtime, Backend::Wasmi];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Wasmtime => "wasmtime",
            Backend::Wasmi => "wasmi",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wasmtime" => Ok(Backend::Wasmtime),
            "wasmi" => Ok(Backend::Wasmi),
            _ => bail!("unknown backend `{s}` (wasmtime or wasmi)"),
        }
    }
}

/// How a guest's process is set up: what `tabi run`'s options describe.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// The guest's arguments, its program name first.
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Host directories granted, as (host, guest path); writes land on the host.
    pub dirs: Vec<(PathBuf, String)>,
    /// Host directories copied into the in-memory file system, as (host, guest path).
    pub copy_dirs: Vec<(PathBuf, String)>,
    /// Empty in-memory directories, by guest path.
    pub memory_dirs: Vec<String>,
    /// Virtual clocks and seeded randomness, with this seed.
    pub deterministic: Option<u64>,
    /// Standard input (the process's own by default).
    pub stdin: Stdio,
    /// The flag that cuts a guest's sleep short when a checkpoint is asked for (see
    /// `StdHost::wake`).
    pub wake: Option<Arc<AtomicBool>>,
}

/// What a resumed process gets from its new host: standard streams, and the flag that cuts a
/// guest's sleep short when a checkpoint is asked for.
#[derive(Clone, Debug, Default)]
pub struct HostIo {
    /// Standard input.
    pub stdin: Stdio,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
    /// See `StdHost::wake`.
    pub wake: Option<Arc<AtomicBool>>,
}

impl HostIo {
    /// Output and error to `stdout` and `stderr`, nothing to read, no wake flag.
    pub fn output(stdout: Stdio, stderr: Stdio) -> Self {
        HostIo {
            stdin: Stdio::Null,
            stdout,
            stderr,
            wake: None,
        }
    }
}

impl Setup {
    /// A fresh process for a first run, with the given standard streams.
    pub fn process(&self, stdout: Stdio, stderr: Stdio) -> Result<Process> {
        let mut kernel = Kernel::new();
        let mut host = StdHost::new();
        host.stdin = self.stdin.clone();
        host.wake = self.wake.clone();
        host.stdout = stdout;
        host.stderr = stderr;
        kernel.set_args(self.args.clone());
        kernel.set_env(self.env.clone());
        if let Some(seed) = self.deterministic {
            kernel.set_deterministic(seed);
        }
        // The kernel's clock: a deterministic run stamps its directories with virtual time.
        let now = kernel.wall_clock_now(&mut host);
        for (h, g) in &self.dirs {
            let index = host
                .fs
                .grant(h)
                .with_context(|| format!("--dir: cannot open host directory `{}`", h.display()))?;
            kernel
                .mount_host(g, index)
                .map_err(|e| anyhow!("--dir {}::{g}: {e}", h.display()))?;
        }
        for (h, g) in &self.copy_dirs {
            let root = tabi_vfs::import_host_dir(kernel.fs_mut(), h, now).with_context(|| {
                format!("--copy-dir: cannot copy host directory `{}`", h.display())
            })?;
            kernel
                .mount_memory_root(g, root)
                .map_err(|e| anyhow!("--copy-dir {}::{g}: {e}", h.display()))?;
        }
        for g in &self.memory_dirs {
            kernel
                .mount_memory(g, now)
                .map_err(|e| anyhow!("in-memory directory {g}: {e}"))?;
        }
        Ok(Process::new(kernel, host))
    }
}

/// Instrumentation options tabi uses for checkpointable runs.
pub fn options(safepoints: bool) -> tabi_instrument::Options {
    tabi_instrument::Options {
        safepoints,
        ..Default::default()
    }
}

/// The instrumented form of `original`, from the cache when it is there (see [`cache_dir`]).
/// A cached file is used only if its manifest names `original`'s hash and the same options;
/// the rewrite is deterministic, so a cache miss gives the same bytes.
///
/// The manifest is the file's own claim, so the cache is only as trustworthy as its
/// directory: whoever can write there chooses the code that runs with the guest's grants.
/// That is why it is never a directory shared with other users by default, and why, on
/// Unix, a cache directory that is a symbolic link, belongs to another user or that others
/// can write to is not used at all: tabi then runs without a cache, and says so once.
pub fn instrumented(original: &[u8], safepoints: bool) -> Result<Vec<u8>> {
    let opts = options(safepoints);
    let hash = tabi_snapshot::sha256(original);
    let dir = usable_cache_dir();
    let file = dir.as_ref().map(|dir| {
        dir.join(format!(
            "{}-v{}{}.wasm",
            tabi_snapshot::hex(&hash),
            tabi_instrument::FORMAT_VERSION,
            if safepoints { "-sp" } else { "" }
        ))
    });
    if let Some(file) = &file
        && let Ok(bytes) = std::fs::read(file)
        && let Ok(Some(m)) = tabi_instrument::Manifest::from_module(&bytes)
        && m.original_sha256 == hash
        && m.options == opts
    {
        return Ok(bytes);
    }
    let out = tabi_instrument::instrument(original, &opts)
        .context("cannot instrument the module for checkpointing")?;
    // A cache that cannot be written is not an error; write-then-rename keeps it whole.
    if let Some(file) = &file {
        let _ = replace_whole(file, &out.wasm);
    }
    Ok(out.wasm)
}

/// Writes `bytes` to a new file beside `path` and renames it over `path`.
fn replace_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (mut file, tmp) = crate::outfile::create_beside(path)?;
    let written = std::io::Write::write_all(&mut file, bytes).and_then(|()| {
        drop(file);
        std::fs::rename(&tmp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Where rewritten modules are cached: `$TABI_CACHE_DIR` when set, else `tabi` in the user's
/// cache directory (`$XDG_CACHE_HOME`, else `$HOME/.cache`), as wasmtime keeps its compiled
/// code. With none of these, or with `TABI_CACHE=off`, there is no cache. The temporary
/// directory is never used: others can create files there, and a planted file would be run
/// in place of the guest.
pub fn cache_dir() -> Option<PathBuf> {
    if std::env::var_os("TABI_CACHE").is_some_and(|v| v == "off") {
        return None;
    }
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("TABI_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| Path::new(&home).join(".cache")))?;
    // A relative path would depend on where tabi is started.
    base.is_absolute().then(|| base.join("tabi"))
}

/// [`cache_dir`], made if need be, when it is fit to hold code that runs (see
/// [`private_dir`]). One that is not fit is not used, and tabi says so on its standard error,
/// once a process; one that cannot be made is not used either, in silence.
fn usable_cache_dir() -> Option<PathBuf> {
    usable(cache_dir()?)
}

/// `dir` when [`private_dir`] takes it; see [`usable_cache_dir`].
fn usable(dir: PathBuf) -> Option<PathBuf> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    match private_dir(&dir) {
        Ok(()) => Some(dir),
        Err(CacheRefusal::Unusable) => None,
        Err(CacheRefusal::Untrusted(why)) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "tabi: warning: not using the cache directory `{}`, as {why}; running \
                     without a cache",
                    dir.display()
                );
            }
            None
        }
    }
}

/// Why a cache directory is not used.
#[derive(Debug)]
enum CacheRefusal {
    /// It cannot be made or looked at.
    Unusable,
    /// It could hold files that someone other than the user put there: this says why.
    Untrusted(String),
}

/// Creates `dir` (and its parents) if need be, on Unix readable by its owner only; then checks
/// that it is fit to hold code that runs with a guest's grants (see [`owned_by_me_alone`]).
fn private_dir(dir: &Path) -> Result<(), CacheRefusal> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|_| CacheRefusal::Unusable)?;
    owned_by_me_alone(dir)
}

/// Whether `dir` is a directory itself (not a symbolic link to one, which whoever can change
/// the link chooses), owned by the user tabi runs as, and that no one else can write to.
#[cfg(unix)]
fn owned_by_me_alone(dir: &Path) -> Result<(), CacheRefusal> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|_| CacheRefusal::Unusable)?;
    let me = rustix::process::geteuid().as_raw();
    let why = if meta.file_type().is_symlink() {
        "it is a symbolic link".to_string()
    } else if !meta.is_dir() {
        "it is not a directory".to_string()
    } else if meta.uid() != me {
        format!(
            "it belongs to user {}, not to the user tabi runs as ({me})",
            meta.uid()
        )
    } else if meta.mode() & 0o022 != 0 {
        format!("others can write to it (mode {:o})", meta.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(CacheRefusal::Untrusted(why))
}

/// Elsewhere there are no owners and modes to check.
#[cfg(not(unix))]
fn owned_by_me_alone(_: &Path) -> Result<(), CacheRefusal> {
    Ok(())
}

/// The module in file `path`: a binary module as it is, or one in the WebAssembly text format
/// (`.wat`) translated to binary, as `wasmtime run` accepts both. A file that is neither is an
/// error of one line: text names where it stops parsing, other bytes that they lack the
/// binary format's header.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read module `{}`", path.display()))?;
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    if std::str::from_utf8(&bytes).is_err() {
        bail!(
            "invalid module: `{}` is neither a WebAssembly binary (it lacks the `\\0asm` header) \
             nor WebAssembly text",
            path.display()
        );
    }
    wat::Parser::new()
        .parse_bytes(Some(path), &bytes)
        .map(|wasm| wasm.into_owned())
        .map_err(|e| {
            // The parser's message spans lines (the place, then the line of text): keep the
            // message and the place.
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim);
            let message = lines.next().unwrap_or_default();
            let place = lines
                .next()
                .and_then(|l| l.strip_prefix("--> "))
                .unwrap_or_default();
            anyhow!("invalid module: cannot read WebAssembly text: {message} (at {place})")
        })
}

/// Runs `f` on a thread with a stack large enough for the engines' deepest guests.
pub fn on_guest_stack<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn_scoped(s, f)
            .context("cannot start a guest thread")?
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the guest thread panicked")))
    })
}

/// Runs instrumented `wasm` on `backend` until it finishes or pauses.
pub fn run(
    backend: Backend,
    wasm: &[u8],
    process: Process,
    control: PauseControl,
    resume: Option<&MachineState>,
) -> Result<Outcome> {
    on_guest_stack(|| {
        Ok(match backend {
            #[cfg(feature = "wasmtime")]
            Backend::Wasmtime => {
                let (e, m) = compiled_wasmtime(wasm)?;
                e.run_pausable(&m, process, control, Points::all(), resume)?
            }
            #[cfg(not(feature = "wasmtime"))]
            Backend::Wasmtime => bail!(WITHOUT_WASMTIME),
            Backend::Wasmi => {
                let (e, m) = compiled_wasmi(wasm)?;
                e.run_pausable(&m, process, control, Points::all(), resume)?
            }
        })
    })
}

/// What a run does at each pause: shown the paused instance in place, it continues or stops
/// the run (see [`tabi_libos::machine::drive_with`]).
pub type OnPause<'a> =
    dyn FnMut(&PauseView<'_>) -> Result<AfterPause, tabi_libos::EngineError> + Send + 'a;

/// [`run`], showing each pause to `on_pause` with the memories in place, so that a checkpoint
/// is written from the live instance and the guest can go on in it.
pub fn run_with(
    backend: Backend,
    wasm: &[u8],
    process: Process,
    control: PauseControl,
    resume: Option<&MachineState>,
    on_pause: &mut OnPause<'_>,
) -> Result<Outcome> {
    on_guest_stack(|| {
        let start = match resume {
            Some(state) => Start::Resume(state),
            None => Start::Fresh,
        };
        // A run that ends while its instance is made (a segment that does not fit) ends as
        // it would in `_start`.
        match AnySession::begin(backend, wasm, process, control)? {
            Ok(session) => session.run_with(start, on_pause),
            Err(finished) => Ok(Outcome::Finished(finished)),
        }
    })
}

/// A call of a library module's export (`tabi run --invoke`).
#[derive(Clone, Copy, Debug)]
pub struct Invoke<'a> {
    /// The function export.
    pub export: &'a str,
    /// Its arguments.
    pub args: &'a [Value],
}

/// Runs instrumented `wasm` on `backend` as a library module: the module's start function and
/// its `_initialize` (when it exports one) run first, to their end, and then `invoke`'s export
/// is called. Pauses are taken inside that export only: `control` applies from its call
/// (its migration points are counted from there), and a pause the guest asks for earlier is
/// not taken. A pause's state names the export, so a resume finishes the call, and a run that
/// returns ends with the export's results ([`tabi_libos::Finished::results`]).
pub fn invoke_with(
    backend: Backend,
    wasm: &[u8],
    process: Process,
    control: PauseControl,
    invoke: Invoke<'_>,
    on_pause: &mut OnPause<'_>,
) -> Result<Outcome> {
    on_guest_stack(|| {
        // `machine::invoke` puts `control` in place when it calls the export.
        Ok(
            match AnySession::begin(backend, wasm, process, PauseControl::never())? {
                Ok(mut session) => {
                    let (export, args) = (invoke.export, invoke.args);
                    let driven =
                        machine::invoke(session.machine(), control, export, args, on_pause)?;
                    session.finish(driven)
                }
                Err(finished) => Outcome::Finished(finished),
            },
        )
    })
}

/// The arguments `texts` for function export `export` of `wasm`, read by its parameter types
/// with [`parse_value`]; an error names the export and the argument that does not fit.
pub fn invoke_values(wasm: &[u8], export: &str, texts: &[String]) -> Result<Vec<Value>> {
    let params =
        export_params(wasm, export).with_context(|| format!("cannot invoke `{export}`"))?;
    if params.len() != texts.len() {
        bail!(
            "export `{export}` takes {} argument{} ({}), not {}",
            params.len(),
            if params.len() == 1 { "" } else { "s" },
            params.join(", "),
            texts.len()
        );
    }
    params
        .iter()
        .zip(texts)
        .enumerate()
        .map(|(i, (ty, text))| {
            parse_value(ty, text).with_context(|| format!("argument {} of `{export}`", i + 1))
        })
        .collect()
}

/// The parameter types of function export `name` of `wasm`, by their text-format names
/// (`i32`, `i64`, `f32`, `f64`, `v128`, or a reference type).
pub fn export_params(wasm: &[u8], name: &str) -> Result<Vec<String>> {
    use wasmparser::{Payload, TypeRef};
    let mut types = Vec::new();
    let mut funcs = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.context("cannot read the module")? {
            Payload::TypeSection(r) => {
                for group in r {
                    for sub in group
                        .context("cannot read the module's types")?
                        .into_types()
                    {
                        types.push(match &sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => Some(f.params().to_vec()),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    if let TypeRef::Func(t) = import.context("cannot read the imports")?.ty {
                        funcs.push(t);
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    funcs.push(t.context("cannot read the functions")?);
                }
            }
            Payload::ExportSection(r) => {
                for export in r {
                    let export = export.context("cannot read the exports")?;
                    if export.name != name {
                        continue;
                    }
                    if export.kind != wasmparser::ExternalKind::Func {
                        bail!("export `{name}` is not a function");
                    }
                    let params = funcs
                        .get(export.index as usize)
                        .and_then(|&t| types.get(t as usize)?.as_ref())
                        .ok_or_else(|| anyhow!("export `{name}` names no function"))?;
                    return Ok(params.iter().map(|t| t.to_string()).collect());
                }
                bail!("the module exports no function `{name}`");
            }
            _ => {}
        }
    }
    bail!("the module exports no function `{name}`")
}

/// `text` as a value of the type named `ty` (see [`export_params`]): an integer in decimal
/// (negative, or up to the type's unsigned range) or `0x` hexadecimal, a float as Rust
/// reads one (`inf`, `NaN` too), a `v128` as one integer.
pub fn parse_value(ty: &str, text: &str) -> Result<Value> {
    fn int(text: &str) -> Option<i128> {
        match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u128::from_str_radix(hex, 16)
                .ok()
                .and_then(|v| i128::try_from(v).ok()),
            None => text.parse().ok(),
        }
    }
    let fits = |min: i128, max: i128| int(text).filter(|v| (min..=max).contains(v));
    let value = match ty {
        "i32" => fits(i32::MIN.into(), u32::MAX.into()).map(|v| Value::I32(v as u32 as i32)),
        "i64" => fits(i64::MIN.into(), u64::MAX.into()).map(|v| Value::I64(v as u64 as i64)),
        "f32" => text.parse::<f32>().ok().map(|v| Value::F32(v.to_bits())),
        "f64" => text.parse::<f64>().ok().map(|v| Value::F64(v.to_bits())),
        "v128" => match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u128::from_str_radix(hex, 16).ok(),
            None => text.parse::<u128>().ok(),
        }
        .map(Value::V128),
        other => bail!("a parameter of type {other} cannot be given on the command line"),
    };
    value.ok_or_else(|| anyhow!("`{text}` is not an {ty}"))
}

/// A result value as `tabi run --invoke` prints it: integers in signed decimal, floats as
/// Rust writes them, a `v128` in hexadecimal, and `ref` for a reference.
pub fn show_value(v: &Value) -> String {
    match *v {
        Value::I32(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(b) => f32::from_bits(b).to_string(),
        Value::F64(b) => f64::from_bits(b).to_string(),
        Value::V128(x) => format!("0x{x:032x}"),
        Value::Ref => "ref".into(),
    }
}

type Cache<M> = Mutex<HashMap<[u8; 32], M>>;

/// `wasm` compiled once per process: from `cache`, or by `compile`.
fn cached<M: Clone>(
    cache: &OnceLock<Cache<M>>,
    wasm: &[u8],
    compile: impl FnOnce() -> Result<M, tabi_libos::EngineError>,
) -> Result<M> {
    let key = tabi_snapshot::sha256(wasm);
    let mut cache = cache
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(m) = cache.get(&key) {
        return Ok(m.clone());
    }
    let m = compile()?;
    cache.insert(key, m.clone());
    Ok(m)
}

/// The backend `tabi run` and `tabi resume` use unless told: wasmtime, or wasmi in a build
/// without it.
pub const DEFAULT_BACKEND: &str = if cfg!(feature = "wasmtime") {
    "wasmtime"
} else {
    "wasmi"
};

/// The backends `tabi migrate-test` moves a guest between unless told.
pub const DEFAULT_BACKENDS: &str = if cfg!(feature = "wasmtime") {
    "wasmtime,wasmi"
} else {
    "wasmi"
};

/// The error a backend choice of wasmtime gives in a build without it.
#[cfg(not(feature = "wasmtime"))]
pub const WITHOUT_WASMTIME: &str =
    "this build of tabi has no wasmtime (the `wasmtime` feature is off); use `--backend wasmi`";

/// The process's wasmtime engine. Its compiled code is kept in `compiled` under
/// [`cache_dir`] (created readable by its owner only), so that a module, and above all its
/// rewrite with safepoints, compiles once rather than at each start; without a cache
/// directory, or when it cannot be made, nothing is kept.
#[cfg(feature = "wasmtime")]
pub fn wasmtime() -> &'static tabi_wasmtime::Wasmtime {
    static ENGINE: OnceLock<tabi_wasmtime::Wasmtime> = OnceLock::new();
    ENGINE.get_or_init(|| {
        usable_cache_dir()
            .and_then(|dir| usable(dir.join("compiled")))
            .and_then(|dir| tabi_wasmtime::Wasmtime::with_cache(&dir).ok())
            .unwrap_or_default()
    })
}

/// The process's engine of `backend`, for a run of a module as it is.
pub fn engine(backend: Backend) -> Result<&'static dyn tabi_libos::Engine> {
    Ok(match backend {
        #[cfg(feature = "wasmtime")]
        Backend::Wasmtime => wasmtime(),
        #[cfg(not(feature = "wasmtime"))]
        Backend::Wasmtime => bail!(WITHOUT_WASMTIME),
        Backend::Wasmi => wasmi(),
    })
}

/// The process's wasmi engine.
pub fn wasmi() -> &'static tabi_wasmi::Wasmi {
    static ENGINE: OnceLock<tabi_wasmi::Wasmi> = OnceLock::new();
    ENGINE.get_or_init(tabi_wasmi::Wasmi::new)
}

/// The process's wasmtime engine and its compiled module for `wasm`.
#[cfg(feature = "wasmtime")]
fn compiled_wasmtime(wasm: &[u8]) -> Result<(&'static tabi_wasmtime::Wasmtime, wasmtime::Module)> {
    static MODULES: OnceLock<Cache<wasmtime::Module>> = OnceLock::new();
    let e = wasmtime();
    Ok((e, cached(&MODULES, wasm, || e.compile(wasm))?))
}

/// The process's wasmi engine and its compiled module for `wasm`.
fn compiled_wasmi(wasm: &[u8]) -> Result<(&'static tabi_wasmi::Wasmi, wasmi::Module)> {
    static MODULES: OnceLock<Cache<wasmi::Module>> = OnceLock::new();
    let e = wasmi();
    Ok((e, cached(&MODULES, wasm, || e.compile(wasm))?))
}

/// A digest of a host directory's tree: each entry's path, type, size and modification time,
/// in name order, depth first. Symbolic links are not followed.
///
/// The tree is walked through directory handles ([`tabi_vfs::walk_host_dir`]), so a tree
/// deeper than a path can name, which a guest can make in its own directory, is
/// fingerprinted, up to [`tabi_vfs::MAX_HOST_DEPTH`] levels; deeper is an error that says so.
pub fn fingerprint(dir: &Path) -> Result<[u8; 32]> {
    use sha2::Digest;
    /// Hashes each entry; a directory's state is its path from the top, as `/a/b`.
    struct Hashing(sha2::Sha256);
    impl tabi_vfs::HostVisitor for Hashing {
        type Dir = String;
        fn entry(
            &mut self,
            rel: &mut String,
            _: &cap_std::fs::Dir,
            name: &std::ffi::OsStr,
            meta: &cap_std::fs::Metadata,
        ) -> std::io::Result<Option<String>> {
            let h = &mut self.0;
            let name = format!("{rel}/{}", name.to_string_lossy());
            let kind = if meta.is_dir() {
                b'd'
            } else if meta.file_type().is_symlink() {
                b'l'
            } else {
                b'f'
            };
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.into_std().duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update([kind]);
            h.update(meta.len().to_le_bytes());
            h.update(mtime.to_le_bytes());
            Ok(meta.is_dir().then_some(name))
        }
        fn leave(&mut self, _: String) -> std::io::Result<()> {
            Ok(())
        }
    }
    let read = || {
        let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())?;
        let mut hashing = Hashing(sha2::Sha256::new());
        tabi_vfs::walk_host_dir(&root, String::new(), &mut hashing)?;
        Ok::<_, std::io::Error>(hashing.0.finalize().into())
    };
    read().with_context(|| format!("cannot read host directory `{}`", dir.display()))
}

/// Writes a snapshot of the pause `view` to `path` (through a temporary file and a rename, so that a
/// failed write never leaves half a snapshot under that name). `dirs` are the host directories
/// granted to the run, by guest path, to fingerprint.
pub fn write_snapshot(
    path: &Path,
    paused: &PauseView<'_>,
    original: &[u8],
    instrumented: &[u8],
    dirs: &[(PathBuf, String)],
) -> Result<tabi_snapshot::Summary> {
    write_file(path, |sink| {
        write_to(sink, paused, original, instrumented, dirs)
    })
}

/// Where a snapshot file is written.
type FileSink = tabi_snapshot::IoSink<crate::outfile::Output>;

/// Writes a snapshot file through `write`, by way of a temporary file and a rename.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut FileSink) -> Result<tabi_snapshot::Summary>,
) -> Result<tabi_snapshot::Summary> {
    let (out, tmp) = crate::outfile::Output::create_beside(path)
        .with_context(|| format!("cannot create a temporary file beside `{}`", path.display()))?;
    let mut sink = tabi_snapshot::IoSink(out);
    let written = write(&mut sink).and_then(|summary| {
        sink.0
            .finish()
            .with_context(|| format!("cannot write `{}`", tmp.display()))?;
        Ok(summary)
    });
    let summary = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // A file the snapshot replaces is held open across the rename, so that freeing its blocks
    // (milliseconds for tens of MiB, more on a disk mounted with `discard`) happens when the
    // handle is dropped, on a thread of its own, and not inside the rename.
    let replaced = std::fs::File::open(path).ok();
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write `{}`", path.display()));
    }
    // The directory is synced before the replaced file is released, so that its sync does
    // not wait for the freeing too.
    let synced = sync_parent(path)
        .with_context(|| format!("cannot sync the directory of `{}`", path.display()));
    if let Some(old) = replaced {
        // Without a thread, the handle is simply dropped here.
        let _ = std::thread::Builder::new()
            .name("tabi-release".into())
            .spawn(move || drop(old));
    }
    synced?;
    Ok(summary)
}

/// Syncs the directory holding `path`, so that a rename into it survives a crash. Where a
/// directory cannot be opened or synced (some platforms and file systems), there is nothing
/// more to do than the file's own sync.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::File::open(dir) {
        Ok(d) => match d.sync_all() {
            // Some file systems do not sync directories, and say so.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            r => r,
        },
        Err(_) => Ok(()),
    }
}

/// The successive checkpoints of one run, each after the first written incrementally: it
/// holds only the pages written since the one before and names that one as its parent.
///
/// Which pages were written comes from the host's dirty-page tracking of the instance's
/// memories (see [`tabi_libos::written`]), started at the first checkpoint; nothing is
/// compared and no copy of the memories is kept. Where the host cannot track, or the
/// tracking lost sight of a memory (wasmi moves a memory that grows), or a write failed,
/// the next checkpoint is a full one and a new chain starts there.
#[derive(Debug, Default)]
pub struct Chain {
    last: Option<Link>,
}

/// The last checkpoint of a chain.
#[derive(Debug)]
struct Link {
    hash: [u8; 32],
    kernel: Vec<u8>,
    /// Per memory: its tracker, and its length at the checkpoint.
    memories: Vec<(tabi_libos::written::Tracker, usize)>,
}

/// A checkpoint a [`Chain`] wrote.
#[derive(Clone, Debug)]
pub struct ChainWritten {
    /// What was written.
    pub summary: tabi_snapshot::Summary,
    /// For an incremental checkpoint, the content hash of its parent (the checkpoint before).
    pub parent: Option<[u8; 32]>,
}

impl Chain {
    /// A chain with no checkpoint yet: the first is full.
    pub fn new() -> Chain {
        Chain::default()
    }

    /// Writes the checkpoint of `paused` to `sink`: incremental against the chain's last
    /// checkpoint when it can be, else full. The paused instance must be the one the chain's
    /// earlier checkpoints were taken from, continued in place.
    pub fn write_to<S: tabi_snapshot::Sink>(
        &mut self,
        sink: &mut S,
        paused: &PauseView<'_>,
        original: &[u8],
        instrumented: &[u8],
        dirs: &[(PathBuf, String)],
    ) -> Result<ChainWritten>
    where
        S::Error: std::fmt::Display,
    {
        let kernel = tabi_libos::encode_state(&paused.process.kernel)
            .map_err(|e| anyhow!("cannot encode the kernel state: {e}"))?;
        // Taken out: if anything below fails, the next checkpoint is a full one.
        let mut last = self
            .last
            .take()
            .filter(|l| l.memories.len() == paused.memories.len());
        // Incremental when every memory's tracker answers.
        let written: Option<Vec<tabi_libos::resident::Touched>> = last.as_mut().and_then(|l| {
            l.memories
                .iter_mut()
                .zip(paused.memories)
                .map(|((tracker, _), mem)| tracker.take(mem))
                .collect()
        });
        let (parent, trackers) = match (last, written) {
            (Some(link), Some(written)) => {
                let (trackers, lens): (Vec<_>, Vec<_>) = link.memories.into_iter().unzip();
                (Some((link.hash, link.kernel, lens, written)), trackers)
            }
            // A full checkpoint; tracking starts (again) from it. Any old tracker was
            // dropped, which unregistered its memory.
            _ => (
                None,
                paused
                    .memories
                    .iter()
                    .map_while(|m| tabi_libos::written::Tracker::start(m))
                    .collect(),
            ),
        };
        let base = parent
            .as_ref()
            .map(|(hash, kernel, lens, written)| tabi_snapshot::Base {
                hash: *hash,
                memories: lens
                    .iter()
                    .zip(written)
                    .map(|(&len, blocks)| tabi_snapshot::Prior::Written { len, blocks })
                    .collect(),
                kernel,
            });
        let summary = write_with_base(
            sink,
            paused,
            &kernel,
            original,
            instrumented,
            dirs,
            base.as_ref(),
        )?;
        if trackers.len() == paused.memories.len() {
            self.last = Some(Link {
                hash: summary.hash,
                kernel,
                memories: trackers
                    .into_iter()
                    .zip(paused.memories.iter().map(|m| m.len()))
                    .collect(),
            });
        }
        Ok(ChainWritten {
            summary,
            parent: parent.map(|(hash, ..)| hash),
        })
    }

    /// [`Chain::write_to`] a file, through a temporary file and a rename.
    pub fn write(
        &mut self,
        path: &Path,
        paused: &PauseView<'_>,
        original: &[u8],
        instrumented: &[u8],
        dirs: &[(PathBuf, String)],
    ) -> Result<ChainWritten> {
        let mut out = None;
        let written = write_file(path, |sink| {
            let w = self.write_to(sink, paused, original, instrumented, dirs)?;
            let summary = w.summary.clone();
            out = Some(w);
            Ok(summary)
        });
        if written.is_err() {
            // The file is not there to be a parent.
            self.last = None;
        }
        written?;
        out.ok_or_else(|| anyhow!("no checkpoint was written"))
    }
}

/// Writes a snapshot of the pause `paused` to `sink`. A [`Paused`] run gives its view with
/// `paused.view(&paused.memories())`.
pub fn write_to<S: tabi_snapshot::Sink>(
    sink: &mut S,
    paused: &PauseView<'_>,
    original: &[u8],
    instrumented: &[u8],
    dirs: &[(PathBuf, String)],
) -> Result<tabi_snapshot::Summary>
where
    S::Error: std::fmt::Display,
{
    let kernel = tabi_libos::encode_state(&paused.process.kernel)
        .map_err(|e| anyhow!("cannot encode the kernel state: {e}"))?;
    write_with_base(sink, paused, &kernel, original, instrumented, dirs, None)
}

/// Writes a snapshot of `paused`, whose kernel state encodes to `kernel`, incremental when
/// there is a `base`.
fn write_with_base<S: tabi_snapshot::Sink>(
    sink: &mut S,
    paused: &PauseView<'_>,
    kernel: &[u8],
    original: &[u8],
    instrumented: &[u8],
    dirs: &[(PathBuf, String)],
    base: Option<&tabi_snapshot::Base<'_>>,
) -> Result<tabi_snapshot::Summary>
where
    S::Error: std::fmt::Display,
{
    let manifest = tabi_instrument::Manifest::from_module(instrumented)
        .ok()
        .flatten()
        .ok_or_else(|| anyhow!("the module that ran is not instrumented"))?;
    let mut mounts = Vec::new();
    for m in paused.process.kernel.mounts() {
        if let MountKind::Host { index } = m.kind {
            let (host, _) = dirs
                .iter()
                .find(|(_, g)| *g == m.guest_path)
                .ok_or_else(|| anyhow!("no host directory known for mount {}", m.guest_path))?;
            open_host_paths_exist(&paused.process.kernel, index, host, &m.guest_path)?;
            mounts.push(HostMount {
                guest_path: m.guest_path.clone(),
                fingerprint: fingerprint(host)?,
            });
        }
    }
    let state = paused.state;
    let contents = tabi_snapshot::Contents {
        identity: tabi_snapshot::Identity {
            original_sha256: manifest.original_sha256,
            module_sha256: tabi_snapshot::sha256(instrumented),
            options: format!(
                "tabi-instrument format {}, safepoints {}",
                manifest.version,
                if manifest.options.safepoints {
                    "on"
                } else {
                    "off"
                }
            )
            .into_bytes(),
            parent: None,
        },
        module: Some(original),
        entry: &state.entry,
        budget: state.budget,
        points: paused.points,
        globals: &state.globals,
        tables: &state.tables,
        memories: paused.memories.to_vec(),
        stack: &state.stack,
        kernel,
        mounts: &mounts,
    };
    tabi_snapshot::write_within(sink, &contents, base, &snapshot_limits())
        .map_err(|e| anyhow!("{e}"))
}

/// Refuses a checkpoint that a resume could not reopen: every host file or directory the guest
/// has open on host mount `index` (the directory `host`) must still be found at the path the
/// kernel knows it by. The kernel follows the guest's own renames and keeps the files it
/// unlinks; this catches what was moved or removed from outside the guest while it was open.
///
/// The paths come from the kernel state, which a resumed snapshot supplied: each is looked up
/// inside `host` only (see [`metadata_within`]), so a forged one learns nothing of the host
/// outside it.
fn open_host_paths_exist(kernel: &Kernel, index: u32, host: &Path, guest_path: &str) -> Result<()> {
    let mut root = None;
    for (fd, d) in kernel.descriptors() {
        let (Object::HostFile { mount, path, .. } | Object::HostDir { mount, path, .. }) =
            &d.object
        else {
            continue;
        };
        if *mount != index {
            continue;
        }
        let root = match &mut root {
            Some(root) => root,
            None => root.insert(
                cap_std::fs::Dir::open_ambient_dir(host, cap_std::ambient_authority())
                    .with_context(|| format!("cannot open host directory `{}`", host.display()))?,
            ),
        };
        if let Err(e) = metadata_within(root, path) {
            bail!(
                "descriptor {fd} of the guest is `{guest_path}/{path}`, which was moved or removed outside the guest while open; a resume could not reopen it ({e})"
            );
        }
    }
    Ok(())
}

/// The metadata of what `path` names inside the host directory `root`, looked up through its
/// handle as the guest's own lookups are: `..` above it, an absolute path, or a symbolic link
/// that leads out of it is an error, whatever is there on the host.
fn metadata_within(root: &cap_std::fs::Dir, path: &str) -> std::io::Result<cap_std::fs::Metadata> {
    match path {
        "" | "." => root.dir_metadata(),
        path => root.metadata(path),
    }
}

/// Reads a chain of snapshot files: a full snapshot, then incremental ones, each against the
/// one before (as a [`Chain`] wrote them). Gives the state of the last, whole.
pub fn read_chain(paths: &[PathBuf]) -> Result<Snapshot> {
    let (first, rest) = paths
        .split_first()
        .ok_or_else(|| anyhow!("no snapshot file given"))?;
    let mut snapshot = read_snapshot(first).map_err(chain_hint)?;
    for path in rest {
        snapshot = read_file(path, Some(&snapshot))?;
    }
    Ok(snapshot)
}

/// Adds to an error about an incremental snapshot read alone how to give its chain.
fn chain_hint(e: anyhow::Error) -> anyhow::Error {
    let incremental = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<tabi_snapshot::Error>(),
            Some(tabi_snapshot::Error::Parent { .. })
        )
    });
    if incremental {
        e.context(
            "give the chain in order, starting with the full snapshot it grew from \
             (FILE FILE.1 FILE.2 ...)",
        )
    } else {
        e
    }
}

/// The limits of the snapshots this process reads and writes (see
/// [`set_snapshot_limits`]).
static SNAPSHOT_LIMITS: OnceLock<tabi_snapshot::Limits> = OnceLock::new();

/// Sets, once, the limits every snapshot this process reads or writes is held to (the
/// command line's `--max-memory`, `--max-fs`, `--key-file`); later calls change nothing.
/// Without it the defaults hold.
pub fn set_snapshot_limits(limits: tabi_snapshot::Limits) {
    let _ = SNAPSHOT_LIMITS.set(limits);
}

/// The limits snapshots are read and written under.
pub fn snapshot_limits() -> tabi_snapshot::Limits {
    SNAPSHOT_LIMITS.get().copied().unwrap_or_default()
}

/// Reads and checks a snapshot file.
pub fn read_snapshot(path: &Path) -> Result<Snapshot> {
    read_file(path, None)
}

/// Reads and checks a snapshot file, against `base` when it is incremental.
fn read_file(path: &Path, base: Option<&Snapshot>) -> Result<Snapshot> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut src = tabi_snapshot::IoSource(std::io::BufReader::with_capacity(1 << 20, file));
    tabi_snapshot::read(&mut src, &snapshot_limits(), base)
        .with_context(|| format!("`{}` is not a valid snapshot", path.display()))
}

/// The module a snapshot resumes with: the original it carries (or `module`, checked against
/// its hash), instrumented again with the same options and checked against the instrumented
/// hash. Returns (original, instrumented).
pub fn modules_for(snapshot: &Snapshot, module: Option<&Path>) -> Result<(Vec<u8>, Vec<u8>)> {
    modules_for_head(
        &tabi_snapshot::Head {
            identity: &snapshot.identity,
            module: snapshot.module.as_deref(),
        },
        module,
    )
}

/// [`modules_for`], from the part of a snapshot before its memories.
fn modules_for_head(
    head: &tabi_snapshot::Head<'_>,
    module: Option<&Path>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let original = match (module, head.module) {
        (Some(p), _) => read_module(p)?,
        (None, Some(m)) => m.to_vec(),
        (None, None) => bail!("the snapshot does not carry its module; pass it with --module"),
    };
    if tabi_snapshot::sha256(&original) != head.identity.original_sha256 {
        bail!("the module is not the one the snapshot was taken from (SHA-256 differs)");
    }
    let safepoints = String::from_utf8_lossy(&head.identity.options).contains("safepoints on");
    let wasm = instrumented(&original, safepoints)?;
    head.identity
        .check_module(Some(&original), &wasm)
        .context("cannot resume")?;
    Ok((original, wasm))
}

/// A snapshot resumed: what it held but its memories, the modules, and how the run ended.
pub struct Resumed {
    /// The snapshot (its memories were read straight into the instance, so they are empty).
    pub snapshot: Snapshot,
    /// The original module.
    pub original: Vec<u8>,
    /// The instrumented module that runs.
    pub instrumented: Vec<u8>,
    /// How the resumed run ended.
    pub outcome: Outcome,
}

/// Resumes the full snapshot in `src` on `backend` and runs it under `control` (see
/// [`load`] and [`Loaded::run`]).
pub fn resume_from<S: tabi_snapshot::Source>(
    backend: Backend,
    src: &mut S,
    module: Option<&Path>,
    dirs: &[(PathBuf, String)],
    io: HostIo,
    control: PauseControl,
) -> Result<Resumed> {
    let loaded = load(backend, src, module, dirs, io, control)?;
    let (original, instrumented) = (loaded.original.clone(), loaded.instrumented.clone());
    let (snapshot, outcome) = loaded.run(None)?;
    Ok(Resumed {
        snapshot,
        original,
        instrumented,
        outcome,
    })
}

/// A snapshot loaded into a fresh instance, ready to run.
pub struct Loaded {
    /// The snapshot (its memories were read straight into the instance, so they are empty).
    pub snapshot: Snapshot,
    /// The original module.
    pub original: Vec<u8>,
    /// The instrumented module that runs.
    pub instrumented: Vec<u8>,
    session: AnySession,
    state: MachineState,
    memories: usize,
}

/// Loads the full snapshot in `src` for `backend`: instantiates its module as soon as the
/// snapshot names it, decodes the memories straight into the instance (no page is copied
/// twice), and grants `dirs` again (see [`resume_process`]). `module` is the original module
/// when the snapshot does not carry it. The run will pause as `control` says.
pub fn load<S: tabi_snapshot::Source>(
    backend: Backend,
    src: &mut S,
    module: Option<&Path>,
    dirs: &[(PathBuf, String)],
    io: HostIo,
    control: PauseControl,
) -> Result<Loaded> {
    let mut loader = Loader {
        backend,
        module,
        control: Some(control),
        session: None,
        modules: None,
        memories: 0,
        failure: None,
    };
    let read = tabi_snapshot::read_into(src, &snapshot_limits(), &mut loader);
    if let Some(e) = loader.failure.take() {
        return Err(e);
    }
    let mut snapshot = read.context("not a valid snapshot").map_err(chain_hint)?;
    if loader.session.is_none() {
        // A guest without memories: nothing called for the instance yet.
        let head = tabi_snapshot::Head {
            identity: &snapshot.identity,
            module: snapshot.module.as_deref(),
        };
        loader.session = Some(loader.instantiate(&head)?);
    }
    let (Some(mut session), Some((original, instrumented))) = (loader.session, loader.modules)
    else {
        bail!("no instance was made for the snapshot");
    };
    *session.process_mut() = resume_process(&snapshot, dirs, io)?;
    let state = snapshot.take_machine_state();
    Ok(Loaded {
        snapshot,
        original,
        instrumented,
        session,
        state,
        memories: loader.memories,
    })
}

impl Loaded {
    /// Runs the loaded guest on from its pause; with `on_pause`, each later pause is shown to
    /// it in place (see [`run_with`]). Gives back the snapshot and how the run ended.
    pub fn run(self, on_pause: Option<&mut OnPause<'_>>) -> Result<(Snapshot, Outcome)> {
        let Loaded {
            snapshot,
            session,
            state,
            memories,
            ..
        } = self;
        let outcome = on_guest_stack(|| {
            let start = Start::Loaded {
                state: &state,
                memories,
            };
            match on_pause {
                Some(f) => session.run_with(start, f),
                None => session.run(start),
            }
        })?;
        Ok((snapshot, outcome))
    }
}

/// A live instance of either engine.
enum AnySession {
    #[cfg(feature = "wasmtime")]
    Wasmtime(tabi_wasmtime::Session),
    Wasmi(Box<tabi_wasmi::Session>),
}

impl AnySession {
    /// A session of instrumented `wasm` on `backend`; `Ok(Err(finished))` when the guest's
    /// run ended while its instance was made.
    fn begin(
        backend: Backend,
        wasm: &[u8],
        process: Process,
        control: PauseControl,
    ) -> Result<Result<AnySession, tabi_libos::Finished>> {
        Ok(match backend {
            #[cfg(feature = "wasmtime")]
            Backend::Wasmtime => {
                let (e, m) = compiled_wasmtime(wasm)?;
                e.begin(&m, process, control, Points::all())?
                    .map(AnySession::Wasmtime)
            }
            #[cfg(not(feature = "wasmtime"))]
            Backend::Wasmtime => bail!(WITHOUT_WASMTIME),
            Backend::Wasmi => {
                let (e, m) = compiled_wasmi(wasm)?;
                e.begin(&m, process, control, Points::all())?
                    .map(|s| AnySession::Wasmi(Box::new(s)))
            }
        })
    }

    /// The outcome of the session, which ended with `driven`.
    fn finish(self, driven: Driven) -> Outcome {
        let (points, process) = match self {
            #[cfg(feature = "wasmtime")]
            AnySession::Wasmtime(s) => (s.points(), s.into_process()),
            AnySession::Wasmi(s) => (s.points(), s.into_process()),
        };
        Outcome::of(driven, points, process)
    }

    fn machine(&mut self) -> &mut dyn Machine {
        match self {
            #[cfg(feature = "wasmtime")]
            AnySession::Wasmtime(s) => s,
            AnySession::Wasmi(s) => &mut **s,
        }
    }

    fn process_mut(&mut self) -> &mut Process {
        match self {
            #[cfg(feature = "wasmtime")]
            AnySession::Wasmtime(s) => s.process_mut(),
            AnySession::Wasmi(s) => s.process_mut(),
        }
    }

    fn run(self, start: Start<'_>) -> Result<Outcome> {
        Ok(match self {
            #[cfg(feature = "wasmtime")]
            AnySession::Wasmtime(s) => s.run(start)?,
            AnySession::Wasmi(s) => s.run(start)?,
        })
    }

    fn run_with(self, start: Start<'_>, on_pause: &mut OnPause<'_>) -> Result<Outcome> {
        Ok(match self {
            #[cfg(feature = "wasmtime")]
            AnySession::Wasmtime(s) => s.run_with(start, on_pause)?,
            AnySession::Wasmi(s) => s.run_with(start, on_pause)?,
        })
    }
}

/// The reader's [`tabi_snapshot::MemoryTarget`]: instantiates the module when the first
/// memory comes, then hands out the instance's memories.
struct Loader<'a> {
    backend: Backend,
    module: Option<&'a Path>,
    control: Option<PauseControl>,
    session: Option<AnySession>,
    modules: Option<(Vec<u8>, Vec<u8>)>,
    memories: usize,
    /// Why the target failed, beyond what the snapshot error can say.
    failure: Option<anyhow::Error>,
}

impl Loader<'_> {
    fn instantiate(&mut self, head: &tabi_snapshot::Head<'_>) -> Result<AnySession> {
        let (original, wasm) = modules_for_head(head, self.module)?;
        // The process is a placeholder until the kernel state, which comes after the
        // memories, has been read and its mounts granted again.
        let process = Process::new(Kernel::new(), StdHost::new());
        let control = self.control.take().unwrap_or_else(PauseControl::never);
        let begun = AnySession::begin(self.backend, &wasm, process, control)?;
        let session = machine::session_or_error(begun)?;
        self.modules = Some((original, wasm));
        Ok(session)
    }
}

impl tabi_snapshot::MemoryTarget for Loader<'_> {
    fn memory(
        &mut self,
        head: &tabi_snapshot::Head<'_>,
        index: u32,
        pages: u32,
    ) -> Result<&mut [u8], tabi_snapshot::Error> {
        if self.session.is_none() {
            match self.instantiate(head) {
                Ok(s) => self.session = Some(s),
                Err(e) => {
                    let what = format!("{e:#}");
                    self.failure = Some(e);
                    return Err(tabi_snapshot::Error::ModuleMismatch { what });
                }
            }
        }
        self.memories += 1;
        let name = machine::memory_export(index);
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| tabi_snapshot::Error::Io("no instance".into()))?;
        session
            .machine()
            .memory_mut(&name, pages as usize * tabi_snapshot::PAGE)
            .map_err(|e| tabi_snapshot::Error::Malformed {
                what: format!("memory {index} of {pages} pages does not fit the module: {e}"),
            })
    }
}

/// The process a snapshot resumes in: its kernel state, a new host with the given standard
/// streams (input, output, error), and `dirs` granted again. Every host mount the guest had
/// must be granted under the same guest path, and its directory must be unchanged since the
/// checkpoint.
pub fn resume_process(
    snapshot: &Snapshot,
    dirs: &[(PathBuf, String)],
    io: HostIo,
) -> Result<Process> {
    let kernel = snapshot.kernel.clone();
    let mut host = StdHost::new();
    host.stdin = io.stdin;
    host.wake = io.wake;
    host.stdout = io.stdout;
    host.stderr = io.stderr;
    let mut wanted: Vec<(u32, String)> = kernel
        .mounts()
        .iter()
        .filter_map(|m| match m.kind {
            MountKind::Host { index } => Some((index, m.guest_path.clone())),
            MountKind::Memory { .. } => None,
        })
        .collect();
    wanted.sort();
    for (index, guest) in &wanted {
        let (h, _) = dirs.iter().find(|(_, g)| g == guest).ok_or_else(|| {
            anyhow!(
                "the guest had host directory {guest} mounted; grant it again with --dir HOST::{guest}"
            )
        })?;
        if let Some(m) = snapshot.mounts.iter().find(|m| &m.guest_path == guest)
            && fingerprint(h)? != m.fingerprint
        {
            bail!(
                "host directory `{}` (mounted at {guest}) changed since the checkpoint; resuming would corrupt it",
                h.display()
            );
        }
        let got = host
            .fs
            .grant(h)
            .with_context(|| format!("--dir: cannot open host directory `{}`", h.display()))?;
        if got != *index {
            bail!("host mounts must be granted in the order the guest had them");
        }
    }
    for (h, g) in dirs {
        if !wanted.iter().any(|(_, w)| w == g) {
            bail!(
                "--dir {}::{g}: the guest had no host directory at {g}",
                h.display()
            );
        }
    }
    Ok(Process::new(kernel, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integers are read over the signed and the unsigned range of their type, in decimal or
    /// hexadecimal, and no further; floats and vectors as documented; results print back.
    #[test]
    fn invoke_arguments_are_read_by_type_and_results_shown() {
        let ok = |ty: &str, text: &str| parse_value(ty, text).unwrap();
        assert_eq!(ok("i32", "-1"), Value::I32(-1));
        assert_eq!(ok("i32", "0xffffffff"), Value::I32(-1));
        assert_eq!(ok("i32", "2147483648"), Value::I32(i32::MIN));
        assert_eq!(ok("i64", "18446744073709551615"), Value::I64(-1));
        assert_eq!(ok("i64", "-9223372036854775808"), Value::I64(i64::MIN));
        assert_eq!(ok("f32", "1.5"), Value::F32(1.5f32.to_bits()));
        assert_eq!(ok("f64", "-inf"), Value::F64(f64::NEG_INFINITY.to_bits()));
        assert_eq!(ok("v128", "0x10"), Value::V128(16));
        for (ty, text) in [
            ("i32", "4294967296"),
            ("i32", "-2147483649"),
            ("i64", "18446744073709551616"),
            ("i32", "1.0"),
            ("f64", "one"),
            ("v128", "-1"),
            ("funcref", "0"),
        ] {
            assert!(parse_value(ty, text).is_err(), "{ty} {text}");
        }
        assert_eq!(show_value(&Value::I32(-7)), "-7");
        assert_eq!(show_value(&Value::F64(0.25f64.to_bits())), "0.25");
        assert_eq!(
            show_value(&Value::V128(255)),
            format!("0x{}ff", "0".repeat(30))
        );
        let nan = show_value(&ok("f32", "NaN"));
        assert_eq!(nan, "NaN");
    }

    /// A writer for [`write_file`] that writes `bytes`, in pieces of an odd size.
    fn writing(bytes: &[u8]) -> impl FnOnce(&mut FileSink) -> Result<tabi_snapshot::Summary> {
        let bytes = bytes.to_vec();
        move |sink: &mut FileSink| {
            for piece in bytes.chunks(100_003) {
                std::io::Write::write_all(&mut sink.0, piece)?;
            }
            Ok(tabi_snapshot::Summary::default())
        }
    }

    /// A checkpoint is refused, naming the file, when a host file the guest has open was
    /// removed from outside it; one the guest unlinked itself is kept by the kernel and passes.
    #[test]
    fn open_host_files_removed_from_outside_refuse_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = StdHost::new();
        host.fs.grant(dir.path()).unwrap();
        let mut k = Kernel::new();
        let root = k.mount_host("/data", 0).unwrap();
        let opts = tabi_libos::OpenOptions {
            create: true,
            rights: tabi_libos::abi::rights::FILE,
            ..Default::default()
        };
        let mine = k.open_at(root, "mine.txt", opts, &mut host).unwrap();
        k.write(mine, b"mine", None, &mut host).unwrap();
        k.unlink_file_at(root, "mine.txt", &mut host).unwrap();
        let theirs = k.open_at(root, "theirs.txt", opts, &mut host).unwrap();
        open_host_paths_exist(&k, 0, dir.path(), "/data").unwrap();
        std::fs::remove_file(dir.path().join("theirs.txt")).unwrap();
        let e = open_host_paths_exist(&k, 0, dir.path(), "/data").unwrap_err();
        let e = e.to_string();
        assert!(e.contains(&format!("descriptor {theirs}")), "{e}");
        assert!(e.contains("/data/theirs.txt"), "{e}");
        assert!(e.contains("outside the guest"), "{e}");
    }

    /// The host paths of a snapshot's kernel state are looked up inside their host directory
    /// only. A forged state whose descriptor names `../secret`, an absolute path, or a link
    /// in the directory that leads out of it, learns nothing of the file outside, which
    /// exists: each is refused as not found.
    #[cfg(unix)]
    #[test]
    fn forged_host_paths_are_not_looked_up_outside_their_directory() {
        let root = tempfile::tempdir().unwrap();
        let granted = root.path().join("granted");
        std::fs::create_dir(&granted).unwrap();
        let secret = root.path().join("secret");
        std::fs::write(&secret, b"outside").unwrap();
        std::os::unix::fs::symlink(&secret, granted.join("out")).unwrap();
        let absolute = secret.to_str().unwrap().to_string();
        for forged in ["../secret", absolute.as_str(), "out"] {
            // A descriptor on a file of the directory named as long as the forged path, then
            // renamed in the encoded state.
            let placeholder = "p".repeat(forged.len());
            std::fs::write(granted.join(&placeholder), b"inside").unwrap();
            let mut host = StdHost::new();
            host.fs.grant(&granted).unwrap();
            let mut k = Kernel::new();
            let dir = k.mount_host("/data", 0).unwrap();
            let opts = tabi_libos::OpenOptions {
                rights: tabi_libos::abi::rights::FILE,
                ..Default::default()
            };
            let fd = k.open_at(dir, &placeholder, opts, &mut host).unwrap();
            open_host_paths_exist(&k, 0, &granted, "/data").unwrap();
            let mut state = tabi_libos::encode_state(&k).unwrap();
            let at = state
                .windows(placeholder.len())
                .position(|w| w == placeholder.as_bytes())
                .unwrap();
            state[at..at + forged.len()].copy_from_slice(forged.as_bytes());
            let k = tabi_libos::decode_state(&state).unwrap();
            let e = open_host_paths_exist(&k, 0, &granted, "/data").unwrap_err();
            let e = e.to_string();
            assert!(e.contains(&format!("descriptor {fd}")), "{forged}: {e}");
            assert!(e.contains(&format!("/data/{forged}")), "{forged}: {e}");
        }
    }

    /// A snapshot that replaces a file takes its name whole: a reader holding the old file
    /// still reads the old bytes (it was not written over), the name gives the new bytes, and
    /// no temporary file is left beside it.
    #[test]
    fn a_replaced_file_is_swapped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_file(&path, writing(b"first")).unwrap();
        let mut held = std::fs::File::open(&path).unwrap();
        // Past the page cache after its first 4 MiB (on Linux), with a last block to pad and
        // cut back, written in pieces of another size.
        let big: Vec<u8> = (0..(9 << 20) + 12345u32).map(|i| (i % 251) as u8).collect();
        write_file(&path, writing(&big)).unwrap();
        let mut old = Vec::new();
        std::io::Read::read_to_end(&mut held, &mut old).unwrap();
        assert_eq!(old, b"first");
        assert_eq!(std::fs::read(&path).unwrap(), big);
        // Replaced again while nothing holds it: the released file goes on a thread.
        write_file(&path, writing(b"third")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s.snap"]);
    }

    /// On tmpfs (`/dev/shm`), which takes `O_DIRECT` only on recent kernels, a large snapshot
    /// reads back the same whichever way it was written.
    #[test]
    fn a_file_system_without_direct_io_gets_the_file_whole() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let path = dir.path().join("s.snap");
        let big: Vec<u8> = (0..(6 << 20) + 7u32).map(|i| (i % 253) as u8).collect();
        write_file(&path, writing(&big)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), big);
    }

    /// A failed write leaves neither a temporary file nor a change under the name.
    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_file(&path, writing(b"kept")).unwrap();
        let e = write_file(&path, |sink| {
            std::io::Write::write_all(&mut sink.0, b"half")?;
            Err(anyhow!("the encoder stopped"))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A directory that is not there is an error, not a panic.
        let missing = dir.path().join("no/such/dir/s.snap");
        assert!(write_file(&missing, writing(b"x")).is_err());
    }
}
