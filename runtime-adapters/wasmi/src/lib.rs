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

use tabi_libos::{Engine, EngineError, Exit, Finished, Process, Trap, p1};
use wasmi::{Caller, Linker, Memory, Module, Store};

/// The data a wasmi store holds for a tabi guest.
pub struct GuestData {
    /// The guest's process.
    pub process: Process,
    memory: Option<Memory>,
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
    match caller.data().memory {
        Some(m) => {
            let (mem, data) = m.data_and_store_mut(caller);
            (mem, &mut data.process)
        }
        None => (&mut [], &mut caller.data_mut().process),
    }
}

/// Adds every `wasi_snapshot_preview1` import to `linker`.
pub fn add_to_linker(linker: &mut Linker<GuestData>) -> Result<(), wasmi::Error> {
    macro_rules! register {
        ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
            $(
                linker.func_wrap(
                    p1::MODULE,
                    stringify!($name),
                    |mut caller: Caller<'_, GuestData>, $($arg: $ty),*| -> Result<i32, wasmi::Error> {
                        let (mem, process) = split(&mut caller);
                        p1::$name(&mut process.kernel, &mut *process.host, mem, $($arg),*)
                            .map_err(|t| wasmi::Error::host(KernelTrap(t)))
                    },
                )?;
            )*
        };
    }
    tabi_libos::for_each_function!(register);
    linker.func_wrap(
        p1::MODULE,
        "proc_exit",
        |mut caller: Caller<'_, GuestData>, code: i32| -> Result<(), wasmi::Error> {
            let trap = p1::proc_exit(&mut caller.data_mut().process.kernel, code);
            Err(wasmi::Error::host(KernelTrap(trap)))
        },
    )?;
    Ok(())
}

/// tabi on wasmi.
#[derive(Clone)]
pub struct Wasmi {
    engine: wasmi::Engine,
}

impl Default for Wasmi {
    fn default() -> Self {
        Self::new()
    }
}

impl Wasmi {
    /// An engine with wasmi's default configuration.
    pub fn new() -> Self {
        Wasmi {
            engine: wasmi::Engine::default(),
        }
    }

    /// The underlying wasmi engine.
    pub fn engine(&self) -> &wasmi::Engine {
        &self.engine
    }

    /// Validates and translates a module.
    pub fn compile(&self, wasm: &[u8]) -> Result<Module, EngineError> {
        Module::new(&self.engine, wasm).map_err(|e| EngineError::InvalidModule(e.to_string()))
    }

    /// Runs a module's `_start` to the end.
    pub fn run_module(&self, module: &Module, process: Process) -> Result<Finished, EngineError> {
        let mut store = Store::new(
            &self.engine,
            GuestData {
                process,
                memory: None,
            },
        );
        let mut linker = Linker::new(&self.engine);
        add_to_linker(&mut linker).map_err(|e| EngineError::Engine(e.to_string()))?;
        let instance = linker
            .instantiate_and_start(&mut store, module)
            .map_err(|e| EngineError::Link(e.to_string()))?;
        store.data_mut().memory = instance.get_memory(&store, "memory");
        let start = instance
            .get_typed_func::<(), ()>(&store, "_start")
            .map_err(|e| EngineError::Link(format!("no usable `_start` export: {e}")))?;
        let exit = match start.call(&mut store, ()) {
            Ok(()) => Exit::Code(0),
            Err(e) => match e.downcast_ref::<KernelTrap>() {
                Some(KernelTrap(Trap::Exit(code))) => Exit::Code(*code),
                Some(KernelTrap(Trap::Signal(sig))) => Exit::Signal(*sig),
                None => Exit::Trap(e.to_string()),
            },
        };
        Ok(Finished {
            exit,
            process: store.into_data().process,
        })
    }
}

impl Engine for Wasmi {
    fn name(&self) -> &'static str {
        "wasmi"
    }

    fn run(&self, wasm: &[u8], process: Process) -> Result<Finished, EngineError> {
        let module = self.compile(wasm)?;
        self.run_module(&module, process)
    }
}
