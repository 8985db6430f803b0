//! tabi's kernel: the state of a WebAssembly guest process, and the WASI ABI over it.
//!
//! # Layers
//!
//! - [`Kernel`] is the whole state of a process outside its linear memory: arguments,
//!   environment, a table of descriptors (index handles to plain enums), the in-memory file
//!   system from `tabi-vfs`, clock and random-generator state, the exit status. It is plain
//!   data: it derives serde and round-trips through postcard, which is what lets a checkpoint
//!   carry it to another engine or machine.
//! - [`Host`] brings in everything that depends on the machine: clocks, entropy, the real
//!   standard streams, granted host directories. Nothing in the kernel reads a clock itself.
//! - [`p1`] decodes `wasi_snapshot_preview1` once, over [`GuestMemory`], for every engine.
//! - [`machine`] is the engine-neutral half of pausing and resuming an instrumented guest.
//! - [`Engine`] is what an engine adapter (`tabi-wasmi`, `tabi-wasmtime`) implements; the
//!   adapters register [`p1`]'s functions with [`for_each_function!`] and hold no WASI logic.
//!
//! # Example
//!
//! ```
//! use tabi_libos::{Kernel, p1, host::Host, Errno};
//!
//! struct Quiet;
//! impl Host for Quiet {
//!     fn wall_clock_ns(&mut self) -> u64 { 0 }
//!     fn monotonic_ns(&mut self) -> u64 { 0 }
//!     fn random_bytes(&mut self, b: &mut [u8]) -> Result<(), Errno> { b.fill(4); Ok(()) }
//!     fn stdin_read(&mut self, _: &mut [u8]) -> Result<usize, Errno> { Ok(0) }
//!     fn stdout_write(&mut self, _: &[u8]) -> Result<(), Errno> { Ok(()) }
//!     fn stderr_write(&mut self, _: &[u8]) -> Result<(), Errno> { Ok(()) }
//!     fn sleep_ns(&mut self, _: u64) {}
//! }
//!
//! let mut kernel = Kernel::new();
//! kernel.set_args(["guest", "hello"]);
//! let mut memory = vec![0u8; 64];
//! // args_sizes_get(argc = 0, argv_buf_size = 4)
//! let errno = p1::args_sizes_get(&mut kernel, &mut Quiet, &mut memory, 0, 4).unwrap();
//! assert_eq!(errno, 0);
//! assert_eq!(&memory[0..8], &[2, 0, 0, 0, 12, 0, 0, 0]);
//! // A pointer past the end of memory is EFAULT, not a crash.
//! let errno = p1::args_sizes_get(&mut kernel, &mut Quiet, &mut memory, 62, 4).unwrap();
//! assert_eq!(errno, Errno::Fault.raw() as i32);
//! ```
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod abi;
pub mod budget;
pub mod engine;
pub mod errno;
pub mod handles;
pub mod host;
pub mod kernel;
pub mod machine;
pub mod memory;
pub mod nn;
pub mod p1;

pub use engine::{Engine, EngineError, Exit, Finished, Process};
pub use errno::{CallError, Errno, Trap};
pub use host::Host;
pub use kernel::{
    Descriptor, InvalidState, Kernel, Mount, MountKind, Object, OpenOptions, Pending, STATE_SCHEMA,
    StateLimits,
};
pub use memory::GuestMemory;
pub use tabi_nn as nn_state;
pub use tabi_vfs as vfs;

/// Encodes a kernel's state with postcard.
pub fn encode_state(kernel: &Kernel) -> Result<alloc::vec::Vec<u8>, postcard::Error> {
    postcard::to_allocvec(kernel)
}

/// Bytes of structure (collection elements, map entries) a decoded state may take whatever its
/// encoding: enough for the descriptor table and a small file system.
pub const STRUCTURE_FLOOR: u64 = 4 << 20;

/// Most bytes of structure a decoded state may take per byte of the input that justifies it
/// (see [`budget`]): a legitimate state takes well under half of this even when it is mostly
/// freed descriptors and inodes, which are one byte each in postcard.
pub const STRUCTURE_RATIO: u64 = 64;

/// Decodes a kernel's state written by [`encode_state`], in a memory budget relative to its
/// own length ([`STRUCTURE_FLOOR`] plus [`STRUCTURE_RATIO`] per byte); malformed input, or
/// input that would take more, is an error. The state is not checked: see [`Kernel::check`]
/// and [`decode_checked`].
pub fn decode_state(bytes: &[u8]) -> Result<Kernel, postcard::Error> {
    let budget = STRUCTURE_FLOOR.saturating_add(STRUCTURE_RATIO.saturating_mul(bytes.len() as u64));
    decode_state_within(bytes, budget).map_err(|e| match e {
        DecodeError::Postcard(e) => e,
        _ => postcard::Error::DeserializeBadEncoding,
    })
}

/// Why a kernel state from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a postcard kernel state.
    Postcard(postcard::Error),
    /// Decoding would take more memory than the budget.
    OverBudget {
        /// The budget, in bytes.
        budget: u64,
    },
    /// Bytes are left over after the state.
    Trailing(usize),
    /// The state decodes but breaks an invariant or the resumer's limits.
    Invalid(InvalidState),
    /// A schema this kernel does not know (a newer tabi wrote it).
    Schema {
        /// The state's schema.
        found: u16,
    },
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Postcard(e) => write!(f, "{e}"),
            DecodeError::OverBudget { budget } => {
                write!(f, "{} (budget {budget} bytes)", budget::OVER_BUDGET)
            }
            DecodeError::Trailing(n) => write!(f, "{n} bytes after the state"),
            DecodeError::Invalid(e) => write!(f, "{e}"),
            DecodeError::Schema { found } => write!(
                f,
                "kernel state schema {found} is newer than this tabi reads (1 to {STATE_SCHEMA})"
            ),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Decodes a kernel state, taking at most `budget` bytes of memory for its structure (see
/// [`budget`]); what the state holds as content (file bytes, strings) is at most the input's
/// length on top. The state is not checked.
pub fn decode_state_within(bytes: &[u8], budget: u64) -> Result<Kernel, DecodeError> {
    decode_schema_within(bytes, STATE_SCHEMA, budget)
}

/// [`decode_state_within`] of a state of schema `schema` ([`STATE_SCHEMA`] or an earlier one,
/// whose missing fields take their defaults).
pub fn decode_schema_within(bytes: &[u8], schema: u16, budget: u64) -> Result<Kernel, DecodeError> {
    match schema {
        1 => decode_as::<kernel::KernelV1>(bytes, budget).map(Kernel::from),
        2 => decode_as::<kernel::KernelV2>(bytes, budget).map(Kernel::from),
        STATE_SCHEMA => decode_as::<Kernel>(bytes, budget),
        found => Err(DecodeError::Schema { found }),
    }
}

/// Decodes a `T` within `budget` (see [`decode_state_within`]).
fn decode_as<T: serde::de::DeserializeOwned>(bytes: &[u8], budget: u64) -> Result<T, DecodeError> {
    let b = budget::Budget::new(budget);
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let kernel = T::deserialize(budget::Budgeted::new(&mut de, &b)).map_err(|e| {
        if b.spent() {
            DecodeError::OverBudget { budget }
        } else {
            DecodeError::Postcard(e)
        }
    })?;
    let rest = de.finalize().map_err(DecodeError::Postcard)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(kernel)
}

/// [`decode_state_within`], then [`Kernel::check`] with the resumer's `limits`: a state from
/// outside that a guest can run on.
pub fn decode_checked(
    bytes: &[u8],
    budget: u64,
    limits: &StateLimits,
) -> Result<Kernel, DecodeError> {
    decode_checked_schema(bytes, STATE_SCHEMA, budget, limits)
}

/// [`decode_checked`] of a state of schema `schema` (see [`decode_schema_within`]).
pub fn decode_checked_schema(
    bytes: &[u8],
    schema: u16,
    budget: u64,
    limits: &StateLimits,
) -> Result<Kernel, DecodeError> {
    let mut kernel = decode_schema_within(bytes, schema, budget)?;
    kernel.check(limits).map_err(DecodeError::Invalid)?;
    Ok(kernel)
}
