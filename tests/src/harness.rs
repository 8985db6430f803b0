//! A guest's set-up as plain data, for tests that describe many guests: the options of
//! [`tabi::GuestBuilder`] as fields, and the migration harness over them.

use std::path::PathBuf;

use tabi::{Backend, Engine, Engines, GuestBuilder, Report, Stdio, Value};

/// How a guest's process is set up.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Its arguments, its program name first (`guest` when there are none).
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Host directories granted, as (host, guest path).
    pub dirs: Vec<(PathBuf, String)>,
    /// Host directories copied into memory, as (host, guest path).
    pub copy_dirs: Vec<(PathBuf, String)>,
    /// Empty in-memory directories.
    pub memory_dirs: Vec<String>,
    /// Virtual clocks and randomness, with this seed.
    pub deterministic: Option<u64>,
    /// Standard input.
    pub stdin: Stdio,
    /// wasi-nn models preloaded for `load_by_name`.
    pub nn_graphs: Vec<tabi::NnGraph>,
}

impl Setup {
    /// A builder of this guest of `wasm` on `engine`.
    pub fn builder(&self, engine: &Engine, wasm: &[u8]) -> GuestBuilder {
        let mut b = GuestBuilder::of_binary(engine, wasm.to_vec()).stdin(self.stdin.clone());
        if let Some((name, rest)) = self.args.split_first() {
            b = b.program_name(name.clone()).args(rest.iter().cloned());
        }
        for (k, v) in &self.env {
            b = b.env(k.clone(), v.clone());
        }
        for (h, g) in &self.dirs {
            b = b.dir(h.clone(), g.clone());
        }
        for (h, g) in &self.copy_dirs {
            b = b.copy_dir(h.clone(), g.clone());
        }
        for g in &self.memory_dirs {
            b = b.memory_dir(g.clone());
        }
        if let Some(seed) = self.deterministic {
            b = b.deterministic(seed);
        }
        for g in &self.nn_graphs {
            b = b.nn_graph(g.clone());
        }
        b
    }
}

/// [`tabi::migrate_test`] of `wasm` set up as `setup`.
pub fn migrate_test(
    wasm: &[u8],
    setup: &Setup,
    every: u64,
    backends: &[Backend],
) -> tabi::Result<Report> {
    migrate_test_with(wasm, setup, every, backends, None)
}

/// [`migrate_test`] of a call of export `invoke.0` with arguments `invoke.1`.
pub fn migrate_test_with(
    wasm: &[u8],
    setup: &Setup,
    every: u64,
    backends: &[Backend],
    invoke: Option<(&str, &[Value])>,
) -> tabi::Result<Report> {
    let mut engines = shared_engines();
    let mut b = setup.builder(&engines.get(Backend::preferred())?, wasm);
    if let Some((export, args)) = invoke {
        b = b.invoke(export, args.to_vec());
    }
    tabi::migrate_test(&b, every, backends, &mut engines)
}

/// The engines of this test process, made once and shared (with their compiled modules) by
/// every test in it.
pub fn shared_engines() -> Engines {
    static ENGINES: std::sync::OnceLock<Engines> = std::sync::OnceLock::new();
    ENGINES
        .get_or_init(|| {
            Engines::of(
                Backend::available_all()
                    .into_iter()
                    .filter_map(|b| Engine::new(b).ok()),
            )
        })
        .clone()
}

/// The engine of `backend` of this test process (see [`shared_engines`]).
pub fn engine(backend: Backend) -> Engine {
    shared_engines()
        .get(backend)
        .unwrap_or_else(|e| panic!("{e}"))
}
