//! Runs a guest on the wasmi interpreter with tabi's kernel behind its imports.
//!
//! This crate is a thin binding: it registers every function of [`tabi_libos::p1`] on a
//! `wasmi::Linker` with [`tabi_libos::for_each_function!`], hands each call the guest's memory
//! and the [`Process`], and turns a kernel [`Trap`] into a wasmi host error and back. It
//! contains no WASI logic, so a guest behaves the same here as on `tabi-wasmtime`.
//!
//! # Example
//!
//! ```no_run
//! use tabi_libos::{Engine, Kernel, Process, host::StdHost};
//! use tabi_wasmi::Wasmi;
//!
//! let wasm = std::fs::read("guest.wasm").unwrap();
//! let finished = Wasmi::new().run(&wasm, Process::new(Kernel::new(), StdHost::new())).unwrap();
//! std::process::exit(finished.exit.process_code());
//! ```

use std::fmt;

use tabi_libos::machine::{PauseControl, Points};
use tabi_libos::{Engine, EngineError, Exit, Finished, Process, Trap, nn, p1};
use wasmi::{Caller, Global, Linker, Memory, Module, Store};

mod grow;
mod pause;

pub use pause::Session;

/// The data a wasmi store holds for a tabi guest.
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

/// How a wasmi error from a guest call ends the guest.
fn exit_of(e: wasmi::Error) -> Exit {
    match e.downcast_ref::<KernelTrap>() {
        Some(KernelTrap(Trap::Exit(code))) => Exit::Code(*code),
        Some(KernelTrap(Trap::Signal(sig))) => Exit::Signal(*sig),
        Some(KernelTrap(t @ Trap::HostFault(_))) => Exit::Trap(t.to_string()),
        None => Exit::Trap(e.to_string()),
    }
}

/// A kernel trap carried through wasmi's error type.
#[derive(Debug)]
struct KernelTrap(Trap);

impl fmt::Display for KernelTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl wasmi::errors::HostError for KernelTrap {}

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
pub fn add_to_linker(linker: &mut Linker<GuestData>) -> Result<(), wasmi::Error> {
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
                    move |mut caller: Caller<'_, GuestData>, $($arg: $ty),*| -> Result<i32, wasmi::Error> {
                        let (mem, process) = split(&mut caller);
                        let errno = p1::$name(&mut process.kernel, &mut *process.host, mem, $($arg),*)
                            .map_err(|t| wasmi::Error::host(KernelTrap(t)))?;
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
                    move |mut caller: Caller<'_, GuestData>, $($arg: $ty),*| -> Result<i32, wasmi::Error> {
                        let (mem, process) = split(&mut caller);
                        let errno = nn::$name(&mut process.kernel, &mut *process.host, mem, $($arg),*)
                            .map_err(|t| wasmi::Error::host(KernelTrap(t)))?;
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
        |mut caller: Caller<'_, GuestData>, code: i32| -> Result<(), wasmi::Error> {
            let trap = p1::proc_exit(&mut caller.data_mut().process.kernel, code);
            Err(wasmi::Error::host(KernelTrap(trap)))
        },
    )?;
    linker.func_wrap(
        "tabi",
        "checkpoint",
        |mut caller: Caller<'_, GuestData>| -> Result<(), wasmi::Error> {
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
    add_grow_helpers(linker)
}

/// The imports [`Wasmi::compile`] turns `memory.grow` and `table.grow` into (see `grow.rs`):
/// each grows through wasmi's API and gives what the instruction would, -1 on failure.
fn add_grow_helpers(linker: &mut Linker<GuestData>) -> Result<(), wasmi::Error> {
    /// The rewritten module's export `name`, as `pick` reads it; a trap naming `what` when
    /// it is missing.
    fn export<T>(
        caller: &Caller<'_, GuestData>,
        name: &str,
        pick: fn(wasmi::Extern) -> Option<T>,
        what: &str,
    ) -> Result<T, wasmi::Error> {
        caller
            .get_export(name)
            .and_then(pick)
            .ok_or_else(|| wasmi::Error::new(format!("{what}: the rewritten export is missing")))
    }
    /// `table.grow` of table `table`, whose elements are `R`, by `delta` (unsigned); the old
    /// size, or `None` when the table cannot grow.
    fn table_grow<R: Into<wasmi::Ref>>(
        caller: &mut Caller<'_, GuestData>,
        init: R,
        delta: u64,
        table: i32,
    ) -> Result<Option<u64>, wasmi::Error> {
        let name = grow::table_export(table as u32);
        let t = export(caller, &name, wasmi::Extern::into_table, "table.grow")?;
        Ok(t.grow(caller, delta, init.into()).ok())
    }
    /// `memory.grow` of memory `memory` by `delta` pages (unsigned); the old size, or `None`
    /// when the memory cannot grow.
    fn memory_grow(
        caller: &mut Caller<'_, GuestData>,
        delta: u64,
        memory: i32,
    ) -> Result<Option<u64>, wasmi::Error> {
        let name = grow::memory_export(memory as u32);
        let m = export(caller, &name, wasmi::Extern::into_memory, "memory.grow")?;
        Ok(m.grow(caller, delta).ok())
    }
    // What the instruction gives: the old size, -1 on failure; as `i32` for 32-bit memories
    // and tables (whose delta is unsigned), as `i64` for 64-bit ones.
    let small = |old: Option<u64>| old.map_or(-1, |o| o as i32);
    let large = |old: Option<u64>| old.map_or(-1, |o| o as i64);
    linker.func_wrap(
        grow::MODULE,
        grow::MEMORY_GROW,
        move |mut caller: Caller<'_, GuestData>, delta: i32, memory: i32| {
            memory_grow(&mut caller, u64::from(delta as u32), memory).map(small)
        },
    )?;
    linker.func_wrap(
        grow::MODULE,
        grow::MEMORY_GROW64,
        move |mut caller: Caller<'_, GuestData>, delta: i64, memory: i32| {
            memory_grow(&mut caller, delta as u64, memory).map(large)
        },
    )?;
    macro_rules! table_helpers {
        ($($name:expr, $name64:expr, $ref:ty;)*) => {$(
            linker.func_wrap(
                grow::MODULE,
                $name,
                move |mut caller: Caller<'_, GuestData>, init: $ref, delta: i32, table: i32| {
                    table_grow(&mut caller, init, u64::from(delta as u32), table).map(small)
                },
            )?;
            linker.func_wrap(
                grow::MODULE,
                $name64,
                move |mut caller: Caller<'_, GuestData>, init: $ref, delta: i64, table: i32| {
                    table_grow(&mut caller, init, delta as u64, table).map(large)
                },
            )?;
        )*};
    }
    table_helpers! {
        grow::TABLE_GROW_FUNCREF, grow::TABLE_GROW_FUNCREF64, wasmi::Nullable<wasmi::Func>;
        grow::TABLE_GROW_EXTERNREF, grow::TABLE_GROW_EXTERNREF64, wasmi::Nullable<wasmi::ExternRef>;
    }
    Ok(())
}

/// tabi on wasmi.
#[derive(Clone)]
pub struct Wasmi {
    engine: wasmi::Engine,
    modules: std::sync::Arc<tabi_libos::engine::ModuleCache<Module>>,
}

impl Default for Wasmi {
    fn default() -> Self {
        Self::new()
    }
}

impl Wasmi {
    /// An engine with wasmi's default configuration, except deeper limits on recursion
    /// (100,000 frames instead of 1,000) and on the value stack, so that deep recursion such as a
    /// 10,000-frame unwind fits.
    pub fn new() -> Self {
        Self::from_engine(wasmi::Engine::new(&Self::default_config()))
    }

    /// The configuration [`Wasmi::new`] uses, for an embedder to start from.
    pub fn default_config() -> wasmi::Config {
        let mut config = wasmi::Config::default();
        config.set_max_recursion_depth(100_000);
        config.set_max_stack_height(16 << 20);
        config
    }

    /// tabi on an engine the embedder configured (for instance from
    /// [`Wasmi::default_config`]). Its recursion limits must leave room for the guest's
    /// deepest unwind.
    pub fn from_engine(engine: wasmi::Engine) -> Self {
        Wasmi {
            engine,
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

    fn linker(&self) -> Result<Linker<GuestData>, EngineError> {
        let mut linker = Linker::new(&self.engine);
        add_to_linker(&mut linker).map_err(|e| EngineError::Engine(e.to_string()))?;
        Ok(linker)
    }

    /// The underlying wasmi engine.
    pub fn engine(&self) -> &wasmi::Engine {
        &self.engine
    }

    /// Validates and translates a module.
    ///
    /// A module that uses `memory.grow` or `table.grow` is first rewritten to grow through
    /// host calls: wasmi's handlers for those instructions each leave a frame on the host
    /// stack until the guest returns, so a guest growing in a loop would overflow it.
    pub fn compile(&self, wasm: &[u8]) -> Result<Module, EngineError> {
        if let Some(e) = tabi_libos::engine::component_error(wasm) {
            return Err(e);
        }
        let invalid = |e: wasmi::Error| EngineError::InvalidModule(e.to_string());
        match grow::rewrite(wasm) {
            // An error names offsets in the bytes the caller gave.
            Some(rewritten) => Module::new(&self.engine, &rewritten[..])
                .or_else(|_| Module::new(&self.engine, wasm).map_err(invalid)),
            None => Module::new(&self.engine, wasm).map_err(invalid),
        }
    }

    /// Instantiates `module` and runs its start function; `Ok(Err(exit))` when the guest's run
    /// ended there: the start function exited or trapped, or a segment did not fit (a trap
    /// too), as the run would have ended in `_start`.
    fn instantiate(
        &self,
        store: &mut Store<GuestData>,
        module: &Module,
    ) -> Result<Result<wasmi::Instance, Exit>, EngineError> {
        match self.linker()?.instantiate_and_start(&mut *store, module) {
            Ok(instance) => Ok(Ok(instance)),
            Err(e) if e.downcast_ref::<KernelTrap>().is_some() || e.as_trap_code().is_some() => {
                Ok(Err(exit_of(e)))
            }
            Err(e) => Err(EngineError::Link(e.to_string())),
        }
    }

    /// Runs a module's `_start` to the end.
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
        store.data_mut().memory = instance.get_memory(&store, "memory");
        let start = instance
            .get_typed_func::<(), ()>(&store, "_start")
            .map_err(|e| EngineError::Link(format!("no usable `_start` export: {e}")))?;
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

impl Engine for Wasmi {
    fn name(&self) -> &'static str {
        "wasmi"
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

impl tabi_libos::machine::Pausable for Wasmi {
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
