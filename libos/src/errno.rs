//! The error numbers a guest sees, and the traps that stop it.
//!
//! Two kinds of failure are kept apart on purpose: an [`Errno`] is an answer the guest gets back
//! from a call and may handle; a [`Trap`] ends the guest's execution (an exit, a fatal signal).
//! Host failures that the guest should know about (a failed host write) become `Errno::Io`.

use core::fmt;

use tabi_vfs::FsError;

macro_rules! errnos {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $text:literal; )*) => {
        /// A WASI preview-1 error number, with the numbering of `wasi_snapshot_preview1`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[repr(u16)]
        pub enum Errno {
            $( $(#[$doc])* #[doc = $text] $name = $value, )*
        }

        impl Errno {
            /// The errno with this number, if there is one.
            pub fn from_raw(raw: u16) -> Option<Errno> {
                match raw {
                    $( $value => Some(Errno::$name), )*
                    _ => None,
                }
            }

            /// A short description, as `strerror` gives.
            pub fn message(self) -> &'static str {
                match self { $( Errno::$name => $text, )* }
            }
        }
    };
}

errnos! {
    Success = 0, "no error";
    TooBig = 1, "argument list too long";
    Acces = 2, "permission denied";
    AddrInUse = 3, "address in use";
    AddrNotAvail = 4, "address not available";
    AfNoSupport = 5, "address family not supported";
    Again = 6, "resource unavailable, try again";
    Already = 7, "connection already in progress";
    Badf = 8, "bad file descriptor";
    BadMsg = 9, "bad message";
    Busy = 10, "device or resource busy";
    Canceled = 11, "operation canceled";
    Child = 12, "no child processes";
    ConnAborted = 13, "connection aborted";
    ConnRefused = 14, "connection refused";
    ConnReset = 15, "connection reset";
    Deadlk = 16, "resource deadlock would occur";
    DestAddrReq = 17, "destination address required";
    Dom = 18, "mathematics argument out of domain of function";
    Dquot = 19, "reserved";
    Exist = 20, "file exists";
    Fault = 21, "bad address";
    Fbig = 22, "file too large";
    HostUnreach = 23, "host is unreachable";
    Idrm = 24, "identifier removed";
    Ilseq = 25, "illegal byte sequence";
    InProgress = 26, "operation in progress";
    Intr = 27, "interrupted function";
    Inval = 28, "invalid argument";
    Io = 29, "i/o error";
    IsConn = 30, "socket is connected";
    IsDir = 31, "is a directory";
    Loop = 32, "too many levels of symbolic links";
    Mfile = 33, "file descriptor value too large";
    Mlink = 34, "too many links";
    MsgSize = 35, "message too large";
    Multihop = 36, "reserved";
    NameTooLong = 37, "filename too long";
    NetDown = 38, "network is down";
    NetReset = 39, "connection aborted by network";
    NetUnreach = 40, "network unreachable";
    Nfile = 41, "too many files open in system";
    NoBufs = 42, "no buffer space available";
    NoDev = 43, "no such device";
    NoEnt = 44, "no such file or directory";
    NoExec = 45, "executable file format error";
    NoLck = 46, "no locks available";
    NoLink = 47, "reserved";
    NoMem = 48, "not enough space";
    NoMsg = 49, "no message of the desired type";
    NoProtoOpt = 50, "protocol not available";
    NoSpc = 51, "no space left on device";
    NoSys = 52, "function not supported";
    NotConn = 53, "the socket is not connected";
    NotDir = 54, "not a directory or a symbolic link to a directory";
    NotEmpty = 55, "directory not empty";
    NotRecoverable = 56, "state not recoverable";
    NotSock = 57, "not a socket";
    NotSup = 58, "not supported, or operation not supported on socket";
    NoTty = 59, "inappropriate i/o control operation";
    Nxio = 60, "no such device or address";
    Overflow = 61, "value too large to be stored in data type";
    OwnerDead = 62, "previous owner died";
    Perm = 63, "operation not permitted";
    Pipe = 64, "broken pipe";
    Proto = 65, "protocol error";
    ProtoNoSupport = 66, "protocol not supported";
    ProtoType = 67, "protocol wrong type for socket";
    Range = 68, "result too large";
    Rofs = 69, "read-only file system";
    Spipe = 70, "invalid seek";
    Srch = 71, "no such process";
    Stale = 72, "reserved";
    TimedOut = 73, "connection timed out";
    TxtBsy = 74, "text file busy";
    Xdev = 75, "cross-device link";
    NotCapable = 76, "extension: capabilities insufficient";
}

impl Errno {
    /// The raw number the guest sees.
    pub fn raw(self) -> u16 {
        self as u16
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message(), self.raw())
    }
}

impl core::error::Error for Errno {}

impl From<FsError> for Errno {
    fn from(e: FsError) -> Errno {
        match e {
            FsError::NoEntry => Errno::NoEnt,
            FsError::Exists => Errno::Exist,
            FsError::NotDir => Errno::NotDir,
            FsError::IsDir => Errno::IsDir,
            FsError::NotEmpty => Errno::NotEmpty,
            FsError::Loop => Errno::Loop,
            FsError::Invalid => Errno::Inval,
            // Like wasmtime-wasi, an escape from a directory capability is EPERM.
            FsError::Escape => Errno::Perm,
            FsError::Access => Errno::Acces,
            FsError::Perm => Errno::Perm,
            FsError::NameTooLong => Errno::NameTooLong,
            FsError::TooBig => Errno::Fbig,
            FsError::CrossDevice => Errno::Xdev,
            FsError::Busy => Errno::Busy,
            FsError::Io => Errno::Io,
            FsError::NotSupported => Errno::NotSup,
            FsError::BadDescriptor => Errno::Badf,
            FsError::NoSpace => Errno::NoSpc,
        }
    }
}

/// Why a guest stopped running before `_start` returned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Trap {
    /// The guest called `proc_exit` with this status.
    Exit(u32),
    /// The guest raised a signal whose default action ends the process.
    Signal(u8),
    /// The host failed inside an import in a way the guest cannot be told about (a panic in
    /// tabi or in the embedder's host): the guest is stopped, and the rest of the process
    /// goes on.
    HostFault(alloc::string::String),
}

impl fmt::Display for Trap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trap::Exit(code) => write!(f, "guest exited with status {code}"),
            Trap::Signal(sig) => write!(f, "guest terminated by signal {sig}"),
            Trap::HostFault(why) => write!(f, "host fault: {why}"),
        }
    }
}

impl core::error::Error for Trap {}

/// What a preview-1 call gives back: an errno for the guest, or a trap that stops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Return this errno to the guest.
    Errno(Errno),
    /// Stop the guest.
    Trap(Trap),
}

impl From<Errno> for CallError {
    fn from(e: Errno) -> Self {
        CallError::Errno(e)
    }
}

impl From<FsError> for CallError {
    fn from(e: FsError) -> Self {
        CallError::Errno(e.into())
    }
}

impl From<Trap> for CallError {
    fn from(t: Trap) -> Self {
        CallError::Trap(t)
    }
}
