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

use tabi_libos::{Engine, EngineError, Exit, Finished, Process, Trap, p1};
use wasmtime::{Caller, Linker, Memory, Module, Store};

/// The data a wasmtime store holds for a tabi guest.
pub struct GuestData {
    /// The guest's process.
    pub process: Process,
    memory: Option<Memory>,
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
    match caller.data().memory {
        Some(m) => {
            let (mem, data) = m.data_and_store_mut(caller);
            (mem, &mut data.process)
        }
        None => (&mut [], &mut caller.data_mut().process),
    }
}

/// Adds every `wasi_snapshot_preview1` import to `linker`.
pub fn add_to_linker(linker: &mut Linker<GuestData>) -> wasmtime::Result<()> {
    macro_rules! register {
        ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
            $(
                linker.func_wrap(
                    p1::MODULE,
                    stringify!($name),
                    |mut caller: Caller<'_, GuestData>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                        let (mem, process) = split(&mut caller);
                        p1::$name(&mut process.kernel, &mut *process.host, mem, $($arg),*)
                            .map_err(|t| wasmtime::Error::new(KernelTrap(t)))
                    },
                )?;
            )*
        };
    }
    tabi_libos::for_each_function!(register);
    linker.func_wrap(
        p1::MODULE,
        "proc_exit",
        |mut caller: Caller<'_, GuestData>, code: i32| -> wasmtime::Result<()> {
            let trap = p1::proc_exit(&mut caller.data_mut().process.kernel, code);
            Err(wasmtime::Error::new(KernelTrap(trap)))
        },
    )?;
    Ok(())
}

/// tabi on wasmtime.
#[derive(Clone)]
pub struct Wasmtime {
    engine: wasmtime::Engine,
    linker: Linker<GuestData>,
}

impl Default for Wasmtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Wasmtime {
    /// An engine with wasmtime's default configuration.
    pub fn new() -> Self {
        let engine = wasmtime::Engine::default();
        let mut linker = Linker::new(&engine);
        add_to_linker(&mut linker).expect("each import is registered once");
        Wasmtime { engine, linker }
    }

    /// The underlying wasmtime engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Compiles a module.
    pub fn compile(&self, wasm: &[u8]) -> Result<Module, EngineError> {
        Module::new(&self.engine, wasm).map_err(|e| EngineError::InvalidModule(format!("{e:#}")))
    }

    /// Runs a compiled module's `_start` to the end.
    pub fn run_module(&self, module: &Module, process: Process) -> Result<Finished, EngineError> {
        let mut store = Store::new(
            &self.engine,
            GuestData {
                process,
                memory: None,
            },
        );
        let instance = self
            .linker
            .instantiate(&mut store, module)
            .map_err(|e| EngineError::Link(format!("{e:#}")))?;
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|e| EngineError::Link(format!("no usable `_start` export: {e:#}")))?;
        let exit = match start.call(&mut store, ()) {
            Ok(()) => Exit::Code(0),
            Err(e) => match e.downcast_ref::<KernelTrap>() {
                Some(KernelTrap(Trap::Exit(code))) => Exit::Code(*code),
                Some(KernelTrap(Trap::Signal(sig))) => Exit::Signal(*sig),
                None => Exit::Trap(format!("{e:#}")),
            },
        };
        Ok(Finished {
            exit,
            process: store.into_data().process,
        })
    }
}

impl Engine for Wasmtime {
    fn name(&self) -> &'static str {
        "wasmtime"
    }

    fn run(&self, wasm: &[u8], process: Process) -> Result<Finished, EngineError> {
        let module = self.compile(wasm)?;
        self.run_module(&module, process)
    }
}
