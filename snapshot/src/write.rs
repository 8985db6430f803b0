//! The writer.

use alloc::string::String;
use alloc::vec::Vec;

use tabi_libos::machine::{TableImage, Value};

use crate::format::*;
use crate::{Identity, Limits, Sink};

/// What a snapshot holds, borrowed from wherever it lives (a live engine memory, or a captured
/// [`tabi_libos::machine::MachineState`]).
pub struct Contents<'a> {
    /// The module's identity.
    pub identity: Identity,
    /// The original module's bytes, to make the snapshot self-contained (optional).
    pub module: Option<&'a [u8]>,
    /// The export that was running.
    pub entry: &'a str,
    /// The safepoint budget left, for modules with safepoints.
    pub budget: Option<i32>,
    /// Migration points passed so far in the run.
    pub points: u64,
    /// Every global of the original module.
    pub globals: &'a [Value],
    /// Every table of the original module.
    pub tables: &'a [TableImage],
    /// Every memory of the original module; each a whole number of 64 KiB pages.
    pub memories: Vec<&'a [u8]>,
    /// The save stack.
    pub stack: &'a [u8],
    /// The kernel state, encoded with [`tabi_libos::encode_state`].
    pub kernel: &'a [u8],
    /// The host directories mounted.
    pub mounts: &'a [crate::HostMount],
    /// Extension sections, written after the others.
    pub extensions: &'a [crate::Extension],
}

/// The snapshot an incremental one is written against.
pub struct Base<'a> {
    /// Its [`crate::Snapshot::hash`] (or [`Summary::hash`]).
    pub hash: [u8; 32],
    /// Its memories, as the writer can know them.
    pub memories: Vec<Prior<'a>>,
    /// Its kernel state bytes.
    pub kernel: &'a [u8],
}

/// A memory of the base of an incremental snapshot.
#[derive(Clone, Copy, Debug)]
pub enum Prior<'a> {
    /// Its bytes when the base was taken: each page is compared with them.
    Bytes(&'a [u8]),
    /// Its length when the base was taken, and the 4 KiB blocks written since (as a
    /// [`tabi_hostmem::written::Tracker`] reports them). Only the pages with a written block
    /// are read, and each of them is written to the snapshot (as a zero chunk if it is zero
    /// now): nothing is compared. The map must cover every write, or the snapshot misses it.
    Written {
        /// The memory's length in bytes when the base was taken.
        len: usize,
        /// The blocks written since.
        blocks: &'a Touched,
    },
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Bytes written in all.
    pub bytes: u64,
    /// Bytes of memory pages written (before compression).
    pub pages_raw: u64,
    /// Bytes the pages took once compressed.
    pub pages_stored: u64,
    /// Number of pages written.
    pub pages: u64,
    /// The snapshot's content hash: an incremental child names it as its parent.
    pub hash: [u8; 32],
}

/// Why a snapshot could not be written.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The sink failed.
    Sink(E),
    /// The contents cannot be written (a memory that is not whole pages, a base that does not
    /// match).
    Invalid(String),
}

impl<E: core::fmt::Display> core::fmt::Display for WriteError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WriteError::Sink(e) => write!(f, "cannot write the snapshot: {e}"),
            WriteError::Invalid(e) => write!(f, "cannot write the snapshot: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: core::fmt::Debug + core::fmt::Display> std::error::Error for WriteError<E> {}

struct Out<'s, S: Sink> {
    sink: &'s mut S,
    digest: blake3::Hasher,
    summary: Summary,
}

impl<S: Sink> Out<'_, S> {
    /// Framing bytes: written and hashed.
    fn frame(&mut self, b: &[u8]) -> Result<(), WriteError<S::Error>> {
        self.digest.update(b);
        self.data(b)
    }
    /// Payload bytes: written only (their CRC is in the framing).
    fn data(&mut self, b: &[u8]) -> Result<(), WriteError<S::Error>> {
        self.summary.bytes += b.len() as u64;
        self.sink.write_all(b).map_err(WriteError::Sink)
    }
    /// A section whose payload is built in memory: id, length, BLAKE3 (of the three), payload.
    fn section(&mut self, id: SectionId, payload: &[u8]) -> Result<(), WriteError<S::Error>> {
        let len = u32::try_from(payload.len())
            .map_err(|_| WriteError::Invalid(alloc::format!("{} section over 4 GiB", id.name())))?;
        let mut h = [0u8; SECTION_HEADER];
        h[0] = id as u8;
        h[1..5].copy_from_slice(&len.to_le_bytes());
        h[5..].copy_from_slice(section_digest(id as u8, len, payload).as_bytes());
        self.frame(&h)?;
        self.data(payload)
    }
}

use tabi_hostmem::is_zero;
use tabi_hostmem::resident::{Touched, touched_or_all};

/// A memory to encode, and its base's, with what the host says of their blocks.
struct View<'a> {
    mem: &'a [u8],
    touched: &'a Touched,
    old: Option<Old<'a>>,
}

/// The base's memory, as the encoder uses it.
enum Old<'a> {
    /// Its bytes, and the blocks the host ever backed.
    Bytes(&'a [u8], Touched),
    /// Its length, and the blocks written since.
    Written(usize, &'a Touched),
}

/// Writes a snapshot of `contents` to `sink`. With a `base`, the snapshot is incremental: it
/// holds only the pages that differ from the base's, and the kernel state only if it changed.
///
/// A snapshot the reader would refuse under the default [`Limits`] is not written: see
/// [`write_within`].
pub fn write<S: Sink>(
    sink: &mut S,
    contents: &Contents<'_>,
    base: Option<&Base<'_>>,
) -> Result<Summary, WriteError<S::Error>> {
    write_within(sink, contents, base, &Limits::default())
}

/// [`write`], refusing before anything is written a snapshot that [`crate::read`] would refuse
/// under `limits`: too many or too large memories, globals or tables, a section over
/// [`Limits::section`], or a kernel state that does not decode within its budget or fails
/// [`tabi_libos::Kernel::check`]. The writer and the reader thus share one set of limits, and
/// a guest whose state could not be resumed is told so while it still runs.
pub fn write_within<S: Sink>(
    sink: &mut S,
    contents: &Contents<'_>,
    base: Option<&Base<'_>>,
    limits: &Limits,
) -> Result<Summary, WriteError<S::Error>> {
    write_impl(sink, contents, base, Some(limits))
}

/// [`write`] without any of the checks of [`write_within`]: frames whatever it is given, a
/// kernel state that does not decode included, with valid checksums and hash. For tests and
/// fuzzing of the reader, which must refuse what this writes.
pub fn write_unchecked<S: Sink>(
    sink: &mut S,
    contents: &Contents<'_>,
    base: Option<&Base<'_>>,
) -> Result<Summary, WriteError<S::Error>> {
    write_impl(sink, contents, base, None)
}

fn write_impl<S: Sink>(
    sink: &mut S,
    contents: &Contents<'_>,
    base: Option<&Base<'_>>,
    limits: Option<&Limits>,
) -> Result<Summary, WriteError<S::Error>> {
    let unlimited = Limits {
        memories: u32::MAX,
        pages: u32::MAX,
        total_pages: u64::MAX,
        globals: u32::MAX,
        tables: u32::MAX,
        section: u32::MAX,
        state: tabi_libos::StateLimits::default(),
        key: None,
    };
    let check = limits.is_some();
    let limits = limits.unwrap_or(&unlimited);
    if let Some(b) = base
        && b.memories.len() != contents.memories.len()
    {
        return Err(WriteError::Invalid(
            "the base has another number of memories".into(),
        ));
    }
    let refused = |what: String| {
        WriteError::Invalid(alloc::format!(
            "a resume would refuse this snapshot: {what}"
        ))
    };
    let over = |what: &str, size: u64, limit: u64| {
        refused(alloc::format!(
            "{what} is {size}, over the limit of {limit}"
        ))
    };
    if contents.memories.len() as u64 > u64::from(limits.memories) {
        return Err(over(
            "the number of memories",
            contents.memories.len() as u64,
            limits.memories.into(),
        ));
    }
    let mut total_pages = 0u64;
    for (i, m) in contents.memories.iter().enumerate() {
        let pages = (m.len() / PAGE) as u64;
        if pages > u64::from(limits.pages) {
            return Err(over(
                &alloc::format!("memory {i} (in pages)"),
                pages,
                limits.pages.into(),
            ));
        }
        total_pages += pages;
    }
    if total_pages > limits.total_pages {
        return Err(over(
            "all memories (in pages)",
            total_pages,
            limits.total_pages,
        ));
    }
    if contents.globals.len() as u64 > u64::from(limits.globals) {
        return Err(over(
            "the number of globals",
            contents.globals.len() as u64,
            limits.globals.into(),
        ));
    }
    if contents.tables.len() as u64 > u64::from(limits.tables) {
        return Err(over(
            "the number of tables",
            contents.tables.len() as u64,
            limits.tables.into(),
        ));
    }
    let section = u64::from(limits.section);
    // The module, compressed whole.
    let module = contents.module.map(|m| {
        let mut p = Vec::with_capacity(m.len() / 2 + 16);
        p.extend_from_slice(&(m.len() as u64).to_le_bytes());
        let (mut block, mut table) = (Vec::new(), Vec::new());
        crate::lz4::compress(m, &mut block, &mut table);
        p.extend_from_slice(&block);
        p
    });
    if let (Some(m), Some(p)) = (contents.module, &module)
        && (m.len() as u64 > section || p.len() as u64 > section)
    {
        return Err(over("the module", m.len() as u64, section));
    }
    if contents.stack.len() as u64 > section {
        return Err(over("the save stack", contents.stack.len() as u64, section));
    }
    // Kernel: 2, its length and one LZ4 block of it (the in-memory files are in it); 1 and
    // the bytes when that is no smaller; or 0 when an incremental snapshot's kernel state is
    // unchanged. A state that changed must pass what the reader asks of it.
    let same = base.is_some_and(|b| b.kernel == contents.kernel);
    let mut kernel = Vec::with_capacity(contents.kernel.len() / 2 + 16);
    if same {
        kernel.push(0);
    } else {
        if contents.kernel.len() as u64 > section {
            return Err(over(
                "the kernel state",
                contents.kernel.len() as u64,
                section,
            ));
        }
        let (mut block, mut table) = (Vec::new(), Vec::new());
        crate::lz4::compress(contents.kernel, &mut block, &mut table);
        let schema = tabi_libos::STATE_SCHEMA.to_le_bytes();
        let stored = if block.len() + 8 < contents.kernel.len() {
            kernel.push(KERNEL_LZ4);
            kernel.extend_from_slice(&schema);
            kernel.extend_from_slice(&(contents.kernel.len() as u64).to_le_bytes());
            kernel.extend_from_slice(&block);
            block.len()
        } else {
            kernel.push(KERNEL_RAW);
            kernel.extend_from_slice(&schema);
            kernel.extend_from_slice(contents.kernel);
            contents.kernel.len()
        };
        if kernel.len() as u64 > section {
            return Err(over("the kernel section", kernel.len() as u64, section));
        }
        if check {
            crate::read::kernel_state(contents.kernel, stored, limits)
                .map_err(|e| refused(alloc::format!("{e}")))?;
        }
    }

    let mut out = Out {
        sink,
        digest: blake3::Hasher::new(),
        summary: Summary::default(),
    };
    // Header.
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    let mut flags = if base.is_some() { FLAG_INCREMENTAL } else { 0 };
    if limits.key.is_some() {
        flags |= FLAG_AUTHENTICATED;
    }
    h.extend_from_slice(&flags.to_le_bytes());
    let c = crc(&h);
    h.extend_from_slice(&c.to_le_bytes());
    out.frame(&h)?;

    // Identity.
    let mut p = Vec::new();
    p.extend_from_slice(&contents.identity.original_sha256);
    p.extend_from_slice(&contents.identity.module_sha256);
    let parent = base.map(|b| b.hash);
    match parent {
        Some(hash) => {
            p.push(1);
            p.extend_from_slice(&hash);
        }
        None => p.push(0),
    }
    p.extend_from_slice(&(contents.identity.options.len() as u32).to_le_bytes());
    p.extend_from_slice(&contents.identity.options);
    out.section(SectionId::Identity, &p)?;

    if let Some(p) = &module {
        out.section(SectionId::Module, p)?;
    }

    // Machine.
    let mut p = Vec::new();
    let entry = contents.entry.as_bytes();
    let entry_len = u16::try_from(entry.len())
        .map_err(|_| WriteError::Invalid("entry name over 64 KiB".into()))?;
    p.extend_from_slice(&entry_len.to_le_bytes());
    p.extend_from_slice(entry);
    match contents.budget {
        Some(b) => {
            p.push(1);
            p.extend_from_slice(&b.to_le_bytes());
        }
        None => p.push(0),
    }
    p.extend_from_slice(&contents.points.to_le_bytes());
    out.section(SectionId::Machine, &p)?;

    // Globals.
    let mut p = Vec::new();
    p.extend_from_slice(&(contents.globals.len() as u32).to_le_bytes());
    for g in contents.globals {
        put_value(&mut p, g);
    }
    out.section(SectionId::Globals, &p)?;

    // Tables: each as instantiated (kind 0), or its entries as function indices plus one,
    // zero for null (kind 1).
    let mut p = Vec::new();
    p.extend_from_slice(&(contents.tables.len() as u32).to_le_bytes());
    for t in contents.tables {
        match t {
            TableImage::AsInstantiated => p.push(TABLE_AS_INSTANTIATED),
            TableImage::Funcs(entries) => {
                p.push(TABLE_FUNCS);
                p.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    let v = match e {
                        None => 0,
                        Some(f) => f.checked_add(1).ok_or_else(|| {
                            WriteError::Invalid("a table entry names function 2^32 - 1".into())
                        })?,
                    };
                    p.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    out.section(SectionId::Tables, &p)?;

    // Memories, streamed: each range of RANGE_PAGES pages is encoded on its own (with the
    // `std` feature, on encoder threads), then written in order. The ranges are fixed, so the
    // bytes do not depend on how many threads encoded them.
    for (index, mem) in contents.memories.iter().enumerate() {
        if mem.len() % PAGE != 0 {
            return Err(WriteError::Invalid(alloc::format!(
                "memory {index} is not a whole number of 64 KiB pages"
            )));
        }
        let pages = u32::try_from(mem.len() / PAGE)
            .map_err(|_| WriteError::Invalid("memory over 2^32 pages".into()))?;
        // Pages the host never backed read as zero: they are skipped without being read.
        let old = base.map(|b| match b.memories[index] {
            Prior::Bytes(old) => Old::Bytes(old, touched_or_all(old)),
            Prior::Written { len, blocks } => Old::Written(len, blocks),
        });
        if let Some(Old::Written(len, _)) = old
            && len > mem.len()
        {
            return Err(WriteError::Invalid(alloc::format!(
                "memory {index} is smaller than in the base"
            )));
        }
        // With a map of the pages written, only those are read, and reading them is all the
        // zero check costs: the probe would cost more than it saves.
        let touched = match old {
            Some(Old::Written(..)) => Touched::all(mem.len()),
            _ => touched_or_all(mem),
        };
        let view = View {
            mem,
            touched: &touched,
            old,
        };
        let mut h = Vec::with_capacity(13);
        h.push(SectionId::Memory as u8);
        h.extend_from_slice(&(index as u32).to_le_bytes());
        h.extend_from_slice(&pages.to_le_bytes());
        let c = crc(&h[1..]);
        h.extend_from_slice(&c.to_le_bytes());
        out.frame(&h)?;
        // Ranges that cannot hold a chunk are left out before any thread sees them: an
        // incremental snapshot of a large memory is mostly such ranges.
        let ranges: Vec<(u32, u32)> = (0..pages)
            .step_by(RANGE_PAGES as usize)
            .map(|p| (p, (p + RANGE_PAGES).min(pages)))
            .filter(|&r| !nothing_in(&view, r))
            .collect();
        encode_memory(&view, &ranges, &mut out)?;
        out.frame(&CHUNK_END.to_le_bytes())?;
    }

    // Save stack.
    out.section(SectionId::Stack, contents.stack)?;

    out.section(SectionId::Kernel, &kernel)?;

    // Host mounts.
    let mut p = Vec::new();
    p.extend_from_slice(&(contents.mounts.len() as u32).to_le_bytes());
    for m in contents.mounts {
        let path = m.guest_path.as_bytes();
        let len = u16::try_from(path.len())
            .map_err(|_| WriteError::Invalid("mount path over 64 KiB".into()))?;
        p.extend_from_slice(&len.to_le_bytes());
        p.extend_from_slice(path);
        p.extend_from_slice(&m.fingerprint);
    }
    out.section(SectionId::Mounts, &p)?;

    // Extensions: as many and as large as the reader takes, each name once.
    if check && contents.extensions.len() > crate::MAX_EXTENSIONS {
        return Err(WriteError::Invalid(alloc::format!(
            "{} extension sections, over the most of {}",
            contents.extensions.len(),
            crate::MAX_EXTENSIONS
        )));
    }
    for (i, e) in contents.extensions.iter().enumerate() {
        if check && contents.extensions[..i].iter().any(|o| o.name == e.name) {
            return Err(WriteError::Invalid(alloc::format!(
                "extension `{}` is given twice",
                e.name
            )));
        }
    }
    let mut extension_bytes = 0u64;
    for e in contents.extensions {
        let name = e.name.as_bytes();
        if name.is_empty() || name.len() > crate::MAX_EXTENSION_NAME {
            return Err(WriteError::Invalid(alloc::format!(
                "extension name `{}` is empty or over {} bytes",
                e.name,
                crate::MAX_EXTENSION_NAME
            )));
        }
        let mut p = Vec::with_capacity(2 + name.len() + e.data.len());
        p.push(if e.required { EXTENSION_REQUIRED } else { 0 });
        p.push(name.len() as u8);
        p.extend_from_slice(name);
        p.extend_from_slice(&e.data);
        extension_bytes += (SECTION_HEADER + p.len()) as u64;
        if check && extension_bytes > section {
            return Err(over("the extension sections", extension_bytes, section));
        }
        out.section(SectionId::Extension, &p)?;
    }

    // End: the id, then the content hash of everything before.
    out.frame(&[SectionId::End as u8])?;
    let hash: [u8; 32] = *out.digest.finalize().as_bytes();
    out.data(&hash)?;
    if let Some(key) = &limits.key {
        out.data(key.mac(&hash).as_bytes())?;
    }
    out.summary.hash = hash;
    Ok(out.summary)
}

/// Pages per independently encoded range (1 MiB): no chunk crosses a multiple of it.
const RANGE_PAGES: u32 = CHUNK_PAGES;

/// Encoded ranges in flight per encoder thread.
#[cfg(feature = "std")]
const BUFFERS: usize = 2;

/// An encoder's working space, reused from range to range.
#[derive(Default)]
struct Scratch {
    /// One compressed chunk.
    out: Vec<u8>,
    /// The compressor's hash table.
    table: Vec<u32>,
}

/// The chunks of one range: headers, and their data in one buffer.
#[derive(Default)]
struct Encoded {
    chunks: Vec<([u8; CHUNK_HEADER], core::ops::Range<usize>)>,
    data: Vec<u8>,
    pages: u64,
    stored: u64,
}

impl Encoded {
    /// Writes the chunks in order.
    fn write_to<S: Sink>(&self, out: &mut Out<'_, S>) -> Result<(), WriteError<S::Error>> {
        for (header, data) in &self.chunks {
            out.frame(header)?;
            out.data(&self.data[data.clone()])?;
        }
        out.summary.pages += self.pages;
        out.summary.pages_raw += self.pages * PAGE as u64;
        out.summary.pages_stored += self.stored;
        Ok(())
    }
}

/// Encodes a memory's `ranges` and writes them in order. With the `std` feature, encoder
/// threads take the ranges in turn while this thread writes what they finished, so
/// compression and I/O overlap.
fn encode_memory<S: Sink>(
    view: &View<'_>,
    ranges: &[(u32, u32)],
    out: &mut Out<'_, S>,
) -> Result<(), WriteError<S::Error>> {
    #[cfg(feature = "std")]
    if ranges.len() > 1 {
        use std::sync::mpsc;
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8)
            .min(ranges.len());
        return std::thread::scope(|scope| {
            // Per worker: finished ranges one way, empty buffers back the other.
            let mut done = Vec::new();
            let mut empty = Vec::new();
            for w in 0..workers {
                let (tx, rx) = mpsc::sync_channel::<Result<Encoded, String>>(BUFFERS);
                let (back, recycled) = mpsc::channel::<Encoded>();
                done.push(rx);
                empty.push(back);
                scope.spawn(move || {
                    // A few buffers per worker, reused: fresh memory costs a page fault per
                    // 4 KiB, as much as compressing it.
                    let mut made = 0;
                    let mut scratch = Scratch::default();
                    for r in ranges.iter().skip(w).step_by(workers) {
                        let mut e = if made < BUFFERS {
                            made += 1;
                            Encoded::default()
                        } else {
                            match recycled.recv() {
                                Ok(e) => e,
                                Err(_) => return,
                            }
                        };
                        let result = encode_range(view, *r, &mut e, &mut scratch).map(|()| e);
                        let failed = result.is_err();
                        if tx.send(result).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            for i in 0..ranges.len() {
                let w = i % workers;
                let e = done[w]
                    .recv()
                    .map_err(|_| WriteError::Invalid("an encoder thread panicked".into()))?
                    .map_err(WriteError::Invalid)?;
                e.write_to(out)?;
                // The worker may have finished; then the buffer is simply dropped.
                let _ = empty[w].send(e);
            }
            Ok(())
        });
    }
    let mut e = Encoded::default();
    let mut scratch = Scratch::default();
    for r in ranges {
        encode_range(view, *r, &mut e, &mut scratch).map_err(WriteError::Invalid)?;
        e.write_to(out)?;
    }
    Ok(())
}

/// Whether pages `start..end` surely give no chunk: nothing there was ever backed (and, in an
/// incremental snapshot, nothing the base had there either), or nothing there was written
/// since the base. Reads no memory.
fn nothing_in(view: &View<'_>, (start, end): (u32, u32)) -> bool {
    let bytes = start as usize * PAGE..end as usize * PAGE;
    match &view.old {
        None => !view.touched.any(bytes),
        Some(Old::Written(len, written)) => bytes.end <= *len && !written.any(bytes),
        Some(Old::Bytes(old, old_touched)) => {
            !view.touched.any(bytes.clone())
                && (bytes.start >= old.len()
                    || !old_touched.any(bytes.start..bytes.end.min(old.len())))
        }
    }
}

/// Encodes pages `range` of `mem`: the pages to write (non-zero ones; in an incremental
/// snapshot, those that differ from `old`), in chunks of up to [`CHUNK_PAGES`].
fn encode_range(
    view: &View<'_>,
    (start, end): (u32, u32),
    e: &mut Encoded,
    scratch: &mut Scratch,
) -> Result<(), String> {
    e.chunks.clear();
    e.data.clear();
    e.pages = 0;
    e.stored = 0;
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Skip,
        Data,
        Zero,
    }
    let mem = view.mem;
    // Whether a page is zero, reading it only if the host ever backed it.
    let zero = |m: &[u8], t: &Touched, range: core::ops::Range<usize>| {
        !t.any(range.clone()) || is_zero(&m[range])
    };
    let class = |p: u32| -> Class {
        let range = p as usize * PAGE..(p as usize + 1) * PAGE;
        let now_zero = || zero(mem, view.touched, range.clone());
        match &view.old {
            Some(Old::Written(len, written)) if range.end <= *len => {
                if !written.any(range.clone()) {
                    Class::Skip
                } else if now_zero() {
                    Class::Zero
                } else {
                    Class::Data
                }
            }
            // No base, or a page the base lacks (it reads as zero on resume too).
            None | Some(Old::Written(..)) => {
                if now_zero() {
                    Class::Skip
                } else {
                    Class::Data
                }
            }
            Some(Old::Bytes(old, old_touched)) => {
                let was_zero = range.end > old.len() || zero(old, old_touched, range.clone());
                let now_zero = now_zero();
                match (was_zero, now_zero) {
                    (true, true) => Class::Skip,
                    (false, true) => Class::Zero,
                    (true, false) => Class::Data,
                    (false, false) if old[range.clone()] == mem[range] => Class::Skip,
                    (false, false) => Class::Data,
                }
            }
        }
    };
    let mut p = start;
    let mut next = if p < end { Some(class(p)) } else { None };
    while let Some(k) = next {
        if k == Class::Skip {
            p += 1;
            next = (p < end).then(|| class(p));
            continue;
        }
        let mut n = 1u32;
        next = None;
        while p + n < end {
            let c = class(p + n);
            if c != k || n == CHUNK_PAGES {
                next = Some(c);
                break;
            }
            n += 1;
        }
        let raw = &mem[p as usize * PAGE..(p + n) as usize * PAGE];
        let at = e.data.len();
        let kind = match k {
            Class::Zero => CHUNK_ZERO,
            _ => {
                crate::lz4::compress(raw, &mut scratch.out, &mut scratch.table);
                if scratch.out.len() < raw.len() {
                    e.data.extend_from_slice(&scratch.out);
                    CHUNK_LZ4
                } else {
                    e.data.extend_from_slice(raw);
                    CHUNK_RAW
                }
            }
        };
        let data = &e.data[at..];
        let mut ch = [0u8; CHUNK_HEADER];
        ch[0..4].copy_from_slice(&p.to_le_bytes());
        ch[4..8].copy_from_slice(&n.to_le_bytes());
        ch[8] = kind;
        ch[9..13].copy_from_slice(&(data.len() as u32).to_le_bytes());
        ch[13..].copy_from_slice(blake3::hash(data).as_bytes());
        if kind != CHUNK_ZERO {
            e.pages += u64::from(n);
            e.stored += data.len() as u64;
        }
        e.chunks.push((ch, at..e.data.len()));
        p += n;
        if next.is_none() && p < end {
            next = Some(class(p));
        }
    }
    Ok(())
}
