//! Host-backed mounts: the interface the kernel uses to reach a host directory.
//!
//! The kernel never holds a host handle. It names every host object by a [`HostObj`]: the index
//! of the mount the resumer granted, a key the kernel chose when it opened the object, and the
//! object's path below the mount root. An implementation caches real handles by key and reopens
//! them by path when it has none (after a restore). Paths given to these methods are resolved
//! relative to the object named, and an implementation must refuse any path that would leave it,
//! as [`CapStdFs`](crate::CapStdFs) does through cap-std.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::FsResult;
use crate::types::{FileType, SetTime, Stat};

/// An open host object as the kernel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostObj<'a> {
    /// Index of the mount, in the order the resumer granted mounts.
    pub mount: u32,
    /// Key the kernel gave this object when it opened it.
    pub key: u64,
    /// Path of the object below the mount root (`.` for the root itself).
    pub path: &'a str,
}

/// How to open a host object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostOpen {
    /// Create the file if it does not exist.
    pub create: bool,
    /// With `create`, fail if it exists.
    pub exclusive: bool,
    /// Truncate a regular file to zero length.
    pub truncate: bool,
    /// Fail unless the object is a directory.
    pub directory: bool,
    /// Follow a symlink in the final position.
    pub follow: bool,
    /// Open for reading.
    pub read: bool,
    /// Open for writing.
    pub write: bool,
}

/// One entry of a host directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDirEntry {
    /// Name of the entry.
    pub name: String,
    /// Kind of the entry.
    pub filetype: FileType,
    /// Inode number on the host.
    pub ino: u64,
}

/// Access to the host directories granted to a guest.
pub trait HostFs {
    /// Opens `path` relative to the directory `dir` and remembers the handle under `key`;
    /// returns the kind of object opened.
    fn open_at(
        &mut self,
        dir: HostObj<'_>,
        path: &str,
        how: HostOpen,
        key: u64,
    ) -> FsResult<FileType>;
    /// Forgets the handle under `key`.
    fn close(&mut self, key: u64);
    /// The path below the root of mount `mount` of the object opened under `key`, as the host reached
    /// it (symlinks on the way resolved), when the host can tell. The kernel records it to
    /// reopen the object after a restore; without it, the kernel joins paths lexically, which
    /// is wrong when a symlink is followed by `..`.
    fn reached(&mut self, mount: u32, key: u64) -> Option<String> {
        let _ = (mount, key);
        None
    }
    /// Where `path`, from `dir`, leads below the mount's root: the directories on the way
    /// resolved as the host resolves them, the final component kept as it is (not followed).
    /// `None` when the host cannot tell or the directories do not exist.
    fn locate(&mut self, dir: HostObj<'_>, path: &str) -> Option<String> {
        let _ = (dir, path);
        None
    }
    /// Reads from a file at `offset`.
    fn read_at(&mut self, file: HostObj<'_>, offset: u64, buf: &mut [u8]) -> FsResult<usize>;
    /// Writes to a file at `offset`.
    fn write_at(&mut self, file: HostObj<'_>, offset: u64, buf: &[u8]) -> FsResult<usize>;
    /// Attributes of an open object.
    fn stat(&mut self, obj: HostObj<'_>) -> FsResult<Stat>;
    /// Sets the size of an open file.
    fn set_size(&mut self, file: HostObj<'_>, size: u64) -> FsResult<()>;
    /// Sets the times of an open object.
    fn set_times(&mut self, obj: HostObj<'_>, atim: SetTime, mtim: SetTime) -> FsResult<()>;
    /// Flushes an open object to stable storage.
    fn sync(&mut self, obj: HostObj<'_>, data_only: bool) -> FsResult<()>;
    /// Lists an open directory, without `.` and `..`.
    fn read_dir(&mut self, dir: HostObj<'_>) -> FsResult<Vec<HostDirEntry>>;
    /// Attributes of `path` relative to `dir`.
    fn stat_at(&mut self, dir: HostObj<'_>, path: &str, follow: bool) -> FsResult<Stat>;
    /// Sets the times of `path` relative to `dir`.
    fn set_times_at(
        &mut self,
        dir: HostObj<'_>,
        path: &str,
        follow: bool,
        atim: SetTime,
        mtim: SetTime,
    ) -> FsResult<()>;
    /// Creates a directory.
    fn create_dir_at(&mut self, dir: HostObj<'_>, path: &str) -> FsResult<()>;
    /// Removes an empty directory.
    fn remove_dir_at(&mut self, dir: HostObj<'_>, path: &str) -> FsResult<()>;
    /// Removes a non-directory.
    fn unlink_at(&mut self, dir: HostObj<'_>, path: &str) -> FsResult<()>;
    /// Creates a symlink at `path` that points to `target`.
    fn symlink_at(&mut self, target: &str, dir: HostObj<'_>, path: &str) -> FsResult<()>;
    /// Reads the target of a symlink.
    fn readlink_at(&mut self, dir: HostObj<'_>, path: &str) -> FsResult<String>;
    /// Makes `new_path` in `new_dir` a hard link to `old_path` in `old_dir`.
    fn link_at(
        &mut self,
        old_dir: HostObj<'_>,
        old_path: &str,
        new_dir: HostObj<'_>,
        new_path: &str,
    ) -> FsResult<()>;
    /// Renames `old_path` in `old_dir` to `new_path` in `new_dir`.
    fn rename_at(
        &mut self,
        old_dir: HostObj<'_>,
        old_path: &str,
        new_dir: HostObj<'_>,
        new_path: &str,
    ) -> FsResult<()>;
}
