//! tabi's checkpoint file.
//!
//! A snapshot holds everything of a paused guest but the engine: the identity of the module it
//! ran, each memory (64 KiB pages; all-zero pages left out, the rest LZ4-compressed in chunks),
//! the globals, the tables, the save stack the instrumented guest wrote, and the kernel state.
//! `docs/snapshot-format.md` is the format's definition; this crate writes and reads it.
//!
//! - Everything is little-endian and sized explicitly, so a snapshot is the same bytes on every
//!   host (the kernel state is postcard, which is byte-order independent too).
//! - Writing streams: memories are compressed chunk by chunk straight to the [`Sink`], so a
//!   guest's memory is never held twice.
//! - Reading treats the file as hostile: every size is checked against [`Limits`] before it is
//!   allocated, every section and chunk against its CRC-32, the order of sections, and the
//!   kernel state must decode. Failures are a typed [`Error`], never a panic.
//! - An incremental snapshot names its parent by [`Snapshot::hash`] and holds only the pages
//!   (and kernel state) that changed since it.
//!
//! A snapshot never grants anything on the host: it records which guest paths were host
//! mounts, and whoever resumes decides what to grant.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod format;
pub mod lz4;
mod read;
mod write;

pub use format::{CHUNK_PAGES, MAGIC, PAGE, SectionId, VERSION};
pub use read::{
    Head, Limits, MemoryTarget, SectionInfo, Snapshot, kernel_state, kernel_state_schema, read,
    read_into,
};
pub use write::{Base, Contents, Prior, Summary, WriteError, write, write_unchecked, write_within};

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Which module a snapshot was taken from, and with which rewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// SHA-256 of the original module's bytes.
    pub original_sha256: [u8; 32],
    /// SHA-256 of the instrumented module that ran.
    pub module_sha256: [u8; 32],
    /// The instrumentation options, as the writer encoded them (shown by `tabi inspect`).
    pub options: Vec<u8>,
    /// For an incremental snapshot: the [`Snapshot::hash`] of its parent. Set by the reader;
    /// the writer takes it from the [`Base`] it is given and ignores this field.
    pub parent: Option<[u8; 32]>,
}

/// A section of state this format did not define, under a name (version 5 on): how later
/// kinds of state (wasi-nn models, sockets) join the snapshot without a new format version.
///
/// An *optional* extension that a reader does not know is skipped (its bytes are still
/// checked and hashed); a *required* one is refused with an error naming it
/// ([`Error::UnknownSection`]). A reader knows the names in [`KNOWN_EXTENSIONS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// Its name: 1 to 64 bytes of UTF-8.
    pub name: String,
    /// Whether a reader that does not know it must refuse the snapshot.
    pub required: bool,
    /// Its bytes, as its writer encoded them.
    pub data: Vec<u8>,
}

/// The extensions this reader interprets; none yet.
pub const KNOWN_EXTENSIONS: &[&str] = &[];

/// Longest extension name, in bytes.
pub const MAX_EXTENSION_NAME: usize = 64;

/// Most extension sections a snapshot may have; together they may take no more than
/// [`Limits::section`].
pub const MAX_EXTENSIONS: usize = 64;

/// A host directory the guest had mounted when the snapshot was taken. The snapshot grants
/// nothing: whoever resumes grants a directory for `guest_path` again, and can check that it is
/// still the one the guest saw by comparing fingerprints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMount {
    /// The path the guest saw.
    pub guest_path: String,
    /// A digest of the directory's tree (names, types, sizes, modification times) at the
    /// checkpoint, computed by the writer's host.
    pub fingerprint: [u8; 32],
}

/// Where a snapshot goes. Implemented for every [`std::io::Write`] with the `std` feature.
pub trait Sink {
    /// The sink's error.
    type Error;
    /// Writes all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error>;
}

/// Where a snapshot comes from. Implemented for every [`std::io::Read`] with the `std` feature.
pub trait Source {
    /// Fills `buf` completely; `Ok(false)` if the input ended first (nothing or part of `buf`
    /// read).
    fn read_exact_or_eof(&mut self, buf: &mut [u8]) -> Result<bool, Error>;
}

impl Sink for Vec<u8> {
    type Error = core::convert::Infallible;
    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.extend_from_slice(buf);
        Ok(())
    }
}

impl Source for &[u8] {
    fn read_exact_or_eof(&mut self, buf: &mut [u8]) -> Result<bool, Error> {
        if self.len() < buf.len() {
            *self = &[];
            return Ok(false);
        }
        let (head, tail) = self.split_at(buf.len());
        buf.copy_from_slice(head);
        *self = tail;
        Ok(true)
    }
}

/// Adapts a [`std::io::Write`] to [`Sink`].
#[cfg(feature = "std")]
pub struct IoSink<W>(pub W);

#[cfg(feature = "std")]
impl<W: std::io::Write> Sink for IoSink<W> {
    type Error = std::io::Error;
    fn write_all(&mut self, buf: &[u8]) -> Result<(), std::io::Error> {
        self.0.write_all(buf)
    }
}

/// Adapts a [`std::io::Read`] to [`Source`].
#[cfg(feature = "std")]
pub struct IoSource<R>(pub R);

#[cfg(feature = "std")]
impl<R: std::io::Read> Source for IoSource<R> {
    fn read_exact_or_eof(&mut self, buf: &mut [u8]) -> Result<bool, Error> {
        match self.0.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(Error::Io(std::format!("{e}"))),
        }
    }
}

/// The secret that authenticates snapshots: whoever writes with it appends a MAC (keyed
/// BLAKE3 of the content hash), and a reader given it refuses a snapshot without a valid one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// A key of these 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// A key derived from any secret (a key file's contents), with BLAKE3's key derivation.
    pub fn derive(secret: &[u8]) -> Key {
        Key(blake3::derive_key(format::KEY_CONTEXT, secret))
    }

    /// The MAC of a content hash.
    pub(crate) fn mac(&self, hash: &[u8; 32]) -> blake3::Hash {
        blake3::keyed_hash(&self.0, hash)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(…)")
    }
}

/// Why a snapshot could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The file does not start with [`MAGIC`].
    BadMagic,
    /// A format version this reader does not know.
    UnsupportedVersion {
        /// The file's version.
        found: u16,
        /// The newest version this reader reads.
        newest: u16,
    },
    /// A checksum did not match: the named part is corrupt.
    BadChecksum {
        /// Which part.
        what: String,
    },
    /// The file ended inside the named part.
    Truncated {
        /// Which part.
        what: String,
    },
    /// A section came where another was expected (or was repeated, or is unknown).
    OutOfOrder {
        /// The section id found.
        found: u8,
        /// What the reader expected there.
        expected: String,
    },
    /// A size exceeds the reader's limits (or the module's).
    TooLarge {
        /// What was too large.
        what: String,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A field that cannot be right: an unknown tag, a chunk outside its memory, bytes left
    /// over, a page that does not decompress to its size.
    Malformed {
        /// What is wrong.
        what: String,
    },
    /// The kernel state does not decode.
    BadKernelState(String),
    /// An incremental snapshot needs its parent, and none (or another) was given.
    Parent {
        /// The parent the snapshot names.
        expected: [u8; 32],
        /// The hash of the base that was given, if any.
        given: Option<[u8; 32]>,
    },
    /// The module given for a resume is not the one the snapshot was taken from.
    ModuleMismatch {
        /// What differs.
        what: String,
    },
    /// The reader was given a key and the snapshot carries no MAC, or one that does not
    /// match: it was not written by a holder of the key, or it was changed since.
    Unauthenticated {
        /// What is wrong.
        what: String,
    },
    /// A required section this reader does not know: a newer tabi wrote state that this one
    /// cannot resume without.
    UnknownSection {
        /// The section's name.
        name: String,
    },
    /// The source failed.
    Io(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic => write!(f, "not a tabi snapshot (bad magic)"),
            Error::UnsupportedVersion { found, newest } => write!(
                f,
                "snapshot format version {found} is not supported (this reader reads 1 to {newest})"
            ),
            Error::BadChecksum { what } => {
                write!(f, "checksum mismatch in {what}: the file is corrupt")
            }
            Error::Truncated { what } => write!(f, "the file ends inside {what}: it is truncated"),
            Error::OutOfOrder { found, expected } => {
                write!(f, "section {found} found where {expected} was expected")
            }
            Error::TooLarge { what, size, limit } => {
                write!(f, "{what} is {size} bytes, over the limit of {limit}")
            }
            Error::Malformed { what } => write!(f, "malformed snapshot: {what}"),
            Error::BadKernelState(e) => write!(f, "the kernel state does not decode: {e}"),
            Error::Parent { expected, given } => match given {
                None => write!(
                    f,
                    "this is an incremental snapshot; it needs its parent {}",
                    hex(expected)
                ),
                Some(g) => write!(
                    f,
                    "this incremental snapshot's parent is {}, not {}",
                    hex(expected),
                    hex(g)
                ),
            },
            Error::ModuleMismatch { what } => {
                write!(f, "the snapshot was taken from another module: {what}")
            }
            Error::Unauthenticated { what } => {
                write!(f, "the snapshot is not authenticated: {what}")
            }
            Error::UnknownSection { name } => write!(
                f,
                "the snapshot needs its section `{name}`, which this tabi does not know (a \
                 newer tabi wrote it)"
            ),
            Error::Io(e) => write!(f, "cannot read the snapshot: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
