//! The host's backend for ONNX, over tract (the `tract` feature).
//!
//! [`Tract`] checks and computes ONNX models for the kernel's [`NnState`](crate::NnState),
//! and holds the models the host preloaded (`--nn-graph`). What it compiles is a
//! [`PlanCache`], keyed by the model's content hash: never part of a guest's state, rebuilt
//! from the model's bytes when a resumed guest first computes.
//!
//! - A model is parsed when the guest loads it (`invalid_encoding` if it does not parse), and
//!   compiled once for the input types and shapes it declares. A model that declares too
//!   little to compile (a dynamic rank, an unknown type) is compiled again for the shapes of
//!   the inputs each compute is given, and that plan is cached too. A model that tract can
//!   only compile when an input is a constant (a shape, an axis, a padding or a batch-norm
//!   mean that the model takes as an input rather than an initializer) is compiled last for
//!   the values it is given, folded into it, and cached under a hash of those values.
//! - Tensors cross as little-endian bytes on every host: elements are converted one by one,
//!   so a big-endian host (s390x) computes on the same numbers.
//! - An input whose type differs from the model's declared one is cast to it (as an ONNX
//!   runtime would refuse; tract's casts are the ONNX `Cast` operator's). Outputs of types
//!   wasi-nn cannot name are widened: `bool` to `u8`, `i8`/`i16`/`u16`/`u32` to `i32`, `u64`
//!   to `i64`; anything else is `runtime_error`.
//! - Plans run single-threaded, tract's default: a guest's compute is one call of one guest,
//!   results are then the same from run to run on one machine, and a node that runs many
//!   guests schedules them itself rather than each compute taking every core.
//! - Every execution target runs on the CPU: a graph loaded for `gpu` or `tpu` keeps the
//!   target it asked for and computes on tract, as wasmtime's ONNX backend does.
//! - tract is not built for hostile models: a panic inside it is caught and becomes
//!   `runtime_error`. A model is bounded by [`Limits::model_bytes`](crate::Limits) before it
//!   gets here, and each output by [`Limits::tensor_bytes`](crate::Limits) before it is
//!   copied out. What tract allocates while it computes is not bounded: a model can build
//!   intermediate tensors whose size depends on its inputs' values (`ConstantOfShape`,
//!   `Expand`, `Tile`), and a failed allocation aborts the process. A host that runs models
//!   it does not trust bounds the process's memory (a cgroup, a container limit).

use std::boxed::Box;
use std::collections::BTreeMap;
use std::format;
use std::string::{String, ToString};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use tract_onnx::prelude::{
    self as tr, DatumType, Framework as _, InferenceFact, InferenceModelExt as _,
    IntoRunnable as _, IntoTensor as _,
};

use crate::{Backend, Encoding, Graph, HostModel, Limits, ModelInfo, Models, NnErrno, Tensor};

type Plan = Arc<tr::TypedRunnableModel>;

/// What a plan was compiled for, besides the model.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Facts {
    /// The input types and shapes the model declares.
    Declared,
    /// These input types and shapes.
    Shapes(Vec<(DatumType, Vec<usize>)>),
    /// The small inputs' values as constants, the others' types and shapes (their BLAKE3:
    /// see [`values_digest`]).
    Values([u8; 32]),
}

/// What was compiled of a model for one set of input facts.
struct Compiled {
    info: ModelInfo,
    /// The plan; `None` when the model does not compile for these facts.
    plan: Option<Plan>,
    /// The input types the plan expects, where it declares them.
    input_types: Vec<Option<DatumType>>,
}

/// A plan's key: the model's hash and the input facts it was compiled for.
type PlanKey = ([u8; 32], Facts);

struct Plans {
    entries: Vec<(PlanKey, Arc<Compiled>)>,
    capacity: usize,
}

/// Compiled plans, by model hash (and input shapes, for models that need them): shared by
/// every [`Tract`] made from it, so that guests of one process, and the runs of one guest
/// that moves between engines in it, compile a model once. Bounded: the least recently used
/// plan goes when it is full.
#[derive(Clone)]
pub struct PlanCache {
    plans: Arc<Mutex<Plans>>,
    /// tract's ONNX loader, made when the first model is parsed.
    onnx: Arc<std::sync::OnceLock<tract_onnx::Onnx>>,
}

impl Default for PlanCache {
    fn default() -> Self {
        PlanCache::new(PlanCache::DEFAULT_CAPACITY)
    }
}

impl core::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PlanCache")
            .field("plans", &self.len())
            .finish_non_exhaustive()
    }
}

impl PlanCache {
    /// Plans kept unless told otherwise.
    pub const DEFAULT_CAPACITY: usize = 16;

    /// A cache of at most `capacity` plans (0: nothing is kept, every compute compiles).
    pub fn new(capacity: usize) -> PlanCache {
        PlanCache {
            plans: Arc::new(Mutex::new(Plans {
                entries: Vec::new(),
                capacity,
            })),
            onnx: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Plans held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no plan is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plans> {
        self.plans.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &PlanKey) -> Option<Arc<Compiled>> {
        let mut plans = self.lock();
        let i = plans.entries.iter().position(|(k, _)| k == key)?;
        let hit = plans.entries.remove(i);
        let c = hit.1.clone();
        plans.entries.push(hit);
        Some(c)
    }

    fn put(&self, key: PlanKey, c: Arc<Compiled>) {
        let mut plans = self.lock();
        if plans.capacity == 0 || plans.entries.iter().any(|(k, _)| *k == key) {
            return;
        }
        if plans.entries.len() >= plans.capacity {
            plans.entries.remove(0);
        }
        plans.entries.push((key, c));
    }

    /// Parses `bytes` and compiles it for `facts` (with `values`, the inputs, for
    /// [`Facts::Values`]); `InvalidEncoding` when it does not parse.
    fn compile(
        &self,
        bytes: &[u8],
        facts: &Facts,
        values: &[tr::Tensor],
    ) -> Result<Compiled, NnErrno> {
        let mut model = self
            .onnx
            .get_or_init(tract_onnx::onnx)
            .model_for_read(&mut &bytes[..])
            .map_err(|_| NnErrno::InvalidEncoding)?;
        let inputs = model
            .input_outlets()
            .map_err(|_| NnErrno::InvalidEncoding)?
            .len();
        let outputs = model
            .output_outlets()
            .map_err(|_| NnErrno::InvalidEncoding)?;
        let info = ModelInfo {
            inputs: u32::try_from(inputs).map_err(|_| NnErrno::InvalidEncoding)?,
            outputs: u32::try_from(outputs.len()).map_err(|_| NnErrno::InvalidEncoding)?,
        };
        match facts {
            Facts::Declared => {}
            Facts::Shapes(shapes) => {
                for (i, (dt, shape)) in shapes.iter().enumerate() {
                    model = model
                        .with_input_fact(i, InferenceFact::dt_shape(*dt, shape.as_slice()))
                        .map_err(|_| NnErrno::InvalidArgument)?;
                }
            }
            Facts::Values(_) => {
                for (i, t) in values.iter().enumerate() {
                    let fact = if t.len() * t.datum_type().size_of() <= FOLD_BYTES {
                        InferenceFact::from(t.clone())
                    } else {
                        InferenceFact::dt_shape(t.datum_type(), t.shape())
                    };
                    model = model
                        .with_input_fact(i, fact)
                        .map_err(|_| NnErrno::InvalidArgument)?;
                }
            }
        }
        let typed = model.into_optimized();
        let (plan, input_types) = match typed {
            Ok(typed) => {
                let input_types = (0..inputs)
                    .map(|i| typed.input_fact(i).ok().map(|f| f.datum_type))
                    .collect();
                (typed.into_runnable().ok(), input_types)
            }
            Err(_) => (None, Vec::new()),
        };
        Ok(Compiled {
            info,
            plan,
            input_types,
        })
    }

    /// The compiled model `hash` for `facts`, from the cache or compiled (and kept).
    fn compiled(
        &self,
        hash: &[u8; 32],
        bytes: &[u8],
        facts: Facts,
        values: &[tr::Tensor],
    ) -> Result<Arc<Compiled>, NnErrno> {
        let key = (*hash, facts);
        if let Some(c) = self.get(&key) {
            return Ok(c);
        }
        let c = Arc::new(self.compile(bytes, &key.1, values)?);
        self.put(key, c.clone());
        Ok(c)
    }
}

/// The ONNX backend: tract, a [`PlanCache`], and the models the host preloaded.
#[derive(Clone, Debug, Default)]
pub struct Tract {
    plans: PlanCache,
    named: BTreeMap<String, HostModel>,
    by_hash: BTreeMap<[u8; 32], Arc<[u8]>>,
}

impl Tract {
    /// A backend with a cache of its own and no preloaded model.
    pub fn new() -> Tract {
        Tract::default()
    }

    /// A backend that compiles into `plans` (shared with others).
    pub fn with_plans(plans: PlanCache) -> Tract {
        Tract {
            plans,
            named: BTreeMap::new(),
            by_hash: BTreeMap::new(),
        }
    }

    /// The cache it compiles into.
    pub fn plans(&self) -> &PlanCache {
        &self.plans
    }

    /// Preloads `bytes` as the model named `name` for `load_by_name`; gives its content hash.
    pub fn preload(&mut self, name: &str, encoding: Encoding, bytes: Arc<[u8]>) -> [u8; 32] {
        let hash = Models::hash_of(&[&bytes]);
        self.by_hash.insert(hash, bytes.clone());
        self.named
            .insert(name.to_string(), HostModel { encoding, bytes });
        hash
    }

    /// The names of the preloaded models, with their content hashes.
    pub fn preloaded_names(&self) -> impl Iterator<Item = (&str, [u8; 32])> {
        self.named
            .iter()
            .map(|(n, m)| (n.as_str(), Models::hash_of(&[&m.bytes])))
    }
}

/// Inputs of at most this many bytes are folded into a plan compiled for their values
/// ([`Facts::Values`]); larger ones stay inputs (a shape, an axis or a mean is small; the
/// data a model computes on is not, and a cached plan would keep it).
const FOLD_BYTES: usize = 64 << 10;

/// BLAKE3 of the inputs' types and dimensions, and of the bytes of those folded as
/// constants ([`FOLD_BYTES`]): the key of a plan compiled for them.
fn values_digest(inputs: &[&Tensor]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&(inputs.len() as u64).to_le_bytes());
    for t in inputs {
        h.update(&[t.ty as u8]);
        h.update(&(t.dims.len() as u64).to_le_bytes());
        for d in &t.dims {
            h.update(&d.to_le_bytes());
        }
        if t.data.len() <= FOLD_BYTES {
            h.update(&(t.data.len() as u64).to_le_bytes());
            h.update(&t.data);
        }
    }
    *h.finalize().as_bytes()
}

/// Runs `f`, turning a panic inside tract into `RuntimeError`.
fn guarded<T>(f: impl FnOnce() -> Result<T, NnErrno>) -> Result<T, NnErrno> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(Err(NnErrno::RuntimeError))
}

fn one_part<'a>(parts: &[&'a [u8]]) -> Result<&'a [u8], NnErrno> {
    match parts {
        [one] => Ok(one),
        _ => Err(NnErrno::InvalidArgument),
    }
}

fn datum_type(t: crate::TensorType) -> DatumType {
    match t {
        crate::TensorType::F16 => DatumType::F16,
        crate::TensorType::F32 => DatumType::F32,
        crate::TensorType::F64 => DatumType::F64,
        crate::TensorType::U8 => DatumType::U8,
        crate::TensorType::I32 => DatumType::I32,
        crate::TensorType::I64 => DatumType::I64,
    }
}

/// A guest's tensor as tract's: its little-endian elements in this host's order.
fn to_tract(t: &Tensor) -> Result<tr::Tensor, NnErrno> {
    use crate::TensorType as T;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    macro_rules! typed {
        ($ty:ty, $n:literal, $conv:expr) => {{
            let v: Vec<$ty> = t
                .data
                .chunks_exact($n)
                .map(|c| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    $conv(a)
                })
                .collect();
            tr::Tensor::from_shape(&shape, &v)
        }};
    }
    match t.ty {
        T::F16 => typed!(tr::f16, 2, |a| tr::f16::from_bits(u16::from_le_bytes(a))),
        T::F32 => typed!(f32, 4, f32::from_le_bytes),
        T::F64 => typed!(f64, 8, f64::from_le_bytes),
        T::U8 => tr::Tensor::from_shape(&shape, &t.data),
        T::I32 => typed!(i32, 4, i32::from_le_bytes),
        T::I64 => typed!(i64, 8, i64::from_le_bytes),
    }
    .map_err(|_| NnErrno::InvalidArgument)
}

/// tract's tensor as a guest's: its elements little-endian, in row-major order. One past
/// `limits` (its dimensions, or its bytes once widened), or whose [`Tensor::cost`] is past
/// the `room` left, is `TooLarge` before anything is copied; its cost is taken from `room`.
fn from_tract(t: &tr::Tensor, limits: &Limits, room: &mut u64) -> Result<Tensor, NnErrno> {
    use crate::TensorType as T;
    let dims = t
        .shape()
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| NnErrno::TooLarge))
        .collect::<Result<Vec<u32>, _>>()?;
    let wide = match t.datum_type() {
        DatumType::Bool => T::U8,
        DatumType::I8 | DatumType::I16 | DatumType::U16 | DatumType::U32 => T::I32,
        DatumType::U64 => T::I64,
        DatumType::F16 => T::F16,
        DatumType::F64 => T::F64,
        DatumType::U8 => T::U8,
        DatumType::I32 => T::I32,
        DatumType::I64 => T::I64,
        _ => T::F32,
    };
    let bytes = Tensor::byte_len(&dims, wide, limits).map_err(|_| NnErrno::TooLarge)?;
    *room = room
        .checked_sub(Tensor::cost_of(dims.len(), bytes))
        .ok_or(NnErrno::TooLarge)?;
    let widened;
    let (t, ty) = match t.datum_type() {
        DatumType::F16 => (t, T::F16),
        DatumType::F32 => (t, T::F32),
        DatumType::F64 => (t, T::F64),
        DatumType::U8 => (t, T::U8),
        DatumType::I32 => (t, T::I32),
        DatumType::I64 => (t, T::I64),
        DatumType::Bool => {
            widened = t
                .cast_to_dt(DatumType::U8)
                .map_err(|_| NnErrno::RuntimeError)?;
            (&*widened, T::U8)
        }
        DatumType::I8 | DatumType::I16 | DatumType::U16 | DatumType::U32 => {
            widened = t
                .cast_to_dt(DatumType::I32)
                .map_err(|_| NnErrno::RuntimeError)?;
            (&*widened, T::I32)
        }
        DatumType::U64 => {
            widened = t
                .cast_to_dt(DatumType::I64)
                .map_err(|_| NnErrno::RuntimeError)?;
            (&*widened, T::I64)
        }
        _ => return Err(NnErrno::RuntimeError),
    };
    let mut data = Vec::new();
    data.try_reserve_exact(t.len().saturating_mul(ty.size() as usize))
        .map_err(|_| NnErrno::TooLarge)?;
    macro_rules! put {
        ($ty:ty, $bytes:expr) => {{
            let view = t
                .to_plain_array_view::<$ty>()
                .map_err(|_| NnErrno::RuntimeError)?;
            for v in view.iter() {
                data.extend_from_slice(&$bytes(*v));
            }
        }};
    }
    match ty {
        T::F16 => put!(tr::f16, |v: tr::f16| v.to_bits().to_le_bytes()),
        T::F32 => put!(f32, f32::to_le_bytes),
        T::F64 => put!(f64, f64::to_le_bytes),
        T::U8 => put!(u8, |v: u8| [v]),
        T::I32 => put!(i32, i32::to_le_bytes),
        T::I64 => put!(i64, i64::to_le_bytes),
    }
    Ok(Tensor { dims, ty, data })
}

fn run(plan: &Plan, inputs: &[tr::Tensor], limits: &Limits) -> Result<Vec<Tensor>, NnErrno> {
    let values: tr::TVec<tr::TValue> = inputs.iter().map(|t| t.clone().into()).collect();
    let out = plan.run(values).map_err(|_| NnErrno::RuntimeError)?;
    // The outputs together within the room the kernel has for them, each checked before
    // it is copied.
    let mut room = limits.tensors_bytes;
    out.into_iter()
        .map(|v| from_tract(&v.into_tensor(), limits, &mut room))
        .collect()
}

impl Backend for Tract {
    fn check(
        &mut self,
        parts: &[&[u8]],
        hash: &[u8; 32],
        graph: &Graph,
    ) -> Result<ModelInfo, NnErrno> {
        match graph.encoding {
            Encoding::Onnx | Encoding::Autodetect => {}
            _ => return Err(NnErrno::InvalidEncoding),
        }
        let bytes = one_part(parts)?;
        guarded(|| Ok(self.plans.compiled(hash, bytes, Facts::Declared, &[])?.info))
    }

    fn compute(
        &mut self,
        parts: &[&[u8]],
        hash: &[u8; 32],
        _graph: &Graph,
        inputs: &BTreeMap<u32, Tensor>,
        limits: &Limits,
    ) -> Result<Vec<Tensor>, NnErrno> {
        let bytes = one_part(parts)?;
        guarded(|| {
            let generic = self.plans.compiled(hash, bytes, Facts::Declared, &[])?;
            let given = (0..generic.info.inputs)
                .map(|i| inputs.get(&i).ok_or(NnErrno::InvalidArgument))
                .collect::<Result<Vec<&Tensor>, _>>()?;
            let mut tensors = given
                .iter()
                .map(|t| to_tract(t))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(plan) = &generic.plan {
                // Cast to the types the model declares, as far as it declares them.
                for (t, want) in tensors.iter_mut().zip(&generic.input_types) {
                    if let Some(want) = want
                        && t.datum_type() != *want
                    {
                        *t = t
                            .cast_to_dt(*want)
                            .map_err(|_| NnErrno::InvalidArgument)?
                            .into_owned();
                    }
                }
                match run(plan, &tensors, limits) {
                    Ok(out) => return Ok(out),
                    Err(NnErrno::TooLarge) => return Err(NnErrno::TooLarge),
                    Err(_) => {}
                }
            }
            // Compiled for the shapes given, when the model's own facts did not do.
            let shapes: Vec<(DatumType, Vec<usize>)> = given
                .iter()
                .map(|t| {
                    (
                        datum_type(t.ty),
                        t.dims.iter().map(|&d| d as usize).collect(),
                    )
                })
                .collect();
            let tensors = given
                .iter()
                .map(|t| to_tract(t))
                .collect::<Result<Vec<_>, _>>()?;
            let special = self
                .plans
                .compiled(hash, bytes, Facts::Shapes(shapes), &[])?;
            if let Some(plan) = &special.plan {
                match run(plan, &tensors, limits) {
                    Ok(out) => return Ok(out),
                    Err(NnErrno::TooLarge) => return Err(NnErrno::TooLarge),
                    Err(_) => {}
                }
            }
            // Compiled for the values given, as constants: what tract needs of an input
            // that decides a shape or a parameter.
            let digest = values_digest(&given);
            let folded = self
                .plans
                .compiled(hash, bytes, Facts::Values(digest), &tensors)?;
            let plan = folded.plan.as_ref().ok_or(NnErrno::RuntimeError)?;
            run(plan, &tensors, limits)
        })
    }

    fn named(&mut self, name: &str) -> Option<HostModel> {
        self.named.get(name).cloned()
    }

    fn preloaded(&mut self, hash: &[u8; 32]) -> Option<Arc<[u8]>> {
        self.by_hash.get(hash).cloned()
    }
}

/// Reads the model of a `--nn-graph ENCODING::DIR` argument (`DIR/model.onnx` for ONNX, as
/// wasmtime's `-S nn-graph` does); gives its name (the directory's last component), its
/// encoding and its bytes.
pub fn read_graph_dir(spec: &str) -> Result<(String, Encoding, Arc<[u8]>), String> {
    let (encoding, dir) = spec.split_once("::").ok_or_else(|| {
        format!("`{spec}` is not ENCODING::DIR (such as onnx::models/squeezenet)")
    })?;
    let encoding = match encoding {
        "onnx" => Encoding::Onnx,
        other => {
            return Err(format!(
                "tabi serves ONNX models only (`onnx::DIR`), not `{other}`"
            ));
        }
    };
    let dir = std::path::Path::new(dir);
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} names no directory", dir.display()))?
        .to_string();
    let path = dir.join("model.onnx");
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((
        name,
        encoding,
        Arc::from(bytes.into_boxed_slice() as Box<[u8]>),
    ))
}
