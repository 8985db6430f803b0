//! wasi-nn for a guest: the models the host preloads (`--nn-graph`), the limits on what the
//! guest may load, and the backend (tract, for ONNX) that serves its inference.

use std::sync::Arc;

#[cfg(feature = "nn")]
pub use tabi_nn::tract::PlanCache;
pub use tabi_nn::{Encoding, Limits as NnLimits};

use crate::error::{Error, Result};

/// A model the host preloads under a name, for the guest's `load_by_name`.
#[derive(Clone)]
pub struct NnGraph {
    /// The name the guest loads it by.
    pub name: String,
    /// Its encoding.
    pub encoding: Encoding,
    /// Its bytes.
    pub bytes: Arc<[u8]>,
}

impl std::fmt::Debug for NnGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NnGraph")
            .field("name", &self.name)
            .field("encoding", &self.encoding)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl NnGraph {
    /// The model of `--nn-graph ENCODING::DIR`, as wasmtime's `-S nn-graph` takes it:
    /// `DIR/model.onnx` for `onnx`, named after `DIR`'s last component.
    #[cfg(feature = "nn")]
    pub fn from_dir(spec: &str) -> Result<NnGraph> {
        let (name, encoding, bytes) = tabi_nn::tract::read_graph_dir(spec)
            .map_err(|e| Error::Config(format!("--nn-graph: {e}")))?;
        Ok(NnGraph {
            name,
            encoding,
            bytes,
        })
    }
}

/// How a guest's wasi-nn is served: preloaded models, limits, and the cache of compiled
/// plans (shared by clones, so a guest resumed in the same process compiles a model once).
#[derive(Clone, Debug, Default)]
pub(crate) struct NnSpec {
    pub graphs: Vec<NnGraph>,
    #[cfg(feature = "nn")]
    pub plans: PlanCache,
}

impl NnSpec {
    /// The backend a new host serves wasi-nn with.
    #[cfg(feature = "nn")]
    pub fn backend(&self) -> Box<dyn tabi_nn::Backend + Send> {
        let mut tract = tabi_nn::tract::Tract::with_plans(self.plans.clone());
        for g in &self.graphs {
            tract.preload(&g.name, g.encoding, g.bytes.clone());
        }
        Box::new(tract)
    }

    /// Without the `nn` feature: a backend that serves nothing.
    #[cfg(not(feature = "nn"))]
    pub fn backend(&self) -> Box<dyn tabi_nn::Backend + Send> {
        Box::new(tabi_nn::NoBackend)
    }
}

/// Refuses a kernel state whose host models (loaded by name) the resumer's backend does
/// not have, naming each; then one whose graphs the backend does not load as they record
/// (their model, encoding, inputs and outputs), which only a forged snapshot has.
pub(crate) fn check_graphs(
    kernel: &tabi_libos::Kernel,
    host: &mut dyn tabi_libos::Host,
) -> Result<()> {
    let mut none = tabi_nn::NoBackend;
    let backend: &mut dyn tabi_nn::Backend = match host.nn() {
        Some(b) => b,
        None => &mut none,
    };
    let missing = kernel.nn().missing_host_models(backend);
    if let Some((name, hash)) = missing.first() {
        return Err(Error::Grant(format!(
            "the guest loaded model `{name}` by name (content {}); preload a model of that \
             content again with --nn-graph ENCODING::DIR, DIR named `{name}`{}",
            tabi_nn::hex(hash),
            match missing.len() {
                1 => String::new(),
                n => format!(" ({} more models are missing)", n - 1),
            }
        )));
    }
    match kernel.nn().check_with(backend) {
        Ok(()) => Ok(()),
        Err(tabi_nn::GraphCheck::Unloadable(e)) => Err(Error::Grant(format!(
            "the guest's wasi-nn graphs cannot run here: {e}"
        ))),
        Err(tabi_nn::GraphCheck::Mismatch(e)) => Err(Error::Snapshot(
            tabi_snapshot::Error::BadKernelState(format!("wasi-nn: {e}")),
        )),
    }
}
