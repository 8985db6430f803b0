//! Bounds-checked access to a guest's linear memory.
//!
//! The preview-1 decoder reads every pointer the guest passes through [`GuestMemory`]; each
//! accessor checks the whole range first and gives [`Errno::Fault`] when any byte of it lies
//! outside memory, so a wild pointer never reaches past the slice and never panics.
//! All multi-byte values are little-endian, as Wasm defines them, on every host.

use alloc::vec::Vec;

use crate::errno::Errno;

/// A guest's linear memory, seen by the kernel during one host call.
///
/// Engines hand out their memory as a byte slice for the duration of a call, so the trait is
/// implemented for `[u8]`; an adapter with a different layout implements the two required
/// methods and gets the typed accessors for free.
pub trait GuestMemory {
    /// The whole memory.
    fn bytes(&self) -> &[u8];
    /// The whole memory, writable.
    fn bytes_mut(&mut self) -> &mut [u8];

    /// `len` bytes at `ptr`, or `Fault` if any lies outside memory.
    fn slice(&self, ptr: u32, len: u32) -> Result<&[u8], Errno> {
        let start = ptr as usize;
        let end = start.checked_add(len as usize).ok_or(Errno::Fault)?;
        self.bytes().get(start..end).ok_or(Errno::Fault)
    }

    /// `len` writable bytes at `ptr`, or `Fault` if any lies outside memory.
    fn slice_mut(&mut self, ptr: u32, len: u32) -> Result<&mut [u8], Errno> {
        let start = ptr as usize;
        let end = start.checked_add(len as usize).ok_or(Errno::Fault)?;
        self.bytes_mut().get_mut(start..end).ok_or(Errno::Fault)
    }

    /// Copies `len` bytes at `ptr` out of memory.
    fn read_vec(&self, ptr: u32, len: u32) -> Result<Vec<u8>, Errno> {
        self.slice(ptr, len).map(<[u8]>::to_vec)
    }

    /// Writes `data` at `ptr`.
    fn write_bytes(&mut self, ptr: u32, data: &[u8]) -> Result<(), Errno> {
        let len = u32::try_from(data.len()).map_err(|_| Errno::Fault)?;
        self.slice_mut(ptr, len)?.copy_from_slice(data);
        Ok(())
    }

    /// Reads a byte.
    fn read_u8(&self, ptr: u32) -> Result<u8, Errno> {
        Ok(self.slice(ptr, 1)?[0])
    }

    /// Reads a little-endian `u16`.
    fn read_u16(&self, ptr: u32) -> Result<u16, Errno> {
        let b = self.slice(ptr, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Reads a little-endian `u32`.
    fn read_u32(&self, ptr: u32) -> Result<u32, Errno> {
        let b = self.slice(ptr, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a little-endian `u64`.
    fn read_u64(&self, ptr: u32) -> Result<u64, Errno> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.slice(ptr, 8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// Writes a byte.
    fn write_u8(&mut self, ptr: u32, v: u8) -> Result<(), Errno> {
        self.write_bytes(ptr, &[v])
    }

    /// Writes a little-endian `u16`.
    fn write_u16(&mut self, ptr: u32, v: u16) -> Result<(), Errno> {
        self.write_bytes(ptr, &v.to_le_bytes())
    }

    /// Writes a little-endian `u32`.
    fn write_u32(&mut self, ptr: u32, v: u32) -> Result<(), Errno> {
        self.write_bytes(ptr, &v.to_le_bytes())
    }

    /// Writes a little-endian `u64`.
    fn write_u64(&mut self, ptr: u32, v: u64) -> Result<(), Errno> {
        self.write_bytes(ptr, &v.to_le_bytes())
    }

    /// Reads a guest string: `len` bytes at `ptr` that must be UTF-8 (`Ilseq` otherwise).
    fn read_str(&self, ptr: u32, len: u32) -> Result<&str, Errno> {
        core::str::from_utf8(self.slice(ptr, len)?).map_err(|_| Errno::Ilseq)
    }

    /// Reads an array of `count` (pointer, length) pairs, the layout of `iovec` and `ciovec`.
    fn read_iovecs(&self, ptr: u32, count: u32) -> Result<Vec<(u32, u32)>, Errno> {
        let raw = self.slice(ptr, count.checked_mul(8).ok_or(Errno::Fault)?)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect())
    }
}

impl GuestMemory for [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_bounds_is_fault_not_panic() {
        let mut mem = [0u8; 16];
        let m: &mut [u8] = &mut mem;
        assert_eq!(m.read_u32(13), Err(Errno::Fault));
        assert_eq!(m.read_u64(u32::MAX), Err(Errno::Fault));
        assert_eq!(m.slice(4, u32::MAX), Err(Errno::Fault));
        assert_eq!(m.write_u16(15, 1), Err(Errno::Fault));
        assert_eq!(m.read_iovecs(8, u32::MAX), Err(Errno::Fault));
        assert!(m.read_u32(12).is_ok());
    }

    #[test]
    fn values_are_little_endian() {
        let mut mem = [0u8; 16];
        let m: &mut [u8] = &mut mem;
        m.write_u32(0, 0x0403_0201).unwrap();
        m.write_u64(8, 0x0807_0605_0403_0201).unwrap();
        assert_eq!(&m[..4], &[1, 2, 3, 4]);
        assert_eq!(&m[8..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(m.read_u16(1).unwrap(), 0x0302);
        // Reads decode little-endian bytes whatever the host's byte order.
        let bytes: Vec<u8> = (1..=16).collect();
        let r: &[u8] = &bytes;
        assert_eq!(r.read_u32(0).unwrap(), 0x0403_0201);
        assert_eq!(r.read_u64(8).unwrap(), 0x100f_0e0d_0c0b_0a09);
        assert_eq!(
            r.read_iovecs(0, 2).unwrap(),
            [(0x0403_0201, 0x0807_0605), (0x0c0b_0a09, 0x100f_0e0d)]
        );
    }

    #[test]
    fn strings_must_be_utf8() {
        let mem: &[u8] = &[0xff, 0xfe, b'o', b'k'];
        assert_eq!(mem.read_str(0, 2), Err(Errno::Ilseq));
        assert_eq!(mem.read_str(2, 2), Ok("ok"));
    }
}
