//! Which parts of a large buffer the host has ever given memory to.
//!
//! A guest's linear memory is usually a large anonymous mapping of which only a fraction was
//! ever written; the rest reads as zero without being backed by anything. Scanning such a
//! memory for non-zero pages would fault in every untouched page only to find it zero. On
//! Linux, `/proc/self/pagemap` says which pages of the process are present (or swapped out),
//! and `/proc/self/maps` which ranges are private anonymous memory, where a page that is not
//! present can only read as zero. That is what CRIU reads to skip empty memory.
//!
//! [`touched`] combines the two into a map of 4 KiB blocks that may hold non-zero bytes. It
//! is only a hint that lets callers skip work: a block it calls untouched reads as zero, and a
//! block it calls touched must still be looked at. Where the host cannot tell (another OS, no
//! `/proc`, file-backed or shared memory, an emulator such as qemu-user whose pagemap is its
//! own, `TABI_NO_PAGEMAP` set), every block counts as touched.

use alloc::vec;
use alloc::vec::Vec;

/// The granularity of a [`Touched`] map.
pub const BLOCK: usize = 4096;

/// For each 4 KiB block of a buffer, whether it may hold non-zero bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Touched {
    blocks: Vec<bool>,
}

impl Touched {
    /// A map of `len` bytes in which every block counts as touched.
    pub fn all(len: usize) -> Touched {
        Touched {
            blocks: vec![true; len.div_ceil(BLOCK)],
        }
    }

    /// A map of the given blocks: `blocks[i]` for bytes `i * 4096 ..`.
    pub fn from_blocks(blocks: Vec<bool>) -> Touched {
        Touched { blocks }
    }

    /// Whether block `i` (bytes `i * 4096 ..`) may hold non-zero bytes; blocks past the end
    /// count as touched.
    pub fn block(&self, i: usize) -> bool {
        self.blocks.get(i).copied().unwrap_or(true)
    }

    /// Whether any block of bytes `range` may hold non-zero bytes.
    pub fn any(&self, range: core::ops::Range<usize>) -> bool {
        if range.is_empty() {
            return false;
        }
        let (first, last) = (range.start / BLOCK, (range.end - 1) / BLOCK);
        (first..=last).any(|i| self.block(i))
    }

    /// Number of blocks that count as touched.
    pub fn count(&self) -> usize {
        self.blocks.iter().filter(|&&b| b).count()
    }
}

/// Which 4 KiB blocks of `mem` may hold non-zero bytes; `None` when the host cannot tell,
/// which callers treat as every block touched.
pub fn touched(mem: &[u8]) -> Option<Touched> {
    #[cfg(all(feature = "std", target_os = "linux"))]
    {
        linux::touched(mem)
    }
    #[cfg(not(all(feature = "std", target_os = "linux")))]
    {
        let _ = mem;
        None
    }
}

/// [`touched`], or every block when the host cannot tell.
pub fn touched_or_all(mem: &[u8]) -> Touched {
    touched(mem).unwrap_or_else(|| Touched::all(mem.len()))
}

/// Asks the host to back the whole host pages inside `mem` at once, before they are written
/// through: one request instead of a page fault per host page. Only a hint; where the host
/// cannot (or `mem` is small), nothing happens and the writes fault the pages in as usual.
pub fn prefault(mem: &mut [u8]) {
    #[cfg(all(feature = "std", target_os = "linux"))]
    populate::write(mem);
    #[cfg(not(all(feature = "std", target_os = "linux")))]
    let _ = mem;
}

#[cfg(all(feature = "std", target_os = "linux"))]
#[allow(unsafe_code, reason = "madvise takes a raw address range")]
mod populate {
    use core::sync::atomic::{AtomicBool, Ordering};

    /// `MADV_POPULATE_WRITE` (Linux 5.14).
    const MADV_POPULATE_WRITE: libc::c_int = 23;

    /// Cleared when the kernel does not know the request, so it is not asked again.
    static WORKS: AtomicBool = AtomicBool::new(true);

    pub(super) fn write(mem: &mut [u8]) {
        if mem.len() < 4 * super::BLOCK || !WORKS.load(Ordering::Relaxed) {
            return;
        }
        let Some(ps) = super::linux::page_size() else {
            return;
        };
        let start = mem.as_mut_ptr() as usize;
        let first = start.next_multiple_of(ps);
        let end = (start + mem.len()) / ps * ps;
        if first >= end {
            return;
        }
        // SAFETY: the range is whole host pages inside `mem`, which this call borrows
        // exclusively; populating for write backs those pages (zero-filled if they were
        // never backed) and changes no byte of them, so the memory `mem` describes reads the
        // same after the call as before.
        let r =
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, MADV_POPULATE_WRITE) };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            WORKS.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(all(feature = "std", target_os = "linux"))]
pub(crate) mod linux {
    use super::{BLOCK, Touched};
    use alloc::vec;
    use std::os::unix::fs::FileExt;

    /// Below this size the probe costs more than the scan it saves.
    const MIN_LEN: usize = 1 << 20;

    /// Pagemap entry bits: page present, page swapped.
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;

    /// The host's page size, from the auxiliary vector (`AT_PAGESZ`), read once per process.
    pub(crate) fn page_size() -> Option<usize> {
        static PAGE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
        *PAGE.get_or_init(|| {
            const AT_PAGESZ: u64 = 6;
            let auxv = std::fs::read("/proc/self/auxv").ok()?;
            let word = size_of::<usize>();
            let mut pairs = auxv.chunks_exact(2 * word);
            pairs.find_map(|p| {
                let key = usize::from_ne_bytes(p[..word].try_into().ok()?);
                let value = usize::from_ne_bytes(p[word..].try_into().ok()?);
                (key as u64 == AT_PAGESZ && value.is_power_of_two() && value >= 512)
                    .then_some(value)
            })
        })
    }

    pub(super) fn touched(mem: &[u8]) -> Option<Touched> {
        if mem.len() < MIN_LEN || !faithful() {
            return None;
        }
        probe(mem)
    }

    /// Whether the probe tells the truth here, checked once per process on memory whose
    /// contents are known: under an emulator (qemu-user) or a sandboxing kernel the pagemap
    /// may describe other addresses, and then the probe is not used at all.
    fn faithful() -> bool {
        static FAITHFUL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FAITHFUL.get_or_init(|| {
            if !allowed() {
                return false;
            }
            // Large enough to be a fresh mapping of its own whatever the allocator's
            // thresholds.
            let mut v = vec![0u8; 64 << 20];
            let written = [1usize, 100, 5000, 16000];
            for &b in &written {
                v[b * BLOCK + 1] = 1;
            }
            let Some(t) = probe(&v) else {
                return false;
            };
            // Every block written must show; and some block not written must not, or the
            // probe only costs time.
            let faithful = written.iter().all(|&b| t.block(b)) && t.count() < v.len() / BLOCK;
            core::hint::black_box(&v);
            faithful
        })
    }

    /// Whether the page tables may be asked about this process's memory at all (here, and by
    /// [`crate::written`]): not when `TABI_NO_PAGEMAP` is set, and not under qemu-user.
    pub(crate) fn allowed() -> bool {
        static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ALLOWED.get_or_init(|| {
            // An escape hatch, and a way to measure what the probe saves.
            if std::env::var_os("TABI_NO_PAGEMAP").is_some() {
                return false;
            }
            // Under qemu-user the pagemap is the emulator's, not the guest's, and its answers
            // only sometimes line up with the guest's addresses (seen here on s390x): the
            // self-test below can pass and a later probe still miss a written page. The
            // host-side name of such a process is the emulator's.
            let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
            !comm.starts_with("qemu-")
        })
    }

    fn probe(mem: &[u8]) -> Option<Touched> {
        let ps = page_size()?;
        let start = mem.as_ptr() as usize;
        let end = start.checked_add(mem.len())?;
        let first = start / ps;
        let pages = (end - 1) / ps - first + 1;

        // Host pages inside private anonymous mappings (inode 0): there a page that is not
        // present reads as zero. Anything else (a file, memfd or shared mapping) may hold data
        // without being present in this process.
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let mut anonymous = vec![false; pages];
        for line in maps.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(range), Some(perms), Some(_), Some(_), Some(inode)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            if b <= start || a >= end || inode != "0" || !perms.ends_with('p') {
                continue;
            }
            let from = a.max(start) / ps - first;
            let to = (b.min(end) - 1) / ps - first;
            anonymous[from..=to].fill(true);
        }

        // Present or swapped pages, from the pagemap: 8 bytes per host page.
        let pagemap = std::fs::File::open("/proc/self/pagemap").ok()?;
        let mut entries = vec![0u8; pages.checked_mul(8)?];
        pagemap
            .read_exact_at(&mut entries, (first as u64).checked_mul(8)?)
            .ok()?;
        let maybe: vec::Vec<bool> = entries
            .chunks_exact(8)
            .zip(&anonymous)
            .map(|(e, &anon)| {
                let e = u64::from_ne_bytes(e.try_into().unwrap_or([0xff; 8]));
                !anon || e & (PRESENT | SWAPPED) != 0
            })
            .collect();
        if !maybe.contains(&false) {
            // Everything is present: the probe tells nothing a scan would not.
            return Some(Touched::all(mem.len()));
        }

        let blocks = (0..mem.len().div_ceil(BLOCK))
            .map(|i| {
                let a = start + i * BLOCK;
                let b = (a + BLOCK).min(end) - 1;
                maybe[a / ps - first..=b / ps - first].contains(&true)
            })
            .collect();
        Some(Touched { blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefaulting changes no byte: not of memory written before, not of memory never
    /// backed (it still reads as zero), and not of a range that starts and ends inside host
    /// pages.
    #[test]
    fn prefault_keeps_the_bytes() {
        let mut v: Vec<u8> = (0..(3 << 20) + 123).map(|i| (i % 249) as u8).collect();
        let copy = v.clone();
        prefault(&mut v[77..]);
        assert!(v == copy);
        let mut fresh = alloc::vec![0u8; 8 << 20];
        prefault(&mut fresh[4095..(6 << 20) + 1]);
        assert!(fresh.iter().all(|&b| b == 0));
        prefault(&mut []);
    }

    #[test]
    fn blocks_and_ranges() {
        let t = Touched {
            blocks: vec![false, true, false],
        };
        assert!(!t.block(0) && t.block(1) && !t.block(2));
        assert!(t.block(3), "past the end counts as touched");
        assert!(!t.any(0..BLOCK));
        assert!(t.any(0..BLOCK + 1));
        assert!(!t.any(2 * BLOCK..3 * BLOCK));
        assert!(!t.any(5..5));
        assert_eq!(t.count(), 1);
    }

    /// A large zeroed allocation is anonymous memory; the blocks written are the only ones
    /// touched (on Linux; elsewhere the probe may say nothing).
    #[test]
    fn a_fresh_allocation_is_untouched_but_for_what_was_written() {
        let mut v = vec![0u8; 64 << 20];
        let written = [3usize, 1000, 1001, 16383];
        for &b in &written {
            v[b * BLOCK + 7] = 1;
        }
        let Some(t) = touched(&v) else { return };
        for &b in &written {
            assert!(t.block(b), "block {b} was written");
        }
        if cfg!(target_os = "linux") {
            // The allocation's header may share a host page with block 0; the rest of the
            // untouched blocks were never backed.
            assert!(t.count() < 64, "{} blocks touched", t.count());
        }
        // Every block the map calls untouched really is zero.
        for (i, b) in v.chunks(BLOCK).enumerate() {
            if !t.block(i) {
                assert!(b.iter().all(|&x| x == 0), "block {i}");
            }
        }
    }

    #[test]
    fn small_buffers_are_not_probed() {
        assert_eq!(touched(&[0u8; 4096]), None);
        assert_eq!(touched_or_all(&[0u8; 4096]).count(), 1);
    }
}
