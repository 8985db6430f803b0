//! Preview-1 behaviour that portable guests and WASI conformance suites rely on, checked on
//! the kernel directly, once on an in-memory mount and once on a host directory.
//!
//! Each case pins down a semantic where runtimes once differed and where tabi follows
//! wasmtime's WASI and Linux: which rights a newly opened descriptor gets, what a dropped right
//! still forbids, where an `APPEND` descriptor's positioned write lands, and the errors of
//! `path_symlink`, `path_link` and `poll_oneoff` at their edges.

use tabi_libos::abi::{fdflags, rights, whence};
use tabi_libos::host::{StdHost, Stdio};
use tabi_libos::{Errno, Kernel, OpenOptions};
use tabi_vfs::FileType;

/// A kernel with one scratch directory, in memory or on the host, and the host it runs on.
struct Scratch {
    k: Kernel,
    host: StdHost,
    dir: u32,
    _tmp: Option<tempfile::TempDir>,
}

impl Scratch {
    fn memory() -> Self {
        let mut k = Kernel::new();
        let (dir, _) = k.mount_memory("/scratch", 1).unwrap();
        let mut host = StdHost::new();
        host.stdout = Stdio::Null;
        Scratch {
            k,
            host,
            dir,
            _tmp: None,
        }
    }

    fn host() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut host = StdHost::new();
        host.stdout = Stdio::Null;
        assert_eq!(host.fs.grant(tmp.path()).unwrap(), 0);
        let mut k = Kernel::new();
        let dir = k.mount_host("/scratch", 0).unwrap();
        Scratch {
            k,
            host,
            dir,
            _tmp: Some(tmp),
        }
    }

    fn both() -> [(&'static str, Scratch); 2] {
        [("memory", Scratch::memory()), ("host", Scratch::host())]
    }

    fn open(&mut self, path: &str, opts: OpenOptions) -> Result<u32, Errno> {
        let dir = self.dir;
        self.open_in(dir, path, opts)
    }

    fn open_in(&mut self, dir: u32, path: &str, opts: OpenOptions) -> Result<u32, Errno> {
        self.k.open_at(dir, path, opts, &mut self.host)
    }

    fn create(&mut self, path: &str, asked: u64) -> u32 {
        let opts = OpenOptions {
            create: true,
            rights: asked,
            ..Default::default()
        };
        self.open(path, opts).unwrap()
    }

    fn size(&mut self, fd: u32) -> u64 {
        self.k.stat(fd, &mut self.host).unwrap().size
    }
}

#[test]
fn a_new_descriptor_gets_the_rights_its_access_allows() {
    for (name, mut s) in Scratch::both() {
        // Asked only for reading and writing, as wasmtime's own tests and many guests do: seeking,
        // telling, stat, resizing, flags and polling all work.
        let fd = s.create("rw", rights::FD_READ | rights::FD_WRITE);
        let held = s.k.get(fd).unwrap().rights;
        for r in [
            rights::FD_SEEK,
            rights::FD_TELL,
            rights::FD_FILESTAT_GET,
            rights::FD_FILESTAT_SET_SIZE,
            rights::FD_FDSTAT_SET_FLAGS,
            rights::POLL_FD_READWRITE,
        ] {
            assert_ne!(held & r, 0, "{name}: right {r:#x} missing");
        }
        assert_eq!(
            s.k.get(fd).unwrap().inheriting,
            0,
            "{name}: a file inherits nothing"
        );
        assert_eq!(
            held & rights::PATH_OPEN,
            0,
            "{name}: a file has no path rights"
        );
        s.k.write(fd, b"0123456789", None, &mut s.host).unwrap();
        assert_eq!(s.k.seek(fd, -4, whence::CUR, &mut s.host), Ok(6), "{name}");
        s.k.set_size(fd, 3, &mut s.host).unwrap();
        assert_eq!(s.size(fd), 3, "{name}");
        s.k.set_flags(fd, fdflags::APPEND).unwrap();

        // Asked for reading only: no write rights, and writing is `EBADF` as on POSIX.
        let ro = s
            .open(
                "rw",
                OpenOptions {
                    rights: rights::FD_READ,
                    ..Default::default()
                },
            )
            .unwrap();
        let held = s.k.get(ro).unwrap().rights;
        assert_eq!(held & rights::WRITE_ONLY, 0, "{name}: {held:#x}");
        assert_ne!(held & rights::FD_SEEK, 0, "{name}");
        assert_eq!(
            s.k.write(ro, b"x", None, &mut s.host),
            Err(Errno::Badf),
            "{name}"
        );
        assert_eq!(
            s.k.set_size(ro, 0, &mut s.host),
            Err(Errno::Inval),
            "{name}"
        );
        assert_eq!(
            s.k.allocate(ro, 0, 9, &mut s.host),
            Err(Errno::Badf),
            "{name}"
        );

        // Asked for nothing: open for reading, as `O_RDONLY` (which is 0).
        let none = s.open("rw", OpenOptions::default()).unwrap();
        let mut buf = [0u8; 3];
        assert_eq!(
            s.k.read(none, &mut buf, Some(0), &mut s.host),
            Ok(3),
            "{name}"
        );
        assert_eq!(s.k.write(none, b"x", None, &mut s.host), Err(Errno::Badf));

        // A directory never gets file-only rights such as seeking, even when asked.
        s.k.create_dir_at(s.dir, "sub", &mut s.host).unwrap();
        let sub = s
            .open(
                "sub",
                OpenOptions {
                    directory: true,
                    rights: rights::FD_SEEK,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(s.k.get(sub).unwrap().rights & rights::FD_SEEK, 0, "{name}");
        assert_eq!(s.k.seek(sub, 0, whence::CUR, &mut s.host), Err(Errno::Badf));
        // Opened with no rights at all, it still lists and opens what it holds.
        assert!(s.k.read_dir(sub, 0, &mut s.host).is_ok(), "{name}");
        let inner = s.open_in(
            sub,
            "f",
            OpenOptions {
                create: true,
                rights: rights::FD_READ | rights::FD_WRITE,
                ..Default::default()
            },
        );
        let inner = inner.unwrap();
        s.k.write(inner, b"ok", None, &mut s.host).unwrap();
    }
}

#[test]
fn a_dropped_right_stays_dropped() {
    for (name, mut s) in Scratch::both() {
        let fd = s.create("file", rights::FD_WRITE);
        s.k.write(fd, b"data", None, &mut s.host).unwrap();
        let d = s.k.get(s.dir).unwrap().clone();

        // Without `FD_READ` to pass on, a file asked for reading is not readable.
        s.k.set_rights(s.dir, d.rights, d.inheriting & !rights::FD_READ)
            .unwrap();
        let f = s
            .open(
                "file",
                OpenOptions {
                    rights: rights::FD_READ,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(s.k.get(f).unwrap().rights & rights::FD_READ, 0, "{name}");
        let mut buf = [0u8; 4];
        assert_eq!(s.k.read(f, &mut buf, None, &mut s.host), Err(Errno::Badf));

        // Truncating through the path needs only the directory's right, not write access.
        let t = s
            .open(
                "file",
                OpenOptions {
                    truncate: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(s.size(t), 0, "{name}: truncated");
        s.k.set_rights(
            s.dir,
            d.rights & !rights::PATH_FILESTAT_SET_SIZE,
            d.inheriting & !rights::FD_READ,
        )
        .unwrap();
        let denied = s.open(
            "file",
            OpenOptions {
                truncate: true,
                ..Default::default()
            },
        );
        assert_eq!(denied, Err(Errno::Perm), "{name}");
        // Rights only ever shrink.
        assert_eq!(
            s.k.set_rights(s.dir, d.rights, d.inheriting),
            Err(Errno::NotCapable),
            "{name}"
        );
    }
}

#[test]
fn append_writes_go_to_the_end_and_empty_writes_change_nothing() {
    for (name, mut s) in Scratch::both() {
        let fd = s.create("log", rights::FD_READ | rights::FD_WRITE);
        // An empty positioned write past the end neither grows the file nor moves the offset.
        assert_eq!(s.k.write(fd, b"", Some(50), &mut s.host), Ok(0), "{name}");
        assert_eq!(s.size(fd), 0, "{name}");
        assert_eq!(s.k.write(fd, b"x", Some(50), &mut s.host), Ok(1));
        assert_eq!(s.size(fd), 51, "{name}");
        assert_eq!(s.k.seek(fd, 0, whence::CUR, &mut s.host), Ok(0), "{name}");

        let app = s
            .open(
                "log",
                OpenOptions {
                    rights: rights::FD_READ | rights::FD_WRITE,
                    flags: fdflags::APPEND,
                    ..Default::default()
                },
            )
            .unwrap();
        // As on Linux, the offset of a positioned write is ignored under `APPEND`.
        assert_eq!(s.k.write(app, b"yz", Some(0), &mut s.host), Ok(2));
        assert_eq!(s.size(app), 53, "{name}");
        let mut head = [0u8; 1];
        s.k.read(fd, &mut head, Some(0), &mut s.host).unwrap();
        assert_eq!(head, [0], "{name}: the start was not overwritten");
    }
}

#[test]
fn symlink_and_link_edges() {
    for (name, mut s) in Scratch::both() {
        let dir = s.dir;
        let f = s.create("file", rights::FD_WRITE);
        s.k.close(f, &mut s.host).unwrap();
        s.k.create_dir_at(dir, "sub", &mut s.host).unwrap();

        let sym =
            |s: &mut Scratch, target: &str, at: &str| s.k.symlink_at(target, dir, at, &mut s.host);
        assert_eq!(sym(&mut s, "x", "file/"), Err(Errno::NotDir), "{name}");
        assert_eq!(sym(&mut s, "x", "sub/"), Err(Errno::Exist), "{name}");
        assert_eq!(sym(&mut s, "x", "sub"), Err(Errno::Exist), "{name}");
        assert_eq!(sym(&mut s, "x", "missing/"), Err(Errno::NoEnt), "{name}");
        // An absolute target could never be followed inside the sandbox.
        assert_eq!(sym(&mut s, "/", "abs"), Err(Errno::Perm), "{name}");

        // `path_link` with `SYMLINK_FOLLOW` links what the symlink names...
        sym(&mut s, "file", "to-file").unwrap();
        s.k.link_at(dir, "to-file", true, dir, "hard", &mut s.host)
            .unwrap();
        let file = s.k.stat_at(dir, "file", false, &mut s.host).unwrap();
        let hard = s.k.stat_at(dir, "hard", false, &mut s.host).unwrap();
        assert_eq!(hard.filetype, FileType::RegularFile, "{name}");
        assert_eq!(hard.ino, file.ino, "{name}");
        // ...without it, the symlink itself...
        s.k.link_at(dir, "to-file", false, dir, "hard-sym", &mut s.host)
            .unwrap();
        let hs = s.k.stat_at(dir, "hard-sym", false, &mut s.host).unwrap();
        assert_eq!(hs.filetype, FileType::SymbolicLink, "{name}");
        // ...and a dangling one has nothing to link when followed.
        sym(&mut s, "nowhere", "dangling").unwrap();
        assert_eq!(
            s.k.link_at(dir, "dangling", true, dir, "l2", &mut s.host),
            Err(Errno::NoEnt),
            "{name}"
        );
        sym(&mut s, "loop", "loop").unwrap();
        assert_eq!(
            s.k.link_at(dir, "loop", true, dir, "l3", &mut s.host),
            Err(Errno::Loop),
            "{name}"
        );
    }
}

#[test]
fn poll_on_a_closed_descriptor_fails_the_whole_call() {
    for (name, mut s) in Scratch::both() {
        let fd = s.create("f", rights::FD_READ | rights::FD_WRITE);
        // Two subscriptions at 0 (48 bytes each), room for two events at 96 (32 bytes each),
        // and the count at 160.
        let mut mem = vec![0u8; 256];
        let sub = |mem: &mut [u8], at: usize, userdata: u64, tag: u8, fd: u32| {
            mem[at..at + 8].copy_from_slice(&userdata.to_le_bytes());
            mem[at + 8] = tag;
            mem[at + 16..at + 20].copy_from_slice(&fd.to_le_bytes());
        };
        sub(&mut mem, 0, 1, 1, fd);
        sub(&mut mem, 48, 2, 2, fd);
        let errno = tabi_libos::p1::poll_oneoff(&mut s.k, &mut s.host, &mut mem, 0, 96, 2, 160);
        assert_eq!(errno, Ok(0), "{name}");
        assert_eq!(u32::from_le_bytes(mem[160..164].try_into().unwrap()), 2);
        // Both events are ready without error.
        assert_eq!(&mem[104..106], &[0, 0], "{name}");
        assert_eq!(&mem[136..138], &[0, 0], "{name}");

        sub(&mut mem, 48, 2, 2, 999);
        let errno = tabi_libos::p1::poll_oneoff(&mut s.k, &mut s.host, &mut mem, 0, 96, 2, 160);
        assert_eq!(errno, Ok(i32::from(Errno::Badf.raw())), "{name}");
    }
}

/// A host whose standard output is a terminal, and nothing else about it.
struct TerminalOut(StdHost);

impl tabi_libos::Host for TerminalOut {
    fn wall_clock_ns(&mut self) -> u64 {
        self.0.wall_clock_ns()
    }
    fn monotonic_ns(&mut self) -> u64 {
        self.0.monotonic_ns()
    }
    fn random_bytes(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        self.0.random_bytes(buf)
    }
    fn stdin_read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        self.0.stdin_read(buf)
    }
    fn stdout_write(&mut self, buf: &[u8]) -> Result<(), Errno> {
        self.0.stdout_write(buf)
    }
    fn stderr_write(&mut self, buf: &[u8]) -> Result<(), Errno> {
        self.0.stderr_write(buf)
    }
    fn sleep_ns(&mut self, ns: u64) {
        self.0.sleep_ns(ns)
    }
    fn stdio_is_terminal(&mut self, fd: u32) -> bool {
        fd == 1
    }
}

#[test]
fn standard_streams_are_terminals_only_when_the_hosts_are() {
    use tabi_libos::Host;
    let mut k = Kernel::new();
    let mut host = StdHost::new();
    host.stdin = Stdio::Null;
    host.stdout = Stdio::Null;
    host.stderr = Stdio::Null;
    // Redirected or captured streams are not terminals: `isatty` in the guest is false.
    for fd in 0..3 {
        assert!(!host.stdio_is_terminal(fd));
        assert_eq!(k.filetype(fd, &mut host), Ok(FileType::Unknown));
    }
    let mut tty = TerminalOut(host);
    assert_eq!(k.filetype(1, &mut tty), Ok(FileType::CharacterDevice));
    assert_eq!(
        k.stat(1, &mut tty).unwrap().filetype,
        FileType::CharacterDevice
    );
    assert_eq!(k.filetype(2, &mut tty), Ok(FileType::Unknown));
    // A deterministic run prints the same bytes anywhere, so it never sees a terminal.
    k.set_deterministic(1);
    assert_eq!(k.filetype(1, &mut tty), Ok(FileType::Unknown));
}

#[test]
fn a_directory_refuses_file_data_operations() {
    for (name, mut s) in Scratch::both() {
        let dir = s.dir;
        let mut buf = [0u8; 8];
        // POSIX `read(2)` on a directory (wasmtime's WASI answers EBADF; both are allowed by
        // the WASI test suite).
        assert_eq!(
            s.k.read(dir, &mut buf, None, &mut s.host),
            Err(Errno::IsDir),
            "{name}"
        );
        assert_eq!(
            s.k.read(dir, &mut buf, Some(0), &mut s.host),
            Err(Errno::IsDir)
        );
        assert_eq!(
            s.k.write(dir, b"x", None, &mut s.host),
            Err(Errno::IsDir),
            "{name}"
        );
        assert_eq!(s.k.seek(dir, 0, whence::CUR, &mut s.host), Err(Errno::Badf));
        // Resizing is `EBADF` as on POSIX (a directory is never open for writing).
        assert_eq!(
            s.k.set_size(dir, 0, &mut s.host),
            Err(Errno::Badf),
            "{name}"
        );
        assert_eq!(
            s.k.allocate(dir, 0, 1, &mut s.host),
            Err(Errno::Badf),
            "{name}"
        );
        // Syncing a directory is what makes a rename in it durable: it works, data-only too.
        assert_eq!(s.k.sync(dir, false, &mut s.host), Ok(()), "{name}");
        assert_eq!(s.k.sync(dir, true, &mut s.host), Ok(()), "{name}");
        // A directory asked for with rights that only come along with writing still opens.
        let all_but_write = rights::ALL & !rights::FD_WRITE;
        let opts = OpenOptions {
            directory: true,
            rights: all_but_write,
            ..Default::default()
        };
        assert!(s.open(".", opts).is_ok(), "{name}");
        let opts = OpenOptions {
            directory: true,
            rights: rights::FD_READ | rights::FD_WRITE,
            ..Default::default()
        };
        assert_eq!(s.open(".", opts), Err(Errno::IsDir), "{name}");
    }
}

#[test]
fn rmdir_and_readlink_never_follow_a_final_symlink() {
    for (name, mut s) in Scratch::both() {
        let dir = s.dir;
        s.k.create_dir_at(dir, "d", &mut s.host).unwrap();
        s.k.create_dir_at(dir, "d/c", &mut s.host).unwrap();
        s.k.symlink_at("d", dir, "ld", &mut s.host).unwrap();
        s.k.symlink_at("nowhere", dir, "dang", &mut s.host).unwrap();
        let rmdir = |s: &mut Scratch, p: &str| s.k.remove_dir_at(dir, p, &mut s.host);
        assert_eq!(rmdir(&mut s, "ld/"), Err(Errno::NotDir), "{name}");
        assert_eq!(rmdir(&mut s, "ld"), Err(Errno::NotDir), "{name}");
        assert_eq!(rmdir(&mut s, "d/c/."), Err(Errno::Inval), "{name}");
        assert_eq!(rmdir(&mut s, "d/c/.."), Err(Errno::NotEmpty), "{name}");
        // A trailing slash follows the link: to nothing, to a directory, to a file.
        let readlink = |s: &mut Scratch, p: &str| s.k.readlink_at(dir, p, &mut s.host);
        assert_eq!(readlink(&mut s, "dang/"), Err(Errno::NoEnt), "{name}");
        assert_eq!(readlink(&mut s, "ld/"), Err(Errno::Inval), "{name}");
        let f = s.create("file", rights::FD_WRITE);
        s.k.close(f, &mut s.host).unwrap();
        s.k.symlink_at("file", dir, "lf", &mut s.host).unwrap();
        assert_eq!(readlink(&mut s, "lf/"), Err(Errno::NotDir), "{name}");
        assert_eq!(
            s.k.readlink_at(dir, "dang", &mut s.host).as_deref(),
            Ok("nowhere"),
            "{name}"
        );
        assert_eq!(rmdir(&mut s, "d/c/"), Ok(()), "{name}");
    }
}
