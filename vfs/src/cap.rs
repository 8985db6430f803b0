//! Host mounts over cap-std, walks of host trees, and importing a host directory into memory.
//!
//! [`CapStdFs`] grants whole host directories. Every lookup goes through a `cap_std::fs::Dir`
//! handle, which refuses `..` past it, absolute paths and symlinks that lead out, so a guest
//! cannot reach the host outside what it was granted. Handles are cached by the kernel's key and
//! reopened by path when missing (after a restore).
//!
//! [`walk_host_dir`] visits a host tree through directory handles, a name at a time and on a
//! stack of its own, so that a tree deeper than a path can name (which a guest can make in a
//! directory it was granted) is walked, or refused past [`MAX_HOST_DEPTH`], but never
//! overflows the host's stack. [`import_host_dir`] (`--copy-dir`) and the CLI's fingerprint
//! of a host mount use it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::string::{String, ToString};
use std::time::SystemTime;
use std::vec::Vec;

use cap_fs_ext::{
    DirExt, FollowSymlinks, MetadataExt, OpenOptionsFollowExt, OpenOptionsMaybeDirExt,
    SystemTimeSpec,
};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, File, Metadata, OpenOptions};

use crate::error::{FsError, FsResult};
use crate::host::{HostDirEntry, HostFs, HostObj, HostOpen};
use crate::mem::MemFs;
use crate::types::{FileType, Ino, SetTime, Stat};

fn map_err(e: io::Error) -> FsError {
    #[cfg(unix)]
    if let Some(code) = e.raw_os_error() {
        return match code {
            libc::ENOENT => FsError::NoEntry,
            libc::EEXIST => FsError::Exists,
            libc::ENOTDIR => FsError::NotDir,
            libc::EISDIR => FsError::IsDir,
            libc::ENOTEMPTY => FsError::NotEmpty,
            libc::ELOOP => FsError::Loop,
            libc::EINVAL => FsError::Invalid,
            libc::EACCES => FsError::Access,
            libc::EPERM => FsError::Perm,
            libc::ENAMETOOLONG => FsError::NameTooLong,
            libc::EFBIG => FsError::TooBig,
            libc::EXDEV => FsError::CrossDevice,
            libc::EBUSY => FsError::Busy,
            libc::ENOSPC => FsError::NoSpace,
            libc::EBADF => FsError::BadDescriptor,
            libc::EOPNOTSUPP => FsError::NotSupported,
            _ => FsError::Io,
        };
    }
    match e.kind() {
        io::ErrorKind::NotFound => FsError::NoEntry,
        io::ErrorKind::AlreadyExists => FsError::Exists,
        io::ErrorKind::NotADirectory => FsError::NotDir,
        io::ErrorKind::IsADirectory => FsError::IsDir,
        io::ErrorKind::DirectoryNotEmpty => FsError::NotEmpty,
        // cap-std reports a path that leads outside its directory as PermissionDenied.
        io::ErrorKind::PermissionDenied => FsError::Perm,
        io::ErrorKind::InvalidInput => FsError::Invalid,
        io::ErrorKind::Unsupported => FsError::NotSupported,
        _ => FsError::Io,
    }
}

fn filetype_of(ft: cap_std::fs::FileType) -> FileType {
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_file() {
        FileType::RegularFile
    } else if ft.is_symlink() {
        FileType::SymbolicLink
    } else {
        #[cfg(unix)]
        {
            use cap_std::fs::FileTypeExt;
            if ft.is_block_device() {
                return FileType::BlockDevice;
            }
            if ft.is_char_device() {
                return FileType::CharacterDevice;
            }
        }
        FileType::Unknown
    }
}

fn nanos(t: io::Result<cap_std::time::SystemTime>) -> u64 {
    t.ok()
        .and_then(|t| t.into_std().duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn stat_of(m: &Metadata) -> Stat {
    #[cfg(unix)]
    let ctim = {
        let secs = cap_std::fs::MetadataExt::ctime(m);
        let nsec = cap_std::fs::MetadataExt::ctime_nsec(m);
        u64::try_from(secs).unwrap_or(0) * 1_000_000_000 + u64::try_from(nsec).unwrap_or(0)
    };
    #[cfg(not(unix))]
    let ctim = 0;
    let mtim = nanos(m.modified());
    Stat {
        dev: m.dev(),
        ino: m.ino(),
        filetype: filetype_of(m.file_type()),
        nlink: m.nlink(),
        size: m.len(),
        atim: nanos(m.accessed()),
        mtim,
        ctim: if ctim == 0 { mtim } else { ctim },
    }
}

fn spec(t: SetTime) -> Option<SystemTimeSpec> {
    match t {
        SetTime::Omit => None,
        SetTime::Now => Some(SystemTimeSpec::SymbolicNow),
        SetTime::At(ns) => Some(SystemTimeSpec::Absolute(
            cap_std::time::SystemTime::from_std(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns),
            ),
        )),
    }
}

/// An open host object.
enum Handle {
    Dir(Dir),
    File(File),
}

/// Host directories granted to a guest, reached through cap-std.
#[derive(Default)]
pub struct CapStdFs {
    mounts: Vec<Dir>,
    open: HashMap<u64, Handle>,
}

impl CapStdFs {
    /// No directories granted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grants the host directory `path` as the next mount; returns its index. Fails with a
    /// clear error when the directory does not exist or cannot be opened.
    pub fn grant(&mut self, path: &Path) -> io::Result<u32> {
        let dir = Dir::open_ambient_dir(path, ambient_authority())?;
        self.mounts.push(dir);
        Ok((self.mounts.len() - 1) as u32)
    }

    fn mount(&self, index: u32) -> FsResult<&Dir> {
        self.mounts
            .get(index as usize)
            .ok_or(FsError::BadDescriptor)
    }

    /// The handle of `obj`, reopening it by path if it is not cached.
    fn handle(&mut self, obj: HostObj<'_>) -> FsResult<&Handle> {
        if !self.open.contains_key(&obj.key) {
            let root = self.mount(obj.mount)?;
            let handle = if obj.path == "." {
                Handle::Dir(root.try_clone().map_err(map_err)?)
            } else {
                let mut o = OpenOptions::new();
                o.read(true).maybe_dir(true);
                let f = root.open_with(obj.path, &o).map_err(map_err)?;
                if f.metadata().map_err(map_err)?.is_dir() {
                    Handle::Dir(Dir::from_std_file(f.into_std()))
                } else {
                    // Reopen for writing too when the host allows it.
                    let mut o = OpenOptions::new();
                    o.read(true).write(true);
                    match root.open_with(obj.path, &o) {
                        Ok(f) => Handle::File(f),
                        Err(_) => Handle::File(f),
                    }
                }
            };
            self.open.insert(obj.key, handle);
        }
        self.open.get(&obj.key).ok_or(FsError::BadDescriptor)
    }

    fn dir(&mut self, obj: HostObj<'_>) -> FsResult<&Dir> {
        match self.handle(obj)? {
            Handle::Dir(d) => Ok(d),
            Handle::File(_) => Err(FsError::NotDir),
        }
    }

    fn file(&mut self, obj: HostObj<'_>) -> FsResult<&File> {
        match self.handle(obj)? {
            Handle::File(f) => Ok(f),
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }
}

/// `path` without its trailing slashes, unless that would leave nothing.
fn without_trailing_slashes(path: &str) -> &str {
    match path.trim_end_matches('/') {
        "" => path,
        p => p,
    }
}

/// The path of an open host object on Linux, from `/proc/self/fd`.
#[cfg(target_os = "linux")]
fn fd_path(fd: &impl std::os::fd::AsRawFd) -> Option<std::path::PathBuf> {
    let link = std::format!("/proc/self/fd/{}", fd.as_raw_fd());
    let path = std::fs::read_link(link).ok()?;
    // A name that was removed reads "… (deleted)": it no longer names the object.
    (!path.to_string_lossy().ends_with(" (deleted)")).then_some(path)
}

/// `path` below `root`, as the kernel records it (`.` for the root itself).
#[cfg(target_os = "linux")]
fn below(root: &Dir, path: &Path) -> Option<String> {
    let root = fd_path(root)?;
    let rel = path.strip_prefix(&root).ok()?.to_str()?;
    Some(if rel.is_empty() {
        ".".into()
    } else {
        rel.into()
    })
}

fn check_rel(path: &str) -> FsResult<()> {
    if path.starts_with('/') {
        return Err(FsError::Escape);
    }
    Ok(())
}

impl HostFs for CapStdFs {
    fn open_at(
        &mut self,
        dir: HostObj<'_>,
        path: &str,
        how: HostOpen,
        key: u64,
    ) -> FsResult<FileType> {
        check_rel(path)?;
        let d = self.dir(dir)?;
        let mut o = OpenOptions::new();
        // Truncating needs a writable handle on the host even when the guest only truncates
        // through the path; the descriptor's own access still decides what the guest may do.
        o.read(true)
            .write(how.write || how.truncate)
            .truncate(how.truncate)
            .follow(if how.follow {
                FollowSymlinks::Yes
            } else {
                FollowSymlinks::No
            })
            .maybe_dir(!how.write);
        if how.create {
            if how.exclusive {
                o.create_new(true);
            } else {
                o.create(true);
            }
            if !how.write {
                // Creating needs a writable open on most hosts; the descriptor's own rights
                // still decide what the guest may do with it.
                o.write(true);
            }
        }
        let file = d.open_with(path, &o).map_err(map_err)?;
        let meta = file.metadata().map_err(map_err)?;
        if how.directory && !meta.is_dir() {
            return Err(FsError::NotDir);
        }
        let kind = filetype_of(meta.file_type());
        let handle = if meta.is_dir() {
            Handle::Dir(Dir::from_std_file(file.into_std()))
        } else {
            Handle::File(file)
        };
        self.open.insert(key, handle);
        Ok(kind)
    }

    fn close(&mut self, key: u64) {
        self.open.remove(&key);
    }

    #[cfg(target_os = "linux")]
    fn reached(&mut self, mount: u32, key: u64) -> Option<String> {
        let path = match self.open.get(&key)? {
            Handle::Dir(d) => fd_path(d)?,
            Handle::File(f) => fd_path(f)?,
        };
        below(self.mount(mount).ok()?, &path)
    }

    #[cfg(target_os = "linux")]
    fn locate(&mut self, dir: HostObj<'_>, path: &str) -> Option<String> {
        check_rel(path).ok()?;
        let root = self.mount(dir.mount).ok()?.try_clone().ok()?;
        let from = self.dir(dir).ok()?;
        let trimmed = path.trim_end_matches('/');
        let (parent, last) = match trimmed.rsplit_once('/') {
            Some((p, l)) => (p, l),
            None => ("", trimmed),
        };
        // A final `.` or `..` (or nothing) names a directory: resolve all of it.
        let (parent, last) = if matches!(last, "" | "." | "..") {
            (trimmed, "")
        } else {
            (parent, last)
        };
        let dir_path = if parent.is_empty() {
            fd_path(from)?
        } else {
            fd_path(&from.open_dir(parent).ok()?)?
        };
        let at = below(&root, &dir_path)?;
        Some(match (at.as_str(), last) {
            (at, "") => at.into(),
            (".", last) => last.into(),
            (at, last) => std::format!("{at}/{last}"),
        })
    }

    fn read_at(&mut self, file: HostObj<'_>, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let f = self.file(file)?;
        #[cfg(unix)]
        {
            use cap_std::fs::FileExt;
            f.read_at(buf, offset).map_err(map_err)
        }
        #[cfg(not(unix))]
        {
            let _ = (f, offset, buf);
            Err(FsError::NotSupported)
        }
    }

    fn write_at(&mut self, file: HostObj<'_>, offset: u64, buf: &[u8]) -> FsResult<usize> {
        let f = self.file(file)?;
        #[cfg(unix)]
        {
            use cap_std::fs::FileExt;
            f.write_all_at(buf, offset).map_err(map_err)?;
            Ok(buf.len())
        }
        #[cfg(not(unix))]
        {
            let _ = (f, offset, buf);
            Err(FsError::NotSupported)
        }
    }

    fn stat(&mut self, obj: HostObj<'_>) -> FsResult<Stat> {
        let m = match self.handle(obj)? {
            Handle::Dir(d) => d.dir_metadata().map_err(map_err)?,
            Handle::File(f) => f.metadata().map_err(map_err)?,
        };
        Ok(stat_of(&m))
    }

    fn set_size(&mut self, file: HostObj<'_>, size: u64) -> FsResult<()> {
        self.file(file)?.set_len(size).map_err(map_err)
    }

    fn set_times(&mut self, obj: HostObj<'_>, atim: SetTime, mtim: SetTime) -> FsResult<()> {
        match self.handle(obj)? {
            Handle::Dir(d) => d.set_times(".", spec(atim), spec(mtim)).map_err(map_err),
            Handle::File(f) => {
                let to_std = |t: SetTime| match t {
                    SetTime::Omit => None,
                    SetTime::Now => Some(SystemTime::now()),
                    SetTime::At(ns) => {
                        Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
                    }
                };
                let mut times = std::fs::FileTimes::new();
                if let Some(t) = to_std(atim) {
                    times = times.set_accessed(t);
                }
                if let Some(t) = to_std(mtim) {
                    times = times.set_modified(t);
                }
                let std_file = f.try_clone().map_err(map_err)?.into_std();
                std_file.set_times(times).map_err(map_err)
            }
        }
    }

    fn sync(&mut self, obj: HostObj<'_>, data_only: bool) -> FsResult<()> {
        match self.handle(obj)? {
            Handle::Dir(_) => Ok(()),
            Handle::File(f) => if data_only {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(map_err),
        }
    }

    fn read_dir(&mut self, dir: HostObj<'_>) -> FsResult<Vec<HostDirEntry>> {
        let d = self.dir(dir)?;
        let mut out = Vec::new();
        for entry in d.entries().map_err(map_err)? {
            let entry = entry.map_err(map_err)?;
            let Ok(name) = entry.file_name().into_string() else {
                // A name that is not UTF-8 cannot be given to a preview-1 guest.
                continue;
            };
            let ft = entry.file_type().map_err(map_err)?;
            out.push(HostDirEntry {
                name,
                filetype: filetype_of(ft),
                ino: cap_fs_ext::DirEntryExt::full_metadata(&entry)
                    .map(|m| m.ino())
                    .unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn stat_at(&mut self, dir: HostObj<'_>, path: &str, follow: bool) -> FsResult<Stat> {
        check_rel(path)?;
        let d = self.dir(dir)?;
        let m = if follow {
            d.metadata(path)
        } else {
            d.symlink_metadata(path)
        };
        Ok(stat_of(&m.map_err(map_err)?))
    }

    fn set_times_at(
        &mut self,
        dir: HostObj<'_>,
        path: &str,
        follow: bool,
        atim: SetTime,
        mtim: SetTime,
    ) -> FsResult<()> {
        check_rel(path)?;
        let d = self.dir(dir)?;
        if follow {
            d.set_times(path, spec(atim), spec(mtim)).map_err(map_err)
        } else {
            d.set_symlink_times(path, spec(atim), spec(mtim))
                .map_err(map_err)
        }
    }

    fn create_dir_at(&mut self, dir: HostObj<'_>, path: &str) -> FsResult<()> {
        check_rel(path)?;
        self.dir(dir)?.create_dir(path).map_err(map_err)
    }

    fn remove_dir_at(&mut self, dir: HostObj<'_>, path: &str) -> FsResult<()> {
        check_rel(path)?;
        // `rmdir("d/")` removes `d` as POSIX says; cap-std would take the last component
        // for `.` and refuse.
        self.dir(dir)?
            .remove_dir(without_trailing_slashes(path))
            .map_err(map_err)
    }

    fn unlink_at(&mut self, dir: HostObj<'_>, path: &str) -> FsResult<()> {
        check_rel(path)?;
        self.dir(dir)?.remove_file_or_symlink(path).map_err(map_err)
    }

    fn symlink_at(&mut self, target: &str, dir: HostObj<'_>, path: &str) -> FsResult<()> {
        check_rel(path)?;
        self.dir(dir)?.symlink(target, path).map_err(map_err)
    }

    fn readlink_at(&mut self, dir: HostObj<'_>, path: &str) -> FsResult<String> {
        check_rel(path)?;
        let target = self.dir(dir)?.read_link_contents(path).map_err(map_err)?;
        target
            .into_os_string()
            .into_string()
            .map_err(|_| FsError::Invalid)
    }

    fn link_at(
        &mut self,
        old_dir: HostObj<'_>,
        old_path: &str,
        new_dir: HostObj<'_>,
        new_path: &str,
    ) -> FsResult<()> {
        check_rel(old_path)?;
        check_rel(new_path)?;
        let new = self.dir(new_dir)?.try_clone().map_err(map_err)?;
        self.dir(old_dir)?
            .hard_link(old_path, &new, new_path)
            .map_err(map_err)
    }

    fn rename_at(
        &mut self,
        old_dir: HostObj<'_>,
        old_path: &str,
        new_dir: HostObj<'_>,
        new_path: &str,
    ) -> FsResult<()> {
        check_rel(old_path)?;
        check_rel(new_path)?;
        let new = self.dir(new_dir)?.try_clone().map_err(map_err)?;
        let old = self.dir(old_dir)?;
        if new_path.ends_with('/') {
            // A trailing slash names a directory: POSIX refuses to move a file there, where
            // the host's `renameat` would drop the slash and move it.
            let m = old
                .symlink_metadata(without_trailing_slashes(old_path))
                .map_err(map_err)?;
            if !m.is_dir() {
                return Err(FsError::NotDir);
            }
        }
        old.rename(old_path, &new, new_path).map_err(map_err)
    }
}

/// How many directories below its start a walk of a host tree ([`walk_host_dir`]) goes: one
/// deeper is an error. `--copy-dir` copies no deeper, and a host mount is fingerprinted no
/// deeper. That is far beyond what a path can name (Linux's `PATH_MAX` is 4096 bytes, so two
/// bytes a level), yet a tree a guest makes through its descriptors can be deeper still.
pub const MAX_HOST_DEPTH: usize = 4096;

/// The levels nearest the start of a walk whose directories stay open while the walk is
/// below them.
const KEEP_ALL: usize = 16;

/// Past [`KEEP_ALL`], one level in so many keeps its directory open while the walk is below
/// it; the levels between are opened again, a name at a time from the nearest one kept, when
/// the walk comes back to them. A walk so holds at most `KEEP_ALL + MAX_HOST_DEPTH /
/// KEEP_EVERY` descriptors however deep it goes, not one a level, which a deep tree would
/// make more than a process may have.
const KEEP_EVERY: usize = 32;

/// What a walk of a host tree ([`walk_host_dir`]) does with what it meets.
pub trait HostVisitor {
    /// What the visitor keeps for a directory while the walk is inside it.
    type Dir;

    /// Meets the entry `name` of the directory whose handle is `dir` and whose state is
    /// `parent`; `meta` is the entry's own metadata (a symbolic link's, not its target's).
    /// For a directory, returns the state to walk into it with, or `None` to pass it by.
    fn entry(
        &mut self,
        parent: &mut Self::Dir,
        dir: &Dir,
        name: &OsStr,
        meta: &Metadata,
    ) -> io::Result<Option<Self::Dir>>;

    /// Leaves a directory after its last entry; the start directory is left last.
    fn leave(&mut self, dir: Self::Dir) -> io::Result<()>;
}

/// A directory a walk is inside.
struct Frame<D> {
    /// Its handle, while it is kept open (see [`KEEP_EVERY`]).
    handle: Option<Dir>,
    /// Its name in its parent (empty for the start).
    name: OsString,
    /// The visitor's state for it.
    state: D,
    /// Its entries not met yet, in name order, with their metadata.
    entries: std::vec::IntoIter<(OsString, Metadata)>,
}

/// Walks the tree under `root` depth first, each directory's entries in name order, showing
/// each entry to `visitor` and walking into the directories it asks for, with `state` the
/// visitor's state for `root`. Symbolic links are met, never followed.
///
/// Every directory is reached through its parent's handle, a name at a time, so no path is
/// ever longer than a name and nothing outside `root` is reached. The walk keeps its place in
/// a stack of its own, not in the host's: a tree deeper than [`MAX_HOST_DEPTH`] is an error
/// naming where, and never a stack overflow. An error on the way says at which path it was.
pub fn walk_host_dir<V: HostVisitor>(root: &Dir, state: V::Dir, visitor: &mut V) -> io::Result<()> {
    let mut stack = std::vec![Frame {
        handle: Some(root.try_clone()?),
        name: OsString::new(),
        state,
        entries: entries_of(root)?.into_iter(),
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            return Ok(());
        };
        let Some((name, meta)) = top.entries.next() else {
            if let Some(done) = stack.pop() {
                visitor
                    .leave(done.state)
                    .map_err(|e| at(e, &stack, Some(&done.name)))?;
            }
            continue;
        };
        step(&mut stack, visitor, name, &meta).map_err(|e| match e {
            Step::Deep(name) => io::Error::other(std::format!(
                "the tree is deeper than {MAX_HOST_DEPTH} levels at `{}`; tabi walks no deeper",
                shown(&stack, Some(&name))
            )),
            Step::Io(e, name) => at(e, &stack, Some(&name)),
        })?;
    }
}

/// Why a step of a walk failed, with the name of the entry it was at.
enum Step {
    /// The entry is a directory one level deeper than [`MAX_HOST_DEPTH`].
    Deep(OsString),
    /// The host or the visitor failed.
    Io(io::Error, OsString),
}

/// Shows the entry `name` of the directory on top of `stack` to `visitor`, and walks into it
/// when it asks.
fn step<V: HostVisitor>(
    stack: &mut Vec<Frame<V::Dir>>,
    visitor: &mut V,
    name: OsString,
    meta: &Metadata,
) -> Result<(), Step> {
    if let Err(e) = reopen(stack) {
        return Err(Step::Io(e, name));
    }
    let depth = stack.len();
    let Some(Frame {
        handle: Some(dir),
        state,
        ..
    }) = stack.last_mut()
    else {
        return Err(Step::Io(io::Error::other("the walk lost its place"), name));
    };
    let sub = match visitor.entry(state, dir, &name, meta) {
        Ok(Some(sub)) => sub,
        Ok(None) => return Ok(()),
        Err(e) => return Err(Step::Io(e, name)),
    };
    if depth > MAX_HOST_DEPTH {
        return Err(Step::Deep(name));
    }
    let opened = dir
        .open_dir_nofollow(&name)
        .and_then(|d| Ok((entries_of(&d)?, d)));
    let (entries, handle) = match opened {
        Ok(o) => o,
        Err(e) => return Err(Step::Io(e, name)),
    };
    if !kept(depth - 1)
        && let Some(top) = stack.last_mut()
    {
        top.handle = None;
    }
    stack.push(Frame {
        handle: Some(handle),
        name,
        state: sub,
        entries: entries.into_iter(),
    });
    Ok(())
}

/// Whether the directory at `depth` below the start stays open while the walk is below it.
fn kept(depth: usize) -> bool {
    depth < KEEP_ALL || depth.is_multiple_of(KEEP_EVERY)
}

/// Opens the directory on top of `stack` again if it was closed, a name at a time from the
/// nearest directory below it that was kept open.
fn reopen<D>(stack: &mut [Frame<D>]) -> io::Result<()> {
    let Some((top, below)) = stack.split_last_mut() else {
        return Ok(());
    };
    if top.handle.is_some() {
        return Ok(());
    }
    let Some(from) = below.iter().rposition(|f| f.handle.is_some()) else {
        return Err(io::Error::other("the walk lost its place"));
    };
    let mut names = below[from + 1..].iter().map(|f| &f.name).chain([&top.name]);
    let (Some(start), Some(first)) = (&below[from].handle, names.next()) else {
        return Err(io::Error::other("the walk lost its place"));
    };
    let mut dir = start.open_dir_nofollow(first)?;
    for name in names {
        dir = dir.open_dir_nofollow(name)?;
    }
    top.handle = Some(dir);
    Ok(())
}

/// The entries of `dir` in name order, each with its own metadata.
fn entries_of(dir: &Dir) -> io::Result<Vec<(OsString, Metadata)>> {
    let mut names = dir
        .entries()?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let meta = dir.symlink_metadata(&name)?;
            Ok((name, meta))
        })
        .collect()
}

/// `e`, saying that it happened at `name` in the directory on top of `stack`.
fn at<D>(e: io::Error, stack: &[Frame<D>], name: Option<&OsStr>) -> io::Error {
    io::Error::new(e.kind(), std::format!("`{}`: {e}", shown(stack, name)))
}

/// The path of `name` in the directory on top of `stack`, relative to the start of the walk,
/// shortened in the middle when it is long.
fn shown<D>(stack: &[Frame<D>], name: Option<&OsStr>) -> String {
    const ENDS: usize = 4;
    let names: Vec<_> = stack
        .iter()
        .skip(1)
        .map(|f| f.name.as_os_str())
        .chain(name)
        .filter(|n| !n.is_empty())
        .map(|n| n.to_string_lossy())
        .collect();
    if names.len() <= 2 * ENDS + 1 {
        return names.join("/");
    }
    std::format!(
        "{}/…({} more)…/{}",
        names[..ENDS].join("/"),
        names.len() - 2 * ENDS,
        names[names.len() - ENDS..].join("/")
    )
}

/// Copies the host directory `path` into a new root of `fs` (for `--copy-dir`), keeping files,
/// directories, symlinks and modification times; returns the root. It walks through
/// directory handles with [`walk_host_dir`], so a tree deeper than [`MAX_HOST_DEPTH`] is an
/// error that says so.
pub fn import_host_dir(fs: &mut MemFs, path: &Path, now: u64) -> io::Result<Ino> {
    let dir = Dir::open_ambient_dir(path, ambient_authority())?;
    let root = fs.new_root(now);
    walk_host_dir(&dir, (root, None), &mut Import { fs })?;
    Ok(root)
}

fn to_io(e: FsError) -> io::Error {
    io::Error::other(e.to_string())
}

/// The visitor that copies a host tree into a [`MemFs`].
struct Import<'a> {
    fs: &'a mut MemFs,
}

impl HostVisitor for Import<'_> {
    /// A directory's inode, and its access and modification times on the host, set once its
    /// entries are in (none for the root, which keeps its own).
    type Dir = (Ino, Option<(u64, u64)>);

    fn entry(
        &mut self,
        parent: &mut Self::Dir,
        dir: &Dir,
        name: &OsStr,
        meta: &Metadata,
    ) -> io::Result<Option<Self::Dir>> {
        let fs = &mut *self.fs;
        let into = parent.0;
        let name = name
            .to_str()
            .ok_or_else(|| io::Error::other(std::format!("file name is not UTF-8: {name:?}")))?;
        let (atim, mtim) = (nanos(meta.accessed()), nanos(meta.modified()));
        let ft = meta.file_type();
        if ft.is_dir() {
            let ino = fs.mkdir(into, name, mtim).map_err(to_io)?;
            return Ok(Some((ino, Some((atim, mtim)))));
        }
        let ino = if ft.is_symlink() {
            let target = dir.read_link_contents(name)?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| io::Error::other("symlink target is not UTF-8"))?;
            fs.symlink(into, name, &target, mtim).map_err(to_io)?
        } else {
            let data = dir.read(name)?;
            let ino = fs.create_file(into, name, mtim).map_err(to_io)?;
            fs.write_at(ino, 0, &data, mtim).map_err(to_io)?;
            ino
        };
        set_times(fs, ino, atim, mtim)?;
        Ok(None)
    }

    fn leave(&mut self, (ino, times): Self::Dir) -> io::Result<()> {
        match times {
            Some((atim, mtim)) => set_times(self.fs, ino, atim, mtim),
            None => Ok(()),
        }
    }
}

/// Gives `ino` the times a host entry had.
fn set_times(fs: &mut MemFs, ino: Ino, atim: u64, mtim: u64) -> io::Result<()> {
    fs.set_times(ino, SetTime::At(atim), SetTime::At(mtim), mtim)
        .map_err(to_io)
}
