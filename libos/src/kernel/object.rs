//! What a descriptor's object does, kind by kind.
//!
//! Each kind of object is a module with a type implementing [`Kind`]: [`super::stdio`] (the
//! standard streams), [`super::memory`] (files and directories of the in-memory file
//! system), [`super::hostobj`] (files and directories of host mounts). An operation a kind does
//! not have keeps the trait's default, the errno POSIX gives for it. [`Kernel::with_kind`] is
//! the one place that maps an [`Object`] to its kind: a new kind (a socket, a wasi-nn
//! context) is a new module and one arm there, not an arm in every operation.
//!
//! The descriptor operations themselves ([`super::descriptor_ops`]) check what does not depend
//! on the kind first (rights, how the descriptor was opened) and then ask the kind.

use super::*;

/// What a kind's operation may use besides its own object: the in-memory file system, the
/// host, and the clocks (to stamp changes, and to tell whether the run is deterministic).
pub(super) struct Cx<'a> {
    pub fs: &'a mut MemFs,
    pub host: &'a mut dyn Host,
    pub clocks: &'a mut Clocks,
}

impl Cx<'_> {
    /// The time to stamp file-system changes with.
    pub fn now(&mut self) -> u64 {
        clock::wall_clock(self.clocks, self.host)
    }

    /// The granted host directories.
    pub fn host_fs(&mut self) -> Result<&mut dyn HostFs, Errno> {
        self.host.host_fs().ok_or(Errno::Badf)
    }

    /// Whether the clocks are virtual (a deterministic run never sees a terminal).
    pub fn deterministic(&self) -> bool {
        matches!(self.clocks, Clocks::Virtual { .. })
    }
}

/// Whether an object is ready for what a `poll_oneoff` subscription asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Ready now, with this many bytes to read (0 when it cannot tell or for writing).
    Now(u64),
    /// The subscription fails with this errno.
    Error(Errno),
    /// Readable when the host says so: standard input.
    HostInput,
}

/// The operations of one kind of object; see the module's documentation.
pub(super) trait Kind {
    /// Reads into `buf` at `at`, or at the stream offset (advancing it).
    fn read(&mut self, cx: &mut Cx<'_>, buf: &mut [u8], at: Option<u64>) -> Result<usize, Errno> {
        let _ = (cx, buf, at);
        Err(Errno::Badf)
    }

    /// Writes `data` at `at`, or at the stream offset (advancing it); at the end with
    /// `append`.
    fn write(
        &mut self,
        cx: &mut Cx<'_>,
        data: &[u8],
        at: Option<u64>,
        append: bool,
    ) -> Result<usize, Errno> {
        let _ = (cx, data, at, append);
        Err(Errno::Badf)
    }

    /// The stream offset, and the size (only needed, and only asked of the host, for
    /// `whence` END), for a seek.
    fn position(&mut self, cx: &mut Cx<'_>, whence: u8) -> Result<(u64, u64), Errno> {
        let _ = (cx, whence);
        Err(Errno::Spipe)
    }

    /// Moves the stream offset.
    fn set_position(&mut self, offset: u64) -> Result<(), Errno> {
        let _ = offset;
        Err(Errno::Badf)
    }

    /// Its attributes.
    fn stat(&mut self, cx: &mut Cx<'_>) -> Result<Stat, Errno>;

    /// What it is.
    fn filetype(&mut self, cx: &mut Cx<'_>) -> Result<FileType, Errno>;

    /// Sets its size.
    fn set_size(&mut self, cx: &mut Cx<'_>, size: u64) -> Result<(), Errno> {
        let _ = (cx, size);
        Err(Errno::Inval)
    }

    /// Makes it at least `end` bytes long.
    fn allocate(&mut self, cx: &mut Cx<'_>, end: u64) -> Result<(), Errno> {
        let _ = (cx, end);
        Err(Errno::Inval)
    }

    /// Sets its timestamps.
    fn set_times(&mut self, cx: &mut Cx<'_>, atim: SetTime, mtim: SetTime) -> Result<(), Errno> {
        let _ = (cx, atim, mtim);
        Err(Errno::Badf)
    }

    /// Flushes it to stable storage.
    fn sync(&mut self, cx: &mut Cx<'_>, data_only: bool) -> Result<(), Errno> {
        let _ = (cx, data_only);
        Err(Errno::Inval)
    }

    /// Its entries from `cookie` on.
    fn read_dir(&mut self, cx: &mut Cx<'_>, cookie: u64) -> Result<Vec<DirEntry>, Errno> {
        let _ = (cx, cookie);
        Err(Errno::NotDir)
    }

    /// Whether it is ready to read (`write` false) or to write.
    fn readiness(&mut self, cx: &mut Cx<'_>, write: bool) -> Readiness {
        let _ = (cx, write);
        Readiness::Now(0)
    }
}

impl Kernel {
    /// Runs `f` on the kind of the object `fd` refers to, with what its operations may use.
    pub(super) fn with_kind<R>(
        &mut self,
        fd: u32,
        host: &mut dyn Host,
        f: impl FnOnce(&mut dyn Kind, &mut Cx<'_>) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        let Kernel {
            fds, fs, clocks, ..
        } = self;
        let d = fds
            .get_mut(fd as usize)
            .and_then(Option::as_mut)
            .ok_or(Errno::Badf)?;
        let mut cx = Cx { fs, host, clocks };
        match &mut d.object {
            Object::Stdin => f(&mut stdio::Stream::Input, &mut cx),
            Object::Stdout => f(&mut stdio::Stream::Output, &mut cx),
            Object::Stderr => f(&mut stdio::Stream::Error, &mut cx),
            Object::MemDir { ino } => f(&mut memory::Dir { ino: *ino }, &mut cx),
            Object::MemFile { ino, offset } => f(&mut memory::File { ino: *ino, offset }, &mut cx),
            Object::HostDir { mount, key, path } => {
                let obj = HostObj {
                    mount: *mount,
                    key: *key,
                    path,
                };
                f(&mut hostobj::Dir { obj }, &mut cx)
            }
            Object::HostFile {
                mount,
                key,
                path,
                offset,
            } => {
                let obj = HostObj {
                    mount: *mount,
                    key: *key,
                    path,
                };
                f(&mut hostobj::File { obj, offset }, &mut cx)
            }
        }
    }

    /// Whether `fd` is ready to read (`write` false) or to write, for `poll_oneoff`; the
    /// descriptor must have the right to be polled.
    pub fn readiness(
        &mut self,
        fd: u32,
        write: bool,
        host: &mut dyn Host,
    ) -> Result<Readiness, Errno> {
        let d = self.get(fd)?;
        if let Err(e) = d.require(rights::POLL_FD_READWRITE) {
            return Ok(Readiness::Error(e));
        }
        self.with_kind(fd, host, |k, cx| Ok(k.readiness(cx, write)))
    }
}
