//! Files and directories of host mounts: the host holds them (through `HostFs`), and the
//! kernel keeps what reopens them after a move (mount, path below it, the key of the host's
//! handle).

use super::object::{Cx, Kind, Readiness};
use super::*;

/// A file of a host mount, with its stream offset.
pub(super) struct File<'a> {
    pub obj: HostObj<'a>,
    pub offset: &'a mut u64,
}

/// A directory of a host mount.
pub(super) struct Dir<'a> {
    pub obj: HostObj<'a>,
}

impl Kind for File<'_> {
    fn read(&mut self, cx: &mut Cx<'_>, buf: &mut [u8], at: Option<u64>) -> Result<usize, Errno> {
        let pos = at.unwrap_or(*self.offset);
        let n = cx.host_fs()?.read_at(self.obj, pos, buf)?;
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
        let fs = cx.host_fs()?;
        if data.is_empty() {
            return Ok(0);
        }
        let pos = match at {
            _ if append => fs.stat(self.obj)?.size,
            Some(p) => p,
            None => *self.offset,
        };
        let n = fs.write_at(self.obj, pos, data)?;
        if at.is_none() {
            *self.offset = pos + n as u64;
        }
        Ok(n)
    }

    fn position(&mut self, cx: &mut Cx<'_>, whence: u8) -> Result<(u64, u64), Errno> {
        let size = if whence == crate::abi::whence::END {
            cx.host_fs()?.stat(self.obj)?.size
        } else {
            0
        };
        Ok((*self.offset, size))
    }

    fn set_position(&mut self, offset: u64) -> Result<(), Errno> {
        *self.offset = offset;
        Ok(())
    }

    fn stat(&mut self, cx: &mut Cx<'_>) -> Result<Stat, Errno> {
        Ok(cx.host_fs()?.stat(self.obj)?)
    }

    fn filetype(&mut self, cx: &mut Cx<'_>) -> Result<FileType, Errno> {
        Ok(cx.host_fs()?.stat(self.obj)?.filetype)
    }

    fn set_size(&mut self, cx: &mut Cx<'_>, size: u64) -> Result<(), Errno> {
        Ok(cx.host_fs()?.set_size(self.obj, size)?)
    }

    fn allocate(&mut self, cx: &mut Cx<'_>, end: u64) -> Result<(), Errno> {
        let fs = cx.host_fs()?;
        if fs.stat(self.obj)?.size < end {
            fs.set_size(self.obj, end)?;
        }
        Ok(())
    }

    fn set_times(&mut self, cx: &mut Cx<'_>, atim: SetTime, mtim: SetTime) -> Result<(), Errno> {
        Ok(cx.host_fs()?.set_times(self.obj, atim, mtim)?)
    }

    fn sync(&mut self, cx: &mut Cx<'_>, data_only: bool) -> Result<(), Errno> {
        Ok(cx.host_fs()?.sync(self.obj, data_only)?)
    }

    fn readiness(&mut self, _: &mut Cx<'_>, _: bool) -> Readiness {
        Readiness::Now(0)
    }
}

impl Kind for Dir<'_> {
    fn position(&mut self, _: &mut Cx<'_>, _: u8) -> Result<(u64, u64), Errno> {
        Err(Errno::Badf)
    }

    fn stat(&mut self, cx: &mut Cx<'_>) -> Result<Stat, Errno> {
        Ok(cx.host_fs()?.stat(self.obj)?)
    }

    fn filetype(&mut self, _: &mut Cx<'_>) -> Result<FileType, Errno> {
        Ok(FileType::Directory)
    }

    fn set_times(&mut self, cx: &mut Cx<'_>, atim: SetTime, mtim: SetTime) -> Result<(), Errno> {
        Ok(cx.host_fs()?.set_times(self.obj, atim, mtim)?)
    }

    fn sync(&mut self, cx: &mut Cx<'_>, data_only: bool) -> Result<(), Errno> {
        Ok(cx.host_fs()?.sync(self.obj, data_only)?)
    }

    fn read_dir(&mut self, cx: &mut Cx<'_>, cookie: u64) -> Result<Vec<DirEntry>, Errno> {
        let fs = cx.host_fs()?;
        let this = fs.stat(self.obj)?;
        let mut list = fs.read_dir(self.obj)?;
        // A host directory has no stable order of its own: sort by name so cookies
        // (positions) mean the same thing on every call and every machine.
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = vec![
            DirEntry {
                next: 1,
                ino: this.ino,
                filetype: FileType::Directory,
                name: ".".to_string(),
            },
            DirEntry {
                next: 2,
                ino: 0,
                filetype: FileType::Directory,
                name: "..".to_string(),
            },
        ];
        out.extend(list.into_iter().enumerate().map(|(i, e)| DirEntry {
            next: i as u64 + 3,
            ino: e.ino,
            filetype: e.filetype,
            name: e.name,
        }));
        let skip = usize::try_from(cookie).unwrap_or(usize::MAX);
        Ok(out.into_iter().skip(skip).collect())
    }

    fn readiness(&mut self, _: &mut Cx<'_>, _: bool) -> Readiness {
        Readiness::Error(Errno::Badf)
    }
}
