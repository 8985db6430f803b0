//! An LZ4 block compressor whose output does not depend on the host.
//!
//! Snapshots must be the same bytes on every architecture. `lz4_flex`'s compressor reads its
//! input as native-endian words to hash them, so on a big-endian host it finds other matches
//! and writes other (equally valid) blocks. This one reads little-endian words everywhere; its
//! output is a standard LZ4 block, which `lz4_flex` (or any LZ4 decoder) reads back.
//!
//! The method is the usual greedy one: a hash table of recent positions keyed by the next four
//! bytes, a match when the candidate's four bytes agree, extended forwards and backwards, and a
//! growing stride through data that keeps missing, so incompressible input is passed over
//! quickly.

use alloc::vec::Vec;

/// Bits of the hash table's index.
const HASH_LOG: u32 = 12;
/// Slots of the hash table.
const TABLE: usize = 1 << HASH_LOG;
/// Shortest match the format allows.
const MIN_MATCH: usize = 4;
/// The block must end with at least this many literals.
const LAST_LITERALS: usize = 5;
/// No match may start within this many bytes of the end.
const MF_LIMIT: usize = 12;
/// Largest match offset.
const MAX_OFFSET: usize = 65535;

/// The most bytes [`compress`] writes for `len` bytes of input.
pub fn max_compressed_size(len: usize) -> usize {
    len + len / 255 + 16
}

#[inline(always)]
fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(w)
}

#[inline(always)]
fn u128_at(b: &[u8], i: usize) -> u128 {
    let mut w = [0u8; 16];
    w.copy_from_slice(&b[i..i + 16]);
    u128::from_le_bytes(w)
}

#[inline(always)]
fn hash(word: u32) -> usize {
    (word.wrapping_mul(2_654_435_761) >> (32 - HASH_LOG)) as usize
}

/// Appends a length's continuation bytes (the part past a token's nibble).
#[inline(always)]
fn put_length(out: &mut Vec<u8>, mut n: usize) {
    while n >= 255 {
        out.push(255);
        n -= 255;
    }
    out.push(n as u8);
}

/// Appends one sequence: `literals`, then (unless this is the last one) a match of
/// `match_len` bytes at `offset` back.
#[inline(always)]
fn put_sequence(out: &mut Vec<u8>, literals: &[u8], m: Option<(usize, usize)>) {
    let lit = literals.len();
    let lit_nibble = lit.min(15) as u8;
    let match_nibble = m.map_or(0, |(_, len)| (len - MIN_MATCH).min(15) as u8);
    out.push(lit_nibble << 4 | match_nibble);
    if lit >= 15 {
        put_length(out, lit - 15);
    }
    out.extend_from_slice(literals);
    if let Some((offset, len)) = m {
        out.extend_from_slice(&(offset as u16).to_le_bytes());
        if len - MIN_MATCH >= 15 {
            put_length(out, len - MIN_MATCH - 15);
        }
    }
}

/// Compresses `input` into one LZ4 block, replacing the contents of `out`. `table` is scratch
/// space, reused between calls.
pub fn compress(input: &[u8], out: &mut Vec<u8>, table: &mut Vec<u32>) {
    out.clear();
    out.reserve(max_compressed_size(input.len()));
    let len = input.len();
    if len < MF_LIMIT + 1 {
        put_sequence(out, input, None);
        return;
    }
    table.clear();
    table.resize(TABLE, 0);
    // Of known length, indexed by hashes below it by construction: no bounds checks in the
    // loop.
    let table = &mut table[..TABLE];
    // Matches start before `last_start` and end by `len - LAST_LITERALS`.
    let last_start = len - MF_LIMIT;
    let match_end = len - LAST_LITERALS;
    let mut anchor = 0;
    // Every slot starts at position 0, a real candidate (checked like any other), so no
    // slot is ever empty; the search starts after it.
    let mut i = 1;
    let mut misses = 0usize;
    while i < last_start {
        let word = u32_at(input, i);
        let h = hash(word);
        let candidate = table[h];
        table[h] = i as u32;
        let found =
            i - candidate as usize <= MAX_OFFSET && u32_at(input, candidate as usize) == word;
        if !found {
            // Step further the longer nothing matched (1 byte for the first 32 misses).
            misses += 1;
            i += 1 + (misses >> 5);
            continue;
        }
        misses = 0;
        let mut start = i;
        let mut cand = candidate as usize;
        // Backwards, over literals not yet written.
        while start > anchor && cand > 0 && input[start - 1] == input[cand - 1] {
            start -= 1;
            cand -= 1;
        }
        // Forwards, sixteen bytes at a time, then the bytes that still agree.
        let offset = start - cand;
        let mut end = i + MIN_MATCH;
        loop {
            if end + 16 > match_end {
                while end < match_end && input[end] == input[end - offset] {
                    end += 1;
                }
                break;
            }
            let diff = u128_at(input, end) ^ u128_at(input, end - offset);
            if diff != 0 {
                end += (diff.trailing_zeros() / 8) as usize;
                break;
            }
            end += 16;
        }
        put_sequence(out, &input[anchor..start], Some((offset, end - start)));
        // Remember a position inside the match too: repeats often resume there.
        if end - 2 > i {
            table[hash(u32_at(input, end - 2))] = (end - 2) as u32;
        }
        anchor = end;
        i = end;
    }
    put_sequence(out, &input[anchor..], None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn round_trip(input: &[u8]) -> usize {
        let (mut out, mut table) = (Vec::new(), Vec::new());
        compress(input, &mut out, &mut table);
        assert!(out.len() <= max_compressed_size(input.len()));
        let back = lz4_flex::block::decompress(&out, input.len()).expect("a valid LZ4 block");
        assert_eq!(back, input);
        out.len()
    }

    #[test]
    fn blocks_decode_to_their_input() {
        for len in [0, 1, 4, 12, 13, 17, 64, 255, 1000, 65536] {
            round_trip(&vec![0u8; len]);
            let counting: Vec<u8> = (0..len).map(|i| (i / 7) as u8).collect();
            round_trip(&counting);
            let mut x = 0x9e37_79b9_u32 | 1;
            let random: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            round_trip(&random);
        }
        // Long runs need continuation bytes for both lengths.
        let mut v = vec![7u8; 70_000];
        v[1000..1300]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        assert!(round_trip(&v) < 2000);
        let text = b"a value of the guest, a value of the host; ".repeat(2000);
        assert!(round_trip(&text) < text.len() / 10);
    }

    #[test]
    fn arbitrary_inputs_round_trip() {
        // A fixed pseudo-random corpus mixing runs, repeats and noise.
        let mut x = 88_172_645_463_325_252u64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 5000) as usize;
            let mut v = Vec::with_capacity(len);
            while v.len() < len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 3 {
                    0 => v.extend(core::iter::repeat_n(
                        (x >> 8) as u8,
                        (x >> 16) as usize % 40,
                    )),
                    1 if v.len() > 10 => {
                        let from = (x >> 8) as usize % v.len();
                        let n = ((x >> 24) as usize % 30).min(v.len() - from);
                        let copy = v[from..from + n].to_vec();
                        v.extend(copy);
                    }
                    _ => v.push((x >> 32) as u8),
                }
            }
            v.truncate(len);
            round_trip(&v);
        }
    }
}
