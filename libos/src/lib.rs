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
pub mod engine;
pub mod errno;
pub mod host;
pub mod kernel;
pub mod machine;
pub mod memory;
pub mod p1;
pub mod resident;
pub mod written;

pub use engine::{Engine, EngineError, Exit, Finished, Process};
pub use errno::{CallError, Errno, Trap};
pub use host::Host;
pub use kernel::{Descriptor, Kernel, Mount, MountKind, Object, OpenOptions};
pub use memory::GuestMemory;
pub use tabi_vfs as vfs;

/// Encodes a kernel's state with postcard.
pub fn encode_state(kernel: &Kernel) -> Result<alloc::vec::Vec<u8>, postcard::Error> {
    postcard::to_allocvec(kernel)
}

/// Decodes a kernel's state written by [`encode_state`]; malformed input is an error.
pub fn decode_state(bytes: &[u8]) -> Result<Kernel, postcard::Error> {
    postcard::from_bytes(bytes)
}
