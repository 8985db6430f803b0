//! The operations on a descriptor: what does not depend on the object's kind (rights, how the
//! descriptor was opened, argument ranges) is checked here, then the kind does the rest
//! ([`super::object::Kind`]).

use super::*;

impl Kernel {
    /// Reads into `buf` from `fd`: at its stream offset (advancing it) when `at` is `None`, or at
    /// `at` (leaving the offset alone).
    pub fn read(
        &mut self,
        fd: u32,
        buf: &mut [u8],
        at: Option<u64>,
        host: &mut dyn Host,
    ) -> Result<usize, Errno> {
        let d = self.get(fd)?;
        if d.is_dir() {
            return Err(Errno::IsDir);
        }
        if !d.read {
            return Err(Errno::Badf);
        }
        d.require(rights::FD_READ)?;
        d.require_positional(at)?;
        self.with_kind(fd, host, |k, cx| k.read(cx, buf, at))
    }

    /// Writes `data` to `fd`: at its stream offset (or the end, with `APPEND`) when `at` is
    /// `None`, or at `at`.
    pub fn write(
        &mut self,
        fd: u32,
        data: &[u8],
        at: Option<u64>,
        host: &mut dyn Host,
    ) -> Result<usize, Errno> {
        let d = self.get(fd)?;
        if d.is_dir() {
            return Err(Errno::IsDir);
        }
        if !d.write {
            return Err(Errno::Badf);
        }
        d.require(rights::FD_WRITE)?;
        d.require_positional(at)?;
        let append = d.flags & fdflags::APPEND != 0;
        self.with_kind(fd, host, |k, cx| k.write(cx, data, at, append))
    }

    /// Moves the stream offset of `fd`; returns the new offset.
    pub fn seek(
        &mut self,
        fd: u32,
        delta: i64,
        whence: u8,
        host: &mut dyn Host,
    ) -> Result<u64, Errno> {
        let needed = if delta == 0 && whence == crate::abi::whence::CUR {
            rights::FD_TELL
        } else {
            rights::FD_SEEK
        };
        // A stream is `ESPIPE` and a directory `EBADF` before the rights are looked at.
        let (cur, size) = self.with_kind(fd, host, |k, cx| k.position(cx, whence))?;
        self.get(fd)?.require(needed)?;
        let base = match whence {
            crate::abi::whence::SET => 0,
            crate::abi::whence::CUR => cur,
            crate::abi::whence::END => size,
            _ => return Err(Errno::Inval),
        };
        let new = i128::from(base) + i128::from(delta);
        if new < 0 || new > i128::from(i64::MAX) {
            return Err(Errno::Inval);
        }
        let new = new as u64;
        self.with_kind(fd, host, |k, _| k.set_position(new))?;
        Ok(new)
    }

    /// Attributes of the object `fd` refers to.
    pub fn stat(&mut self, fd: u32, host: &mut dyn Host) -> Result<Stat, Errno> {
        self.get(fd)?.require(rights::FD_FILESTAT_GET)?;
        self.with_kind(fd, host, |k, cx| k.stat(cx))
    }

    /// The kind of object `fd` refers to.
    pub fn filetype(&mut self, fd: u32, host: &mut dyn Host) -> Result<FileType, Errno> {
        self.with_kind(fd, host, |k, cx| k.filetype(cx))
    }

    /// Sets the size of the file `fd` refers to.
    pub fn set_size(&mut self, fd: u32, size: u64, host: &mut dyn Host) -> Result<(), Errno> {
        let d = self.get(fd)?;
        if d.is_dir() {
            return Err(Errno::Badf);
        }
        if !d.write {
            // As Linux's ftruncate on a descriptor not open for writing.
            return Err(Errno::Inval);
        }
        d.require(rights::FD_FILESTAT_SET_SIZE)?;
        if size > i64::MAX as u64 {
            return Err(Errno::Fbig);
        }
        self.with_kind(fd, host, |k, cx| k.set_size(cx, size))
    }

    /// Makes sure the file is at least `offset + len` bytes long.
    pub fn allocate(
        &mut self,
        fd: u32,
        offset: u64,
        len: u64,
        host: &mut dyn Host,
    ) -> Result<(), Errno> {
        let d = self.get(fd)?;
        if d.is_dir() {
            return Err(Errno::Badf);
        }
        if !d.write {
            return Err(Errno::Badf);
        }
        d.require(rights::FD_ALLOCATE)?;
        let end = offset.checked_add(len).ok_or(Errno::Fbig)?;
        if len == 0 {
            return Err(Errno::Inval);
        }
        if end > i64::MAX as u64 {
            return Err(Errno::Fbig);
        }
        self.with_kind(fd, host, |k, cx| k.allocate(cx, end))
    }

    /// Sets the timestamps of the object `fd` refers to.
    pub fn set_times(
        &mut self,
        fd: u32,
        atim: SetTime,
        mtim: SetTime,
        host: &mut dyn Host,
    ) -> Result<(), Errno> {
        self.get(fd)?.require(rights::FD_FILESTAT_SET_TIMES)?;
        self.with_kind(fd, host, |k, cx| k.set_times(cx, atim, mtim))
    }

    /// Flushes `fd` to stable storage (a no-op for in-memory objects).
    pub fn sync(&mut self, fd: u32, data_only: bool, host: &mut dyn Host) -> Result<(), Errno> {
        let d = self.get(fd)?;
        // A directory syncs its entries (what makes a rename durable); it has no data of its
        // own to sync apart from them, so `fd_datasync` on it is `fd_sync`.
        d.require(if data_only && !d.is_dir() {
            rights::FD_DATASYNC
        } else {
            rights::FD_SYNC
        })?;
        self.with_kind(fd, host, |k, cx| k.sync(cx, data_only))
    }

    /// Reads the directory `fd` from `cookie` on.
    pub fn read_dir(
        &mut self,
        fd: u32,
        cookie: u64,
        host: &mut dyn Host,
    ) -> Result<Vec<DirEntry>, Errno> {
        let d = self.get(fd)?;
        if !d.is_dir() {
            return Err(Errno::NotDir);
        }
        d.require(rights::FD_READDIR)?;
        self.with_kind(fd, host, |k, cx| k.read_dir(cx, cookie))
    }
}
