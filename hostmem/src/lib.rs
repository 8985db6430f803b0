//! What the host knows about a guest's memory, and what it does with that knowledge.
//!
//! A guest's linear memory is a large mapping of which a fraction is ever written. The
//! kernel (`tabi-libos`) and the snapshot format treat memory as plain bytes; this crate holds
//! the host-side tools that make copying, checkpointing and restoring such memory cost what it
//! holds rather than its size:
//!
//! - [`resident`]: which 4 KiB blocks the host ever backed (Linux's `/proc/self/pagemap`), and
//!   faulting in a range at once before it is written;
//! - [`written`]: which blocks were written since a moment (userfaultfd write protection and
//!   `PAGEMAP_SCAN`), for incremental snapshots;
//! - [`sparse_copy`] and [`write_sparse`]: copies that skip blocks known to be zero.
//!
//! Used by the engine adapters (capturing and restoring memories), `tabi-snapshot` (encoding
//! and decoding pages) and `tabi` (incremental chains). Everything degrades to "every block
//! may be touched, nothing is tracked" without the `std` feature, off Linux, or under
//! emulators; the answers are hints that save work, never wrong.
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod resident;
pub mod written;

use alloc::vec::Vec;

/// Whether `bytes` are all zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    let (head, rest) = bytes.split_at(bytes.len() % 64);
    head.iter().all(|&b| b == 0)
        && rest
            .chunks_exact(64)
            .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// A copy of a memory image that touches only the non-zero 4 KiB blocks: the rest of a large
/// zeroed allocation stays unmapped, so copying a mostly empty memory costs its contents, not
/// its size. Blocks the host never backed (see [`crate::resident`]) are not even read.
pub fn sparse_copy(src: &[u8]) -> Vec<u8> {
    sparse_copy_len(src, src.len())
}

/// [`sparse_copy`] into a zeroed buffer of `len` bytes (at least `src.len()`): what lies past
/// `src` stays unmapped until written.
pub fn sparse_copy_len(src: &[u8], len: usize) -> Vec<u8> {
    let touched = resident::touched_or_all(src);
    let mut v = alloc::vec![0u8; len.max(src.len())];
    for (i, (d, s)) in v.chunks_mut(4096).zip(src.chunks(4096)).enumerate() {
        if touched.block(i) && !is_zero(s) {
            d.copy_from_slice(s);
        }
    }
    v
}

/// Writes `src` over `dst` (same length), skipping 4 KiB blocks that are zero in both: a fresh
/// instance's memory is mostly zero and untouched, and stays so. Blocks the host never backed
/// (see [`crate::resident`]) are known to be zero without reading them.
pub fn write_sparse(dst: &mut [u8], src: &[u8]) {
    let from = resident::touched_or_all(src);
    let to = resident::touched_or_all(dst);
    for (i, (d, s)) in dst.chunks_mut(4096).zip(src.chunks(4096)).enumerate() {
        if from.block(i) && !is_zero(s) {
            d.copy_from_slice(s);
        } else if to.block(i) && !is_zero(d) {
            d.fill(0);
        }
    }
}
