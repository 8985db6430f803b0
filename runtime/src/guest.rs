//! A guest: set up with [`GuestBuilder`], run with [`Guest::run`] or [`Guest::run_with`],
//! paused through a [`PauseHandle`], checkpointed at each [`Pause`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tabi_libos::host::{Host, StdHost, Stdio};
use tabi_libos::machine::{
    self, AfterPause, Begun, MachineState, Outcome, PauseControl, PauseReason, PauseView, Start,
    Value,
};
use tabi_libos::{Exit, Kernel, Process};
use tabi_vfs::CapStdFs;

use crate::checkpoint::{self, Chain, ChainWritten, Origin};
use crate::error::{Error, Result};
use crate::module::{RewriteCache, RewriteOptions};
use crate::{Engine, Summary};

/// Makes the host a guest's process runs on: called once for its first run and once for each
/// resume (a host is never part of a snapshot).
pub type HostFactory = Arc<dyn Fn() -> Box<dyn Host + Send> + Send + Sync>;

/// A handle another thread (or a signal handler, through [`PauseHandle::flag`]) uses to ask
/// a running guest to pause at its next migration point (or safepoint). A guest asleep in
/// `poll_oneoff` wakes for it when it runs on tabi's own host.
///
/// ```
/// let handle = tabi::PauseHandle::new();
/// let for_timer = handle.clone();
/// std::thread::spawn(move || for_timer.request()).join().unwrap();
/// assert!(handle.is_requested());
/// ```
#[derive(Clone, Debug, Default)]
pub struct PauseHandle {
    flag: Arc<AtomicBool>,
}

impl PauseHandle {
    /// A handle nothing has asked through yet.
    pub fn new() -> PauseHandle {
        PauseHandle::default()
    }

    /// A handle over `flag`, which whoever holds it sets to ask for a pause (as
    /// `signal_hook::flag::register` does from a signal handler).
    pub fn from_flag(flag: Arc<AtomicBool>) -> PauseHandle {
        PauseHandle { flag }
    }

    /// Asks for a pause at the guest's next migration point.
    pub fn request(&self) {
        self.flag.store(true, Ordering::Release);
    }

    /// Whether a pause is asked for and not yet taken.
    pub fn is_requested(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// The flag itself.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}

/// The standard streams and the host of a guest's process: tabi's own host (the machine's
/// clocks, entropy and streams, or buffers) by default, or the caller's.
#[derive(Clone, Default)]
pub(crate) struct HostSpec {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    pub factory: Option<HostFactory>,
    /// Cuts tabi's host's sleeps short when a pause is asked for.
    pub wake: Option<Arc<AtomicBool>>,
    /// How wasi-nn is served.
    pub nn: crate::nn::NnSpec,
}

impl HostSpec {
    /// A new host with `dirs` granted (in order), and their mount indices.
    pub fn make(&self, dirs: &[(PathBuf, String)]) -> Result<(Box<dyn Host + Send>, Vec<u32>)> {
        let grant = |fs: &mut CapStdFs| -> Result<Vec<u32>> {
            dirs.iter()
                .map(|(h, _)| {
                    fs.grant(h).map_err(Error::io(format!(
                        "--dir: cannot open host directory `{}`",
                        h.display()
                    )))
                })
                .collect()
        };
        match &self.factory {
            None => {
                let mut host = StdHost::new();
                host.stdin = self.stdin.clone();
                host.stdout = self.stdout.clone();
                host.stderr = self.stderr.clone();
                host.wake = self.wake.clone();
                let indices = grant(&mut host.fs)?;
                Ok((Box::new(Served::new(Box::new(host), None, self)), indices))
            }
            // The caller's host answers for the directories when nothing is granted beside it.
            Some(factory) if dirs.is_empty() => {
                Ok((Box::new(Served::new(factory(), None, self)), Vec::new()))
            }
            Some(factory) => {
                let mut fs = CapStdFs::new();
                let indices = grant(&mut fs)?;
                Ok((Box::new(Served::new(factory(), Some(fs), self)), indices))
            }
        }
    }
}

/// A host with what tabi serves beside it: the directories it granted (when the host is the
/// caller's) and wasi-nn (unless the caller's host serves wasi-nn itself). The inner host
/// answers for everything else.
struct Served {
    inner: Box<dyn Host + Send>,
    fs: Option<CapStdFs>,
    /// `None` when the inner host serves wasi-nn.
    nn: Option<Box<dyn tabi_nn::Backend + Send>>,
}

impl Served {
    fn new(mut inner: Box<dyn Host + Send>, fs: Option<CapStdFs>, spec: &HostSpec) -> Served {
        let nn = inner.nn().is_none().then(|| spec.nn.backend());
        Served { inner, fs, nn }
    }
}

impl Host for Served {
    fn wall_clock_ns(&mut self) -> u64 {
        self.inner.wall_clock_ns()
    }
    fn monotonic_ns(&mut self) -> u64 {
        self.inner.monotonic_ns()
    }
    fn clock_resolution_ns(&self) -> u64 {
        self.inner.clock_resolution_ns()
    }
    fn random_bytes(&mut self, buf: &mut [u8]) -> Result<(), tabi_libos::Errno> {
        self.inner.random_bytes(buf)
    }
    fn stdin_read(&mut self, buf: &mut [u8]) -> Result<usize, tabi_libos::Errno> {
        self.inner.stdin_read(buf)
    }
    fn stdout_write(&mut self, buf: &[u8]) -> Result<(), tabi_libos::Errno> {
        self.inner.stdout_write(buf)
    }
    fn stderr_write(&mut self, buf: &[u8]) -> Result<(), tabi_libos::Errno> {
        self.inner.stderr_write(buf)
    }
    fn sleep_ns(&mut self, ns: u64) {
        self.inner.sleep_ns(ns)
    }
    fn sleep_unless_woken_ns(&mut self, ns: u64) -> bool {
        self.inner.sleep_unless_woken_ns(ns)
    }
    fn stdio_is_terminal(&mut self, fd: u32) -> bool {
        self.inner.stdio_is_terminal(fd)
    }
    fn wait_stdin(&mut self, timeout_ns: Option<u64>, wakeable: bool) -> tabi_libos::host::Wait {
        self.inner.wait_stdin(timeout_ns, wakeable)
    }
    fn yield_now(&mut self) {
        self.inner.yield_now()
    }
    fn host_fs(&mut self) -> Option<&mut dyn tabi_vfs::HostFs> {
        match &mut self.fs {
            Some(fs) => Some(fs),
            None => self.inner.host_fs(),
        }
    }
    fn nn(&mut self) -> Option<&mut dyn tabi_nn::Backend> {
        match &mut self.nn {
            Some(b) => Some(&mut **b),
            None => self.inner.nn(),
        }
    }
}

/// A call of a library module's export instead of a command's `_start`.
#[derive(Clone, Debug)]
pub(crate) struct Invoke {
    pub export: String,
    pub args: Vec<Value>,
}

/// Sets a guest up: its module, arguments, environment, files, streams, host and engine, and
/// whether (and how) it can be checkpointed. The shape of `wasmtime_wasi::WasiCtxBuilder`.
///
/// ```
/// let engine = tabi::Engine::new(tabi::Backend::Wasmi)?;
/// let wat = r#"(module
///   (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
///   (memory (export "memory") 1)
///   (data (i32.const 16) "hi\n")
///   (func (export "_start")
///     (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 3))
///     (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
/// let (out, printed) = tabi::Stdio::buffer();
/// let guest = tabi::GuestBuilder::new(&engine, wat.as_bytes())?
///     .arg("hello")
///     .env("LANG", "C")
///     .stdout(out)
///     .build()?;
/// let ended = guest.run()?;
/// assert_eq!(ended.exit(), Some(&tabi::Exit::Code(0)));
/// assert_eq!(&*printed.lock().unwrap(), b"hi\n");
/// # Ok::<(), tabi::Error>(())
/// ```
#[derive(Clone)]
pub struct GuestBuilder {
    pub(crate) engine: Engine,
    pub(crate) original: Arc<Vec<u8>>,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) dirs: Vec<(PathBuf, String)>,
    pub(crate) copy_dirs: Vec<(PathBuf, String)>,
    pub(crate) memory_dirs: Vec<String>,
    pub(crate) deterministic: Option<u64>,
    pub(crate) host: HostSpec,
    pub(crate) rewrite: Option<RewriteOptions>,
    pub(crate) cache: RewriteCache,
    pub(crate) limits: tabi_snapshot::Limits,
    pub(crate) max_fs: Option<u64>,
    pub(crate) invoke: Option<Invoke>,
    pub(crate) pause_after: Option<u64>,
    pub(crate) pause: Option<PauseHandle>,
}

impl std::fmt::Debug for GuestBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestBuilder")
            .field("engine", &self.engine)
            .field("args", &self.args)
            .field("dirs", &self.dirs)
            .field("rewrite", &self.rewrite)
            .finish_non_exhaustive()
    }
}

impl GuestBuilder {
    /// A guest of `module` (a binary module, or WebAssembly text) on `engine`, named `guest`
    /// (its `argv[0]`), with no arguments, environment or files, tabi's own host and the
    /// process's standard streams.
    pub fn new(engine: &Engine, module: &[u8]) -> Result<GuestBuilder> {
        Ok(GuestBuilder::of_binary(
            engine,
            crate::module::parse_module(module, None)?,
        ))
    }

    /// [`GuestBuilder::new`] of a binary module already read.
    pub fn of_binary(engine: &Engine, wasm: Vec<u8>) -> GuestBuilder {
        GuestBuilder {
            engine: engine.clone(),
            original: Arc::new(wasm),
            args: vec!["guest".into()],
            env: Vec::new(),
            dirs: Vec::new(),
            copy_dirs: Vec::new(),
            memory_dirs: Vec::new(),
            deterministic: None,
            host: HostSpec::default(),
            rewrite: None,
            cache: RewriteCache::default(),
            limits: tabi_snapshot::Limits::default(),
            max_fs: None,
            invoke: None,
            pause_after: None,
            pause: None,
        }
    }

    /// The guest's program name, `argv[0]` (`guest` unless set).
    pub fn program_name(mut self, name: impl Into<String>) -> Self {
        self.args[0] = name.into();
        self
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Grants host directory `host` at guest path `guest` (`--dir HOST::GUEST`): writes land on
    /// the host. A resume must grant it again.
    pub fn dir(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.dirs.push((host.into(), guest.into()));
        self
    }

    /// Copies host directory `host` into the in-memory file system at `guest` (`--copy-dir`):
    /// its contents travel with the guest.
    pub fn copy_dir(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.copy_dirs.push((host.into(), guest.into()));
        self
    }

    /// An empty in-memory directory at `guest` (`--mem-dir`).
    pub fn memory_dir(mut self, guest: impl Into<String>) -> Self {
        self.memory_dirs.push(guest.into());
        self
    }

    /// Virtual clocks and randomness seeded with `seed`: the same run prints the same bytes.
    pub fn deterministic(mut self, seed: u64) -> Self {
        self.deterministic = Some(seed);
        self
    }

    /// Standard input ([`Stdio::Inherit`] unless set): a buffer, a reader, nothing.
    pub fn stdin(mut self, stdin: Stdio) -> Self {
        self.host.stdin = stdin;
        self
    }

    /// Standard output.
    pub fn stdout(mut self, stdout: Stdio) -> Self {
        self.host.stdout = stdout;
        self
    }

    /// Standard error.
    pub fn stderr(mut self, stderr: Stdio) -> Self {
        self.host.stderr = stderr;
        self
    }

    /// The caller's own host, made by `factory` for each run and resume: it answers for the
    /// clocks, entropy, standard streams and sleeps (the streams set with
    /// [`GuestBuilder::stdin`] and the others are not used); the directories granted with
    /// [`GuestBuilder::dir`] are served by tabi beside it.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tabi::{Errno, Host};
    ///
    /// /// A host whose clock is always at the epoch and whose output goes to a log.
    /// #[derive(Clone, Default)]
    /// struct Logged(Arc<Mutex<Vec<u8>>>);
    /// impl Host for Logged {
    ///     fn wall_clock_ns(&mut self) -> u64 { 0 }
    ///     fn monotonic_ns(&mut self) -> u64 { 0 }
    ///     fn random_bytes(&mut self, b: &mut [u8]) -> Result<(), Errno> { b.fill(9); Ok(()) }
    ///     fn stdin_read(&mut self, _: &mut [u8]) -> Result<usize, Errno> { Ok(0) }
    ///     fn stdout_write(&mut self, b: &[u8]) -> Result<(), Errno> {
    ///         self.0.lock().unwrap().extend_from_slice(b);
    ///         Ok(())
    ///     }
    ///     fn stderr_write(&mut self, _: &[u8]) -> Result<(), Errno> { Ok(()) }
    ///     fn sleep_ns(&mut self, _: u64) {}
    /// }
    ///
    /// # let engine = tabi::Engine::new(tabi::Backend::Wasmi)?;
    /// # let wat = r#"(module
    /// #   (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
    /// #   (memory (export "memory") 1) (data (i32.const 16) "logged\n")
    /// #   (func (export "_start")
    /// #     (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 7))
    /// #     (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    /// let log = Logged::default();
    /// let host = log.clone();
    /// let guest = tabi::GuestBuilder::new(&engine, wat.as_bytes())?
    ///     .host_factory(move || Box::new(host.clone()))
    ///     .build()?;
    /// guest.run()?;
    /// assert_eq!(&*log.0.lock().unwrap(), b"logged\n");
    /// # Ok::<(), tabi::Error>(())
    /// ```
    pub fn host_factory(
        mut self,
        factory: impl Fn() -> Box<dyn Host + Send> + Send + Sync + 'static,
    ) -> Self {
        self.host.factory = Some(Arc::new(factory));
        self
    }

    /// The caller's own host, as a value, for a guest that runs once (see
    /// [`GuestBuilder::host_factory`]); a second run of the same builder fails.
    pub fn host(self, host: impl Host + Send + 'static) -> Self {
        let once = std::sync::Mutex::new(Some(Box::new(host) as Box<dyn Host + Send>));
        self.host_factory(move || {
            once.lock()
                .ok()
                .and_then(|mut h| h.take())
                .unwrap_or_else(|| Box::new(Spent))
        })
    }

    /// Makes the guest checkpointable with these rewrite options (safepoints, which imports
    /// are migration points). Without it, a guest that is paused or checkpointed is rewritten
    /// with the default options.
    pub fn rewrite(mut self, options: RewriteOptions) -> Self {
        self.rewrite = Some(options);
        self
    }

    /// The cache rewritten modules are taken from and kept in (an in-memory one of 8 modules
    /// unless set).
    pub fn rewrite_cache(mut self, cache: RewriteCache) -> Self {
        self.cache = cache;
        self
    }

    /// The limits snapshots of this guest are written under: a checkpoint that a resume under
    /// them would refuse is not written (and the guest goes on). Authenticates them when
    /// `limits.key` is set.
    pub fn snapshot_limits(mut self, limits: tabi_snapshot::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Preloads `graph` for the guest's wasi-nn `load_by_name` (`--nn-graph`). Its bytes stay
    /// with the host: a snapshot records its name and content hash, and a resume must
    /// preload it again ([`Resume::nn_graph`](crate::Resume::nn_graph)).
    pub fn nn_graph(mut self, graph: crate::NnGraph) -> Self {
        self.host.nn.graphs.push(graph);
        self
    }

    /// What the guest's wasi-nn state may hold (models, tensors, handles); also the limits
    /// its snapshots are written under for it. [`crate::NnLimits::default`] unless set.
    pub fn nn_limits(mut self, limits: crate::NnLimits) -> Self {
        self.limits.state.nn = limits;
        self
    }

    /// The cache of compiled inference plans (one of its own unless set): share one between
    /// guests that use the same models.
    #[cfg(feature = "nn")]
    pub fn nn_plan_cache(mut self, plans: crate::PlanCache) -> Self {
        self.host.nn.plans = plans;
        self
    }

    /// Most bytes the in-memory file system may hold (`--max-fs`); the copies of
    /// [`GuestBuilder::copy_dir`] must fit.
    pub fn max_fs_bytes(mut self, bytes: u64) -> Self {
        self.max_fs = Some(bytes);
        self
    }

    /// Calls function export `export` of a library module with `args` instead of `_start`
    /// (`tabi run --invoke`): after its start function and `_initialize`. Pauses are taken in
    /// the export only.
    pub fn invoke(mut self, export: impl Into<String>, args: Vec<Value>) -> Self {
        self.invoke = Some(Invoke {
            export: export.into(),
            args,
        });
        self
    }

    /// Pauses at the `n`-th migration point (`--checkpoint-after N`).
    pub fn pause_after(mut self, n: u64) -> Self {
        self.pause_after = Some(n);
        self
    }

    /// Lets `handle` ask for pauses (and cut tabi's host's sleeps short).
    pub fn pause_handle(mut self, handle: &PauseHandle) -> Self {
        self.host.wake = Some(handle.flag());
        self.pause = Some(handle.clone());
        self
    }

    /// The module's bytes.
    pub fn module(&self) -> &[u8] {
        &self.original
    }

    /// The guest's process, fresh: kernel state set up and directories granted.
    fn process(&self) -> Result<(Process, Vec<(PathBuf, String)>)> {
        let mut kernel = Kernel::new();
        let (mut host, indices) = self.host.make(&self.dirs)?;
        kernel.set_args(self.args.clone());
        kernel.set_env(self.env.clone());
        kernel.set_nn_limits(self.limits.state.nn);
        if let Some(seed) = self.deterministic {
            kernel.set_deterministic(seed);
        }
        // The kernel's clock: a deterministic run stamps its directories with virtual time.
        let now = kernel.wall_clock_now(&mut *host);
        for ((h, g), index) in self.dirs.iter().zip(indices) {
            kernel
                .mount_host(g, index)
                .map_err(|e| Error::Grant(format!("--dir {}::{g}: {e}", h.display())))?;
        }
        for (h, g) in &self.copy_dirs {
            let root = tabi_vfs::import_host_dir(kernel.fs_mut(), h, now).map_err(Error::io(
                format!("--copy-dir: cannot copy host directory `{}`", h.display()),
            ))?;
            kernel
                .mount_memory_root(g, root)
                .map_err(|e| Error::Grant(format!("--copy-dir {}::{g}: {e}", h.display())))?;
        }
        for g in &self.memory_dirs {
            kernel
                .mount_memory(g, now)
                .map_err(|e| Error::Grant(format!("in-memory directory {g}: {e}")))?;
        }
        if let Some(limit) = self.max_fs {
            let used = kernel.fs().used_bytes();
            if used > limit {
                return Err(Error::Config(format!(
                    "the in-memory files take {used} bytes, over --max-fs {limit}"
                )));
            }
            kernel.fs_mut().set_limit_bytes(limit);
        }
        Ok((Process { kernel, host }, self.dirs.clone()))
    }

    /// The guest, ready to run: its process is made (directories granted and copied) and, if
    /// it can pause, its module rewritten.
    pub fn build(&self) -> Result<Guest> {
        let (process, dirs) = self.process()?;
        let pausable = self.rewrite.is_some() || self.pause_after.is_some() || self.pause.is_some();
        let instrumented = if pausable {
            let options = self.rewrite.clone().unwrap_or_default();
            Some(self.cache.rewrite(&self.original, &options)?)
        } else {
            None
        };
        Ok(Guest {
            engine: self.engine.clone(),
            original: self.original.clone(),
            instrumented,
            begin: Begin::Fresh(process),
            control: control(self.pause_after, self.pause.as_ref()),
            dirs,
            limits: self.limits,
            invoke: self.invoke.clone(),
        })
    }
}

/// The host a [`GuestBuilder::host`] value leaves for a second run: it fails every call.
struct Spent;

impl Host for Spent {
    fn wall_clock_ns(&mut self) -> u64 {
        0
    }
    fn monotonic_ns(&mut self) -> u64 {
        0
    }
    fn random_bytes(&mut self, _: &mut [u8]) -> Result<(), tabi_libos::Errno> {
        Err(tabi_libos::Errno::Io)
    }
    fn stdin_read(&mut self, _: &mut [u8]) -> Result<usize, tabi_libos::Errno> {
        Err(tabi_libos::Errno::Io)
    }
    fn stdout_write(&mut self, _: &[u8]) -> Result<(), tabi_libos::Errno> {
        Err(tabi_libos::Errno::Io)
    }
    fn stderr_write(&mut self, _: &[u8]) -> Result<(), tabi_libos::Errno> {
        Err(tabi_libos::Errno::Io)
    }
    fn sleep_ns(&mut self, _: u64) {}
}

/// The pause policy of a run.
pub(crate) fn control(after: Option<u64>, handle: Option<&PauseHandle>) -> PauseControl {
    let mut control = match after {
        Some(n) => PauseControl::after(n),
        None => PauseControl::never(),
    };
    control.request = handle.map(PauseHandle::flag);
    control
}

/// Where a guest's run starts.
pub(crate) enum Begin {
    /// A fresh process, from the module's start.
    Fresh(Process),
    /// A fresh instance, from a paused state.
    Resume(Process, MachineState),
    /// An instance whose first `memories` memories a snapshot was read into.
    Loaded {
        session: Box<dyn machine::Session>,
        state: MachineState,
        memories: usize,
    },
}

/// A guest ready to run, fresh or resumed: made by [`GuestBuilder::build`], by a resume
/// ([`crate::Resume`]), or from a pause ([`PausedGuest::into_guest`]).
pub struct Guest {
    pub(crate) engine: Engine,
    pub(crate) original: Arc<Vec<u8>>,
    /// The rewrite that runs, when the guest can pause.
    pub(crate) instrumented: Option<Arc<Vec<u8>>>,
    pub(crate) begin: Begin,
    pub(crate) control: PauseControl,
    pub(crate) dirs: Vec<(PathBuf, String)>,
    pub(crate) limits: tabi_snapshot::Limits,
    pub(crate) invoke: Option<Invoke>,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("engine", &self.engine)
            .field("pausable", &self.instrumented.is_some())
            .finish_non_exhaustive()
    }
}

/// How a run ended: the guest finished, or it paused and was stopped there.
#[must_use]
pub enum Ended {
    /// The guest exited, trapped, or its export returned.
    Exited(Box<Exited>),
    /// The guest paused and the run stopped: write its snapshot, carry it on elsewhere
    /// ([`PausedGuest::into_guest`]), or drop it.
    Paused(Box<PausedGuest>),
}

impl Ended {
    /// How the guest exited, if it did.
    pub fn exit(&self) -> Option<&Exit> {
        match self {
            Ended::Exited(e) => Some(&e.exit),
            Ended::Paused(_) => None,
        }
    }
}

impl std::fmt::Debug for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(e) => f
                .debug_struct("Exited")
                .field("exit", &e.exit)
                .field("results", &e.results)
                .finish_non_exhaustive(),
            Ended::Paused(p) => f
                .debug_struct("Paused")
                .field("reason", &p.paused.reason)
                .field("points", &p.paused.points)
                .finish_non_exhaustive(),
        }
    }
}

/// A guest that finished.
pub struct Exited {
    /// How: its exit status, a trap, or (a returned export) status 0.
    pub exit: Exit,
    /// An invoked export's results (empty for a command).
    pub results: Vec<Value>,
    /// The process it leaves: its kernel state (files in memory, descriptors) and host.
    pub process: Process,
}

impl Guest {
    /// The engine it runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The kernel state it will start with.
    pub fn kernel(&self) -> &Kernel {
        match &self.begin {
            Begin::Fresh(p) | Begin::Resume(p, _) => &p.kernel,
            Begin::Loaded { session, .. } => &session.process().kernel,
        }
    }

    /// Runs the guest until it finishes, or until it pauses (as [`GuestBuilder::pause_after`]
    /// or a [`PauseHandle`] ask) and stops there. A guest that cannot pause runs its module
    /// as it is.
    pub fn run(self) -> Result<Ended> {
        self.run_with(|_| Ok(AfterPause::Stop))
    }

    /// Runs the guest, showing each pause to `on_pause` with the instance in place: it can
    /// write a snapshot ([`Pause::write_to`], [`Pause::write_file`],
    /// [`Pause::write_incremental`]) and then let the guest go on
    /// ([`AfterPause::Continue`]) or stop the run ([`AfterPause::Stop`]). An error from
    /// `on_pause` ends the run with it.
    ///
    /// A checkpoint at each of a guest's first three migration points, incremental after the
    /// first, the guest going on in place after each:
    ///
    /// ```
    /// # let engine = tabi::Engine::new(tabi::Backend::Wasmi)?;
    /// # let wat = r#"(module
    /// #   (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))
    /// #   (memory (export "memory") 1)
    /// #   (func (export "_start") (drop (call $y)) (drop (call $y)) (drop (call $y))))"#;
    /// let handle = tabi::PauseHandle::new();
    /// handle.request();
    /// let guest = tabi::GuestBuilder::new(&engine, wat.as_bytes())?.pause_handle(&handle).build()?;
    /// let (mut chain, mut links) = (tabi::Chain::new(), Vec::new());
    /// let ended = guest.run_with(|pause| {
    ///     let mut bytes = Vec::new();
    ///     pause.write_incremental_to(&mut chain, &mut bytes)?;
    ///     links.push(bytes);
    ///     handle.request();
    ///     Ok(tabi::AfterPause::Continue)
    /// })?;
    /// assert_eq!(ended.exit(), Some(&tabi::Exit::Code(0)));
    /// assert_eq!(links.len(), 3);
    /// // Each link reads against the one before.
    /// let mut last: Option<tabi::Snapshot> = None;
    /// for bytes in &links {
    ///     last = Some(tabi::read_snapshot_from(&bytes[..], last.as_ref(), &tabi::Limits::default())?);
    /// }
    /// # Ok::<(), tabi::Error>(())
    /// ```
    pub fn run_with(
        self,
        mut on_pause: impl FnMut(&mut Pause<'_>) -> Result<AfterPause> + Send,
    ) -> Result<Ended> {
        let Guest {
            engine,
            original,
            instrumented,
            begin,
            control,
            dirs,
            limits,
            invoke,
        } = self;
        let Some(instrumented) = instrumented else {
            let Begin::Fresh(process) = begin else {
                return Err(Error::Config("a resumed guest runs its rewrite".into()));
            };
            return run_plain(&engine, &original, process, invoke.as_ref());
        };
        let origin = Origin {
            original,
            instrumented,
            dirs,
            limits,
        };
        let mut failure = None;
        let outcome = {
            let origin = &origin;
            let failure = &mut failure;
            let mut shown = |view: &PauseView<'_>| -> Result<AfterPause, tabi_libos::EngineError> {
                let mut pause = Pause { view, origin };
                match on_pause(&mut pause) {
                    Ok(after) => Ok(after),
                    Err(e) => {
                        *failure = Some(e);
                        Ok(AfterPause::Stop)
                    }
                }
            };
            drive(
                &engine,
                &origin.instrumented,
                begin,
                control,
                invoke.as_ref(),
                &mut shown,
            )
        };
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(match outcome? {
            Outcome::Finished(f) => Ended::Exited(Box::new(Exited {
                exit: f.exit,
                results: f.results,
                process: f.process,
            })),
            Outcome::Paused(paused) => Ended::Paused(Box::new(PausedGuest {
                paused,
                origin,
                invoke,
            })),
        })
    }
}

/// Runs a module as it is, on a thread with a guest's stack.
fn run_plain(
    engine: &Engine,
    wasm: &[u8],
    process: Process,
    invoke: Option<&Invoke>,
) -> Result<Ended> {
    let finished = on_guest_stack(|| {
        Ok(match invoke {
            None => engine.pausable().run(wasm, process)?,
            Some(call) => engine
                .pausable()
                .invoke(wasm, process, &call.export, &call.args)?,
        })
    })?;
    Ok(Ended::Exited(Box::new(Exited {
        exit: finished.exit,
        results: finished.results,
        process: finished.process,
    })))
}

/// Drives an instrumented guest from `begin` on a thread with a guest's stack.
fn drive(
    engine: &Engine,
    instrumented: &[u8],
    begin: Begin,
    control: PauseControl,
    invoke: Option<&Invoke>,
    on_pause: &mut (
             dyn FnMut(&PauseView<'_>) -> Result<AfterPause, tabi_libos::EngineError> + Send
         ),
) -> Result<Outcome> {
    let points = crate::module::points_of(instrumented)?;
    on_guest_stack(|| {
        let outcome = match begin {
            Begin::Fresh(process) => match invoke {
                None => {
                    let begun = engine.begin(instrumented, process, control, points)?;
                    machine::run_begun(begun, Start::Fresh, Some(on_pause))?
                }
                Some(call) => {
                    // `machine::invoke` puts `control` in place when it calls the export.
                    let begun: Begun =
                        engine.begin(instrumented, process, PauseControl::never(), points)?;
                    match begun {
                        Ok(mut session) => {
                            let driven = machine::invoke(
                                &mut *session,
                                control,
                                &call.export,
                                &call.args,
                                on_pause,
                            )?;
                            machine::end_session(session, driven)
                        }
                        Err(finished) => Outcome::Finished(finished),
                    }
                }
            },
            Begin::Resume(process, state) => {
                let begun = engine.begin(instrumented, process, control, points)?;
                machine::run_begun(begun, Start::Resume(&state), Some(on_pause))?
            }
            Begin::Loaded {
                session,
                state,
                memories,
            } => {
                let start = Start::Loaded {
                    state: &state,
                    memories,
                };
                machine::run_session(session, start, Some(on_pause))?
            }
        };
        Ok(outcome)
    })
}

/// Runs `f` on a thread with a stack large enough for the engines' deepest guests.
pub(crate) fn on_guest_stack<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn_scoped(s, f)
            .map_err(Error::io("cannot start a guest thread"))?
            .join()
            .unwrap_or(Err(Error::GuestThread))
    })
}

/// A paused guest, still in its instance, as [`Guest::run_with`] shows it.
pub struct Pause<'a> {
    view: &'a PauseView<'a>,
    origin: &'a Origin,
}

impl Pause<'_> {
    /// Why it paused.
    pub fn reason(&self) -> PauseReason {
        self.view.reason
    }

    /// Migration points passed in this run.
    pub fn points(&self) -> u64 {
        self.view.points
    }

    /// The guest's kernel state.
    pub fn kernel(&self) -> &Kernel {
        &self.view.process.kernel
    }

    /// The memories of the original module, in place.
    pub fn memories(&self) -> &[&[u8]] {
        self.view.memories
    }

    /// Writes a full snapshot to `writer`.
    pub fn write_to(&self, writer: impl std::io::Write) -> Result<Summary> {
        let mut sink = tabi_snapshot::IoSink(writer);
        checkpoint::write_to(&mut sink, self.view, self.origin)
    }

    /// Writes a full snapshot to the file `path`: whole, or (on failure) not at all.
    pub fn write_file(&self, path: &Path) -> Result<Summary> {
        checkpoint::write_snapshot(path, self.view, self.origin)
    }

    /// Writes the next checkpoint of `chain` to `path`: incremental against the chain's last
    /// when it can be, else full (see [`Chain`]).
    pub fn write_incremental(&self, chain: &mut Chain, path: &Path) -> Result<ChainWritten> {
        chain.write(path, self.view, self.origin)
    }

    /// [`Pause::write_incremental`] to any writer.
    pub fn write_incremental_to(
        &self,
        chain: &mut Chain,
        writer: impl std::io::Write,
    ) -> Result<ChainWritten> {
        let mut sink = tabi_snapshot::IoSink(writer);
        chain.write_to(&mut sink, self.view, self.origin)
    }
}

/// A guest that paused and was stopped: its state copied out of the instance.
pub struct PausedGuest {
    pub(crate) paused: machine::Paused,
    pub(crate) origin: Origin,
    pub(crate) invoke: Option<Invoke>,
}

impl PausedGuest {
    /// Why it paused.
    pub fn reason(&self) -> PauseReason {
        self.paused.reason
    }

    /// Migration points passed in the run that paused.
    pub fn points(&self) -> u64 {
        self.paused.points
    }

    /// The guest's kernel state.
    pub fn kernel(&self) -> &Kernel {
        &self.paused.process.kernel
    }

    /// Its execution state, copied out of the instance: globals, tables, memories, the
    /// saved call stack.
    pub fn state(&self) -> &MachineState {
        &self.paused.state
    }

    /// Writes its snapshot to `writer`.
    pub fn write_to(&self, writer: impl std::io::Write) -> Result<Summary> {
        let memories = self.paused.memories();
        let mut sink = tabi_snapshot::IoSink(writer);
        checkpoint::write_to(&mut sink, &self.paused.view(&memories), &self.origin)
    }

    /// Its snapshot, as bytes.
    pub fn snapshot_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.write_to(&mut bytes)?;
        Ok(bytes)
    }

    /// Writes its snapshot to the file `path`: whole, or (on failure) not at all.
    pub fn write_file(&self, path: &Path) -> Result<Summary> {
        let memories = self.paused.memories();
        checkpoint::write_snapshot(path, &self.paused.view(&memories), &self.origin)
    }

    /// The guest, to carry on in this process on `engine` (another engine, or the same), with
    /// its process as it is (host included), pausing again as `after` and `handle` say. The
    /// host keeps the wake flag it was made with: a new `handle` pauses the guest at its next
    /// migration point, but only the old one cuts a sleep or a wait for input short.
    pub fn into_guest(
        self,
        engine: &Engine,
        after: Option<u64>,
        handle: Option<&PauseHandle>,
    ) -> Guest {
        let machine::Paused { state, process, .. } = self.paused;
        Guest {
            engine: engine.clone(),
            original: self.origin.original,
            instrumented: Some(self.origin.instrumented),
            begin: Begin::Resume(process, state),
            control: control(after, handle),
            dirs: self.origin.dirs,
            limits: self.origin.limits,
            invoke: self.invoke,
        }
    }
}

/// Checkpoints written to files as `tabi run --snapshot FILE` writes them: the first to
/// `FILE`, and, incremental ones, each later one to `FILE.1`, `FILE.2`, …
#[derive(Debug)]
pub struct CheckpointFiles {
    path: PathBuf,
    chain: Option<(Chain, u64)>,
}

/// A checkpoint [`CheckpointFiles`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenFile {
    /// Where.
    pub path: PathBuf,
    /// What.
    pub summary: Summary,
    /// For an incremental checkpoint, the content hash of its parent.
    pub parent: Option<[u8; 32]>,
}

impl CheckpointFiles {
    /// Each checkpoint to `path`, full, replacing the one before.
    pub fn new(path: impl Into<PathBuf>) -> CheckpointFiles {
        CheckpointFiles {
            path: path.into(),
            chain: None,
        }
    }

    /// The first checkpoint to `path`, each later one to `path.N`, incremental when it can
    /// be (else full, and the chain starts again).
    pub fn incremental(path: impl Into<PathBuf>) -> CheckpointFiles {
        CheckpointFiles {
            path: path.into(),
            chain: Some((Chain::new(), 0)),
        }
    }

    /// Writes the checkpoint of `pause`.
    pub fn write(&mut self, pause: &Pause<'_>) -> Result<WrittenFile> {
        match &mut self.chain {
            None => Ok(WrittenFile {
                path: self.path.clone(),
                summary: pause.write_file(&self.path)?,
                parent: None,
            }),
            Some((chain, n)) => {
                let target = match *n {
                    0 => self.path.clone(),
                    n => {
                        let mut name = self.path.as_os_str().to_owned();
                        name.push(format!(".{n}"));
                        PathBuf::from(name)
                    }
                };
                let w = pause.write_incremental(chain, &target)?;
                *n += 1;
                Ok(WrittenFile {
                    path: target,
                    summary: w.summary,
                    parent: w.parent,
                })
            }
        }
    }
}
