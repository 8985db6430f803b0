//! wasi-nn for tabi's kernel: the state a guest's inference holds, as plain data.
//!
//! A guest loads a model, makes an execution context of it, sets inputs, computes and reads
//! outputs. Everything it holds between those calls lives here, in [`NnState`], so that it
//! travels in a snapshot and a guest can move between engines and machines in the middle of
//! that work:
//!
//! - [`Models`]: the bytes guests loaded, stored once per content (BLAKE3), however many
//!   graphs use them;
//! - graphs ([`Graph`]: encoding, target, the model's hash) and execution contexts
//!   ([`Context`]: its graph, the inputs set so far, the outputs of the last compute), in
//!   tables of index handles;
//! - [`Tensor`]: dimensions, element type and bytes, checked against each other before
//!   anything is allocated for them.
//!
//! Inference itself is the host's: a [`Backend`] (tract for ONNX, in `tabi`) computes a
//! context's outputs from the model's bytes and the inputs. Its compiled plans are a cache
//! of the host's, keyed by the model's hash, never part of the state.
//!
//! [`abi`] decodes the `wasi_ephemeral_nn` import module (wasi-nn 0.6, as wasmtime's witx
//! numbers it) over guest memory, for every engine; where wasmtime traps on a bad guest
//! pointer, it returns `invalid_argument`. This crate is `no_std` + `alloc`.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use tabi_nn::*;
//!
//! /// A backend whose models have one input and give it back.
//! struct Echo;
//! impl Backend for Echo {
//!     fn check(&mut self, _: &[&[u8]], _: &[u8; 32], _: &Graph) -> Result<ModelInfo, NnErrno> {
//!         Ok(ModelInfo { inputs: 1, outputs: 1 })
//!     }
//!     fn compute(
//!         &mut self,
//!         _: &[&[u8]],
//!         _: &[u8; 32],
//!         _: &Graph,
//!         inputs: &BTreeMap<u32, Tensor>,
//!         _: &Limits,
//!     ) -> Result<Vec<Tensor>, NnErrno> {
//!         Ok(inputs.values().cloned().collect())
//!     }
//! }
//!
//! let limits = Limits::default();
//! let mut nn = NnState::new();
//! let graph = nn.load(&mut Echo, &[b"model bytes"], Encoding::Onnx, Target::Cpu,  &limits)?;
//! let ctx = nn.init_execution_context(graph, &limits)?;
//! let input = Tensor::new(vec![1, 2], TensorType::F32, vec![7; 8], &limits)?;
//! nn.set_input(ctx, 0, input, &limits)?;
//! nn.compute(ctx, &mut Echo, &limits)?;
//! let mut out = [0u8; 8];
//! assert_eq!(nn.get_output(ctx, 0, &mut out)?, 8);
//! assert_eq!(out, [7; 8]);
//! # Ok::<(), tabi_nn::NnErrno>(())
//! ```
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod abi;
#[cfg(feature = "tract")]
pub mod tract;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

/// The error codes a guest sees (`nn_errno`), numbered as wasi-nn's witx numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u16)]
pub enum NnErrno {
    /// No error.
    Success = 0,
    /// An argument is not valid: a bad handle, index, enum value or guest pointer.
    InvalidArgument = 1,
    /// The model is not of an encoding tabi can load, or not valid in it.
    InvalidEncoding = 2,
    /// The guest's memory could not be reached.
    MissingMemory = 3,
    /// The resource is in use.
    Busy = 4,
    /// The backend failed.
    RuntimeError = 5,
    /// The operation is not supported (an execution target tabi has not).
    UnsupportedOperation = 6,
    /// Something is larger than allowed: a model, a tensor, or an output for its buffer.
    TooLarge = 7,
    /// No such named graph, or no output yet.
    NotFound = 8,
}

impl NnErrno {
    /// The code the guest sees.
    pub fn raw(self) -> u16 {
        self as u16
    }
}

impl fmt::Display for NnErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            NnErrno::Success => "success",
            NnErrno::InvalidArgument => "invalid argument",
            NnErrno::InvalidEncoding => "invalid encoding",
            NnErrno::MissingMemory => "missing memory",
            NnErrno::Busy => "busy",
            NnErrno::RuntimeError => "runtime error",
            NnErrno::UnsupportedOperation => "unsupported operation",
            NnErrno::TooLarge => "too large",
            NnErrno::NotFound => "not found",
        };
        f.write_str(name)
    }
}

impl core::error::Error for NnErrno {}

/// A tensor's element type, numbered as wasi-nn's witx numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TensorType {
    /// 16-bit float.
    F16,
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// Unsigned byte.
    U8,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
}

impl TensorType {
    /// The type of number `raw`; `InvalidArgument` for another number.
    pub fn from_raw(raw: u32) -> Result<TensorType, NnErrno> {
        Ok(match raw {
            0 => TensorType::F16,
            1 => TensorType::F32,
            2 => TensorType::F64,
            3 => TensorType::U8,
            4 => TensorType::I32,
            5 => TensorType::I64,
            _ => return Err(NnErrno::InvalidArgument),
        })
    }

    /// Bytes an element takes.
    pub fn size(self) -> u64 {
        match self {
            TensorType::U8 => 1,
            TensorType::F16 => 2,
            TensorType::F32 | TensorType::I32 => 4,
            TensorType::F64 | TensorType::I64 => 8,
        }
    }
}

/// A model's encoding, numbered as wasi-nn's witx numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// OpenVINO IR.
    OpenVino,
    /// ONNX.
    Onnx,
    /// TensorFlow.
    Tensorflow,
    /// PyTorch.
    PyTorch,
    /// TensorFlow Lite.
    TensorflowLite,
    /// Chosen by the backend.
    Autodetect,
}

impl Encoding {
    /// The encoding of number `raw`; `InvalidArgument` for another number.
    pub fn from_raw(raw: u32) -> Result<Encoding, NnErrno> {
        Ok(match raw {
            0 => Encoding::OpenVino,
            1 => Encoding::Onnx,
            2 => Encoding::Tensorflow,
            3 => Encoding::PyTorch,
            4 => Encoding::TensorflowLite,
            5 => Encoding::Autodetect,
            _ => return Err(NnErrno::InvalidArgument),
        })
    }
}

/// Where a graph is to run, numbered as wasi-nn's witx numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The CPU.
    Cpu,
    /// A GPU.
    Gpu,
    /// A TPU.
    Tpu,
}

impl Target {
    /// The target of number `raw`; `InvalidArgument` for another number.
    pub fn from_raw(raw: u32) -> Result<Target, NnErrno> {
        Ok(match raw {
            0 => Target::Cpu,
            1 => Target::Gpu,
            2 => Target::Tpu,
            _ => return Err(NnErrno::InvalidArgument),
        })
    }
}

/// Most graph builders (parts of a model) a `load` takes: ONNX has one, OpenVINO two.
pub const MAX_BUILDERS: usize = 16;

/// What a guest may make the kernel hold: set by whoever runs or resumes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of one model.
    pub model_bytes: u64,
    /// Most bytes of all models together.
    pub models_bytes: u64,
    /// Most bytes of one tensor's data.
    pub tensor_bytes: u64,
    /// Most bytes of all tensors held at once, every context's inputs and last outputs,
    /// each counted as [`Tensor::cost`].
    pub tensors_bytes: u64,
    /// Most dimensions of a tensor.
    pub dims: u32,
    /// Most graphs, and most execution contexts, alive at once.
    pub handles: u32,
}

impl Default for Limits {
    /// 192 MiB of models (one or all) and 48 MiB of tensors (one or all), so that they fit
    /// a snapshot's kernel section (256 MiB unless the resumer allows more) with 16 MiB for
    /// the rest of the state; 16 dimensions, 1,024 handles.
    fn default() -> Self {
        Limits {
            model_bytes: 192 << 20,
            models_bytes: 192 << 20,
            tensor_bytes: 48 << 20,
            tensors_bytes: 48 << 20,
            dims: 16,
            handles: 1024,
        }
    }
}

/// A tensor: dimensions, element type and its bytes (little-endian elements, row-major).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tensor {
    /// The dimensions.
    pub dims: Vec<u32>,
    /// The element type.
    pub ty: TensorType,
    /// The elements' bytes.
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
}

impl Tensor {
    /// The bytes a tensor of `dims` and `ty` takes: `InvalidArgument` when the product of
    /// the dimensions overflows or a tensor has more dimensions than `limits.dims`, and
    /// `TooLarge` past `limits.tensor_bytes`. Checked before anything is allocated for it.
    ///
    /// A dimension of 0 makes an empty tensor, but counts as 1 against the limit: the
    /// other dimensions still shape what a backend builds from it (a broadcast, a
    /// reshape), so `[0, 4_000_000_000]` is as much `TooLarge` as `[4_000_000_000]`.
    pub fn byte_len(dims: &[u32], ty: TensorType, limits: &Limits) -> Result<u64, NnErrno> {
        if dims.len() > limits.dims as usize {
            return Err(NnErrno::InvalidArgument);
        }
        let extent = dims
            .iter()
            .try_fold(ty.size(), |n, &d| n.checked_mul(u64::from(d.max(1))))
            .ok_or(NnErrno::InvalidArgument)?;
        if extent > limits.tensor_bytes {
            return Err(NnErrno::TooLarge);
        }
        // No larger than `extent`, so no overflow.
        Ok(dims.iter().fold(ty.size(), |n, &d| n * u64::from(d)))
    }

    /// A tensor, its bytes checked against its dimensions and type (see
    /// [`Tensor::byte_len`]): a disagreement is `InvalidArgument`.
    pub fn new(
        dims: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
        limits: &Limits,
    ) -> Result<Tensor, NnErrno> {
        if Tensor::byte_len(&dims, ty, limits)? != data.len() as u64 {
            return Err(NnErrno::InvalidArgument);
        }
        Ok(Tensor { dims, ty, data })
    }
}

impl Tensor {
    /// What a tensor of `dims` dimensions and `bytes` of data counts against
    /// [`Limits::tensors_bytes`]: its bytes, its dimensions, and [`Tensor::OVERHEAD`], so
    /// that empty tensors are not free.
    pub fn cost_of(dims: usize, bytes: u64) -> u64 {
        bytes
            .saturating_add((dims as u64).saturating_mul(4))
            .saturating_add(Tensor::OVERHEAD)
    }

    /// What this tensor counts against [`Limits::tensors_bytes`] (see [`Tensor::cost_of`]).
    pub fn cost(&self) -> u64 {
        Tensor::cost_of(self.dims.len(), self.data.len() as u64)
    }

    /// Bytes a tensor counts beyond its data and dimensions: about what the host spends
    /// on holding one.
    pub const OVERHEAD: u64 = 64;
}

fn held(tensors: impl IntoIterator<Item = impl core::borrow::Borrow<Tensor>>) -> u64 {
    tensors
        .into_iter()
        .fold(0u64, |n, t| n.saturating_add(t.borrow().cost()))
}

fn check_tensor(t: &Tensor, limits: &Limits) -> Result<(), NnErrno> {
    if Tensor::byte_len(&t.dims, t.ty, limits)? != t.data.len() as u64 {
        return Err(NnErrno::InvalidArgument);
    }
    Ok(())
}

/// `bytes` in lowercase hexadecimal, for messages.
pub fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A model, stored once, with how many graphs use it.
///
/// A model the guest passed to `load` is held here, bytes and all. A model the host
/// preloaded (`load_by_name`, `--nn-graph`) stays with the host: the state names it and its
/// hash, and a resumer must have a model of that content again (see
/// [`NnState::missing_host_models`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// The bytes the guest passed (its graph builders, one after another); empty for a host
    /// model.
    #[serde(with = "bytes")]
    pub bytes: Vec<u8>,
    /// The builders' lengths, in order (one, for most encodings).
    pub parts: Vec<u64>,
    /// For a host model, the name the guest found it by.
    pub host: Option<String>,
    /// Graphs that use it; it goes when the last does.
    pub graphs: u32,
}

impl Model {
    /// The guest's builders, as it passed them; `None` for a host model, or when the parts
    /// do not make up the bytes (only a hostile state can have that, and
    /// [`NnState::check`] refuses it).
    pub fn guest_parts(&self) -> Option<Vec<&[u8]>> {
        if self.host.is_some() {
            return None;
        }
        let mut parts = Vec::new();
        let mut at = 0usize;
        for &len in &self.parts {
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| at.checked_add(len))
                .filter(|&end| end <= self.bytes.len())?;
            parts.push(&self.bytes[at..end]);
            at = end;
        }
        (at == self.bytes.len() && !parts.is_empty()).then_some(parts)
    }

    /// The model's size in bytes, wherever they are.
    pub fn len(&self) -> u64 {
        self.parts.iter().fold(0u64, |n, &p| n.saturating_add(p))
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The models the guest's graphs use, by content hash (BLAKE3 of the parts' lengths and
/// bytes): a model loaded twice is held once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Models {
    by_hash: BTreeMap<[u8; 32], Model>,
}

impl Models {
    /// The content hash of a model made of `parts`.
    pub fn hash_of(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&(parts.len() as u64).to_le_bytes());
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// Bytes the state holds, over all models (host models hold none).
    pub fn bytes(&self) -> u64 {
        self.by_hash.values().map(|m| m.bytes.len() as u64).sum()
    }

    /// The model of `hash`.
    pub fn get(&self, hash: &[u8; 32]) -> Option<&Model> {
        self.by_hash.get(hash)
    }

    /// Every model, by hash.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8; 32], &Model)> {
        self.by_hash.iter()
    }

    /// Adds a use of the model made of `parts`, storing its bytes if they are new (unless
    /// `host` names the host model they are); gives its hash. `TooLarge` past the limits,
    /// checked before anything is copied.
    fn add(
        &mut self,
        parts: &[&[u8]],
        host: Option<&str>,
        limits: &Limits,
    ) -> Result<[u8; 32], NnErrno> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if len > limits.model_bytes {
            return Err(NnErrno::TooLarge);
        }
        let hash = Models::hash_of(parts);
        let held = self.bytes();
        let copy = || -> Result<Vec<u8>, NnErrno> {
            if held.saturating_add(len) > limits.models_bytes {
                return Err(NnErrno::TooLarge);
            }
            let mut bytes = Vec::new();
            bytes
                .try_reserve_exact(len as usize)
                .map_err(|_| NnErrno::TooLarge)?;
            for p in parts {
                bytes.extend_from_slice(p);
            }
            Ok(bytes)
        };
        if let Some(m) = self.by_hash.get_mut(&hash) {
            let graphs = m.graphs.checked_add(1).ok_or(NnErrno::TooLarge)?;
            // The guest passed the bytes of a model the host preloaded: from now on the
            // state holds them, so a resumer need not have that model.
            if m.host.is_some() && host.is_none() {
                m.bytes = copy()?;
                m.host = None;
            }
            m.graphs = graphs;
            return Ok(hash);
        }
        let bytes = match host {
            None => copy()?,
            Some(_) => Vec::new(),
        };
        self.by_hash.insert(
            hash,
            Model {
                bytes,
                parts: parts.iter().map(|p| p.len() as u64).collect(),
                host: host.map(String::from),
                graphs: 1,
            },
        );
        Ok(hash)
    }

    /// Drops a use of model `hash`; the bytes go with the last.
    fn release(&mut self, hash: &[u8; 32]) {
        if let Some(m) = self.by_hash.get_mut(hash) {
            m.graphs = m.graphs.saturating_sub(1);
            if m.graphs == 0 {
                self.by_hash.remove(hash);
            }
        }
    }
}

/// What a backend found in a model it accepted, kept with each graph of it so that the
/// kernel checks a guest's input index without asking the backend again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// How many inputs the model takes.
    pub inputs: u32,
    /// How many outputs it gives.
    pub outputs: u32,
}

/// A graph: a model loaded for a target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    /// Its encoding.
    pub encoding: Encoding,
    /// Where it runs.
    pub target: Target,
    /// Its model's content hash, in [`Models`].
    pub model: [u8; 32],
    /// The name it was loaded by (`load_by_name`), if any.
    pub name: Option<String>,
    /// Its model's inputs and outputs, as the backend found them when it was loaded.
    pub info: ModelInfo,
}

/// An execution context: a graph, the inputs set so far and the outputs of the last compute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// The graph's handle.
    pub graph: u32,
    /// The inputs set so far, by index.
    pub inputs: BTreeMap<u32, Tensor>,
    /// The outputs of the last compute, by index; empty before the first.
    pub outputs: Vec<Tensor>,
}

/// A table of index handles: the lowest free slot is used first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table<T> {
    slots: Vec<Option<T>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { slots: Vec::new() }
    }
}

impl<T> Table<T> {
    /// Whether [`Table::insert`] within `limit` would find a slot.
    fn has_room(&self, limit: u32) -> bool {
        self.slots.len() < limit as usize || self.slots.iter().any(Option::is_none)
    }

    fn insert(&mut self, t: T, limit: u32) -> Result<u32, NnErrno> {
        if let Some(i) = self.slots.iter().position(Option::is_none) {
            self.slots[i] = Some(t);
            return Ok(i as u32);
        }
        if self.slots.len() >= limit as usize {
            return Err(NnErrno::TooLarge);
        }
        self.slots.push(Some(t));
        Ok(self.slots.len() as u32 - 1)
    }

    /// The object of handle `h`.
    pub fn get(&self, h: u32) -> Option<&T> {
        self.slots.get(h as usize)?.as_ref()
    }

    fn get_mut(&mut self, h: u32) -> Option<&mut T> {
        self.slots.get_mut(h as usize)?.as_mut()
    }

    /// Every live handle and its object.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.as_ref()?)))
    }
}

/// A model the host preloaded under a name (`--nn-graph`), for `load_by_name`.
#[derive(Clone, Debug)]
pub struct HostModel {
    /// Its encoding.
    pub encoding: Encoding,
    /// Its bytes.
    pub bytes: Arc<[u8]>,
}

/// The host's side of inference (tract for ONNX, in `tabi-nn`'s `tract` feature): it checks
/// and computes models, and holds the models the host preloaded. Its compiled plans are its
/// own cache, never part of the state.
pub trait Backend {
    /// Whether it can load the model made of `parts` (content hash `hash`) as `graph` says
    /// (encoding, target), and how many inputs and outputs it has: `InvalidEncoding` or
    /// `UnsupportedOperation` when it cannot. A model that does not parse is
    /// `InvalidEncoding` or `RuntimeError`.
    fn check(
        &mut self,
        parts: &[&[u8]],
        hash: &[u8; 32],
        graph: &Graph,
    ) -> Result<ModelInfo, NnErrno>;

    /// The outputs of the model made of `parts` given `inputs` (by index), in output order.
    /// An output past `limits.tensor_bytes`, or outputs whose [`Tensor::cost`] together is
    /// past `limits.tensors_bytes` (the room the kernel has left for them), are `TooLarge`,
    /// found before their bytes are copied out of the backend.
    fn compute(
        &mut self,
        parts: &[&[u8]],
        hash: &[u8; 32],
        graph: &Graph,
        inputs: &BTreeMap<u32, Tensor>,
        limits: &Limits,
    ) -> Result<Vec<Tensor>, NnErrno>;

    /// The model preloaded under `name`, if any.
    fn named(&mut self, name: &str) -> Option<HostModel> {
        let _ = name;
        None
    }

    /// The bytes of the preloaded model whose content hash ([`Models::hash_of`] of its one
    /// part) is `hash`, if any: how a resumed guest finds its host models again.
    fn preloaded(&mut self, hash: &[u8; 32]) -> Option<Arc<[u8]>> {
        let _ = hash;
        None
    }
}

/// A backend that serves nothing: every model is `InvalidEncoding`, no name is found. What
/// the kernel uses on a host without inference.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBackend;

impl Backend for NoBackend {
    fn check(&mut self, _: &[&[u8]], _: &[u8; 32], _: &Graph) -> Result<ModelInfo, NnErrno> {
        Err(NnErrno::InvalidEncoding)
    }

    fn compute(
        &mut self,
        _: &[&[u8]],
        _: &[u8; 32],
        _: &Graph,
        _: &BTreeMap<u32, Tensor>,
        _: &Limits,
    ) -> Result<Vec<Tensor>, NnErrno> {
        Err(NnErrno::RuntimeError)
    }
}

/// Byte vectors as serde bytes: one length and the bytes, not a sequence of numbers.
mod bytes {
    use alloc::vec::Vec;
    use core::fmt;
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Never sized by the input's claim: grown as elements arrive.
            let mut v = Vec::new();
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }
}

/// Why [`NnState::check_with`] refused a state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphCheck {
    /// The backend cannot load a graph's model (this host serves no such encoding, or
    /// refuses the model): the state may be sound, but cannot run here.
    Unloadable(String),
    /// A graph records what its model is not: only a forged state has that.
    Mismatch(String),
}

impl fmt::Display for GraphCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphCheck::Unloadable(m) | GraphCheck::Mismatch(m) => f.write_str(m),
        }
    }
}

/// Everything of wasi-nn a guest holds: plain data, in its kernel state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "NnStateData")]
pub struct NnState {
    /// The models, stored once each.
    pub models: Models,
    /// The graphs.
    pub graphs: Table<Graph>,
    /// The execution contexts.
    pub contexts: Table<Context>,
    /// [`Tensor::cost`] of every tensor the contexts hold, kept as they change (and counted
    /// again when a state is decoded), so that a `set_input` does not walk them all.
    #[serde(skip)]
    held: u64,
}

/// [`NnState`] as it is encoded.
#[derive(Deserialize)]
struct NnStateData {
    models: Models,
    graphs: Table<Graph>,
    contexts: Table<Context>,
}

impl From<NnStateData> for NnState {
    fn from(d: NnStateData) -> NnState {
        let mut nn = NnState {
            models: d.models,
            graphs: d.graphs,
            contexts: d.contexts,
            held: 0,
        };
        nn.held = nn.count_tensors();
        nn
    }
}

impl NnState {
    /// Nothing loaded.
    pub fn new() -> NnState {
        NnState::default()
    }

    /// Loads a model made of `builders` (their bytes, in order) as a graph, once `backend`
    /// accepted it (a model it refuses is not kept); gives the graph's handle. A model past
    /// `limits.model_bytes` is `TooLarge` before the backend sees it.
    pub fn load(
        &mut self,
        backend: &mut dyn Backend,
        builders: &[&[u8]],
        encoding: Encoding,
        target: Target,
        limits: &Limits,
    ) -> Result<u32, NnErrno> {
        if builders.is_empty() || builders.len() > MAX_BUILDERS {
            return Err(NnErrno::InvalidArgument);
        }
        let len = builders
            .iter()
            .fold(0u64, |n, p| n.saturating_add(p.len() as u64));
        if len > limits.model_bytes {
            return Err(NnErrno::TooLarge);
        }
        let hash = Models::hash_of(builders);
        let mut graph = Graph {
            encoding,
            target,
            model: hash,
            name: None,
            info: ModelInfo::default(),
        };
        graph.info = backend.check(builders, &hash, &graph)?;
        self.insert_graph(graph, builders, None, limits)
    }

    /// Loads the model the host preloaded under `name` as a graph: `NotFound` when it has
    /// none. Its bytes stay with the host; the state records its name and hash.
    pub fn load_by_name(
        &mut self,
        backend: &mut dyn Backend,
        name: &str,
        limits: &Limits,
    ) -> Result<u32, NnErrno> {
        let found = backend.named(name).ok_or(NnErrno::NotFound)?;
        let parts: [&[u8]; 1] = [&found.bytes];
        let hash = Models::hash_of(&parts);
        let mut graph = Graph {
            encoding: found.encoding,
            target: Target::Cpu,
            model: hash,
            name: Some(String::from(name)),
            info: ModelInfo::default(),
        };
        graph.info = backend.check(&parts, &hash, &graph)?;
        self.insert_graph(graph, &parts, Some(name), limits)
    }

    fn insert_graph(
        &mut self,
        graph: Graph,
        parts: &[&[u8]],
        host: Option<&str>,
        limits: &Limits,
    ) -> Result<u32, NnErrno> {
        // A host model is not the guest's to bound; only its bytes in the state are.
        let limits = match host {
            Some(_) => Limits {
                model_bytes: u64::MAX,
                ..*limits
            },
            None => *limits,
        };
        // Checked first: a load that fails changes nothing.
        if !self.graphs.has_room(limits.handles) {
            return Err(NnErrno::TooLarge);
        }
        let model = self.models.add(parts, host, &limits)?;
        match self.graphs.insert(graph, limits.handles) {
            Ok(g) => Ok(g),
            Err(e) => {
                self.models.release(&model);
                Err(e)
            }
        }
    }

    /// The host models the state names that `backend` does not have (by content hash), as
    /// (name, hash): a resumer refuses to run the guest until they are preloaded again.
    pub fn missing_host_models(&self, backend: &mut dyn Backend) -> Vec<(String, [u8; 32])> {
        self.models
            .iter()
            .filter_map(|(hash, m)| {
                let name = m.host.as_ref()?;
                backend
                    .preloaded(hash)
                    .is_none()
                    .then(|| (name.clone(), *hash))
            })
            .collect()
    }

    #[cfg(test)]
    fn drop_graph(&mut self, g: u32) {
        if let Some(graph) = self.graphs.slots.get_mut(g as usize).and_then(Option::take) {
            self.models.release(&graph.model);
        }
    }

    /// Checks a state that came from outside (a snapshot) against `limits` and its own
    /// invariants, before a guest runs on it: every model's bytes match its hash and its use
    /// count the graphs that use it; every context names a live graph; every tensor's bytes
    /// agree with its dimensions and type; the tables and models are within the limits.
    /// Gives the first broken invariant.
    pub fn check(&self, limits: &Limits) -> Result<(), String> {
        use alloc::format;
        if self.graphs.slots.len() > limits.handles as usize
            || self.contexts.slots.len() > limits.handles as usize
        {
            return Err(format!(
                "{} graph and {} execution context slots, over the limit of {}",
                self.graphs.slots.len(),
                self.contexts.slots.len(),
                limits.handles
            ));
        }
        if self.models.bytes() > limits.models_bytes {
            return Err(format!(
                "{} bytes of models, over the limit of {}",
                self.models.bytes(),
                limits.models_bytes
            ));
        }
        for (hash, model) in self.models.iter() {
            if model.parts.is_empty() || model.parts.len() > MAX_BUILDERS {
                return Err(format!(
                    "model {} has {} parts",
                    hex(hash),
                    model.parts.len()
                ));
            }
            if model.bytes.len() as u64 > limits.model_bytes {
                return Err(format!(
                    "a model of {} bytes, over the limit of {}",
                    model.bytes.len(),
                    limits.model_bytes
                ));
            }
            match (&model.host, model.guest_parts()) {
                (None, Some(parts)) => {
                    if Models::hash_of(&parts) != *hash {
                        return Err(format!(
                            "model {} does not have the bytes its hash names",
                            hex(hash)
                        ));
                    }
                }
                (None, None) => {
                    return Err(format!(
                        "model {}'s parts do not make up its bytes",
                        hex(hash)
                    ));
                }
                (Some(name), _) => {
                    if !model.bytes.is_empty() || model.parts.len() != 1 || name.len() > 4096 {
                        return Err(format!("host model {} is malformed", hex(hash)));
                    }
                }
            }
        }
        // Each model's users, counted in one pass over the graphs.
        let mut users: BTreeMap<[u8; 32], u32> = BTreeMap::new();
        for (g, graph) in self.graphs.iter() {
            if self.models.get(&graph.model).is_none() {
                return Err(format!("graph {g} names a model the state does not hold"));
            }
            if graph.name.as_ref().is_some_and(|n| n.len() > 4096) {
                return Err(format!("graph {g}'s name is malformed"));
            }
            *users.entry(graph.model).or_default() += 1;
        }
        for (hash, model) in self.models.iter() {
            let used = users.get(hash).copied().unwrap_or(0);
            if used != model.graphs || used == 0 {
                return Err(format!(
                    "model {} counts {} graphs and {} use it",
                    hex(hash),
                    model.graphs,
                    used
                ));
            }
        }
        let tensors = self.count_tensors();
        if tensors > limits.tensors_bytes {
            return Err(format!(
                "{tensors} bytes of tensors, over the limit of {}",
                limits.tensors_bytes
            ));
        }
        for (c, ctx) in self.contexts.iter() {
            let Some(graph) = self.graphs.get(ctx.graph) else {
                return Err(format!("execution context {c} names no live graph"));
            };
            for (&i, t) in &ctx.inputs {
                if i >= graph.info.inputs {
                    return Err(format!(
                        "execution context {c} has input {i}, past its model's"
                    ));
                }
                check_tensor(t, limits)
                    .map_err(|_| format!("input {i} of context {c} is malformed"))?;
            }
            if !ctx.outputs.is_empty() && ctx.outputs.len() != graph.info.outputs as usize {
                return Err(format!(
                    "execution context {c} has {} outputs, and its model {}",
                    ctx.outputs.len(),
                    graph.info.outputs
                ));
            }
            for (i, t) in ctx.outputs.iter().enumerate() {
                check_tensor(t, limits)
                    .map_err(|_| format!("output {i} of context {c} is malformed"))?;
            }
        }
        Ok(())
    }

    /// Checks every graph of a state from outside against `backend`, after
    /// [`NnState::check`]: the backend must load its model (from the state's bytes, or the
    /// host model of its hash) for its encoding and target, and find the inputs and outputs
    /// the graph records. Gives the first graph that fails. This compiles each model once
    /// (into the backend's cache, where the guest's next compute finds it).
    pub fn check_with(&self, backend: &mut dyn Backend) -> Result<(), GraphCheck> {
        use alloc::format;
        let mut checked: BTreeMap<([u8; 32], u32, u32), ModelInfo> = BTreeMap::new();
        for (g, graph) in self.graphs.iter() {
            let key = (graph.model, graph.encoding as u32, graph.target as u32);
            let info = match checked.get(&key) {
                Some(info) => *info,
                None => {
                    let model = self.models.get(&graph.model).ok_or_else(|| {
                        GraphCheck::Mismatch(format!(
                            "graph {g} names a model the state does not hold"
                        ))
                    })?;
                    let found = match model.guest_parts() {
                        Some(parts) => backend.check(&parts, &graph.model, graph),
                        None => match backend.preloaded(&graph.model) {
                            Some(bytes) => backend.check(&[&bytes], &graph.model, graph),
                            None => Err(NnErrno::NotFound),
                        },
                    };
                    let info = found.map_err(|e| {
                        GraphCheck::Unloadable(format!(
                            "graph {g}: this host cannot load its model {} ({e})",
                            hex(&graph.model)
                        ))
                    })?;
                    checked.insert(key, info);
                    info
                }
            };
            if info != graph.info {
                return Err(GraphCheck::Mismatch(format!(
                    "graph {g} records {} inputs and {} outputs; its model has {} and {}",
                    graph.info.inputs, graph.info.outputs, info.inputs, info.outputs
                )));
            }
        }
        Ok(())
    }

    /// What every tensor held (each context's inputs and last outputs) counts against
    /// [`Limits::tensors_bytes`]: the sum of their [`Tensor::cost`].
    pub fn tensor_bytes(&self) -> u64 {
        self.held
    }

    fn count_tensors(&self) -> u64 {
        self.contexts.iter().fold(0u64, |n, (_, ctx)| {
            n.saturating_add(held(ctx.inputs.values()))
                .saturating_add(held(&ctx.outputs))
        })
    }

    /// The graph of handle `g`; `InvalidArgument` for an unknown one.
    pub fn graph(&self, g: u32) -> Result<&Graph, NnErrno> {
        self.graphs.get(g).ok_or(NnErrno::InvalidArgument)
    }

    /// The context of handle `c`; `InvalidArgument` for an unknown one.
    pub fn context(&self, c: u32) -> Result<&Context, NnErrno> {
        self.contexts.get(c).ok_or(NnErrno::InvalidArgument)
    }

    /// A new execution context of graph `g`; `TooLarge` past `limits.handles` contexts.
    pub fn init_execution_context(&mut self, g: u32, limits: &Limits) -> Result<u32, NnErrno> {
        self.graph(g)?;
        let ctx = Context {
            graph: g,
            inputs: BTreeMap::new(),
            outputs: Vec::new(),
        };
        self.contexts.insert(ctx, limits.handles)
    }

    /// Checks that context `c` exists and its graph's model has an input `index`
    /// (`InvalidArgument` if not), and that a tensor that costs `cost` ([`Tensor::cost_of`])
    /// fits in place of the one there within `limits.tensors_bytes` (`TooLarge` if not),
    /// before a guest's tensor is copied for it.
    pub fn check_input(
        &self,
        c: u32,
        index: u32,
        cost: u64,
        limits: &Limits,
    ) -> Result<(), NnErrno> {
        let ctx = self.context(c)?;
        let graph = self.graph(ctx.graph)?;
        if index >= graph.info.inputs {
            return Err(NnErrno::InvalidArgument);
        }
        let replaced = ctx.inputs.get(&index).map_or(0, Tensor::cost);
        let after = self.held.saturating_sub(replaced).saturating_add(cost);
        if after > limits.tensors_bytes {
            return Err(NnErrno::TooLarge);
        }
        Ok(())
    }

    /// Sets input `index` of context `c`: `InvalidArgument` for an unknown context or an
    /// index past its model's inputs, `TooLarge` past the limits (see
    /// [`NnState::check_input`]).
    pub fn set_input(
        &mut self,
        c: u32,
        index: u32,
        tensor: Tensor,
        limits: &Limits,
    ) -> Result<(), NnErrno> {
        check_tensor(&tensor, limits)?;
        let cost = tensor.cost();
        self.check_input(c, index, cost, limits)?;
        let ctx = self.contexts.get_mut(c).ok_or(NnErrno::InvalidArgument)?;
        let replaced = ctx
            .inputs
            .insert(index, tensor)
            .as_ref()
            .map_or(0, Tensor::cost);
        self.held = self.held.saturating_sub(replaced).saturating_add(cost);
        Ok(())
    }

    /// Computes context `c`'s outputs with `backend`; they replace the last compute's. An
    /// output past `limits.tensor_bytes`, or outputs that would take the tensors held past
    /// `limits.tensors_bytes`, are `TooLarge` (the state must stay within what a resumer
    /// accepts), and the last outputs are kept.
    pub fn compute(
        &mut self,
        c: u32,
        backend: &mut dyn Backend,
        limits: &Limits,
    ) -> Result<(), NnErrno> {
        let ctx = self.contexts.get(c).ok_or(NnErrno::InvalidArgument)?;
        let graph = self.graphs.get(ctx.graph).ok_or(NnErrno::InvalidArgument)?;
        let model = self.models.get(&graph.model).ok_or(NnErrno::RuntimeError)?;
        // The room the outputs have: what the last ones leave free.
        let others = self.held.saturating_sub(held(&ctx.outputs));
        let limits = &Limits {
            tensors_bytes: limits.tensors_bytes.saturating_sub(others),
            ..*limits
        };
        let outputs = match model.guest_parts() {
            Some(parts) => backend.compute(&parts, &graph.model, graph, &ctx.inputs, limits)?,
            None => {
                let bytes = backend.preloaded(&graph.model).ok_or(NnErrno::NotFound)?;
                backend.compute(&[&bytes], &graph.model, graph, &ctx.inputs, limits)?
            }
        };
        if outputs.len() != graph.info.outputs as usize {
            return Err(NnErrno::RuntimeError);
        }
        for t in &outputs {
            check_tensor(t, limits).map_err(|e| match e {
                NnErrno::TooLarge => NnErrno::TooLarge,
                _ => NnErrno::RuntimeError,
            })?;
        }
        let cost = held(&outputs);
        if cost > limits.tensors_bytes {
            return Err(NnErrno::TooLarge);
        }
        if let Some(ctx) = self.contexts.get_mut(c) {
            ctx.outputs = outputs;
        }
        self.held = others.saturating_add(cost);
        Ok(())
    }

    /// Output `index` of context `c`'s last compute, copied into `buf`; gives its length.
    /// `NotFound` before a compute or past the outputs, `TooLarge` when `buf` is too small.
    pub fn get_output(&self, c: u32, index: u32, buf: &mut [u8]) -> Result<u32, NnErrno> {
        let ctx = self.context(c)?;
        let out = ctx.outputs.get(index as usize).ok_or(NnErrno::NotFound)?;
        let dst = buf.get_mut(..out.data.len()).ok_or(NnErrno::TooLarge)?;
        dst.copy_from_slice(&out.data);
        u32::try_from(out.data.len()).map_err(|_| NnErrno::TooLarge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A backend that sums its inputs' bytes into one output of one byte.
    struct Summing;

    impl Backend for Summing {
        fn check(
            &mut self,
            parts: &[&[u8]],
            _: &[u8; 32],
            g: &Graph,
        ) -> Result<ModelInfo, NnErrno> {
            match (g.encoding, parts[0].first()) {
                (Encoding::Onnx, Some(b'm')) => Ok(ModelInfo {
                    inputs: 1,
                    outputs: 1,
                }),
                (Encoding::Onnx, _) => Err(NnErrno::InvalidEncoding),
                _ => Err(NnErrno::InvalidEncoding),
            }
        }
        fn compute(
            &mut self,
            _: &[&[u8]],
            _: &[u8; 32],
            _: &Graph,
            inputs: &BTreeMap<u32, Tensor>,
            _: &Limits,
        ) -> Result<Vec<Tensor>, NnErrno> {
            let sum = inputs
                .values()
                .flat_map(|t| t.data.iter())
                .fold(0u8, |a, &b| a.wrapping_add(b));
            Ok(vec![Tensor {
                dims: vec![1],
                ty: TensorType::U8,
                data: vec![sum],
            }])
        }
    }

    /// Dimensions and bytes must agree, a product that overflows is refused, and a tensor
    /// past the limit is `TooLarge`, all before any allocation for it.
    #[test]
    fn tensors_are_checked_before_they_are_allocated() {
        let l = Limits::default();
        assert_eq!(Tensor::byte_len(&[2, 3], TensorType::F32, &l), Ok(24));
        assert_eq!(Tensor::byte_len(&[], TensorType::I64, &l), Ok(8));
        assert_eq!(
            Tensor::byte_len(&[u32::MAX, u32::MAX, u32::MAX], TensorType::F64, &l),
            Err(NnErrno::InvalidArgument)
        );
        assert_eq!(
            Tensor::byte_len(&[1 << 20, 1 << 10], TensorType::F32, &l),
            Err(NnErrno::TooLarge)
        );
        assert_eq!(
            Tensor::byte_len(&[1; 17], TensorType::U8, &l),
            Err(NnErrno::InvalidArgument)
        );
        assert_eq!(
            Tensor::new(vec![2], TensorType::F32, vec![0; 7], &l),
            Err(NnErrno::InvalidArgument)
        );
        assert!(Tensor::new(vec![2], TensorType::F32, vec![0; 8], &l).is_ok());
        for raw in 0..6 {
            assert_eq!(TensorType::from_raw(raw).unwrap() as u32, raw);
        }
        assert_eq!(TensorType::from_raw(6), Err(NnErrno::InvalidArgument));
        assert_eq!(Encoding::from_raw(1), Ok(Encoding::Onnx));
        assert_eq!(Target::from_raw(3), Err(NnErrno::InvalidArgument));
    }

    /// A model loaded twice is held once; its bytes go with its last graph; a model past the
    /// limit is refused before it is copied; one the backend refuses is not kept.
    #[test]
    fn models_are_held_once_and_bounded() {
        let l = Limits::default();
        let mut nn = NnState::new();
        let model: &[u8] = b"model of a kilobyte";
        let a = nn
            .load(&mut Summing, &[model], Encoding::Onnx, Target::Cpu, &l)
            .unwrap();
        let b = nn
            .load(&mut Summing, &[model], Encoding::Onnx, Target::Cpu, &l)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(nn.models.bytes(), model.len() as u64);
        assert_eq!(nn.models.iter().count(), 1);
        nn.drop_graph(a);
        assert_eq!(nn.models.bytes(), model.len() as u64);
        nn.drop_graph(b);
        assert_eq!(nn.models.bytes(), 0);

        let small = Limits {
            model_bytes: 4,
            ..l
        };
        assert_eq!(
            nn.load(&mut Summing, &[model], Encoding::Onnx, Target::Cpu, &small),
            Err(NnErrno::TooLarge)
        );
        assert_eq!(
            nn.load(
                &mut Summing,
                &[b"not a model"],
                Encoding::Onnx,
                Target::Cpu,
                &l
            ),
            Err(NnErrno::InvalidEncoding)
        );
        assert_eq!(nn.models.bytes(), 0);
        assert_eq!(
            nn.load(&mut Summing, &[], Encoding::Onnx, Target::Cpu, &l),
            Err(NnErrno::InvalidArgument)
        );
    }

    /// A context's inputs and outputs round-trip through the state's encoding, so a guest
    /// checkpointed between `set_input` and `compute`, or between `compute` and
    /// `get_output`, resumes with the same results; unknown handles and outputs are errors,
    /// and a buffer too small for an output is `TooLarge`.
    #[test]
    fn a_context_survives_encoding_between_calls() {
        let l = Limits::default();
        let mut nn = NnState::new();
        let g = nn
            .load(&mut Summing, &[b"model"], Encoding::Onnx, Target::Cpu, &l)
            .unwrap();
        let c = nn.init_execution_context(g, &l).unwrap();
        nn.set_input(
            c,
            0,
            Tensor::new(vec![2], TensorType::U8, vec![3, 4], &l).unwrap(),
            &l,
        )
        .unwrap();
        let mut nn: NnState = postcard::from_bytes(&postcard::to_allocvec(&nn).unwrap()).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(nn.get_output(c, 0, &mut buf), Err(NnErrno::NotFound));
        nn.compute(c, &mut Summing, &l).unwrap();
        assert_eq!(nn.check(&l), Ok(()));
        let nn: NnState = postcard::from_bytes(&postcard::to_allocvec(&nn).unwrap()).unwrap();
        assert_eq!(nn.get_output(c, 0, &mut buf), Ok(1));
        assert_eq!(buf[0], 7);
        assert_eq!(nn.get_output(c, 0, &mut []), Err(NnErrno::TooLarge));
        assert_eq!(nn.get_output(c, 1, &mut buf), Err(NnErrno::NotFound));
        assert_eq!(
            nn.get_output(c + 1, 0, &mut buf),
            Err(NnErrno::InvalidArgument)
        );
        let mut nn = nn;
        assert_eq!(
            nn.init_execution_context(g + 5, &l),
            Err(NnErrno::InvalidArgument)
        );
        assert_eq!(
            nn.set_input(
                c + 3,
                0,
                Tensor::new(vec![], TensorType::U8, vec![1], &l).unwrap(),
                &l,
            ),
            Err(NnErrno::InvalidArgument)
        );
    }

    /// A state from outside is refused when a model's bytes do not match its hash, its use
    /// count is wrong, a context names no graph, a tensor's bytes disagree with its shape,
    /// an input index is past the model's, or the tables or models exceed the limits.
    #[test]
    fn a_hostile_state_is_refused() {
        let l = Limits::default();
        let mut good = NnState::new();
        let g = good
            .load(&mut Summing, &[b"model"], Encoding::Onnx, Target::Cpu, &l)
            .unwrap();
        let c = good.init_execution_context(g, &l).unwrap();
        good.set_input(
            c,
            0,
            Tensor::new(vec![2], TensorType::U8, vec![1, 2], &l).unwrap(),
            &l,
        )
        .unwrap();
        assert_eq!(good.check(&l), Ok(()));
        let hash = good.graphs.get(g).unwrap().model;

        let mut bad = good.clone();
        bad.models.by_hash.get_mut(&hash).unwrap().bytes[0] ^= 1;
        assert!(bad.check(&l).unwrap_err().contains("hash"));

        let mut bad = good.clone();
        bad.models.by_hash.get_mut(&hash).unwrap().graphs = 2;
        assert!(bad.check(&l).unwrap_err().contains("counts"));

        let mut bad = good.clone();
        bad.models.by_hash.get_mut(&hash).unwrap().parts = vec![9];
        assert!(bad.check(&l).is_err());

        let mut bad = good.clone();
        bad.contexts.get_mut(c).unwrap().graph = 7;
        assert!(bad.check(&l).unwrap_err().contains("no live graph"));

        let mut bad = good.clone();
        bad.contexts
            .get_mut(c)
            .unwrap()
            .inputs
            .get_mut(&0)
            .unwrap()
            .data
            .push(0);
        assert!(bad.check(&l).unwrap_err().contains("malformed"));

        let mut bad = good.clone();
        let t = bad.contexts.get(c).unwrap().inputs[&0].clone();
        bad.contexts.get_mut(c).unwrap().inputs.insert(5, t);
        assert!(bad.check(&l).unwrap_err().contains("past"));

        let mut bad = good.clone();
        bad.graphs.slots.resize(2000, None);
        assert!(bad.check(&l).unwrap_err().contains("limit"));

        let small = Limits {
            models_bytes: 2,
            ..l
        };
        assert!(good.check(&small).unwrap_err().contains("models"));

        // A host model holds no bytes, and one part.
        let mut bad = good.clone();
        bad.models.by_hash.get_mut(&hash).unwrap().host = Some("m".into());
        assert!(bad.check(&l).unwrap_err().contains("host model"));
    }

    /// Summing, with one model preloaded under the name `m`.
    struct Preloaded(Arc<[u8]>);

    impl Backend for Preloaded {
        fn check(&mut self, p: &[&[u8]], h: &[u8; 32], g: &Graph) -> Result<ModelInfo, NnErrno> {
            Summing.check(p, h, g)
        }
        fn compute(
            &mut self,
            p: &[&[u8]],
            h: &[u8; 32],
            g: &Graph,
            i: &BTreeMap<u32, Tensor>,
            l: &Limits,
        ) -> Result<Vec<Tensor>, NnErrno> {
            Summing.compute(p, h, g, i, l)
        }
        fn named(&mut self, name: &str) -> Option<HostModel> {
            (name == "m").then(|| HostModel {
                encoding: Encoding::Onnx,
                bytes: self.0.clone(),
            })
        }
        fn preloaded(&mut self, hash: &[u8; 32]) -> Option<Arc<[u8]>> {
            (*hash == Models::hash_of(&[&self.0])).then(|| self.0.clone())
        }
    }

    /// The tensors held, over every context, stay within `tensors_bytes`: an input or an
    /// output past it is `TooLarge` before it is kept, the last outputs stay, and a dimension
    /// of 0 counts as 1 against the limit.
    #[test]
    fn all_tensors_together_are_bounded() {
        let o = Tensor::cost_of(1, 0);
        assert!(o > 0, "an empty tensor is not free");
        let l = Limits {
            tensor_bytes: 8,
            tensors_bytes: 3 * o + 12,
            ..Limits::default()
        };
        let mut nn = NnState::new();
        let g = nn
            .load(&mut Summing, &[b"model"], Encoding::Onnx, Target::Cpu, &l)
            .unwrap();
        let a = nn.init_execution_context(g, &l).unwrap();
        let b = nn.init_execution_context(g, &l).unwrap();
        let t = |n: usize| Tensor::new(vec![n as u32], TensorType::U8, vec![1; n], &l).unwrap();
        nn.set_input(a, 0, t(8), &l).unwrap();
        nn.set_input(b, 0, t(8), &l).unwrap();
        assert_eq!(nn.tensor_bytes(), 2 * o + 16);
        // One output of one byte would take it past the limit: refused, nothing kept.
        assert_eq!(nn.compute(a, &mut Summing, &l), Err(NnErrno::TooLarge));
        assert!(nn.context(a).unwrap().outputs.is_empty());
        assert_eq!(nn.tensor_bytes(), 2 * o + 16);
        // Replacing an input counts only the difference.
        nn.set_input(b, 0, t(3), &l).unwrap();
        nn.compute(a, &mut Summing, &l).unwrap();
        assert_eq!(nn.tensor_bytes(), 3 * o + 12);
        assert_eq!(nn.compute(b, &mut Summing, &l), Err(NnErrno::TooLarge));
        assert_eq!(
            nn.check_input(a, 0, Tensor::cost_of(1, 9), &l),
            Err(NnErrno::TooLarge)
        );
        assert_eq!(nn.set_input(a, 0, t(0), &l), Ok(()));
        assert_eq!(nn.tensor_bytes(), 3 * o + 4);
        // Recomputing the same outputs keeps the count.
        nn.compute(a, &mut Summing, &l).unwrap();
        assert_eq!(nn.tensor_bytes(), 3 * o + 4);
        assert_eq!(nn.check(&l), Ok(()));
        assert!(
            nn.check(&Limits {
                tensors_bytes: 3 * o + 3,
                ..l
            })
            .unwrap_err()
            .contains("tensors")
        );
        // A decoded state counts its tensors again.
        let decoded: NnState = postcard::from_bytes(&postcard::to_allocvec(&nn).unwrap()).unwrap();
        assert_eq!(decoded.tensor_bytes(), nn.tensor_bytes());
        assert_eq!(decoded, nn);
        // Empty, but shaped past the limit.
        assert_eq!(
            Tensor::byte_len(&[0, 9], TensorType::U8, &l),
            Err(NnErrno::TooLarge)
        );
        assert_eq!(Tensor::byte_len(&[0, 8], TensorType::U8, &l), Ok(0));
    }

    /// A guest that loads the bytes of a model the host preloaded makes the state hold
    /// them: a resumer no longer needs the host's model.
    #[test]
    fn a_host_model_loaded_by_the_guest_is_held() {
        let l = Limits::default();
        let bytes: Arc<[u8]> = Arc::from(&b"model preloaded"[..]);
        let mut host = Preloaded(bytes.clone());
        let mut nn = NnState::new();
        let named = nn.load_by_name(&mut host, "m", &l).unwrap();
        assert_eq!(nn.models.bytes(), 0);
        assert_eq!(nn.missing_host_models(&mut Summing).len(), 1);
        let loaded = nn
            .load(&mut host, &[&bytes], Encoding::Onnx, Target::Cpu, &l)
            .unwrap();
        assert_ne!(named, loaded);
        assert_eq!(nn.models.bytes(), bytes.len() as u64);
        assert!(nn.missing_host_models(&mut Summing).is_empty());
        assert_eq!(nn.check(&l), Ok(()));
        assert_eq!(nn.check_with(&mut Summing), Ok(()));
        // Within the limit of all models.
        let mut nn = NnState::new();
        nn.load_by_name(&mut host, "m", &l).unwrap();
        let tight = Limits {
            models_bytes: 3,
            ..l
        };
        assert_eq!(
            nn.load(&mut host, &[&bytes], Encoding::Onnx, Target::Cpu, &tight),
            Err(NnErrno::TooLarge)
        );
        assert_eq!(nn.models.iter().next().unwrap().1.graphs, 1);
        // A load that fails for want of a graph slot changes nothing.
        let one = Limits { handles: 1, ..l };
        assert_eq!(
            nn.load(&mut host, &[&bytes], Encoding::Onnx, Target::Cpu, &one),
            Err(NnErrno::TooLarge)
        );
        assert_eq!(nn.models.bytes(), 0);
        assert!(nn.models.iter().next().unwrap().1.host.is_some());
    }

    /// A model no graph uses, a graph whose recorded inputs and outputs are not its
    /// model's, or outputs of a count the model does not give are refused.
    #[test]
    fn a_forged_graph_is_refused() {
        let l = Limits::default();
        let mut good = NnState::new();
        let g = good
            .load(&mut Summing, &[b"model"], Encoding::Onnx, Target::Cpu, &l)
            .unwrap();
        let c = good.init_execution_context(g, &l).unwrap();
        assert_eq!(good.check_with(&mut Summing), Ok(()));

        // Too many builders, in a load or in a state.
        let many = [&b"m"[..]; MAX_BUILDERS + 1];
        assert_eq!(
            good.clone()
                .load(&mut Summing, &many, Encoding::Onnx, Target::Cpu, &l),
            Err(NnErrno::InvalidArgument)
        );
        let hash = good.graphs.get(g).unwrap().model;
        let mut bad = good.clone();
        let m = bad.models.by_hash.get_mut(&hash).unwrap();
        m.parts = vec![0; MAX_BUILDERS + 1];
        *m.parts.last_mut().unwrap() = 5;
        assert!(bad.check(&l).unwrap_err().contains("parts"));

        // An orphan host model.
        let mut bad = good.clone();
        bad.models.by_hash.insert(
            [7; 32],
            Model {
                bytes: Vec::new(),
                parts: vec![5],
                host: Some("orphan".into()),
                graphs: 0,
            },
        );
        assert!(bad.check(&l).unwrap_err().contains("counts 0 graphs"));

        let mut bad = good.clone();
        bad.graphs.get_mut(g).unwrap().info.inputs = u32::MAX;
        assert_eq!(bad.check(&l), Ok(()));
        assert!(matches!(
            bad.check_with(&mut Summing),
            Err(GraphCheck::Mismatch(m)) if m.contains("records")
        ));

        let mut bad = good.clone();
        bad.graphs.get_mut(g).unwrap().encoding = Encoding::OpenVino;
        assert!(matches!(
            bad.check_with(&mut Summing),
            Err(GraphCheck::Unloadable(m)) if m.contains("cannot load")
        ));

        let mut bad = good.clone();
        bad.contexts.get_mut(c).unwrap().outputs = vec![
            Tensor {
                dims: vec![],
                ty: TensorType::U8,
                data: vec![0],
            };
            2
        ];
        assert!(bad.check(&l).unwrap_err().contains("outputs"));
    }
}
