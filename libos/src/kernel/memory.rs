//! Files and directories of the in-memory file system (`tabi-vfs`): they live in the kernel's
//! state and travel with the guest.

use super::object::{Cx, Kind, Readiness};
use super::*;

/// A regular file (or other non-directory) of the in-memory file system, with its stream
/// offset.
pub(super) struct File<'a> {
    pub ino: Ino,
    pub offset: &'a mut u64,
}

/// A directory of the in-memory file system.
pub(super) struct Dir {
    pub ino: Ino,
}

impl Kind for File<'_> {
    fn read(&mut self, cx: &mut Cx<'_>, buf: &mut [u8], at: Option<u64>) -> Result<usize, Errno> {
        let n = cx.fs.read_at(self.ino, at.unwrap_or(*self.offset), buf)?;
        if at.is_none() {
            *self.offset += n as u64;
        }
        Ok(n)
    }

    fn write(
        &mut self,
        cx: &mut Cx<'_>,
        data: &[u8],
        at: Option<u64>,
        append: bool,
    ) -> Result<usize, Errno> {
        if data.is_empty() {
            // Writing nothing neither moves nor grows anything, even past the end.
            return Ok(0);
        }
        let now = cx.now();
        // With `APPEND` every write goes to the end, a positioned one too (as on Linux).
        let pos = match at {
            _ if append => cx.fs.contents(self.ino)?.len() as u64,
            Some(p) => p,
            None => *self.offset,
        };
        let n = cx.fs.write_at(self.ino, pos, data, now)?;
        if at.is_none() {
            *self.offset = pos + n as u64;
        }
        Ok(n)
    }

    fn position(&mut self, cx: &mut Cx<'_>, _: u8) -> Result<(u64, u64), Errno> {
        Ok((*self.offset, cx.fs.stat(self.ino)?.size))
    }

    fn set_position(&mut self, offset: u64) -> Result<(), Errno> {
        *self.offset = offset;
        Ok(())
    }

    fn stat(&mut self, cx: &mut Cx<'_>) -> Result<Stat, Errno> {
        Ok(cx.fs.stat(self.ino)?)
    }

    fn filetype(&mut self, cx: &mut Cx<'_>) -> Result<FileType, Errno> {
        Ok(cx.fs.inode(self.ino)?.filetype())
    }

    fn set_size(&mut self, cx: &mut Cx<'_>, size: u64) -> Result<(), Errno> {
        let now = cx.now();
        Ok(cx.fs.set_size(self.ino, size, now)?)
    }

    fn allocate(&mut self, cx: &mut Cx<'_>, end: u64) -> Result<(), Errno> {
        let now = cx.now();
        Ok(cx.fs.allocate(self.ino, end, now)?)
    }

    fn set_times(&mut self, cx: &mut Cx<'_>, atim: SetTime, mtim: SetTime) -> Result<(), Errno> {
        let now = cx.now();
        Ok(cx.fs.set_times(self.ino, atim, mtim, now)?)
    }

    fn sync(&mut self, _: &mut Cx<'_>, _: bool) -> Result<(), Errno> {
        Ok(())
    }

    fn readiness(&mut self, cx: &mut Cx<'_>, write: bool) -> Readiness {
        if write {
            return Readiness::Now(0);
        }
        let size = cx.fs.stat(self.ino).map(|st| st.size).unwrap_or(0);
        Readiness::Now(size.saturating_sub(*self.offset))
    }
}

impl Kind for Dir {
    fn position(&mut self, _: &mut Cx<'_>, _: u8) -> Result<(u64, u64), Errno> {
        Err(Errno::Badf)
    }

    fn stat(&mut self, cx: &mut Cx<'_>) -> Result<Stat, Errno> {
        Ok(cx.fs.stat(self.ino)?)
    }

    fn filetype(&mut self, _: &mut Cx<'_>) -> Result<FileType, Errno> {
        Ok(FileType::Directory)
    }

    fn set_times(&mut self, cx: &mut Cx<'_>, atim: SetTime, mtim: SetTime) -> Result<(), Errno> {
        let now = cx.now();
        Ok(cx.fs.set_times(self.ino, atim, mtim, now)?)
    }

    fn sync(&mut self, _: &mut Cx<'_>, _: bool) -> Result<(), Errno> {
        Ok(())
    }

    fn read_dir(&mut self, cx: &mut Cx<'_>, cookie: u64) -> Result<Vec<DirEntry>, Errno> {
        Ok(cx.fs.readdir(self.ino, cookie)?)
    }

    fn readiness(&mut self, _: &mut Cx<'_>, _: bool) -> Readiness {
        Readiness::Error(Errno::Badf)
    }
}
