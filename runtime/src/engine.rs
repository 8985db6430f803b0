//! Engines as values: which Wasm engine runs a guest is an [`Engine`] the caller makes (and
//! may configure), not a process-wide choice.

use std::sync::Arc;

use tabi_libos::Process;
use tabi_libos::machine::{Begun, Pausable, PauseControl, Points};

use crate::error::{Error, Result};

/// A kind of Wasm engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// wasmtime (Cranelift): compiled code, fast.
    Wasmtime,
    /// wasmi: an interpreter, small and portable.
    Wasmi,
}

impl Backend {
    /// Both, wasmtime first.
    pub const ALL: [Backend; 2] = [Backend::Wasmtime, Backend::Wasmi];

    /// Its name on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Wasmtime => "wasmtime",
            Backend::Wasmi => "wasmi",
        }
    }

    /// Whether this build of tabi has it (its cargo feature is on).
    pub fn available(self) -> bool {
        match self {
            Backend::Wasmtime => cfg!(feature = "wasmtime"),
            Backend::Wasmi => cfg!(feature = "wasmi"),
        }
    }

    /// The engine used unless told: wasmtime, or wasmi in a build without it.
    pub fn preferred() -> Backend {
        if cfg!(feature = "wasmtime") {
            Backend::Wasmtime
        } else {
            Backend::Wasmi
        }
    }

    /// The backends this build has, wasmtime first.
    pub fn available_all() -> Vec<Backend> {
        Backend::ALL.into_iter().filter(|b| b.available()).collect()
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wasmtime" => Ok(Backend::Wasmtime),
            "wasmi" => Ok(Backend::Wasmi),
            _ => Err(Error::Config(format!(
                "unknown backend `{s}` (wasmtime or wasmi)"
            ))),
        }
    }
}

/// A Wasm engine with tabi's imports: what runs guests. Cheap to clone (clones share the
/// engine and its cache of compiled modules); make one per configuration and keep it.
///
/// ```
/// use tabi::{Backend, Engine};
/// let engine = Engine::new(Backend::Wasmi)?;
/// assert_eq!(engine.backend(), Backend::Wasmi);
/// # Ok::<(), tabi::Error>(())
/// ```
#[derive(Clone)]
pub struct Engine {
    backend: Backend,
    inner: Arc<dyn Pausable>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine of `backend` with tabi's default configuration; [`Error::NoEngine`] when this
    /// build lacks it.
    pub fn new(backend: Backend) -> Result<Engine> {
        match backend {
            #[cfg(feature = "wasmtime")]
            Backend::Wasmtime => Ok(Engine::wasmtime()),
            #[cfg(feature = "wasmi")]
            Backend::Wasmi => Ok(Engine::wasmi()),
            #[allow(unreachable_patterns, reason = "reached when a feature is off")]
            other => Err(Error::NoEngine(other.name())),
        }
    }

    /// Which kind of engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The engine as the kernel's adapters see it.
    pub fn pausable(&self) -> &dyn Pausable {
        &*self.inner
    }

    /// An engine of any adapter, under the name of `backend` (which says which it is).
    pub fn from_adapter(backend: Backend, adapter: impl Pausable + 'static) -> Engine {
        Engine {
            backend,
            inner: Arc::new(adapter),
        }
    }

    /// Begins a pausable session of instrumented `wasm`.
    pub(crate) fn begin(
        &self,
        wasm: &[u8],
        process: Process,
        control: PauseControl,
        points: Points,
    ) -> Result<Begun> {
        Ok(self.inner.begin_wasm(wasm, process, control, points)?)
    }
}

#[cfg(feature = "wasmtime")]
impl Engine {
    /// wasmtime with tabi's default configuration ([`tabi_wasmtime::Wasmtime::new`]).
    pub fn wasmtime() -> Engine {
        Engine::from_adapter(Backend::Wasmtime, tabi_wasmtime::Wasmtime::new())
    }

    /// wasmtime keeping its compiled code in `directory` (wasmtime's own cache), so that a
    /// module compiled once starts at once the next time. The directory holds native code
    /// that is run as it is read: it must be writable by its user only (see
    /// [`crate::private_dir`]).
    pub fn wasmtime_with_code_cache(directory: &std::path::Path) -> Result<Engine> {
        Ok(Engine::from_adapter(
            Backend::Wasmtime,
            tabi_wasmtime::Wasmtime::with_cache(directory)?,
        ))
    }

    /// wasmtime on an engine the caller configured; start from
    /// [`tabi_wasmtime::Wasmtime::default_config`] to keep guests able to move to wasmi.
    pub fn from_wasmtime(engine: wasmtime::Engine) -> Engine {
        Engine::from_adapter(
            Backend::Wasmtime,
            tabi_wasmtime::Wasmtime::from_engine(engine),
        )
    }

    /// wasmtime with the caller's configuration.
    pub fn from_wasmtime_config(config: &wasmtime::Config) -> Result<Engine> {
        let engine = wasmtime::Engine::new(config).map_err(|e| {
            Error::Config(format!(
                "cannot make a wasmtime engine of this configuration: {e:#}"
            ))
        })?;
        Ok(Engine::from_wasmtime(engine))
    }
}

#[cfg(feature = "wasmi")]
impl Engine {
    /// wasmi with tabi's default configuration ([`tabi_wasmi::Wasmi::new`]).
    pub fn wasmi() -> Engine {
        Engine::from_adapter(Backend::Wasmi, tabi_wasmi::Wasmi::new())
    }

    /// wasmi on an engine the caller configured; start from
    /// [`tabi_wasmi::Wasmi::default_config`].
    pub fn from_wasmi(engine: wasmi::Engine) -> Engine {
        Engine::from_adapter(Backend::Wasmi, tabi_wasmi::Wasmi::from_engine(engine))
    }
}

/// One engine of each backend a run may use, made when first asked for: what a caller that
/// moves guests between engines (the harness, `tabi migrate-test`) keeps.
#[derive(Clone, Debug, Default)]
pub struct Engines {
    made: Vec<Engine>,
}

impl Engines {
    /// No engine yet; each is made with tabi's default configuration when first asked for.
    pub fn new() -> Engines {
        Engines::default()
    }

    /// These engines, one per backend (a later one of the same backend is ignored).
    pub fn of(engines: impl IntoIterator<Item = Engine>) -> Engines {
        let mut e = Engines::new();
        for engine in engines {
            if !e.made.iter().any(|m| m.backend == engine.backend) {
                e.made.push(engine);
            }
        }
        e
    }

    /// The engine of `backend`.
    pub fn get(&mut self, backend: Backend) -> Result<Engine> {
        if let Some(e) = self.made.iter().find(|e| e.backend == backend) {
            return Ok(e.clone());
        }
        let e = Engine::new(backend)?;
        self.made.push(e.clone());
        Ok(e)
    }
}
