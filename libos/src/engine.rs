//! What an engine adapter must provide.
//!
//! An adapter (`tabi-wasmi`, `tabi-wasmtime`) registers the preview-1 imports of [`crate::p1`]
//! on its engine and runs a guest's `_start` against a [`Process`]. It holds no WASI logic:
//! everything it does for a call is find the guest's memory and hand it to the kernel.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;

use crate::host::Host;
use crate::kernel::Kernel;

/// A guest process outside its Wasm instance: the kernel state and the host it runs on.
pub struct Process {
    /// The kernel's state.
    pub kernel: Kernel,
    /// The machine's side.
    pub host: Box<dyn Host + Send>,
}

impl Process {
    /// A process from a kernel and a host.
    pub fn new(kernel: Kernel, host: impl Host + Send + 'static) -> Self {
        Process {
            kernel,
            host: Box::new(host),
        }
    }
}

/// How a guest's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `_start` returned, or the guest called `proc_exit`, with this status.
    Code(u32),
    /// The guest was ended by a signal it raised.
    Signal(u8),
    /// The guest trapped; the text says why.
    Trap(String),
}

impl Exit {
    /// The status a command-line runner exits with: the guest's own, `128 + signal`, or 134
    /// (as for `SIGABRT`, like `wasmtime run`) for a trap.
    pub fn process_code(&self) -> i32 {
        match self {
            Exit::Code(c) => *c as i32,
            Exit::Signal(s) => 128 + i32::from(*s),
            Exit::Trap(_) => 134,
        }
    }
}

/// A run that has finished, with what is left of the process.
pub struct Finished {
    /// How it ended.
    pub exit: Exit,
    /// The results of the export the run ended in, when that was not a command's `_start`
    /// (a resumed call of a library module's export: see `machine::Start::Call`); else empty.
    pub results: alloc::vec::Vec<crate::machine::Value>,
    /// The process after the run (kernel state and host).
    pub process: Process,
}

/// Why an engine could not run a guest at all (as opposed to the guest failing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The bytes are not a valid module, or use a feature the engine lacks.
    InvalidModule(String),
    /// The module imports something tabi does not provide, or exports no `_start`.
    Link(String),
    /// The engine failed for another reason.
    Engine(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::InvalidModule(m) => write!(f, "invalid module: {m}"),
            EngineError::Link(m) => write!(f, "cannot link module: {m}"),
            EngineError::Engine(m) => write!(f, "engine error: {m}"),
        }
    }
}

impl core::error::Error for EngineError {}

/// What to tell the user when `wasm` is a WebAssembly component rather than a core module:
/// the header is a component's (as `wasm32-wasip2` builds are), and tabi runs core modules.
pub fn component_error(wasm: &[u8]) -> Option<EngineError> {
    is_component(wasm).then(|| {
        EngineError::InvalidModule(String::from(
            "this is a WebAssembly component (the component model, as WASI 0.2 builds are), \
             not a core module; tabi runs core modules that use WASI preview 1 \
             (for Rust, build for `wasm32-wasip1`)",
        ))
    })
}

/// Whether `wasm` starts with a component's header: the Wasm magic, then version 13 and
/// layer 1 (a core module has version 1, layer 0). The kernel has no Wasm parser; the rewrite
/// asks `wasmparser::Parser::is_component`.
fn is_component(wasm: &[u8]) -> bool {
    wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

/// A Wasm engine that can run a guest on tabi's kernel.
pub trait Engine {
    /// Short name (`wasmi`, `wasmtime`).
    fn name(&self) -> &'static str;
    /// Compiles (or validates) `wasm` and runs its `_start` to the end.
    fn run(&self, wasm: &[u8], process: Process) -> Result<Finished, EngineError>;
    /// Compiles (or validates) `wasm` and calls its function export `export` with `args`, as
    /// a host that uses a module as a library (a WASI reactor) does: on a fresh instance, after
    /// the module's start function and its `_initialize` export (unless that is `export`).
    /// The run's results are the export's. Arguments that do not fit the export's parameters
    /// are an [`EngineError::Link`]. An instrumented module never pauses (see
    /// [`crate::machine::invoke`]).
    fn invoke(
        &self,
        wasm: &[u8],
        process: Process,
        export: &str,
        args: &[crate::machine::Value],
    ) -> Result<Finished, EngineError>;
}

/// A bounded cache of compiled modules, keyed by their bytes: what an adapter keeps so that a
/// module resumed many times in one process (the migration harness, a node receiving the same
/// guest again) is compiled once. The least recently used entry goes when it is full.
#[cfg(feature = "std")]
pub struct ModuleCache<M> {
    entries: std::sync::Mutex<alloc::vec::Vec<(alloc::sync::Arc<[u8]>, M)>>,
    capacity: usize,
}

#[cfg(feature = "std")]
impl<M: Clone> ModuleCache<M> {
    /// The capacity adapters use unless told: a handful of guests at once.
    pub const DEFAULT_CAPACITY: usize = 8;

    /// A cache of at most `capacity` modules (0: nothing is kept).
    pub fn new(capacity: usize) -> Self {
        ModuleCache {
            entries: std::sync::Mutex::new(alloc::vec::Vec::new()),
            capacity,
        }
    }

    /// The module compiled from `wasm`: from the cache, or by `compile` (and kept).
    pub fn get_or_compile(
        &self,
        wasm: &[u8],
        compile: impl FnOnce() -> Result<M, EngineError>,
    ) -> Result<M, EngineError> {
        let lock = || self.entries.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut entries = lock();
            if let Some(i) = entries.iter().position(|(k, _)| **k == *wasm) {
                let hit = entries.remove(i);
                let m = hit.1.clone();
                entries.push(hit);
                return Ok(m);
            }
        }
        // Compiled without the lock held: another thread may compile another module meanwhile.
        let m = compile()?;
        if self.capacity > 0 {
            let mut entries = lock();
            if !entries.iter().any(|(k, _)| **k == *wasm) {
                if entries.len() >= self.capacity {
                    entries.remove(0);
                }
                entries.push((alloc::sync::Arc::from(wasm), m.clone()));
            }
        }
        Ok(m)
    }

    /// Modules held now.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(feature = "std")]
impl<M> fmt::Debug for ModuleCache<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}
