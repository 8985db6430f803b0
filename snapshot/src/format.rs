//! Constants and little-endian helpers shared by the writer and the reader.

use alloc::vec::Vec;

use tabi_libos::machine::Value;

/// The first 8 bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"TABISNAP";
/// The format version this crate writes (and the newest it reads).
pub const VERSION: u16 = 5;
/// A table kind: as the module's instantiation leaves it (every version).
pub(crate) const TABLE_AS_INSTANTIATED: u8 = 0;
/// A table kind: its entries as function indices (version 2 on).
pub(crate) const TABLE_FUNCS: u8 = 1;
/// Bytes in a Wasm page.
pub const PAGE: usize = 65536;
/// Pages per compressed chunk (1 MiB of memory).
pub const CHUNK_PAGES: u32 = 16;

/// Kernel section tags: the state as it is, or (version 3 on) its length and one LZ4 block.
pub(crate) const KERNEL_RAW: u8 = 1;
pub(crate) const KERNEL_LZ4: u8 = 2;

/// Header flag: the snapshot is incremental.
pub(crate) const FLAG_INCREMENTAL: u16 = 1;
/// Header flag (version 4 on): a MAC follows the content hash.
pub(crate) const FLAG_AUTHENTICATED: u16 = 2;

/// A buffered section's header from version 4: id, length, and the BLAKE3 of both and the
/// payload ([`section_digest`]).
pub(crate) const SECTION_HEADER: usize = 37;
/// A memory chunk's header from version 4: first page, pages, kind, length, the data's BLAKE3.
pub(crate) const CHUNK_HEADER: usize = 45;

/// The first format version whose checksums and content hash are BLAKE3 over every byte.
pub(crate) const BLAKE3_VERSION: u16 = 4;
/// The first format version with extension sections and a kernel state schema.
pub(crate) const EXTENSIBLE_VERSION: u16 = 5;
/// An extension section's flag: a reader that does not know it must refuse the snapshot.
pub(crate) const EXTENSION_REQUIRED: u8 = 1;

/// The context of the key derived from a passphrase or key file, for [`crate::Key`].
pub(crate) const KEY_CONTEXT: &str = "tabi snapshot 2026-12 MAC key";
/// A chunk's first page that ends a memory section.
pub(crate) const CHUNK_END: u32 = u32::MAX;

/// Chunk kinds.
pub(crate) const CHUNK_LZ4: u8 = 0;
pub(crate) const CHUNK_RAW: u8 = 1;
pub(crate) const CHUNK_ZERO: u8 = 2;

/// The sections, in the order they appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum SectionId {
    /// The module's identity ([`crate::Identity`]).
    Identity = 1,
    /// The original module's bytes, LZ4-compressed (optional).
    Module = 2,
    /// The export that ran, the safepoint budget, the migration points passed.
    Machine = 3,
    /// Every global of the original module.
    Globals = 4,
    /// The tables.
    Tables = 5,
    /// One memory (one section per memory, in index order).
    Memory = 6,
    /// The save stack.
    Stack = 7,
    /// The kernel state (postcard).
    Kernel = 8,
    /// The host directories the guest had mounted, with a fingerprint of each.
    Mounts = 9,
    /// A named extension (version 5 on): state of a kind this format did not have, such as
    /// wasi-nn models or sockets. See [`crate::Extension`].
    Extension = 10,
    /// The end marker.
    End = 0xFF,
}

impl SectionId {
    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            SectionId::Identity => "identity",
            SectionId::Module => "module",
            SectionId::Machine => "machine",
            SectionId::Globals => "globals",
            SectionId::Tables => "tables",
            SectionId::Memory => "memory",
            SectionId::Stack => "stack",
            SectionId::Kernel => "kernel",
            SectionId::Mounts => "mounts",
            SectionId::Extension => "extension",
            SectionId::End => "end",
        }
    }
}

/// Value tags in the globals section.
pub(crate) fn value_tag(v: &Value) -> u8 {
    match v {
        Value::I32(_) => 0,
        Value::I64(_) => 1,
        Value::F32(_) => 2,
        Value::F64(_) => 3,
        Value::V128(_) => 4,
        Value::Ref => 5,
    }
}

/// Appends `v`'s tag and little-endian bytes.
pub(crate) fn put_value(out: &mut Vec<u8>, v: &Value) {
    out.push(value_tag(v));
    match v {
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::V128(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Ref => {}
    }
}

/// A cursor over a section's payload; every read is bounds-checked.
pub(crate) struct Cursor<'a> {
    pub bytes: &'a [u8],
    pub what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], crate::Error> {
        if self.bytes.len() < n {
            return Err(crate::Error::Malformed {
                what: alloc::format!("the {} section is shorter than its fields", self.what),
            });
        }
        let (h, t) = self.bytes.split_at(n);
        self.bytes = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8, crate::Error> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, crate::Error> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, crate::Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, crate::Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], crate::Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn value(&mut self) -> Result<Value, crate::Error> {
        Ok(match self.u8()? {
            0 => Value::I32(i32::from_le_bytes(self.array()?)),
            1 => Value::I64(i64::from_le_bytes(self.array()?)),
            2 => Value::F32(u32::from_le_bytes(self.array()?)),
            3 => Value::F64(u64::from_le_bytes(self.array()?)),
            4 => Value::V128(u128::from_le_bytes(self.array()?)),
            5 => Value::Ref,
            t => {
                return Err(crate::Error::Malformed {
                    what: alloc::format!("unknown value tag {t} in the globals section"),
                });
            }
        })
    }
    pub fn end(&self) -> Result<(), crate::Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(crate::Error::Malformed {
                what: alloc::format!(
                    "{} bytes left over at the end of the {} section",
                    self.bytes.len(),
                    self.what
                ),
            })
        }
    }
}

/// CRC-32 (IEEE) of `bytes`.
pub(crate) fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// CRC-32 of a buffered section: over its id, its length and its payload.
pub(crate) fn section_crc(id: u8, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[id]);
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// BLAKE3 of a buffered section (version 4 on): over its id, its length and its payload, as
/// the CRC-32 of earlier versions.
pub(crate) fn section_digest(id: u8, len: u32, payload: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[id]);
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}
