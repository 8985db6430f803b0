//! The reader: validates everything, allocates only what it has checked.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use sha2::{Digest as _, Sha256};
use tabi_libos::Kernel;
use tabi_libos::machine::{MachineState, TableImage, Value};

use crate::format::*;
use crate::{Error, Identity, Source};

/// What a reader accepts. Sizes beyond these are refused before anything is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memories in a snapshot.
    pub memories: u32,
    /// Pages in one memory (65,536 is 4 GiB, all a 32-bit memory can have).
    pub pages: u32,
    /// Pages over all memories.
    pub total_pages: u64,
    /// Globals.
    pub globals: u32,
    /// Tables.
    pub tables: u32,
    /// Bytes of any other section (module, save stack, kernel state), stored or decompressed.
    pub section: u32,
    /// What the kernel state may hold and ask for: the resumer's, never the snapshot's.
    pub state: tabi_libos::StateLimits,
    /// When set, only a snapshot authenticated with this key is read (and a writer given it
    /// authenticates what it writes).
    pub key: Option<crate::Key>,
}

impl Limits {
    /// These limits with at most `bytes` of guest memory in all (rounded down to whole pages):
    /// a resumer's cap on what a snapshot may make it allocate.
    pub fn with_memory_bytes(mut self, bytes: u64) -> Self {
        let pages = bytes / PAGE as u64;
        self.total_pages = self.total_pages.min(pages);
        self.pages = self.pages.min(u32::try_from(pages).unwrap_or(u32::MAX));
        self
    }
}

/// Most bytes an LZ4 block of `compressed` bytes can decompress to: each byte of a match's
/// length extension stands for at most 255 bytes of output.
fn lz4_max(compressed: usize) -> u64 {
    (compressed as u64).saturating_mul(255).saturating_add(16)
}

/// Decompresses the LZ4 block `data` that declares `len` bytes, refusing before any allocation
/// a length over `limit` or over what `data` can expand to.
fn lz4_block(data: &[u8], len: u64, limit: u32, what: &str) -> Result<Vec<u8>, Error> {
    if len > u64::from(limit) {
        return Err(Error::TooLarge {
            what: what.into(),
            size: len,
            limit: limit.into(),
        });
    }
    if len > lz4_max(data.len()) {
        return Err(Error::Malformed {
            what: format!(
                "{what} declares {len} bytes, more than {} compressed bytes can hold",
                data.len()
            ),
        });
    }
    let out = lz4_flex::block::decompress(data, len as usize).map_err(|e| Error::Malformed {
        what: format!("{what} does not decompress: {e}"),
    })?;
    if out.len() as u64 != len {
        return Err(Error::Malformed {
            what: format!("{what} decompresses to another size"),
        });
    }
    Ok(out)
}

impl Default for Limits {
    /// 4 GiB of memory in all, 256 MiB per other section, the kernel's default state limits.
    fn default() -> Self {
        Limits {
            memories: 64,
            pages: 65536,
            total_pages: 65536,
            globals: 1 << 20,
            tables: 1 << 16,
            section: 256 << 20,
            state: tabi_libos::StateLimits::default(),
            key: None,
        }
    }
}

/// One section as stored, for `tabi inspect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    /// Which section.
    pub id: SectionId,
    /// Bytes it takes in the file, framing included.
    pub stored: u64,
    /// Bytes it stands for once decompressed (for memories: the pages present).
    pub raw: u64,
}

/// A snapshot, read and checked.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The format version it was written in.
    pub version: u16,
    /// Which module it was taken from.
    pub identity: Identity,
    /// The original module's bytes, when the snapshot carries them.
    pub module: Option<Vec<u8>>,
    /// The export that was running.
    pub entry: String,
    /// The safepoint budget left.
    pub budget: Option<i32>,
    /// Migration points passed so far in the run.
    pub points: u64,
    /// Every global of the original module.
    pub globals: Vec<Value>,
    /// Every table of the original module.
    pub tables: Vec<TableImage>,
    /// Every memory, whole (an incremental snapshot's applied to its base's).
    pub memories: Vec<Vec<u8>>,
    /// The save stack.
    pub stack: Vec<u8>,
    /// The kernel state, decoded.
    pub kernel: Kernel,
    /// Its bytes, as stored (a base for the next incremental snapshot compares against them).
    pub kernel_bytes: Vec<u8>,
    /// The schema the state was written in (see [`tabi_libos::STATE_SCHEMA`]); 1 before
    /// format version 5.
    pub kernel_schema: u16,
    /// The host directories the guest had mounted.
    pub mounts: Vec<crate::HostMount>,
    /// The content hash from the end marker, checked.
    pub hash: [u8; 32],
    /// The sections as stored.
    pub sections: Vec<SectionInfo>,
    /// The extension sections (version 5 on), known or optional, in the order read.
    pub extensions: Vec<crate::Extension>,
}

impl Snapshot {
    /// The engine-side state, moved out (the snapshot keeps its identity, kernel and the
    /// rest; its memories, globals and stack are left empty).
    pub fn take_machine_state(&mut self) -> MachineState {
        MachineState {
            entry: self.entry.clone(),
            globals: core::mem::take(&mut self.globals),
            tables: core::mem::take(&mut self.tables),
            memories: core::mem::take(&mut self.memories),
            stack: core::mem::take(&mut self.stack),
            budget: self.budget,
        }
    }

    /// Checks that `instrumented` (and `original`, if given) are the modules this snapshot
    /// was taken from.
    pub fn check_module(&self, original: Option<&[u8]>, instrumented: &[u8]) -> Result<(), Error> {
        self.identity.check_module(original, instrumented)
    }
}

impl Identity {
    /// Checks that `instrumented` (and `original`, if given) are the modules named here.
    pub fn check_module(&self, original: Option<&[u8]>, instrumented: &[u8]) -> Result<(), Error> {
        if let Some(o) = original
            && crate::sha256(o) != self.original_sha256
        {
            return Err(Error::ModuleMismatch {
                what: "the original module's SHA-256 differs".into(),
            });
        }
        if crate::sha256(instrumented) != self.module_sha256 {
            return Err(Error::ModuleMismatch {
                what: "the instrumented module's SHA-256 differs (another build of tabi-instrument, or other options)".into(),
            });
        }
        Ok(())
    }
}

/// The content hash as it is read: SHA-256 of the framing up to version 3, BLAKE3 of the
/// framing (which holds every payload's BLAKE3) from version 4.
#[derive(Clone)]
enum Digest {
    Sha(Sha256),
    Blake(alloc::boxed::Box<blake3::Hasher>),
}

impl Digest {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Digest::Sha(h) => h.update(bytes),
            Digest::Blake(h) => {
                h.update(bytes);
            }
        }
    }
    fn finalize(&self) -> [u8; 32] {
        match self {
            Digest::Sha(h) => h.clone().finalize().into(),
            Digest::Blake(h) => *h.finalize().as_bytes(),
        }
    }
}

/// A payload's check: CRC-32 up to version 3, BLAKE3 from version 4.
#[derive(Clone, Copy, Debug)]
enum Sum {
    Crc(u32),
    Blake([u8; 32]),
}

impl Sum {
    fn matches(&self, data: &[u8]) -> bool {
        match self {
            Sum::Crc(c) => crc(data) == *c,
            Sum::Blake(h) => blake3::hash(data) == *h,
        }
    }
}

struct In<'s, S: Source> {
    src: &'s mut S,
    digest: Digest,
    offset: u64,
    version: u16,
    /// The extension sections read so far, and how each was stored.
    extensions: Vec<(crate::Extension, SectionInfo)>,
    /// The largest section the reader takes.
    section_limit: u32,
}

impl<S: Source> In<'_, S> {
    fn data(&mut self, buf: &mut [u8], what: &str) -> Result<(), Error> {
        if !self.src.read_exact_or_eof(buf)? {
            return Err(Error::Truncated { what: what.into() });
        }
        self.offset += buf.len() as u64;
        Ok(())
    }
    fn frame(&mut self, buf: &mut [u8], what: &str) -> Result<(), Error> {
        self.data(buf, what)?;
        self.digest.update(&*buf);
        Ok(())
    }
    fn frame_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        self.frame(&mut a, what)?;
        Ok(a)
    }
    /// Reads `len` bytes, growing the buffer as data arrives, so that a truncated file with a
    /// large declared size costs no more than what it holds.
    fn bytes(&mut self, len: usize, what: &str) -> Result<Vec<u8>, Error> {
        let mut v = Vec::new();
        self.bytes_into(&mut v, len, what)?;
        Ok(v)
    }
    /// [`Self::bytes`] into a buffer that is reused: what it already holds is read over, not
    /// cleared first.
    fn bytes_into(&mut self, v: &mut Vec<u8>, len: usize, what: &str) -> Result<(), Error> {
        const STEP: usize = 1 << 20;
        let mut have = 0;
        while have < len {
            let n = (len - have).min(STEP);
            if v.len() < have + n {
                v.resize(have + n, 0);
            }
            self.data(&mut v[have..have + n], what)?;
            have += n;
        }
        v.truncate(len);
        Ok(())
    }
    /// A buffered section's payload, checked against its CRC (or BLAKE3) and `limit`.
    fn section(&mut self, id: SectionId, limit: u32) -> Result<(Vec<u8>, u64), Error> {
        let what = id.name();
        let len = u32::from_le_bytes(self.frame_array::<4>(what)?);
        let sum = if self.version >= BLAKE3_VERSION {
            Sum::Blake(self.frame_array::<32>(what)?)
        } else {
            Sum::Crc(u32::from_le_bytes(self.frame_array::<4>(what)?))
        };
        if len > limit {
            return Err(Error::TooLarge {
                what: format!("the {what} section"),
                size: len.into(),
                limit: limit.into(),
            });
        }
        let payload = self.bytes(len as usize, &format!("the {what} section"))?;
        let good = match sum {
            Sum::Crc(c) => section_crc(id as u8, len, &payload) == c,
            Sum::Blake(h) => section_digest(id as u8, len, &payload) == h,
        };
        if !good {
            return Err(Error::BadChecksum {
                what: format!("the {what} section"),
            });
        }
        let header = if self.version >= BLAKE3_VERSION {
            SECTION_HEADER
        } else {
            9
        };
        Ok((payload, header as u64 + u64::from(len)))
    }
}

/// The id of the next section that is not an extension: the extension sections before it
/// (version 5 on) are read, checked and kept on the way, and one that is required and unknown
/// is refused.
fn section_id<S: Source>(input: &mut In<'_, S>) -> Result<u8, Error> {
    loop {
        let id = input.frame_array::<1>("a section header")?[0];
        if id != SectionId::Extension as u8 || input.version < EXTENSIBLE_VERSION {
            return Ok(id);
        }
        // At most `MAX_EXTENSIONS` of them, whose bytes together fit one section: a file
        // cannot make the reader keep more than it would for one section, however it splits
        // it, nor compare names more than a few thousand times.
        if input.extensions.len() >= crate::MAX_EXTENSIONS {
            return Err(Error::TooLarge {
                what: "the number of extension sections".into(),
                size: input.extensions.len() as u64 + 1,
                limit: crate::MAX_EXTENSIONS as u64,
            });
        }
        let kept: u64 = input.extensions.iter().map(|(_, i)| i.stored).sum();
        let left = u64::from(input.section_limit).saturating_sub(kept);
        let (p, stored) = input.section(SectionId::Extension, left.min(u32::MAX.into()) as u32)?;
        let mut c = Cursor {
            bytes: &p,
            what: "extension",
        };
        let flags = c.u8()?;
        if flags & !EXTENSION_REQUIRED != 0 {
            return Err(Error::Malformed {
                what: format!("unknown extension flags {flags:#x}"),
            });
        }
        let len = c.u8()? as usize;
        let name = core::str::from_utf8(c.take(len)?)
            .ok()
            .filter(|n| !n.is_empty() && n.len() <= crate::MAX_EXTENSION_NAME)
            .ok_or_else(|| Error::Malformed {
                what: "an extension's name is empty, too long or not UTF-8".into(),
            })?
            .to_string();
        let required = flags & EXTENSION_REQUIRED != 0;
        if input.extensions.iter().any(|(e, _)| e.name == name) {
            return Err(Error::Malformed {
                what: format!("extension `{name}` appears twice"),
            });
        }
        if required && !crate::KNOWN_EXTENSIONS.contains(&name.as_str()) {
            return Err(Error::UnknownSection { name });
        }
        let data = c.bytes.to_vec();
        let info = SectionInfo {
            id: SectionId::Extension,
            stored,
            raw: data.len() as u64,
        };
        input.extensions.push((
            crate::Extension {
                name,
                required,
                data,
            },
            info,
        ));
    }
}

fn out_of_order(found: u8, expected: &str) -> Error {
    Error::OutOfOrder {
        found,
        expected: expected.to_string(),
    }
}

/// What a snapshot says before its memories: enough to pick and instantiate the module that
/// the memories are then read into (see [`MemoryTarget`]).
#[derive(Clone, Debug)]
pub struct Head<'a> {
    /// Which module it was taken from.
    pub identity: &'a Identity,
    /// The original module's bytes, when the snapshot carries them.
    pub module: Option<&'a [u8]>,
}

/// Where [`read_into`] decodes memories: typically the memories of an instance created for
/// the snapshot, so that resuming copies no page twice.
pub trait MemoryTarget {
    /// Memory `index`, exactly `pages` 64 KiB pages long, to decode into. Called once per
    /// memory, in order, once the sections before the memories have been read and checked.
    /// The memory may hold anything: the reader zeroes what the snapshot leaves out.
    fn memory(&mut self, head: &Head<'_>, index: u32, pages: u32) -> Result<&mut [u8], Error>;
}

/// Where the memories go.
enum Dest<'a> {
    /// Into the snapshot's own buffers (an incremental snapshot onto copies of its base's).
    Owned(Option<&'a Snapshot>),
    /// Into the caller's memories; the snapshot's are left empty.
    Target(&'a mut dyn MemoryTarget),
}

/// Reads a snapshot from `src`. An incremental snapshot is applied to `base`, which must be
/// the snapshot it names as its parent.
pub fn read<S: Source>(
    src: &mut S,
    limits: &Limits,
    base: Option<&Snapshot>,
) -> Result<Snapshot, Error> {
    read_to(src, limits, Dest::Owned(base))
}

/// Reads a full (not incremental) snapshot from `src`, decoding its memories into `target`
/// instead of buffers of its own: the returned [`Snapshot::memories`] is empty. If this fails,
/// the target's memories may hold part of the snapshot.
pub fn read_into<S: Source>(
    src: &mut S,
    limits: &Limits,
    target: &mut dyn MemoryTarget,
) -> Result<Snapshot, Error> {
    read_to(src, limits, Dest::Target(target))
}

fn read_to<S: Source>(src: &mut S, limits: &Limits, mut dest: Dest<'_>) -> Result<Snapshot, Error> {
    let base = match dest {
        Dest::Owned(base) => base,
        Dest::Target(_) => None,
    };
    let mut input = In {
        src,
        digest: Digest::Sha(Sha256::new()),
        offset: 0,
        version: 0,
        extensions: Vec::new(),
        section_limit: limits.section,
    };
    let mut sections = Vec::new();

    // Header.
    let mut magic = [0u8; 8];
    if !input.src.read_exact_or_eof(&mut magic)? {
        return Err(
            if MAGIC.starts_with(&magic[..]) || magic.iter().all(|&b| b == 0) {
                Error::Truncated {
                    what: "the header".into(),
                }
            } else {
                Error::BadMagic
            },
        );
    }
    input.offset = 8;
    if magic != MAGIC {
        return Err(Error::BadMagic);
    }
    let mut rest = [0u8; 8];
    input.data(&mut rest, "the header")?;
    let version = u16::from_le_bytes([rest[0], rest[1]]);
    let flags = u16::from_le_bytes([rest[2], rest[3]]);
    let sum = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let mut h = Vec::from(MAGIC);
    h.extend_from_slice(&rest[..4]);
    if crc(&h) != sum {
        return Err(Error::BadChecksum {
            what: "the header".into(),
        });
    }
    if version == 0 || version > VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            newest: VERSION,
        });
    }
    let known = if version >= BLAKE3_VERSION {
        FLAG_INCREMENTAL | FLAG_AUTHENTICATED
    } else {
        FLAG_INCREMENTAL
    };
    if flags & !known != 0 {
        return Err(Error::Malformed {
            what: format!("unknown header flags {flags:#x}"),
        });
    }
    let incremental = flags & FLAG_INCREMENTAL != 0;
    let authenticated = flags & FLAG_AUTHENTICATED != 0;
    if limits.key.is_some() && !authenticated {
        return Err(Error::Unauthenticated {
            what: "it carries no MAC, and a key was given".into(),
        });
    }
    // The header is framing too: hashed once the version says with what.
    input.version = version;
    if version >= BLAKE3_VERSION {
        input.digest = Digest::Blake(alloc::boxed::Box::new(blake3::Hasher::new()));
    }
    input.digest.update(&magic);
    input.digest.update(&rest);

    // Identity.
    let id = section_id(&mut input)?;
    if id != SectionId::Identity as u8 {
        return Err(out_of_order(id, "identity"));
    }
    let (p, stored) = input.section(SectionId::Identity, limits.section)?;
    sections.push(SectionInfo {
        id: SectionId::Identity,
        stored,
        raw: p.len() as u64,
    });
    let mut c = Cursor {
        bytes: &p,
        what: "identity",
    };
    let original_sha256 = c.array::<32>()?;
    let module_sha256 = c.array::<32>()?;
    let parent = match c.u8()? {
        0 => None,
        1 => Some(c.array::<32>()?),
        t => {
            return Err(Error::Malformed {
                what: format!("parent tag {t}"),
            });
        }
    };
    let olen = c.u32()? as usize;
    let options = c.take(olen)?.to_vec();
    c.end()?;
    if parent.is_some() != incremental {
        return Err(Error::Malformed {
            what: "the header's incremental flag and the parent disagree".into(),
        });
    }
    if let Some(expected) = parent {
        match base {
            Some(b) if b.hash == expected => {}
            Some(b) => {
                return Err(Error::Parent {
                    expected,
                    given: Some(b.hash),
                });
            }
            None => {
                return Err(Error::Parent {
                    expected,
                    given: None,
                });
            }
        }
    }
    let base = if incremental { base } else { None };
    let identity = Identity {
        original_sha256,
        module_sha256,
        options,
        parent,
    };

    // Module (optional).
    let mut id = section_id(&mut input)?;
    let mut module = None;
    if id == SectionId::Module as u8 {
        let (p, stored) = input.section(SectionId::Module, limits.section)?;
        let mut c = Cursor {
            bytes: &p,
            what: "module",
        };
        let len = c.u64()?;
        let m = lz4_block(c.bytes, len, limits.section, "the module")?;
        sections.push(SectionInfo {
            id: SectionId::Module,
            stored,
            raw: len,
        });
        module = Some(m);
        id = section_id(&mut input)?;
    }

    // Machine.
    if id != SectionId::Machine as u8 {
        return Err(out_of_order(id, "machine"));
    }
    let (p, stored) = input.section(SectionId::Machine, limits.section)?;
    sections.push(SectionInfo {
        id: SectionId::Machine,
        stored,
        raw: p.len() as u64,
    });
    let mut c = Cursor {
        bytes: &p,
        what: "machine",
    };
    let elen = c.u16()? as usize;
    let entry = core::str::from_utf8(c.take(elen)?)
        .map_err(|_| Error::Malformed {
            what: "the entry name is not UTF-8".into(),
        })?
        .to_string();
    let budget = match c.u8()? {
        0 => None,
        1 => Some(i32::from_le_bytes(c.array()?)),
        t => {
            return Err(Error::Malformed {
                what: format!("budget tag {t}"),
            });
        }
    };
    let points = c.u64()?;
    c.end()?;

    // Globals.
    let id = section_id(&mut input)?;
    if id != SectionId::Globals as u8 {
        return Err(out_of_order(id, "globals"));
    }
    let (p, stored) = input.section(SectionId::Globals, limits.section)?;
    sections.push(SectionInfo {
        id: SectionId::Globals,
        stored,
        raw: p.len() as u64,
    });
    let mut c = Cursor {
        bytes: &p,
        what: "globals",
    };
    let n = c.u32()?;
    if n > limits.globals {
        return Err(Error::TooLarge {
            what: "the number of globals".into(),
            size: n.into(),
            limit: limits.globals.into(),
        });
    }
    // Each global takes at least one byte, so `n` is also bounded by the payload.
    if n as usize > c.bytes.len() {
        return Err(Error::Malformed {
            what: "more globals than the section has bytes".into(),
        });
    }
    let mut globals = Vec::with_capacity(n as usize);
    for _ in 0..n {
        globals.push(c.value()?);
    }
    c.end()?;

    // Tables.
    let id = section_id(&mut input)?;
    if id != SectionId::Tables as u8 {
        return Err(out_of_order(id, "tables"));
    }
    let (p, stored) = input.section(SectionId::Tables, limits.section)?;
    sections.push(SectionInfo {
        id: SectionId::Tables,
        stored,
        raw: p.len() as u64,
    });
    let mut c = Cursor {
        bytes: &p,
        what: "tables",
    };
    let tables = c.u32()?;
    if tables > limits.tables {
        return Err(Error::TooLarge {
            what: "the number of tables".into(),
            size: tables.into(),
            limit: limits.tables.into(),
        });
    }
    let mut table_images = Vec::new();
    for t in 0..tables {
        match c.u8()? {
            TABLE_AS_INSTANTIATED => table_images.push(TableImage::AsInstantiated),
            TABLE_FUNCS if version >= 2 => {
                let n = c.u32()?;
                // Four bytes an entry, all of them in the section already read: no more is
                // allocated than the input holds.
                let bytes =
                    c.take(
                        (n as usize)
                            .checked_mul(4)
                            .ok_or_else(|| Error::Malformed {
                                what: format!("table {t}: {n} entries"),
                            })?,
                    )?;
                let entries = bytes
                    .chunks_exact(4)
                    .map(|b| {
                        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        v.checked_sub(1)
                    })
                    .collect();
                table_images.push(TableImage::Funcs(entries));
            }
            k => {
                return Err(Error::Malformed {
                    what: format!("table {t}: kind {k} is not known in format version {version}"),
                });
            }
        }
    }
    c.end()?;

    // Memories.
    let head = Head {
        identity: &identity,
        module: module.as_deref(),
    };
    let mut count = 0usize;
    let mut memories: Vec<Vec<u8>> = Vec::new();
    let mut total_pages = 0u64;
    let mut id = section_id(&mut input)?;
    while id == SectionId::Memory as u8 {
        let h = input.frame_array::<12>("a memory header")?;
        let index = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let pages = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let sum = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if crc(&h[..8]) != sum {
            return Err(Error::BadChecksum {
                what: format!("the header of memory {index}"),
            });
        }
        if index as usize != count {
            return Err(Error::OutOfOrder {
                found: SectionId::Memory as u8,
                expected: format!("memory {count} (found memory {index})"),
            });
        }
        count += 1;
        if index >= limits.memories {
            return Err(Error::TooLarge {
                what: "the number of memories".into(),
                size: u64::from(index) + 1,
                limit: limits.memories.into(),
            });
        }
        if pages > limits.pages {
            return Err(Error::TooLarge {
                what: format!("memory {index} (in pages)"),
                size: pages.into(),
                limit: limits.pages.into(),
            });
        }
        total_pages += u64::from(pages);
        if total_pages > limits.total_pages {
            return Err(Error::TooLarge {
                what: "all memories (in pages)".into(),
                size: total_pages,
                limit: limits.total_pages,
            });
        }
        let bytes = pages as usize * PAGE;
        let clear = matches!(dest, Dest::Target(_));
        let mem: &mut [u8] = match &mut dest {
            Dest::Owned(_) => {
                let m = match base.and_then(|b| b.memories.get(index as usize)) {
                    Some(old) if old.len() <= bytes => {
                        // Only the blocks the parent's memory ever backed are copied; the
                        // rest, the part it grew by included, stays unbacked zeroes.
                        tabi_hostmem::sparse_copy_len(old, bytes)
                    }
                    Some(_) => {
                        return Err(Error::Malformed {
                            what: format!("memory {index} is smaller than in the parent"),
                        });
                    }
                    None => vec![0u8; bytes],
                };
                memories.push(m);
                memories.last_mut().map_or(&mut [][..], |m| &mut m[..])
            }
            Dest::Target(t) => {
                let m = t.memory(&head, index, pages)?;
                if m.len() != bytes {
                    return Err(Error::Malformed {
                        what: format!(
                            "memory {index}: the target gave {} bytes for {pages} pages",
                            m.len()
                        ),
                    });
                }
                m
            }
        };
        // A target's memory may hold data where the snapshot has none: those pages (the
        // gaps between chunks) are zeroed, reading only the blocks the host ever backed.
        let touched = if clear {
            Some(tabi_hostmem::resident::touched_or_all(mem))
        } else {
            None
        };
        let chunks = Chunks {
            index,
            pages,
            incremental,
            touched: touched.as_ref(),
        };
        let (stored, raw) = chunks.decode(&mut input, mem)?;
        sections.push(SectionInfo {
            id: SectionId::Memory,
            stored,
            raw,
        });
        id = section_id(&mut input)?;
    }
    if let Some(b) = base
        && b.memories.len() != memories.len()
    {
        return Err(Error::Malformed {
            what: "an incremental snapshot has another number of memories than its parent".into(),
        });
    }

    // Stack.
    if id != SectionId::Stack as u8 {
        return Err(out_of_order(id, "stack (or another memory)"));
    }
    let (stack, stored) = input.section(SectionId::Stack, limits.section)?;
    sections.push(SectionInfo {
        id: SectionId::Stack,
        stored,
        raw: stack.len() as u64,
    });

    // Kernel.
    let id = section_id(&mut input)?;
    if id != SectionId::Kernel as u8 {
        return Err(out_of_order(id, "kernel"));
    }
    let (p, stored) = input.section(SectionId::Kernel, limits.section)?;
    // From version 5, a state (raw or compressed) starts with its schema; before, it is 1.
    let schema_of = |rest: &[u8]| -> Result<(u16, usize), Error> {
        if version < EXTENSIBLE_VERSION {
            return Ok((1, 0));
        }
        let mut c = Cursor {
            bytes: rest,
            what: "kernel",
        };
        Ok((c.u16()?, 2))
    };
    let (kernel_bytes, kernel, kernel_schema) = match p.split_first() {
        Some((&KERNEL_RAW, rest)) => {
            let (schema, skip) = schema_of(rest)?;
            let rest = &rest[skip..];
            let k = kernel_state_schema(rest, rest.len(), schema, limits)?;
            (rest.to_vec(), k, schema)
        }
        Some((&KERNEL_LZ4, rest)) if version >= 3 => {
            let (schema, skip) = schema_of(rest)?;
            let mut c = Cursor {
                bytes: &rest[skip..],
                what: "kernel state",
            };
            let len = c.u64()?;
            let bytes = lz4_block(c.bytes, len, limits.section, "the kernel state")?;
            let k = kernel_state_schema(&bytes, c.bytes.len(), schema, limits)?;
            (bytes, k, schema)
        }
        // `base` is the checked parent whenever the snapshot is incremental: its state was
        // decoded and checked under these limits already.
        Some((0, [])) if let Some(b) = base => {
            (b.kernel_bytes.clone(), b.kernel.clone(), b.kernel_schema)
        }
        _ => {
            return Err(Error::Malformed {
                what: "kernel section tag".into(),
            });
        }
    };
    sections.push(SectionInfo {
        id: SectionId::Kernel,
        stored,
        raw: kernel_bytes.len() as u64,
    });

    // Host mounts.
    let id = section_id(&mut input)?;
    if id != SectionId::Mounts as u8 {
        return Err(out_of_order(id, "mounts"));
    }
    let (p, stored) = input.section(SectionId::Mounts, limits.section)?;
    sections.push(SectionInfo {
        id: SectionId::Mounts,
        stored,
        raw: p.len() as u64,
    });
    let mut c = Cursor {
        bytes: &p,
        what: "mounts",
    };
    let n = c.u32()?;
    // Each entry takes at least 34 bytes.
    if n as usize > c.bytes.len() / 34 {
        return Err(Error::Malformed {
            what: "more mounts than the section has bytes".into(),
        });
    }
    let mut mounts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = c.u16()? as usize;
        let guest_path = core::str::from_utf8(c.take(len)?)
            .map_err(|_| Error::Malformed {
                what: "a mount path is not UTF-8".into(),
            })?
            .to_string();
        let fingerprint = c.array::<32>()?;
        mounts.push(crate::HostMount {
            guest_path,
            fingerprint,
        });
    }
    c.end()?;

    // End and content hash.
    let id = section_id(&mut input)?;
    if id != SectionId::End as u8 {
        return Err(out_of_order(id, "end"));
    }
    let expected: [u8; 32] = input.digest.finalize();
    let mut hash = [0u8; 32];
    input.data(&mut hash, "the end marker")?;
    if hash != expected {
        return Err(Error::BadChecksum {
            what: "the end marker's content hash".into(),
        });
    }
    if authenticated {
        let mut mac = [0u8; 32];
        input.data(&mut mac, "the MAC")?;
        // `blake3::Hash`'s comparison takes the same time whatever the bytes.
        if let Some(key) = &limits.key
            && key.mac(&hash) != mac
        {
            return Err(Error::Unauthenticated {
                what: "its MAC does not match the key given".into(),
            });
        }
    }
    let mut extra = [0u8; 1];
    if input.src.read_exact_or_eof(&mut extra)? {
        return Err(Error::Malformed {
            what: "bytes after the end marker".into(),
        });
    }
    let mut extensions = Vec::new();
    for (e, info) in core::mem::take(&mut input.extensions) {
        sections.push(info);
        extensions.push(e);
    }
    Ok(Snapshot {
        version,
        identity,
        module,
        entry,
        budget,
        points,
        globals,
        tables: table_images,
        memories,
        stack,
        kernel,
        kernel_bytes,
        kernel_schema,
        mounts,
        hash,
        sections,
        extensions,
    })
}

/// Decodes and checks the kernel state `bytes`, which `stored` bytes of the file hold: its
/// structure may take [`tabi_libos::STRUCTURE_FLOOR`] plus [`tabi_libos::STRUCTURE_RATIO`]
/// bytes per stored byte (what it holds as content is at most `bytes` on top), and it must
/// pass [`tabi_libos::Kernel::check`] under the resumer's limits.
pub fn kernel_state(bytes: &[u8], stored: usize, limits: &Limits) -> Result<Kernel, Error> {
    kernel_state_schema(bytes, stored, tabi_libos::STATE_SCHEMA, limits)
}

/// [`kernel_state`] of a state of schema `schema` (see [`tabi_libos::STATE_SCHEMA`]).
pub fn kernel_state_schema(
    bytes: &[u8],
    stored: usize,
    schema: u16,
    limits: &Limits,
) -> Result<Kernel, Error> {
    let budget = tabi_libos::STRUCTURE_FLOOR
        .saturating_add(tabi_libos::STRUCTURE_RATIO.saturating_mul(stored as u64));
    tabi_libos::decode_checked_schema(bytes, schema, budget, &limits.state)
        .map_err(|e| Error::BadKernelState(e.to_string()))
}

/// The chunks of one memory, as the reader decodes them.
struct Chunks<'t> {
    index: u32,
    pages: u32,
    incremental: bool,
    /// For a target's memory: the blocks the host backed, which gaps between chunks clear.
    touched: Option<&'t tabi_hostmem::resident::Touched>,
}

/// One chunk read and framed, still to be checked against its CRC and decoded into `dst`.
struct Job<'m> {
    first: u32,
    n: u32,
    kind: u8,
    sum: Sum,
    data: Vec<u8>,
    dst: &'m mut [u8],
}

impl Job<'_> {
    fn run(&mut self, index: u32) -> Result<(), Error> {
        let (first, n) = (self.first, self.n);
        if !self.sum.matches(&self.data) {
            return Err(Error::BadChecksum {
                what: format!("pages {first}..{} of memory {index}", first + n),
            });
        }
        if self.kind != CHUNK_ZERO {
            tabi_hostmem::resident::prefault(self.dst);
        }
        match self.kind {
            CHUNK_LZ4 => {
                let got = lz4_flex::block::decompress_into(&self.data, self.dst).map_err(|e| {
                    Error::Malformed {
                        what: format!(
                            "pages {first}..{} of memory {index} do not decompress: {e}",
                            first + n
                        ),
                    }
                })?;
                if got != self.dst.len() {
                    return Err(Error::Malformed {
                        what: format!(
                            "pages {first}..{} of memory {index} decompress short",
                            first + n
                        ),
                    });
                }
            }
            CHUNK_RAW => {
                if self.data.len() != self.dst.len() {
                    return Err(Error::Malformed {
                        what: format!("raw chunk of memory {index} has the wrong length"),
                    });
                }
                self.dst.copy_from_slice(&self.data);
            }
            _ => self.dst.fill(0),
        }
        Ok(())
    }
}

/// The part of a memory not yet handed out, cut off front first as chunks arrive in order.
struct Carver<'m> {
    rest: &'m mut [u8],
    /// Byte offset of `rest` in the memory.
    at: usize,
}

impl<'m> Carver<'m> {
    /// Cuts off the bytes up to `start` (a gap no chunk covers) and the `len` bytes from it.
    /// The caller has checked `self.at <= start` and `start + len <= ` the memory's length.
    fn take(&mut self, start: usize, len: usize) -> (&'m mut [u8], &'m mut [u8]) {
        let rest = core::mem::take(&mut self.rest);
        let (gap, rest) = rest.split_at_mut(start - self.at);
        let (dst, rest) = rest.split_at_mut(len);
        self.rest = rest;
        self.at = start + len;
        (gap, dst)
    }
}

/// Below this many bytes a memory is decoded on the reading thread alone.
#[cfg(feature = "std")]
const PARALLEL_MIN: usize = 8 << 20;

impl Chunks<'_> {
    /// Reads the chunks into `mem` up to the end mark; gives the bytes they took in the file
    /// (with the memory's header) and the bytes they stand for. With the `std` feature and a
    /// large memory, decoder threads check and decompress the chunks while this thread reads
    /// the next ones; an error is still the first in file order.
    fn decode<S: Source>(
        &self,
        input: &mut In<'_, S>,
        mem: &mut [u8],
    ) -> Result<(u64, u64), Error> {
        #[cfg(feature = "std")]
        if mem.len() >= PARALLEL_MIN {
            return self.decode_parallel(input, mem);
        }
        let index = self.index;
        // One buffer, read into again for each chunk.
        self.read_chunks(input, mem, &mut |mut job| {
            job.run(index).map(|()| Some(job.data))
        })
    }

    #[cfg(feature = "std")]
    fn decode_parallel<S: Source>(
        &self,
        input: &mut In<'_, S>,
        mem: &mut [u8],
    ) -> Result<(u64, u64), Error> {
        use std::sync::mpsc;
        let index = self.index;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        std::thread::scope(|scope| {
            // Buffers come back from the decoders to be read into again.
            let (give_back, recycled) = mpsc::channel::<Vec<u8>>();
            let mut senders = Vec::with_capacity(workers);
            let mut decoders = Vec::with_capacity(workers);
            for _ in 0..workers {
                let (tx, rx) = mpsc::sync_channel::<(u64, Job<'_>)>(2);
                let give_back = give_back.clone();
                decoders.push(scope.spawn(move || {
                    for (seq, mut job) in rx {
                        if let Err(e) = job.run(index) {
                            return Some((seq, e));
                        }
                        let _ = give_back.send(job.data);
                    }
                    None
                }));
                senders.push(tx);
            }
            let mut seq = 0u64;
            let read = self.read_chunks(input, mem, &mut |job| {
                let sent = senders[seq as usize % workers].send((seq, job));
                seq += 1;
                // A decoder that stopped has an error, reported below.
                sent.map_err(|_| Error::Malformed {
                    what: format!("memory {index} did not decode"),
                })?;
                Ok(recycled.try_recv().ok())
            });
            drop(senders);
            // The decoders' chunks all come before the one being read: their first error
            // comes first.
            let mut first: Option<(u64, Error)> = None;
            for d in decoders {
                let failed = d.join().unwrap_or_else(|_| {
                    Some((
                        0,
                        Error::Malformed {
                            what: format!("a decoder of memory {index} stopped"),
                        },
                    ))
                });
                if let Some((s, e)) = failed
                    && first.as_ref().is_none_or(|(f, _)| s < *f)
                {
                    first = Some((s, e));
                }
            }
            match first {
                Some((_, e)) => Err(e),
                None => read,
            }
        })
    }

    /// Reads and frames each chunk, clears the gaps before it, and hands it to `decode`,
    /// which may give back a buffer to read the next chunk into.
    fn read_chunks<'m, S: Source>(
        &self,
        input: &mut In<'_, S>,
        mem: &'m mut [u8],
        decode: &mut dyn FnMut(Job<'m>) -> Result<Option<Vec<u8>>, Error>,
    ) -> Result<(u64, u64), Error> {
        let (index, pages) = (self.index, self.pages);
        let mut spare: Option<Vec<u8>> = None;
        let mut carver = Carver { rest: mem, at: 0 };
        let v4 = input.version >= BLAKE3_VERSION;
        let header = if v4 { CHUNK_HEADER as u64 } else { 17 };
        let mut stored = 13u64;
        let mut raw = 0u64;
        let mut next = 0u32;
        loop {
            let first = u32::from_le_bytes(input.frame_array::<4>("a memory chunk")?);
            stored += 4;
            if first == CHUNK_END {
                let at = carver.at;
                let (gap, _) = carver.take(pages as usize * PAGE, 0);
                self.zero_gap(gap, at);
                return Ok((stored, raw));
            }
            let ch = input.frame_array::<9>("a memory chunk")?;
            let n = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
            let kind = ch[4];
            let len = u32::from_le_bytes([ch[5], ch[6], ch[7], ch[8]]);
            let sum = if v4 {
                Sum::Blake(input.frame_array::<32>("a memory chunk")?)
            } else {
                Sum::Crc(u32::from_le_bytes(
                    input.frame_array::<4>("a memory chunk")?,
                ))
            };
            if first < next
                || n == 0
                || n > CHUNK_PAGES
                || u64::from(first) + u64::from(n) > u64::from(pages)
            {
                return Err(Error::Malformed {
                    what: format!(
                        "chunk of pages {first}+{n} in memory {index} of {pages} pages (out of order or out of range)"
                    ),
                });
            }
            let raw_len = n as usize * PAGE;
            let max = match kind {
                CHUNK_LZ4 => raw_len,
                CHUNK_RAW => raw_len,
                CHUNK_ZERO if self.incremental => 0,
                _ => {
                    return Err(Error::Malformed {
                        what: format!("chunk kind {kind} in memory {index}"),
                    });
                }
            };
            if len as usize > max {
                return Err(Error::TooLarge {
                    what: format!("a chunk of memory {index}"),
                    size: len.into(),
                    limit: max as u64,
                });
            }
            let mut data = spare.take().unwrap_or_default();
            input.bytes_into(&mut data, len as usize, "a memory chunk")?;
            let at = carver.at;
            let (gap, dst) = carver.take(first as usize * PAGE, raw_len);
            self.zero_gap(gap, at);
            spare = decode(Job {
                first,
                n,
                kind,
                sum,
                data,
                dst,
            })?;
            stored += header - 4 + u64::from(len);
            raw += raw_len as u64;
            next = first + n;
        }
    }

    /// Clears the blocks of `gap` (at byte `at` of the memory) that the host backed and that
    /// are not zero.
    fn zero_gap(&self, gap: &mut [u8], at: usize) {
        let Some(t) = self.touched else {
            return;
        };
        use tabi_hostmem::resident::BLOCK;
        for (i, block) in gap.chunks_mut(BLOCK).enumerate() {
            if t.block(at / BLOCK + i) && !tabi_hostmem::is_zero(block) {
                block.fill(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A declared length LZ4 cannot reach from the bytes given is refused before the buffer
    /// for it is allocated; one within reach decodes.
    #[test]
    fn an_lz4_length_the_data_cannot_reach_is_refused() {
        let block = [0x1f, 0, 1, 0, 0, 0, 0, 0];
        match lz4_block(&block, 200 << 20, u32::MAX, "the kernel state") {
            Err(Error::Malformed { what }) => assert!(what.contains("more than"), "{what}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            lz4_block(&block, 300 << 20, 256 << 20, "the module"),
            Err(Error::TooLarge { .. })
        ));
        let mut data = Vec::new();
        crate::lz4::compress(&[7u8; 100_000], &mut data, &mut Vec::new());
        assert!(lz4_max(data.len()) >= 100_000, "{}", data.len());
        assert_eq!(
            lz4_block(&data, 100_000, u32::MAX, "x").unwrap(),
            [7u8; 100_000]
        );
    }
}
