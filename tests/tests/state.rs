//! Kernel state is plain data: it round-trips through postcard at every point of a guest's
//! life, and a decoded kernel carries on exactly where the original was.

use tabi_libos::abi::rights;
use tabi_libos::host::{StdHost, Stdio};
use tabi_libos::{Kernel, OpenOptions, decode_state, encode_state};
use tabi_tests::{Backend, Spec, guests, run_tabi};

/// A host with quiet output that grants `dir` as mount 0.
fn granting(dir: &std::path::Path) -> StdHost {
    let mut host = StdHost::new();
    host.stdout = Stdio::Null;
    assert_eq!(host.fs.grant(dir).unwrap(), 0);
    host
}

fn roundtrip(k: &Kernel) -> Kernel {
    let bytes = encode_state(k).unwrap();
    let back = decode_state(&bytes).unwrap();
    assert_eq!(&back, k);
    back
}

#[test]
fn kernel_after_each_guest_roundtrips() {
    for spec in [
        Spec::new(guests::STD_FS),
        Spec::new(guests::P1_CALLS)
            .args(&["alpha", "beta gamma"])
            .env("TABI_TEST", "yes"),
        Spec::new(guests::HELLO).args(&["x"]),
    ] {
        for backend in Backend::ALL {
            let (_, kernel) = run_tabi(backend, &spec);
            roundtrip(&kernel);
        }
    }
}

#[test]
fn decoded_kernel_continues_with_open_files_and_offsets() {
    let mut host = StdHost::new();
    host.stdout = Stdio::Null;
    let mut k = Kernel::new();
    k.set_deterministic(1);
    let (dir, _) = k.mount_memory("/sandbox", 0).unwrap();
    let opts = OpenOptions {
        create: true,
        rights: rights::FILE,
        ..Default::default()
    };
    let fd = k.open_at(dir, "log.txt", opts, &mut host).unwrap();
    let mut states = Vec::new();
    for i in 0..50u32 {
        k.write(fd, format!("line {i}\n").as_bytes(), None, &mut host)
            .unwrap();
        if i % 7 == 0 {
            k.create_dir_at(dir, &format!("d{i}"), &mut host).unwrap();
        }
        if i % 11 == 0 {
            k.rename_at(dir, "log.txt", dir, "log2.txt", &mut host)
                .unwrap();
            k.rename_at(dir, "log2.txt", dir, "log.txt", &mut host)
                .unwrap();
        }
        // Continue with the decoded copy from now on: it must be as good as the original.
        k = roundtrip(&k);
        states.push(encode_state(&k).unwrap().len());
    }
    let end = k
        .seek(fd, 0, tabi_libos::abi::whence::CUR, &mut host)
        .unwrap();
    k.seek(fd, 0, tabi_libos::abi::whence::SET, &mut host)
        .unwrap();
    let mut buf = vec![0u8; end as usize];
    assert_eq!(k.read(fd, &mut buf, None, &mut host).unwrap(), end as usize);
    let text = String::from_utf8(buf).unwrap();
    assert!(text.starts_with("line 0\nline 1\n") && text.ends_with("line 49\n"));
    assert!(
        states.windows(2).all(|w| w[0] <= w[1]),
        "state grows with the file"
    );
}

#[test]
fn idle_kernel_state_is_small() {
    let mut k = Kernel::new();
    k.set_args(["guest", "arg"]);
    k.set_env([("HOME", "/"), ("LANG", "C")]);
    k.mount_memory("/sandbox", 0).unwrap();
    let bytes = encode_state(&k).unwrap();
    assert!(
        bytes.len() < 64 * 1024,
        "idle kernel state is {} bytes",
        bytes.len()
    );
}

#[test]
fn truncated_or_corrupt_state_is_an_error_not_a_panic() {
    let mut k = Kernel::new();
    k.mount_memory("/sandbox", 0).unwrap();
    let bytes = encode_state(&k).unwrap();
    for cut in 0..bytes.len() {
        assert!(
            decode_state(&bytes[..cut]).is_err(),
            "a state cut at {cut} bytes decoded"
        );
    }
    // A flipped byte may still decode to some valid state; what matters is that decoding
    // returns instead of panicking or allocating without bound.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        let _ = decode_state(&b);
    }
}

/// Store data for a wasmtime run that swaps the kernel for its decoded copy before every call.
struct Checked {
    process: tabi_libos::Process,
    memory: Option<wasmtime::Memory>,
    roundtrips: usize,
}

fn checked_linker(engine: &wasmtime::Engine) -> wasmtime::Linker<Checked> {
    use tabi_libos::p1;
    let mut linker = wasmtime::Linker::new(engine);
    macro_rules! register {
        ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
            $(
                linker.func_wrap(
                    p1::MODULE,
                    stringify!($name),
                    |mut caller: wasmtime::Caller<'_, Checked>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                        let memory = caller.data().memory.expect("guest exports memory");
                        let (mem, data) = memory.data_and_store_mut(&mut caller);
                        data.process.kernel = roundtrip(&data.process.kernel);
                        data.roundtrips += 1;
                        let process = &mut data.process;
                        p1::$name(&mut process.kernel, &mut *process.host, mem, $($arg),*)
                            .map_err(|t| wasmtime::Error::msg(t.to_string()))
                    },
                )
                .unwrap();
            )*
        };
    }
    tabi_libos::for_each_function!(register);
    linker
        .func_wrap(
            p1::MODULE,
            "proc_exit",
            |code: i32| -> wasmtime::Result<()> {
                Err(wasmtime::Error::msg(format!("exit {code}")))
            },
        )
        .unwrap();
    linker
}

#[test]
fn kernel_roundtrips_before_every_host_call_of_a_guest() {
    let engine = wasmtime::Engine::default();
    let linker = checked_linker(&engine);
    for spec in [
        Spec::new(guests::STD_FS),
        Spec::new(guests::STD_FS).args(&["churn", "50"]),
        Spec::new(guests::POSIX)
            .args(&["one", "two"])
            .env("TABI_TEST", "yes"),
    ] {
        // The same guest, run plainly, is the expected output.
        let (plain, _) = run_tabi(Backend::Wasmtime, &spec);
        let module = wasmtime::Module::from_file(&engine, &spec.wasm).unwrap();
        let (process, out, _) = tabi_tests::process_for(&spec);
        let mut store = wasmtime::Store::new(
            &engine,
            Checked {
                process,
                memory: None,
                roundtrips: 0,
            },
        );
        let instance = linker.instantiate(&mut store, &module).unwrap();
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .unwrap();
        let result = start.call(&mut store, ());
        assert!(
            result.is_ok() || result.as_ref().unwrap_err().to_string().contains("exit 0"),
            "{}: {result:?}",
            spec.wasm
        );
        assert!(store.data().roundtrips > 20, "{}: too few calls", spec.wasm);
        assert_eq!(String::from_utf8_lossy(&out.lock().unwrap()), plain.stdout);
    }
}

#[test]
fn a_files_bytes_are_stored_once() {
    let mut host = StdHost::new();
    let mut k = Kernel::new();
    let (dir, _) = k.mount_memory("/sandbox", 0).unwrap();
    let opts = OpenOptions {
        create: true,
        rights: rights::FILE,
        ..Default::default()
    };
    let fd = k.open_at(dir, "big", opts, &mut host).unwrap();
    let data = vec![7u8; 256 * 1024];
    k.write(fd, &data, None, &mut host).unwrap();
    k.link_at(dir, "big", false, dir, "alias", &mut host)
        .unwrap();
    let again = k
        .open_at(
            dir,
            "alias",
            OpenOptions {
                create: false,
                ..opts
            },
            &mut host,
        )
        .unwrap();
    assert_ne!(fd, again);
    assert_eq!(k.fs().file_bytes(), data.len() as u64);
    let encoded = encode_state(&k).unwrap().len();
    assert!(
        encoded < data.len() + 4096,
        "state of {encoded} bytes holds the file more than once"
    );
}

/// A host whose monotonic clock reads what the test says; sleeping moves it on. A sleep is cut
/// short after `wakes_after` ns, as a checkpoint request does.
struct Clock {
    ns: u64,
    wakes_after: u64,
}

impl Clock {
    fn at(ns: u64) -> Clock {
        Clock {
            ns,
            wakes_after: u64::MAX,
        }
    }
}

impl tabi_libos::host::Host for Clock {
    fn wall_clock_ns(&mut self) -> u64 {
        0
    }
    fn monotonic_ns(&mut self) -> u64 {
        self.ns
    }
    fn random_bytes(&mut self, buf: &mut [u8]) -> Result<(), tabi_libos::Errno> {
        buf.fill(0);
        Ok(())
    }
    fn stdin_read(&mut self, _: &mut [u8]) -> Result<usize, tabi_libos::Errno> {
        Ok(0)
    }
    fn stdout_write(&mut self, _: &[u8]) -> Result<(), tabi_libos::Errno> {
        Ok(())
    }
    fn stderr_write(&mut self, _: &[u8]) -> Result<(), tabi_libos::Errno> {
        Ok(())
    }
    fn sleep_ns(&mut self, ns: u64) {
        self.ns += ns;
    }
    fn sleep_unless_woken_ns(&mut self, ns: u64) -> bool {
        self.ns += ns.min(self.wakes_after);
        ns <= self.wakes_after
    }
}

/// The guest's monotonic clock never goes back, though each host's clock has its own origin:
/// moved to a host whose clock reads less, it carries on from its last reading (the time it
/// spent checkpointed is not counted); on the first host it reads as the host's.
#[test]
fn the_monotonic_clock_carries_on_across_hosts() {
    let mut k = Kernel::new();
    let mut first = Clock::at(5_000);
    assert_eq!(k.monotonic_now(&mut first), 5_000);
    first.ns = 9_000;
    assert_eq!(k.monotonic_now(&mut first), 9_000);

    // A new process: its clock starts near zero.
    let mut k = roundtrip(&k);
    let mut second = Clock::at(100);
    assert_eq!(k.monotonic_now(&mut second), 9_000);
    second.ns = 400;
    assert_eq!(k.monotonic_now(&mut second), 9_300);
    k.sleep(1_000, &mut second);
    assert_eq!(k.monotonic_now(&mut second), 10_300);

    // A third host, whose clock is far ahead: time goes on (never back).
    let mut k = roundtrip(&k);
    let mut third = Clock::at(1_000_000);
    let t = k.monotonic_now(&mut third);
    assert!(t >= 10_300, "{t}");
    third.ns += 50;
    assert_eq!(k.monotonic_now(&mut third), t + 50);
}

/// Time the guest spent asleep, or running since it last read the clock, counts after a
/// move: a guest that read the clock, slept 5 ms and moved before reading it again sees at
/// least 5 ms pass.
#[test]
fn time_slept_or_run_before_a_pause_counts_after_the_move() {
    let mut k = Kernel::new();
    let mut first = Clock::at(1_000);
    let before = k.monotonic_now(&mut first);
    k.sleep(5_000_000, &mut first);
    let mut k = roundtrip(&k);
    let mut second = Clock::at(7);
    let after = k.monotonic_now(&mut second);
    assert!(after - before >= 5_000_000, "{before} -> {after}");

    // Running (no clock call) until the pause: the pause reads the clock for the guest.
    let mut third = Clock::at(0);
    let t0 = k.monotonic_now(&mut third);
    third.ns += 2_000_000;
    k.note_pause(&mut third);
    let mut k = roundtrip(&k);
    let t1 = k.monotonic_now(&mut Clock::at(3));
    assert!(t1 - t0 >= 2_000_000, "{t0} -> {t1}");
}

/// A sleep the host cuts short (a checkpoint was asked for) returns at once, and the rest of
/// it is slept before the guest's next call, on whichever host it resumes: by the guest's
/// clock the sleep lasted what it asked, and no host slept more than its share.
#[test]
fn a_sleep_cut_short_is_finished_before_the_next_call() {
    use tabi_libos::host::Host;
    let mut k = Kernel::new();
    let mut first = Clock {
        ns: 1_000,
        wakes_after: 300,
    };
    let start = k.monotonic_now(&mut first);
    k.sleep(1_000, &mut first);
    assert_eq!(
        first.ns, 1_300,
        "the first host slept only until it was woken"
    );

    // Resumed elsewhere: the next call first sleeps the 700 ns still owed.
    let mut k = roundtrip(&k);
    let mut second = Clock::at(50);
    let mut memory = vec![0u8; 16];
    let errno = tabi_libos::p1::clock_time_get(&mut k, &mut second, &mut memory, 1, 0, 0).unwrap();
    assert_eq!(errno, 0);
    let now = u64::from_le_bytes(memory[0..8].try_into().unwrap());
    assert_eq!(now, start + 1_000);
    assert_eq!(
        second.monotonic_ns(),
        750,
        "the second host slept the rest, no more"
    );

    // Nothing is owed any more.
    let errno = tabi_libos::p1::sched_yield(&mut k, &mut second, &mut memory).unwrap();
    assert_eq!(errno, 0);
    assert_eq!(second.monotonic_ns(), 750);

    // A sleep that is not cut short owes nothing.
    let mut third = Clock::at(0);
    k.sleep(500, &mut third);
    assert_eq!(third.ns, 500);
    tabi_libos::p1::sched_yield(&mut k, &mut third, &mut memory).unwrap();
    assert_eq!(third.ns, 500);
}

/// A host file the guest renamed (or whose directory it renamed) while it was open reopens
/// under its new name after a restore, and one it unlinked (or renamed another file over) while
/// open keeps its contents, in memory, since no name on the host reaches it any more.
#[test]
fn host_files_renamed_or_unlinked_while_open_survive_a_restore() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    std::fs::create_dir(tmp.path().join("e")).unwrap();
    std::fs::write(tmp.path().join("d/keep.txt"), b"kept").unwrap();
    std::fs::write(tmp.path().join("w.txt"), b"old contents").unwrap();
    std::fs::write(tmp.path().join("new.txt"), b"new contents").unwrap();
    let host_for = || granting(tmp.path());
    let mut host = host_for();
    let mut k = Kernel::new();
    let dir = k.mount_host("/h", 0).unwrap();
    let open = |k: &mut Kernel, host: &mut StdHost, path: &str| {
        let opts = OpenOptions {
            create: true,
            rights: rights::FILE,
            ..Default::default()
        };
        k.open_at(dir, path, opts, host).unwrap()
    };
    let scratch = open(&mut k, &mut host, "d/tmp.bin");
    let scratch2 = open(&mut k, &mut host, "d/./tmp.bin");
    k.write(scratch, b"scratch data", None, &mut host).unwrap();
    let moved = open(&mut k, &mut host, "d/other.txt");
    k.write(moved, b"moved", None, &mut host).unwrap();
    let kept = open(&mut k, &mut host, "d/keep.txt");
    let victim = open(&mut k, &mut host, "w.txt");
    let late = open(&mut k, &mut host, "late.txt");
    k.write(late, b"late", None, &mut host).unwrap();

    k.unlink_file_at(dir, "d/tmp.bin", &mut host).unwrap();
    k.rename_at(dir, "d/other.txt", dir, "e/moved.txt", &mut host)
        .unwrap();
    k.rename_at(dir, "d", dir, "d2", &mut host).unwrap();
    k.rename_at(dir, "new.txt", dir, "w.txt", &mut host)
        .unwrap();
    // The same file is read and written the same way before the restore.
    k.write(scratch, b"!", None, &mut host).unwrap();

    drop(host);
    let mut k = roundtrip(&k);
    let mut host = host_for();
    let whole = |k: &mut Kernel, fd: u32, host: &mut StdHost| {
        k.seek(fd, 0, tabi_libos::abi::whence::SET, host).unwrap();
        let mut buf = vec![0u8; 64];
        let n = k.read(fd, &mut buf, None, host).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    // Unlinked after the restore, before anything used it (so before its host handle was
    // reopened).
    k.unlink_file_at(dir, "late.txt", &mut host).unwrap();
    assert_eq!(whole(&mut k, late, &mut host), "late");
    assert_eq!(whole(&mut k, scratch, &mut host), "scratch data!");
    assert_eq!(whole(&mut k, scratch2, &mut host), "scratch data!");
    assert_eq!(whole(&mut k, moved, &mut host), "moved");
    assert_eq!(whole(&mut k, kept, &mut host), "kept");
    assert_eq!(whole(&mut k, victim, &mut host), "old contents");

    // Writes after the restore land where they belong: in the renamed host file, and nowhere
    // on the host for the unlinked one.
    k.write(moved, b" again", None, &mut host).unwrap();
    k.write(scratch, b"?", None, &mut host).unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("e/moved.txt")).unwrap(),
        b"moved again"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("w.txt")).unwrap(),
        b"new contents"
    );
    assert!(!tmp.path().join("d2/tmp.bin").exists());
    assert!(!tmp.path().join("d/tmp.bin").exists());
    assert_eq!(whole(&mut k, scratch2, &mut host), "scratch data!?");
    for fd in [scratch, scratch2, moved, kept, victim, late] {
        k.close(fd, &mut host).unwrap();
    }
    assert_eq!(
        k.fs().inode_count(),
        0,
        "the unlinked file is freed on close"
    );
}

/// A path through a symlink and `..` is recorded as the host resolved it: with `link` a link
/// to `deep/dir`, `link/../x` is `deep/x` on the host (the kernel used to record `x`, and after
/// a restore the same descriptor wrote a top-level `x`). The same holds for the bookkeeping of
/// a rename through such a path.
#[test]
fn a_path_through_a_symlink_and_dotdot_is_recorded_as_resolved() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("deep/dir")).unwrap();
    std::os::unix::fs::symlink("deep/dir", tmp.path().join("link")).unwrap();
    let mut host = granting(tmp.path());
    let mut k = Kernel::new();
    let dir = k.mount_host("/h", 0).unwrap();
    let opts = OpenOptions {
        create: true,
        rights: rights::FILE,
        ..Default::default()
    };
    let fd = k.open_at(dir, "link/../x", opts, &mut host).unwrap();
    k.write(fd, b"one", None, &mut host).unwrap();
    assert_eq!(std::fs::read(tmp.path().join("deep/x")).unwrap(), b"one");
    let other = k.open_at(dir, "link/../y", opts, &mut host).unwrap();
    k.rename_at(dir, "link/../y", dir, "link/z", &mut host)
        .unwrap();
    drop(host);

    let mut k = roundtrip(&k);
    let mut host = granting(tmp.path());
    k.write(fd, b" two", None, &mut host).unwrap();
    k.write(other, b"moved", None, &mut host).unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("deep/x")).unwrap(),
        b"one two"
    );
    assert!(!tmp.path().join("x").exists(), "a top-level x was written");
    assert_eq!(
        std::fs::read(tmp.path().join("deep/dir/z")).unwrap(),
        b"moved"
    );
}

/// Two more host objects that lose their path while open: a file unlinked under one name that
/// keeps another (it is known by that other name from then on), and a directory the guest
/// removes (it becomes an empty, removed in-memory directory). Both survive a restore on a new
/// host, where before the checkpoint was refused.
#[test]
fn a_file_with_another_link_and_a_removed_directory_survive_a_restore() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("sub")).unwrap();
    std::fs::write(tmp.path().join("sub/a"), b"linked").unwrap();
    let host_for = || granting(tmp.path());
    let mut host = host_for();
    let mut k = Kernel::new();
    let dir = k.mount_host("/h", 0).unwrap();
    k.link_at(dir, "sub/a", false, dir, "b", &mut host).unwrap();
    let opts = OpenOptions {
        rights: rights::FILE,
        ..Default::default()
    };
    let file = k.open_at(dir, "b", opts, &mut host).unwrap();
    k.unlink_file_at(dir, "b", &mut host).unwrap();
    k.create_dir_at(dir, "gone", &mut host).unwrap();
    let opts = OpenOptions {
        directory: true,
        rights: rights::DIRECTORY,
        ..Default::default()
    };
    let removed = k.open_at(dir, "gone", opts, &mut host).unwrap();
    k.remove_dir_at(dir, "gone", &mut host).unwrap();

    drop(host);
    let mut k = roundtrip(&k);
    let mut host = host_for();
    let mut buf = [0u8; 16];
    let n = k.read(file, &mut buf, Some(0), &mut host).unwrap();
    assert_eq!(&buf[..n], b"linked");
    k.write(file, b"LINKED", Some(0), &mut host).unwrap();
    assert_eq!(std::fs::read(tmp.path().join("sub/a")).unwrap(), b"LINKED");

    assert!(!tmp.path().join("gone").exists());
    let opts = OpenOptions {
        create: true,
        rights: rights::FILE,
        ..Default::default()
    };
    assert_eq!(
        k.open_at(removed, "new", opts, &mut host),
        Err(tabi_libos::Errno::NoEnt)
    );
    assert_eq!(k.stat(removed, &mut host).unwrap().nlink, 0);
    k.close(removed, &mut host).unwrap();
    k.close(file, &mut host).unwrap();
}
