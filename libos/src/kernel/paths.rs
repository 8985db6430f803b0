//! Path operations from a directory descriptor (the kernel's `open-at`, `stat-at`, links,
//! renames): in-memory directories through `tabi-vfs`, host directories through the host,
//! with the guest's own descriptors followed across renames and unlinks.

use super::*;

/// A directory a path operation starts from.
pub(super) enum DirAt {
    Mem(Ino),
    Host { mount: u32, key: u64, path: String },
}

impl DirAt {
    fn host_obj(&self) -> Option<HostObj<'_>> {
        match self {
            DirAt::Mem(_) => None,
            DirAt::Host { mount, key, path } => Some(HostObj {
                mount: *mount,
                key: *key,
                path,
            }),
        }
    }

    /// For a host directory, its mount and the path below the mount root that `rel` names
    /// from it: as the host resolves the directories on the way when it can tell, else
    /// lexically.
    fn host_target(&self, rel: &str, host: &mut dyn Host) -> Option<(u32, String)> {
        match self {
            DirAt::Mem(_) => None,
            DirAt::Host { mount, path, .. } => {
                let located = self
                    .host_obj()
                    .and_then(|obj| host.host_fs()?.locate(obj, rel));
                Some((*mount, located.unwrap_or_else(|| Kernel::join(path, rel))))
            }
        }
    }
}

impl Kernel {
    fn dir_at(&self, fd: u32, needed: u64) -> Result<DirAt, Errno> {
        let d = self.get(fd)?;
        let at = match &d.object {
            Object::MemDir { ino } => DirAt::Mem(*ino),
            Object::HostDir { mount, key, path } => DirAt::Host {
                mount: *mount,
                key: *key,
                path: path.clone(),
            },
            _ => return Err(Errno::NotDir),
        };
        d.require(needed)?;
        Ok(at)
    }

    /// The open host files of `mount` at `path`, about to lose that name: their handle is
    /// made sure of first (after a restore it is reopened only when used, and once the name is
    /// gone no path reaches the file).
    fn hold_host_files(&self, mount: u32, path: &str, host: &mut dyn Host) -> Vec<u32> {
        let fds = self.host_fds_at(mount, path, false);
        if let (Some(&first), Some(fs)) = (fds.first(), host.host_fs())
            && let Ok(d) = self.get(first)
            && let Some(obj) = d.object.host_obj()
        {
            let _ = fs.stat(obj);
        }
        fds
    }

    /// The descriptors open on host files (or, with `dirs`, host directories) of `mount` at
    /// `path` (a path as [`Kernel::join`] writes it).
    fn host_fds_at(&self, mount: u32, path: &str, dirs: bool) -> Vec<u32> {
        self.descriptors()
            .filter_map(|(fd, d)| match &d.object {
                Object::HostFile {
                    mount: m, path: p, ..
                } if !dirs && *m == mount && p == path => Some(fd),
                Object::HostDir {
                    mount: m, path: p, ..
                } if dirs && *m == mount && p == path => Some(fd),
                _ => None,
            })
            .collect()
    }

    /// Moves the host descriptors `fds` onto the in-memory inode `ino` (a file keeps its
    /// offset) and closes their host handles. `ino` comes with one reference, which this
    /// releases once the descriptors hold theirs.
    fn move_into_memory(&mut self, fds: Vec<u32>, ino: Ino, fs: &mut dyn HostFs) {
        for fd in fds {
            let Some(d) = self.fds.get_mut(fd as usize).and_then(Option::as_mut) else {
                continue;
            };
            let (key, object) = match d.object {
                Object::HostFile { key, offset, .. } => (key, Object::MemFile { ino, offset }),
                Object::HostDir { key, .. } => (key, Object::MemDir { ino }),
                _ => continue,
            };
            if self.fs.retain(ino).is_err() {
                continue;
            }
            d.object = object;
            fs.close(key);
        }
        let _ = self.fs.release(ino);
    }

    /// Open host files (`fds`, from [`Kernel::hold_host_files`]) whose path has just lost its
    /// name (by an unlink or a rename over it): if the file has no name left at all, they
    /// become one in-memory file holding its contents, since no path could reopen it after a
    /// restore.
    /// A file that keeps another hard link stays on the host, known from then on by that other
    /// name when a search of the mount finds it ([`Kernel::other_name`]); one too large for the
    /// in-memory file system's limit stays on the host too, and a restore cannot reopen it.
    fn keep_unlinked(&mut self, fds: Vec<u32>, host: &mut dyn Host) {
        let Some(&first) = fds.first() else {
            return;
        };
        let Some(fs) = host.host_fs() else {
            return;
        };
        let Some(Object::HostFile {
            mount, key, path, ..
        }) = self.get(first).ok().map(|d| &d.object)
        else {
            return;
        };
        let path = path.clone();
        let obj = HostObj {
            mount: *mount,
            key: *key,
            path: &path,
        };
        let Ok(stat) = fs.stat(obj) else {
            return;
        };
        if stat.filetype != FileType::RegularFile {
            return;
        }
        if stat.nlink != 0 {
            let mount = *mount;
            let (Ok(a), Ok(b)) = (self.new_key(), self.new_key()) else {
                return;
            };
            let keys = [a, b];
            if let Some(other) = Self::other_name(fs, mount, &stat, keys) {
                for fd in fds {
                    if let Some(Descriptor {
                        object: Object::HostFile { path, .. },
                        ..
                    }) = self.fds.get_mut(fd as usize).and_then(Option::as_mut)
                    {
                        *path = other.clone();
                    }
                }
            }
            return;
        }
        if stat.size > self.fs.limit_bytes().saturating_sub(self.fs.used_bytes()) {
            return;
        }
        let ino = self.fs.new_unlinked_file(stat.ctim);
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = 0u64;
        let copied = loop {
            match fs.read_at(obj, pos, &mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    if self.fs.write_at(ino, pos, &buf[..n], stat.mtim).is_err() {
                        break false;
                    }
                    pos += n as u64;
                }
                Err(_) => break false,
            }
        };
        if !copied {
            let _ = self.fs.release(ino);
            return;
        }
        let _ = self.fs.set_times(
            ino,
            SetTime::At(stat.atim),
            SetTime::At(stat.mtim),
            stat.ctim,
        );
        self.move_into_memory(fds, ino, fs);
    }

    /// Another name of the host file `stat` describes within `mount`, found by walking the
    /// mount (symlinks not followed) and checking each candidate's device and inode; `None`
    /// when there is none or the walk gives up (after [`OTHER_NAME_SEARCH`] entries).
    /// `keys` are two unused handle keys, for the root and the directory being listed.
    fn other_name(fs: &mut dyn HostFs, mount: u32, stat: &Stat, keys: [u64; 2]) -> Option<String> {
        let root = HostObj {
            mount,
            key: keys[0],
            path: ".",
        };
        let mut dirs = vec![String::from(".")];
        let mut seen = 0usize;
        let mut found = None;
        'walk: while let Some(dir) = dirs.pop() {
            let listing = fs.read_dir(HostObj {
                mount,
                key: keys[1],
                path: &dir,
            });
            fs.close(keys[1]);
            for entry in listing.into_iter().flatten() {
                seen += 1;
                if seen > OTHER_NAME_SEARCH {
                    break 'walk;
                }
                let path = Self::join(&dir, &entry.name);
                match entry.filetype {
                    FileType::Directory => dirs.push(path),
                    FileType::RegularFile
                        if entry.ino == stat.ino
                            && fs
                                .stat_at(root, &path, false)
                                .is_ok_and(|s| s.dev == stat.dev && s.ino == stat.ino) =>
                    {
                        found = Some(path);
                        break 'walk;
                    }
                    _ => {}
                }
            }
        }
        fs.close(keys[0]);
        found
    }

    /// After a rename on `mount`: open host objects at `from` or below it are now at `to`.
    fn move_host_paths(&mut self, mount: u32, from: &str, to: &str) {
        if from == to {
            return;
        }
        for d in self.fds.iter_mut().flatten() {
            let (Object::HostFile { mount: m, path, .. } | Object::HostDir { mount: m, path, .. }) =
                &mut d.object
            else {
                continue;
            };
            if *m != mount {
                continue;
            }
            if path == from {
                *path = to.to_string();
            } else if let Some(rest) = path.strip_prefix(from)
                && rest.starts_with('/')
                && from != "."
            {
                *path = format!("{to}{rest}");
            }
        }
    }

    /// The path below the mount root of `rel` taken from the directory `base`, lexically.
    /// Only used to reopen host objects after a restore; lookups go through the host's handle.
    pub(super) fn join(base: &str, rel: &str) -> String {
        let mut parts: Vec<&str> = base
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        for c in rel.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        if parts.is_empty() {
            ".".to_string()
        } else {
            parts.join("/")
        }
    }

    fn check_path(path: &str) -> Result<(), Errno> {
        // As Linux past PATH_MAX: refused before anything is split or looked up, on memory
        // and host mounts alike.
        if path.len() > tabi_vfs::PATH_MAX {
            return Err(Errno::NameTooLong);
        }
        if path.contains('\0') {
            return Err(Errno::Inval);
        }
        if path.split('/').any(|c| c.len() > NAME_MAX) {
            return Err(Errno::NameTooLong);
        }
        Ok(())
    }

    /// Whether `path` ends in a slash after a final component that is a symlink: `rmdir`, which
    /// never follows a final symlink, then fails with `ENOTDIR`, as on Linux.
    fn mem_names_symlink_with_slash(&self, dir: Ino, path: &str) -> bool {
        let bare = path.trim_end_matches('/');
        bare.len() != path.len()
            && !bare.is_empty()
            && self
                .fs
                .resolve(dir, bare, false)
                .ok()
                .and_then(|r| r.ino)
                .and_then(|ino| self.fs.inode(ino).ok())
                .is_some_and(|i| i.filetype() == FileType::SymbolicLink)
    }

    /// With `SYMLINK_FOLLOW`, the path `path_link` links on a host mount: the host links a
    /// symlink itself, so the final symlinks are followed here, each target read relative to
    /// the link's directory (the host still keeps every step inside the mount).
    fn host_link_source(
        fs: &mut dyn HostFs,
        dir: HostObj<'_>,
        path: &str,
    ) -> Result<String, Errno> {
        let mut source = path.to_string();
        for _ in 0..MAX_SYMLINKS {
            if fs.stat_at(dir, &source, false)?.filetype != FileType::SymbolicLink {
                return Ok(source);
            }
            let target = fs.readlink_at(dir, &source)?;
            if target.starts_with('/') {
                return Err(Errno::Perm);
            }
            source = match source.trim_end_matches('/').rsplit_once('/') {
                Some((parent, _)) => format!("{parent}/{target}"),
                None => target,
            };
        }
        Err(Errno::Loop)
    }

    /// Opens `path` relative to the directory `fd`; returns the new descriptor.
    pub fn open_at(
        &mut self,
        fd: u32,
        path: &str,
        opts: OpenOptions,
        host: &mut dyn Host,
    ) -> Result<u32, Errno> {
        Self::check_path(path)?;
        if !self.has_free_slot() {
            return Err(Errno::Mfile);
        }
        let mut needed = rights::PATH_OPEN;
        if opts.create {
            needed |= rights::PATH_CREATE_FILE;
        }
        let at = self.dir_at(fd, needed)?;
        let parent = self.get(fd)?;
        // Truncating through a path is what `PATH_FILESTAT_SET_SIZE` grants; without it the
        // open is not permitted, as `open(O_TRUNC)` on a file one may not shorten.
        if opts.truncate && parent.rights & rights::PATH_FILESTAT_SET_SIZE == 0 {
            return Err(Errno::Perm);
        }
        let parent_inheriting = parent.inheriting;
        // The rights asked for decide only the access mode, as in wasmtime's WASI: the new
        // descriptor gets every right its kind and access allow, within what the directory
        // passes on. Asking for neither reading nor writing is asking to read, as `O_RDONLY`
        // is 0 (and as wasmtime opens it).
        let asked = if opts.rights & (rights::ANY_READ | rights::ANY_WRITE) == 0 {
            rights::FD_READ
        } else {
            opts.rights
        };
        let wants_read = asked & parent_inheriting & rights::ANY_READ != 0;
        // With `O_DIRECTORY` only `FD_WRITE` asks for writing: rights such as `FD_DATASYNC`
        // come along with reading a directory in some guests, and opening one for reading works.
        let write_rights = if opts.directory {
            rights::FD_WRITE
        } else {
            rights::ANY_WRITE
        };
        let wants_write = opts.rights & parent_inheriting & write_rights != 0;
        if opts.directory && (opts.create || opts.truncate) {
            return Err(Errno::Inval);
        }
        let object = match at {
            DirAt::Mem(dir) => {
                let r = self.fs.resolve(dir, path, opts.follow)?;
                let ino = match r.ino {
                    Some(ino) => {
                        if opts.create && opts.exclusive {
                            return Err(Errno::Exist);
                        }
                        let kind = self.fs.inode(ino)?.filetype();
                        match kind {
                            FileType::SymbolicLink => return Err(Errno::Loop),
                            FileType::Directory => {
                                if wants_write || opts.truncate {
                                    return Err(Errno::IsDir);
                                }
                            }
                            _ => {
                                if opts.directory || r.must_be_dir {
                                    return Err(Errno::NotDir);
                                }
                                if opts.truncate {
                                    let now = self.fs_now(host);
                                    self.fs.set_size(ino, 0, now)?;
                                }
                            }
                        }
                        ino
                    }
                    None => {
                        if !opts.create {
                            return Err(Errno::NoEnt);
                        }
                        if r.must_be_dir {
                            return Err(Errno::IsDir);
                        }
                        let name = r.new_name()?.to_string();
                        let now = self.fs_now(host);
                        self.fs.create_file(r.dir, &name, now)?
                    }
                };
                self.fs.retain(ino)?;
                if matches!(self.fs.inode(ino)?.node, tabi_vfs::Node::Dir(_)) {
                    Object::MemDir { ino }
                } else {
                    Object::MemFile { ino, offset: 0 }
                }
            }
            DirAt::Host {
                mount,
                key,
                path: ref dir_path,
            } => {
                let new_key = self.new_key()?;
                let fs = host.host_fs().ok_or(Errno::Badf)?;
                let obj = HostObj {
                    mount,
                    key,
                    path: dir_path,
                };
                let how = HostOpen {
                    create: opts.create,
                    exclusive: opts.exclusive,
                    truncate: opts.truncate,
                    directory: opts.directory,
                    follow: opts.follow,
                    read: wants_read,
                    write: wants_write,
                };
                let kind = fs.open_at(obj, path, how, new_key)?;
                // The path the host reached, symlinks resolved: `link/../x` with `link` a
                // link to `deep/dir` is `deep/x`, where a lexical join would say `x`.
                let path = fs
                    .reached(mount, new_key)
                    .unwrap_or_else(|| Self::join(dir_path, path));
                if kind == FileType::Directory {
                    Object::HostDir {
                        mount,
                        key: new_key,
                        path,
                    }
                } else {
                    Object::HostFile {
                        mount,
                        key: new_key,
                        path,
                        offset: 0,
                    }
                }
            }
        };
        let is_dir = matches!(object, Object::MemDir { .. } | Object::HostDir { .. });
        let (base, inheriting) = if is_dir {
            (rights::DIRECTORY, parent_inheriting)
        } else {
            let mut base = rights::FILE;
            if !wants_read {
                base &= !rights::FD_READ;
            }
            if !wants_write {
                base &= !rights::WRITE_ONLY;
            }
            (base, 0)
        };
        let desc = Descriptor {
            object,
            rights: base & parent_inheriting,
            inheriting,
            flags: opts.flags,
            read: wants_read || is_dir,
            write: wants_write && !is_dir,
            preopen: None,
        };
        // `has_free_slot` was checked before anything was opened, so this cannot fail.
        self.insert(desc)
    }

    /// Attributes of `path` relative to the directory `fd`.
    pub fn stat_at(
        &mut self,
        fd: u32,
        path: &str,
        follow: bool,
        host: &mut dyn Host,
    ) -> Result<Stat, Errno> {
        Self::check_path(path)?;
        match self.dir_at(fd, rights::PATH_FILESTAT_GET)? {
            DirAt::Mem(dir) => {
                let r = self.fs.resolve(dir, path, follow)?;
                let ino = r.existing()?;
                let st = self.fs.stat(ino)?;
                if r.must_be_dir && st.filetype != FileType::Directory {
                    return Err(Errno::NotDir);
                }
                Ok(st)
            }
            at @ DirAt::Host { .. } => {
                let obj = at.host_obj().ok_or(Errno::Badf)?;
                Ok(host
                    .host_fs()
                    .ok_or(Errno::Badf)?
                    .stat_at(obj, path, follow)?)
            }
        }
    }

    /// Sets the times of `path` relative to the directory `fd`.
    pub fn set_times_at(
        &mut self,
        fd: u32,
        path: &str,
        follow: bool,
        atim: SetTime,
        mtim: SetTime,
        host: &mut dyn Host,
    ) -> Result<(), Errno> {
        Self::check_path(path)?;
        match self.dir_at(fd, rights::PATH_FILESTAT_SET_TIMES)? {
            DirAt::Mem(dir) => {
                let ino = self.fs.resolve(dir, path, follow)?.existing()?;
                let now = self.fs_now(host);
                Ok(self.fs.set_times(ino, atim, mtim, now)?)
            }
            at @ DirAt::Host { .. } => {
                let obj = at.host_obj().ok_or(Errno::Badf)?;
                Ok(host
                    .host_fs()
                    .ok_or(Errno::Badf)?
                    .set_times_at(obj, path, follow, atim, mtim)?)
            }
        }
    }

    /// Creates a directory at `path` relative to the directory `fd`.
    pub fn create_dir_at(&mut self, fd: u32, path: &str, host: &mut dyn Host) -> Result<(), Errno> {
        Self::check_path(path)?;
        match self.dir_at(fd, rights::PATH_CREATE_DIRECTORY)? {
            DirAt::Mem(dir) => {
                let r = self.fs.resolve(dir, path, false)?;
                let name = r.new_name()?.to_string();
                let now = self.fs_now(host);
                self.fs.mkdir(r.dir, &name, now)?;
                Ok(())
            }
            at @ DirAt::Host { .. } => {
                let obj = at.host_obj().ok_or(Errno::Badf)?;
                Ok(host
                    .host_fs()
                    .ok_or(Errno::Badf)?
                    .create_dir_at(obj, path)?)
            }
        }
    }

    /// Removes the empty directory at `path` relative to the directory `fd`.
    pub fn remove_dir_at(&mut self, fd: u32, path: &str, host: &mut dyn Host) -> Result<(), Errno> {
        Self::check_path(path)?;
        match self.dir_at(fd, rights::PATH_REMOVE_DIRECTORY)? {
            DirAt::Mem(dir) => {
                if self.mem_names_symlink_with_slash(dir, path) {
                    // rmdir does not follow a final symlink, trailing slash or not.
                    return Err(Errno::NotDir);
                }
                let r = self.fs.resolve(dir, path, false)?;
                let ino = r.existing()?;
                let Some(name) = r.name else {
                    // `.` or `..`: POSIX rmdir refuses these.
                    return Err(if path.trim_end_matches('/').ends_with("..") {
                        Errno::NotEmpty
                    } else {
                        Errno::Inval
                    });
                };
                if self.fs.inode(ino)?.filetype() != FileType::Directory {
                    return Err(Errno::NotDir);
                }
                let now = self.fs_now(host);
                Ok(self.fs.rmdir(r.dir, &name, now)?)
            }
            at @ DirAt::Host { .. } => {
                // As on the in-memory file system (and POSIX), whatever the host library says.
                match path.trim_end_matches('/').rsplit('/').next() {
                    Some(".") => return Err(Errno::Inval),
                    Some("..") => return Err(Errno::NotEmpty),
                    _ => {}
                }
                let held = at
                    .host_target(path, host)
                    .map(|(mount, full)| self.host_fds_at(mount, &full, true))
                    .unwrap_or_default();
                let obj = at.host_obj().ok_or(Errno::Badf)?;
                let fs = host.host_fs().ok_or(Errno::Badf)?;
                // Its times travel with it only when a descriptor still holds it.
                let times = if held.is_empty() {
                    None
                } else {
                    fs.stat_at(obj, path, false).ok()
                };
                fs.remove_dir_at(obj, path)?;
                if !held.is_empty() {
                    self.keep_removed_dirs(held, times, host);
                }
                Ok(())
            }
        }
    }

    /// Open host directories (`fds`, from [`Kernel::host_fds_at`]) that the guest just removed,
    /// last stat'ed as `times`: no path can reopen them after a restore, so they become one
    /// empty, removed in-memory directory (where, as on the host, nothing can be created).
    fn keep_removed_dirs(&mut self, fds: Vec<u32>, times: Option<Stat>, host: &mut dyn Host) {
        let now = self.fs_now(host);
        let ino = self.fs.new_removed_dir(now);
        if let Some(st) = times {
            let _ = self
                .fs
                .set_times(ino, SetTime::At(st.atim), SetTime::At(st.mtim), now);
        }
        if let Some(fs) = host.host_fs() {
            self.move_into_memory(fds, ino, fs);
        }
    }

    /// Removes the non-directory at `path` relative to the directory `fd`.
    pub fn unlink_file_at(
        &mut self,
        fd: u32,
        path: &str,
        host: &mut dyn Host,
    ) -> Result<(), Errno> {
        Self::check_path(path)?;
        match self.dir_at(fd, rights::PATH_UNLINK_FILE)? {
            DirAt::Mem(dir) => {
                let r = self.fs.resolve(dir, path, false)?;
                let ino = r.existing()?;
                let Some(name) = r.name else {
                    return Err(Errno::IsDir);
                };
                let kind = self.fs.inode(ino)?.filetype();
                if kind == FileType::Directory {
                    return Err(Errno::IsDir);
                }
                if r.must_be_dir {
                    return Err(Errno::NotDir);
                }
                let now = self.fs_now(host);
                Ok(self.fs.unlink(r.dir, &name, now)?)
            }
            at @ DirAt::Host { .. } => {
                let held = at
                    .host_target(path, host)
                    .map(|(mount, full)| self.hold_host_files(mount, &full, host))
                    .unwrap_or_default();
                let obj = at.host_obj().ok_or(Errno::Badf)?;
                host.host_fs().ok_or(Errno::Badf)?.unlink_at(obj, path)?;
                self.keep_unlinked(held, host);
                Ok(())
            }
        }
    }

    /// Creates a symlink at `path` (relative to the directory `fd`) that points to `target`.
    pub fn symlink_at(
        &mut self,
        target: &str,
        fd: u32,
        path: &str,
        host: &mut dyn Host,
    ) -> Result<(), Errno> {
        Self::check_path(path)?;
        Self::check_path(target)?;
        if target.starts_with('/') {
            // No lookup inside the sandbox could follow it; hosts refuse it too.
            return Err(Errno::Perm);
        }
        match self.dir_at(fd, rights::PATH_SYMLINK)? {
            DirAt::Mem(dir) => {
                let r = self.fs.resolve(dir, path, false)?;
                if r.must_be_dir {
                    return Err(match r.ino {
                        None => Errno::NoEnt,
                        Some(ino) if self.fs.inode(ino)?.filetype() == FileType::Directory => {
                            Errno::Exist
                        }
                        Some(_) => Errno::NotDir,
                    });
                }
                let name = r.new_name()?.to_string();
                let now = self.fs_now(host);
                self.fs.symlink(r.dir, &name, target, now)?;
                Ok(())
            }
            at @ DirAt::Host { .. } => {
                let obj = at.host_obj().ok_or(Errno::Badf)?;
                Ok(host
                    .host_fs()
                    .ok_or(Errno::Badf)?
                    .symlink_at(target, obj, path)?)
            }
        }
    }

    /// The target of the symlink at `path` relative to the directory `fd`.
    pub fn readlink_at(
        &mut self,
        fd: u32,
        path: &str,
        host: &mut dyn Host,
    ) -> Result<String, Errno> {
        Self::check_path(path)?;
        match self.dir_at(fd, rights::PATH_READLINK)? {
            DirAt::Mem(dir) => {
                if path.len() > 1 && path.ends_with('/') {
                    // A trailing slash follows the final symlink, as on Linux: what it leads
                    // to is no symlink (or is missing).
                    let ino = self.fs.resolve(dir, path, true)?.existing()?;
                    return Err(match self.fs.inode(ino)?.filetype() {
                        FileType::Directory => Errno::Inval,
                        _ => Errno::NotDir,
                    });
                }
                let ino = self.fs.resolve(dir, path, false)?.existing()?;
                Ok(self.fs.readlink(ino)?.to_string())
            }
            at @ DirAt::Host { .. } => {
                let obj = at.host_obj().ok_or(Errno::Badf)?;
                Ok(host.host_fs().ok_or(Errno::Badf)?.readlink_at(obj, path)?)
            }
        }
    }

    /// Makes `new_path` (relative to `new_fd`) a hard link to `old_path` (relative to `old_fd`).
    #[allow(clippy::too_many_arguments, reason = "mirrors link-at of WASI 0.2")]
    pub fn link_at(
        &mut self,
        old_fd: u32,
        old_path: &str,
        follow: bool,
        new_fd: u32,
        new_path: &str,
        host: &mut dyn Host,
    ) -> Result<(), Errno> {
        Self::check_path(old_path)?;
        Self::check_path(new_path)?;
        let old = self.dir_at(old_fd, rights::PATH_LINK_SOURCE)?;
        let new = self.dir_at(new_fd, rights::PATH_LINK_TARGET)?;
        match (old, new) {
            (DirAt::Mem(od), DirAt::Mem(nd)) => {
                let src = self.fs.resolve(od, old_path, follow)?;
                let ino = src.existing()?;
                if self.fs.inode(ino)?.filetype() == FileType::Directory {
                    return Err(Errno::Perm);
                }
                if src.must_be_dir {
                    return Err(Errno::NotDir);
                }
                let dst = self.fs.resolve(nd, new_path, false)?;
                let name = dst.new_name()?.to_string();
                if dst.must_be_dir {
                    return Err(Errno::NoEnt);
                }
                let now = self.fs_now(host);
                Ok(self.fs.link(dst.dir, &name, ino, now)?)
            }
            (o @ DirAt::Host { mount: om, .. }, n @ DirAt::Host { mount: nm, .. }) => {
                if om != nm {
                    return Err(Errno::Xdev);
                }
                let (Some(oo), Some(no)) = (o.host_obj(), n.host_obj()) else {
                    return Err(Errno::Badf);
                };
                let fs = host.host_fs().ok_or(Errno::Badf)?;
                let source = if follow {
                    Self::host_link_source(fs, oo, old_path)?
                } else {
                    old_path.to_string()
                };
                Ok(fs.link_at(oo, &source, no, new_path)?)
            }
            _ => Err(Errno::Xdev),
        }
    }

    /// Renames `old_path` (relative to `old_fd`) to `new_path` (relative to `new_fd`).
    pub fn rename_at(
        &mut self,
        old_fd: u32,
        old_path: &str,
        new_fd: u32,
        new_path: &str,
        host: &mut dyn Host,
    ) -> Result<(), Errno> {
        Self::check_path(old_path)?;
        Self::check_path(new_path)?;
        let old = self.dir_at(old_fd, rights::PATH_RENAME_SOURCE)?;
        let new = self.dir_at(new_fd, rights::PATH_RENAME_TARGET)?;
        match (old, new) {
            (DirAt::Mem(od), DirAt::Mem(nd)) => {
                let src = self.fs.resolve(od, old_path, false)?;
                let src_ino = src.existing()?;
                let Some(src_name) = src.name.clone() else {
                    return Err(Errno::Busy);
                };
                let dst = self.fs.resolve(nd, new_path, false)?;
                let Some(dst_name) = dst.name.clone() else {
                    return Err(Errno::Busy);
                };
                let src_is_dir = self.fs.inode(src_ino)?.filetype() == FileType::Directory;
                if (src.must_be_dir || dst.must_be_dir) && !src_is_dir {
                    return Err(Errno::NotDir);
                }
                let now = self.fs_now(host);
                self.fs
                    .rename(src.dir, &src_name, dst.dir, &dst_name, now)
                    .map_err(|e| match e {
                        FsError::Invalid => Errno::Inval,
                        e => e.into(),
                    })
            }
            (o @ DirAt::Host { mount: om, .. }, n @ DirAt::Host { mount: nm, .. }) => {
                if om != nm {
                    return Err(Errno::Xdev);
                }
                let (Some(oo), Some(no)) = (o.host_obj(), n.host_obj()) else {
                    return Err(Errno::Badf);
                };
                let targets = o
                    .host_target(old_path, host)
                    .zip(n.host_target(new_path, host));
                let held = targets
                    .as_ref()
                    .map(|((mount, _), (_, to))| self.hold_host_files(*mount, to, host))
                    .unwrap_or_default();
                host.host_fs()
                    .ok_or(Errno::Badf)?
                    .rename_at(oo, old_path, no, new_path)?;
                // What the new name held is gone: first keep the open files it leaves without
                // a name, then move the paths of what was renamed.
                self.keep_unlinked(held, host);
                if let Some(((mount, from), (_, to))) = targets {
                    self.move_host_paths(mount, &from, &to);
                }
                Ok(())
            }
            _ => Err(Errno::Xdev),
        }
    }
}
