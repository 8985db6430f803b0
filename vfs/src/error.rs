//! The errors a file-system operation can give.

use core::fmt;

/// Why a file-system operation failed.
///
/// The variants follow POSIX error numbers; the kernel maps each one to the errno of the ABI the
/// guest speaks. Escape attempts have their own variant so callers can log them apart from plain
/// lookups that fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FsError {
    /// A path component does not exist (`ENOENT`).
    NoEntry,
    /// The entry to create exists already (`EEXIST`).
    Exists,
    /// A component used as a directory is not one (`ENOTDIR`).
    NotDir,
    /// The operation needs a non-directory (`EISDIR`).
    IsDir,
    /// The directory to remove or replace is not empty (`ENOTEMPTY`).
    NotEmpty,
    /// Too many symbolic links were followed (`ELOOP`).
    Loop,
    /// An argument is invalid for this operation (`EINVAL`).
    Invalid,
    /// The path leads outside the directory it was resolved from (`ENOTCAPABLE`).
    Escape,
    /// The host refused access (`EACCES`).
    Access,
    /// The operation is not permitted on this entry (`EPERM`).
    Perm,
    /// A name is longer than the file system allows (`ENAMETOOLONG`).
    NameTooLong,
    /// A file would grow beyond the largest size allowed (`EFBIG`).
    TooBig,
    /// Source and destination are on different file systems (`EXDEV`).
    CrossDevice,
    /// The entry is in use, such as a preopened directory being removed (`EBUSY`).
    Busy,
    /// The host file system failed (`EIO`).
    Io,
    /// The operation is not supported on this kind of entry (`ENOTSUP`).
    NotSupported,
    /// The descriptor does not refer to an open object (`EBADF`).
    BadDescriptor,
    /// The host ran out of space (`ENOSPC`).
    NoSpace,
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            FsError::NoEntry => "no such file or directory",
            FsError::Exists => "file exists",
            FsError::NotDir => "not a directory",
            FsError::IsDir => "is a directory",
            FsError::NotEmpty => "directory not empty",
            FsError::Loop => "too many levels of symbolic links",
            FsError::Invalid => "invalid argument",
            FsError::Escape => "path escapes its directory",
            FsError::Access => "permission denied",
            FsError::Perm => "operation not permitted",
            FsError::NameTooLong => "file name too long",
            FsError::TooBig => "file too large",
            FsError::CrossDevice => "cross-device link",
            FsError::Busy => "device or resource busy",
            FsError::Io => "input/output error",
            FsError::NotSupported => "operation not supported",
            FsError::BadDescriptor => "bad file descriptor",
            FsError::NoSpace => "no space left on device",
        };
        f.write_str(text)
    }
}

impl core::error::Error for FsError {}

/// The result of a file-system operation.
pub type FsResult<T> = Result<T, FsError>;
