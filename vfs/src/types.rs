//! Plain value types shared by the in-memory file system and host mounts.

use alloc::string::String;
use serde::{Deserialize, Serialize};

/// Index of an inode in a [`MemFs`](crate::MemFs) table.
pub type Ino = u32;

/// What kind of object a directory entry or inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileType {
    /// The kind is not known (host special files).
    Unknown,
    /// A block device (host mounts only).
    BlockDevice,
    /// A character device (host mounts only).
    CharacterDevice,
    /// A directory.
    Directory,
    /// A regular file.
    RegularFile,
    /// A symbolic link.
    SymbolicLink,
}

/// The attributes of a file-system object, as `stat` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// Device the object lives on.
    pub dev: u64,
    /// Inode number, unique within `dev` while the object exists.
    pub ino: u64,
    /// Kind of object.
    pub filetype: FileType,
    /// Number of hard links.
    pub nlink: u64,
    /// Size in bytes (for a symlink, the length of its target).
    pub size: u64,
    /// Last access time, nanoseconds since the Unix epoch.
    pub atim: u64,
    /// Last modification time, nanoseconds since the Unix epoch.
    pub mtim: u64,
    /// Last status change time, nanoseconds since the Unix epoch.
    pub ctim: u64,
}

/// How to change one timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    /// Leave it as it is.
    Omit,
    /// Set it to the current time (given by the caller).
    Now,
    /// Set it to this many nanoseconds since the Unix epoch.
    At(u64),
}

/// One entry read from a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Cookie that resumes reading after this entry.
    pub next: u64,
    /// Inode number of the entry.
    pub ino: u64,
    /// Kind of the entry.
    pub filetype: FileType,
    /// Name of the entry.
    pub name: String,
}

/// Longest name one path component may have, in bytes.
pub const NAME_MAX: usize = 255;

/// Longest path one resolution takes, and longest symlink target stored, in bytes (Linux's
/// `PATH_MAX`): longer ones are `ENAMETOOLONG` before any work is done on them.
pub const PATH_MAX: usize = 4096;

/// Most symbolic links one path resolution may follow before failing with [`FsError::Loop`].
///
/// [`FsError::Loop`]: crate::FsError::Loop
pub const MAX_SYMLINKS: u32 = 40;
