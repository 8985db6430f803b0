//! Runs a guest on wasmtime with tabi's kernel behind its imports.
//!
//! This crate is a thin binding: it registers every function of [`tabi_libos::p1`] on a
//! `wasmtime::Linker` with [`tabi_libos::for_each_function!`], hands each call the guest's memory
//! and the [`Process`], and turns a kernel [`Trap`] into a wasmtime error and back. It contains
//! no WASI logic, so a guest behaves the same here as on `tabi-wasmi`.
//!
//! # Example
//!
//! ```no_run
//! use tabi_libos::{Engine, Kernel, Process, host::StdHost};
//! use tabi_wasmtime::Wasmtime;
//!
//! let wasm = std::fs::read("guest.wasm").unwrap();
//! let finished = Wasmtime::new().run(&wasm, Process::new(Kernel::new(), StdHost::new())).unwrap();
//! std::process::exit(finished.exit.process_code());
//! ```

use std::fmt;

use tabi_libos::machine::{PauseControl, Points};
use tabi_libos::{Engine, EngineError, Exit, Finished, Process, Trap, nn, p1};
use wasmtime::{Caller, Global, Linker, Memory, Module, Store};

mod pause;

pub use pause::Session;

/// The data a wasmtime store holds for a tabi guest.
pub struct GuestData {
    /// The guest's process.
    pub process: Process,
    memory: Option<Memory>,
    pause: Option<PauseHooks>,
}

/// What the imports need to start an unwind.
struct PauseHooks {
    state: Global,
    nopause: Global,
    control: PauseControl,
    points: Points,
}

/// How a wasmtime error from a guest call ends the guest.
fn exit_of(e: wasmtime::Error) -> Exit {
    match e.downcast_ref::<KernelTrap>() {
        Some(KernelTrap(Trap::Exit(code))) => Exit::Code(*code),
        Some(KernelTrap(Trap::Signal(sig))) => Exit::Signal(*sig),
        Some(KernelTrap(t @ Trap::HostFault(_))) => Exit::Trap(t.to_string()),
        None => Exit::Trap(format!("{e:#}")),
    }
}

/// A kernel trap carried through wasmtime's error type.
#[derive(Debug)]
struct KernelTrap(Trap);

impl fmt::Display for KernelTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for KernelTrap {}

/// The guest's memory (empty when it exports none, so every pointer is `EFAULT`) and process.
fn split<'a>(caller: &'a mut Caller<'_, GuestData>) -> (&'a mut [u8], &'a mut Process) {
    // The memory is cached once the instance is made; the module's start function runs
    // before that, so it finds the export itself.
    let memory = match caller.data().memory {
        Some(m) => Some(m),
        None => caller.get_export("memory").and_then(|e| e.into_memory()),
    };
    match memory {
        Some(m) => {
            let (mem, data) = m.data_and_store_mut(caller);
            (mem, &mut data.process)
        }
        None => (&mut [], &mut caller.data_mut().process),
    }
}

/// Adds every `wasi_snapshot_preview1` and `wasi_ephemeral_nn` import, and tabi's
/// `tabi.checkpoint`, to `linker`.
///
/// In a [`Session`], each import that is a migration point counts itself after it returns and
/// starts the guest's unwind when a pause is due.
pub fn add_to_linker(linker: &mut Linker<GuestData>) -> wasmtime::Result<()> {
    macro_rules! register {
        ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
            $(
                let index = p1::NAMES
                    .iter()
                    .position(|n| *n == stringify!($name))
                    .expect("every function is named");
                linker.func_wrap(
                    p1::MODULE,
                    stringify!($name),
                    move |mut caller: Caller<'_, GuestData>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                        let (mem, process) = split(&mut caller);
                        let errno = p1::$name(&mut process.kernel, &mut *process.host, mem, $($arg),*)
                            .map_err(|t| wasmtime::Error::new(KernelTrap(t)))?;
                        let unwinding = caller.data().pause.as_ref().is_some_and(|p| p.points.p1(index))
                            && pause::after_point(&mut caller)?;
                        // A read a checkpoint request cut short, when no pause follows after
                        // all: finished now, before the guest sees its results.
                        if !unwinding && caller.data().process.kernel.pending().is_some() {
                            let (mem, process) = split(&mut caller);
                            p1::complete_pending(&mut process.kernel, &mut *process.host, mem);
                        }
                        Ok(errno)
                    },
                )?;
            )*
        };
    }
    tabi_libos::for_each_function!(register);
    macro_rules! register_nn {
        ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
            $(
                let index = nn::NAMES
                    .iter()
                    .position(|n| *n == stringify!($name))
                    .expect("every function is named");
                linker.func_wrap(
                    nn::MODULE,
                    stringify!($name),
                    move |mut caller: Caller<'_, GuestData>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                        let (mem, process) = split(&mut caller);
                        let errno = nn::$name(&mut process.kernel, &mut *process.host, mem, $($arg),*)
                            .map_err(|t| wasmtime::Error::new(KernelTrap(t)))?;
                        if caller.data().pause.as_ref().is_some_and(|p| p.points.nn(index)) {
                            pause::after_point(&mut caller)?;
                        }
                        Ok(errno)
                    },
                )?;
            )*
        };
    }
    tabi_libos::for_each_nn_function!(register_nn);
    linker.func_wrap(
        p1::MODULE,
        "proc_exit",
        |mut caller: Caller<'_, GuestData>, code: i32| -> wasmtime::Result<()> {
            let trap = p1::proc_exit(&mut caller.data_mut().process.kernel, code);
            Err(wasmtime::Error::new(KernelTrap(trap)))
        },
    )?;
    linker.func_wrap(
        "tabi",
        "checkpoint",
        |mut caller: Caller<'_, GuestData>| -> wasmtime::Result<()> {
            let Some(p) = caller.data_mut().pause.as_mut() else {
                return Ok(());
            };
            if !p.points.tabi {
                return Ok(());
            }
            p.control.guest_request();
            pause::after_point(&mut caller).map(drop)
        },
    )?;
    Ok(())
}

/// tabi on wasmtime.
#[derive(Clone)]
pub struct Wasmtime {
    engine: wasmtime::Engine,
    linker: Linker<GuestData>,
    modules: std::sync::Arc<tabi_libos::engine::ModuleCache<Module>>,
}

impl Default for Wasmtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Wasmtime {
    /// An engine with wasmtime's default configuration, except:
    /// - a 4 MiB limit on the guest's native stack (wasmtime's default is 512 KiB) so that deep
    ///   recursion such as a 10,000-frame unwind fits; the calling thread needs that much stack
    ///   to spare;
    /// - the proposals wasmi does not run are off (GC, typed function references, exceptions,
    ///   threads, wide arithmetic, custom page sizes), so both engines accept the same modules
    ///   and a guest that starts on one can always resume on the other.
    pub fn new() -> Self {
        Self::with(None)
    }

    /// [`Wasmtime::new`], keeping compiled code in `directory` (wasmtime's own cache, as
    /// `wasmtime run` uses), so that a module compiled once starts at once the next time. The
    /// cache holds native code that is run as it is read: `directory` must be writable by its
    /// user only.
    pub fn with_cache(directory: &std::path::Path) -> Result<Self, EngineError> {
        let mut config = wasmtime::CacheConfig::new();
        config.with_directory(directory);
        let cache = wasmtime::Cache::new(config).map_err(|e| {
            EngineError::Engine(format!("cannot use the compiled-code cache: {e:#}"))
        })?;
        Ok(Self::with(Some(cache)))
    }

    fn with(cache: Option<wasmtime::Cache>) -> Self {
        let mut config = Self::default_config();
        config.cache(cache);
        Self::from_engine(wasmtime::Engine::new(&config).expect("a valid configuration"))
    }

    /// The configuration [`Wasmtime::new`] uses, for an embedder to start from: change what
    /// it needs and pass the engine to [`Wasmtime::from_engine`]. Turning on a proposal that
    /// wasmi lacks makes guests that use it unable to resume there.
    pub fn default_config() -> wasmtime::Config {
        let mut config = wasmtime::Config::new();
        config.max_wasm_stack(4 << 20).async_stack_size(5 << 20);
        use wasmtime::WasmFeatures as F;
        config.wasm_features(
            F::GC
                | F::FUNCTION_REFERENCES
                | F::EXCEPTIONS
                | F::LEGACY_EXCEPTIONS
                | F::THREADS
                | F::SHARED_EVERYTHING_THREADS
                | F::WIDE_ARITHMETIC
                | F::CUSTOM_PAGE_SIZES
                | F::STACK_SWITCHING,
            false,
        );
        config
    }

    /// tabi on an engine the embedder configured (for instance from
    /// [`Wasmtime::default_config`], with its own cache, limits or compiler settings). Its
    /// native stack limit must leave room for the guest's deepest unwind.
    pub fn from_engine(engine: wasmtime::Engine) -> Self {
        let mut linker = Linker::new(&engine);
        add_to_linker(&mut linker).expect("each import is registered once");
        Wasmtime {
            engine,
            linker,
            modules: std::sync::Arc::new(tabi_libos::engine::ModuleCache::new(
                tabi_libos::engine::ModuleCache::<Module>::DEFAULT_CAPACITY,
            )),
        }
    }

    /// Compiles a module, or takes it from this engine's cache of the last few modules it
    /// compiled (shared by its clones).
    pub fn compile_cached(&self, wasm: &[u8]) -> Result<Module, EngineError> {
        self.modules.get_or_compile(wasm, || self.compile(wasm))
    }

    /// The underlying wasmtime engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Compiles a module.
    pub fn compile(&self, wasm: &[u8]) -> Result<Module, EngineError> {
        if let Some(e) = tabi_libos::engine::component_error(wasm) {
            return Err(e);
        }
        Module::new(&self.engine, wasm).map_err(|e| EngineError::InvalidModule(format!("{e:#}")))
    }

    fn store(&self, process: Process) -> Store<GuestData> {
        Store::new(
            &self.engine,
            GuestData {
                process,
                memory: None,
                pause: None,
            },
        )
    }

    /// Instantiates `module`; `Ok(Err(exit))` when the guest's run ended while the instance was
    /// made: its start function exited or trapped, or a segment did not fit (a trap too), as
    /// the run would have ended in `_start`.
    fn instantiate(
        &self,
        store: &mut Store<GuestData>,
        module: &Module,
    ) -> Result<Result<wasmtime::Instance, Exit>, EngineError> {
        match self.linker.instantiate(&mut *store, module) {
            Ok(instance) => Ok(Ok(instance)),
            Err(e) if e.is::<KernelTrap>() || e.is::<wasmtime::Trap>() => Ok(Err(exit_of(e))),
            Err(e) => Err(EngineError::Link(format!("{e:#}"))),
        }
    }

    /// Runs a compiled module's `_start` to the end.
    ///
    /// An instrumented module (see `tabi-instrument`) is driven as its protocol asks: it
    /// never pauses on its own, a safepoint's yield and a checkpoint the guest asks for go on
    /// at once, and its former start function runs first.
    pub fn run_module(&self, module: &Module, process: Process) -> Result<Finished, EngineError> {
        if module
            .exports()
            .any(|e| e.name() == tabi_libos::machine::STATE_GLOBAL)
        {
            return match self.begin(module, process, PauseControl::never(), Points::all())? {
                Ok(session) => tabi_libos::machine::run_through(|start, on_pause| {
                    tabi_libos::machine::run_session(Box::new(session), start, Some(on_pause))
                }),
                Err(finished) => Ok(finished),
            };
        }
        let mut store = self.store(process);
        let instance = match self.instantiate(&mut store, module)? {
            Ok(instance) => instance,
            Err(exit) => {
                return Ok(Finished {
                    exit,
                    results: Vec::new(),
                    process: store.into_data().process,
                });
            }
        };
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|e| EngineError::Link(format!("no usable `_start` export: {e:#}")))?;
        let exit = match start.call(&mut store, ()) {
            Ok(()) => Exit::Code(0),
            Err(e) => exit_of(e),
        };
        Ok(Finished {
            exit,
            results: Vec::new(),
            process: store.into_data().process,
        })
    }
}

impl Engine for Wasmtime {
    fn name(&self) -> &'static str {
        "wasmtime"
    }

    fn run(&self, wasm: &[u8], process: Process) -> Result<Finished, EngineError> {
        let module = self.compile_cached(wasm)?;
        self.run_module(&module, process)
    }

    fn invoke(
        &self,
        wasm: &[u8],
        process: Process,
        export: &str,
        args: &[tabi_libos::machine::Value],
    ) -> Result<Finished, EngineError> {
        let module = self.compile_cached(wasm)?;
        self.invoke_module(&module, process, export, args)
    }
}

impl tabi_libos::machine::Pausable for Wasmtime {
    fn begin_wasm(
        &self,
        wasm: &[u8],
        process: Process,
        control: PauseControl,
        points: Points,
    ) -> Result<tabi_libos::machine::Begun, EngineError> {
        let module = self.compile_cached(wasm)?;
        Ok(self
            .begin(&module, process, control, points)?
            .map(|s| Box::new(s) as Box<dyn tabi_libos::machine::Session>))
    }
}
