//! tabi's file systems: an in-memory tree whose whole state is plain data, and the interface to
//! sandboxed host directories.
//!
//! # Layers
//!
//! - [`MemFs`] is an inode table of plain enums ([`Node`]): files, directories, symlinks, hard
//!   links and timestamps. It serializes with serde, so a checkpoint carries the whole tree, and
//!   it never reads a clock: operations that touch a timestamp take `now` as an argument.
//!   [`MemFs::resolve`] walks a path one component at a time and never leaves the directory it
//!   started from: `..` above it and absolute symlinks are [`FsError::Escape`], and more than
//!   [`MAX_SYMLINKS`] links is [`FsError::Loop`].
//! - [`HostFs`] is how the kernel reaches a host directory granted with `--dir`. The kernel keeps
//!   only plain data about host objects (mount index, key, path); with the `std` feature,
//!   [`CapStdFs`] implements it over cap-std, so no path can leave the granted directory.
//!
//! The kernel crate (`tabi-libos`) uses both; nothing here knows about WASI or Wasm engines.
//!
//! # Example
//!
//! ```
//! use tabi_vfs::MemFs;
//!
//! let mut fs = MemFs::new();
//! let root = fs.new_root(0);
//! let dir = fs.mkdir(root, "docs", 0).unwrap();
//! let file = fs.create_file(dir, "a.txt", 0).unwrap();
//! fs.write_at(file, 0, b"hello", 1).unwrap();
//! let found = fs.resolve(root, "docs/../docs/a.txt", true).unwrap();
//! assert_eq!(found.ino, Some(file));
//! assert!(fs.resolve(root, "../etc/passwd", true).is_err());
//! ```
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod error;
mod host;
mod mem;
mod types;

#[cfg(feature = "std")]
mod cap;

pub use error::{FsError, FsResult};
pub use host::{HostDirEntry, HostFs, HostObj, HostOpen};
pub use mem::{
    Directory, ENTRY_COST, INODE_COST, Inode, InvalidFs, MAX_INODES, MEM_DEV, MemFs, Node,
    RESERVED_INODES, Resolved,
};
pub use types::{DirEntry, FileType, Ino, MAX_SYMLINKS, NAME_MAX, PATH_MAX, SetTime, Stat};

#[cfg(feature = "std")]
pub use cap::{CapStdFs, HostVisitor, MAX_HOST_DEPTH, import_host_dir, walk_host_dir};
