//! Every guest gives byte-identical stdout, stderr and exit status on wasmtime and wasmi, and
//! the status each case expects. The guests assert their own results, so a wrong answer shows as
//! a non-zero status, not only as a difference between engines.

use tabi_tests::{Backend, Sandbox, Spec, guests, run_tabi};

/// (name, run, expected exit status; `None` = trap)
fn cases() -> Vec<(&'static str, Spec, Option<u32>)> {
    vec![
        (
            "hello",
            Spec::new(guests::HELLO).args(&["a", "b c"]).env("K", "v"),
            Some(0),
        ),
        (
            "hello exit 3",
            Spec::new(guests::HELLO).args(&["--exit", "3"]),
            Some(3),
        ),
        (
            "hello exit 125",
            Spec::new(guests::HELLO).args(&["--exit", "125"]),
            Some(125),
        ),
        (
            "hello trap",
            Spec::new(guests::HELLO).args(&["--trap"]),
            None,
        ),
        (
            "hello no sandbox",
            Spec::new(guests::HELLO).sandbox(Sandbox::None),
            Some(0),
        ),
        (
            "p1_calls",
            Spec::new(guests::P1_CALLS)
                .args(&["alpha", "beta gamma"])
                .env("TABI_TEST", "yes"),
            Some(0),
        ),
        ("std_fs", Spec::new(guests::STD_FS), Some(0)),
        (
            "std_fs churn",
            Spec::new(guests::STD_FS).args(&["churn", "300"]),
            Some(0),
        ),
        (
            "compute",
            Spec::new(guests::COMPUTE).args(&["all", "2"]),
            Some(0),
        ),
        (
            "posix (C)",
            Spec::new(guests::POSIX)
                .args(&["one", "two"])
                .env("TABI_TEST", "yes"),
            Some(0),
        ),
    ]
}

#[test]
fn every_guest_matches_across_engines() {
    for (name, spec, want) in cases() {
        let (a, _) = run_tabi(Backend::Wasmtime, &spec);
        let (b, _) = run_tabi(Backend::Wasmi, &spec);
        assert_eq!(a.code, want, "{name} on wasmtime: stderr:\n{}", a.stderr);
        assert_eq!(a, b, "{name}: wasmtime and wasmi differ");
        assert!(
            !a.stdout.is_empty() || want.is_none(),
            "{name} printed nothing"
        );
    }
}

#[test]
fn host_mount_gives_the_same_results_as_memory() {
    for (name, spec, want) in cases() {
        if spec.sandbox != Sandbox::Memory || name.contains("trap") {
            continue;
        }
        let (mem, _) = run_tabi(Backend::Wasmtime, &spec);
        for backend in Backend::ALL {
            let dir = tempfile::tempdir().unwrap();
            let host = spec
                .clone()
                .sandbox(Sandbox::Host(dir.path().to_path_buf()));
            let (out, _) = run_tabi(backend, &host);
            assert_eq!(
                out.code, want,
                "{name} on a host mount ({backend:?}): {}",
                out.stderr
            );
            // Inode numbers and timestamps come from the host; everything else must agree.
            if name != "p1_calls" {
                assert_eq!(
                    out.stdout, mem.stdout,
                    "{name}: host mount differs from memory"
                );
            }
        }
    }
}

#[test]
fn host_mount_writes_land_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(guests::HELLO).sandbox(Sandbox::Host(dir.path().to_path_buf()));
    let (out, _) = run_tabi(Backend::Wasmi, &spec);
    assert_eq!(out.code, Some(0));
    let text = std::fs::read_to_string(dir.path().join("greeting.txt")).unwrap();
    assert_eq!(text, "written inside the sandbox\n");
}

#[test]
fn host_mount_cannot_reach_outside() {
    // A symlink planted inside the granted directory that points outside it must not be
    // followed out, and `..` must not climb above it.
    let outer = tempfile::tempdir().unwrap();
    let inner = outer.path().join("granted");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(outer.path().join("secret.txt"), "secret").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), inner.join("abs-link")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("../secret.txt", inner.join("rel-link")).unwrap();
    let spec = Spec::new(guests::P1_CALLS)
        .args(&["alpha", "beta gamma"])
        .env("TABI_TEST", "yes");
    let (process, _, _) = tabi_tests::process_for(&spec.sandbox(Sandbox::Host(inner.clone())));
    let mut kernel = process.kernel;
    let mut host = process.host;
    let opts = tabi_libos::OpenOptions {
        follow: true,
        rights: tabi_libos::abi::rights::FD_READ,
        ..Default::default()
    };
    for path in [
        "../secret.txt",
        "abs-link",
        "rel-link",
        "/etc/passwd",
        "a/../../secret.txt",
    ] {
        let r = kernel.open_at(3, path, opts, &mut *host);
        assert!(r.is_err(), "{path} opened outside the sandbox");
    }
}

/// Runs `wat` with `_start` on both engines, on a thread with a 2 MiB stack; returns each
/// engine's standard output and exit.
fn run_small_stack(wat: &str, backends: &[Backend]) -> Vec<(String, tabi_libos::Exit)> {
    let wasm = wat::parse_str(wat).unwrap();
    backends
        .iter()
        .copied()
        .map(|backend| {
            let wasm = wasm.clone();
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    let spec = Spec::new("grow").sandbox(Sandbox::None);
                    let (process, out, _) = tabi_tests::process_for(&spec);
                    let f = backend.engine().run(&wasm, process).unwrap();
                    let out = String::from_utf8(out.lock().unwrap().clone()).unwrap();
                    (out, f.exit)
                })
                .unwrap()
                .join()
                .expect("the engine's thread survived")
        })
        .collect()
}

/// wasmi's handlers for `memory.grow` and `table.grow` each leave a host stack frame until the
/// guest returns; the wasmi adapter turns them into host calls. A guest growing hundreds of
/// thousands of times (by zero, past the maximum, and for real) runs on a 2 MiB thread on both
/// engines, and every result is what the instruction gives. Function indices move by the
/// helpers the rewrite imports, so calls through tables, `ref.func`, the start function and
/// exports are checked too.
#[test]
fn growing_in_a_loop_keeps_its_results_and_the_host_stack() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1 8)
      (table $t 1 10 funcref)
      (elem (i32.const 0) $seven)
      (elem declare funcref (ref.func $nine))
      (type $r (func (result i32)))
      (global $started (mut i32) (i32.const 0))
      (func $seven (result i32) (i32.const 7))
      (func $nine (result i32) (i32.const 9))
      (func $start (global.set $started (i32.const 1)))
      (start $start)
      (func $check (param i32 i32) (if (i32.ne (local.get 0) (local.get 1)) (then unreachable)))
      (func (export "_start") (local $i i32)
        (call $check (global.get $started) (i32.const 1))
        (loop $zero
          (call $check (memory.grow (i32.and (local.get $i) (i32.const 0))) (i32.const 1))
          (call $check (table.grow $t (ref.null func) (i32.and (local.get $i) (i32.const 0))) (i32.const 1))
          (call $check (memory.grow (i32.const 100)) (i32.const -1))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $zero (i32.lt_u (local.get $i) (i32.const 200000))))
        (call $check (memory.grow (i32.const 3)) (i32.const 1))
        (call $check (memory.size) (i32.const 4))
        (call $check (memory.grow (i32.const -1)) (i32.const -1))
        (i32.store (i32.const 200000) (i32.const 42))
        (call $check (i32.load (i32.const 200000)) (i32.const 42))
        (call $check (table.grow $t (ref.func $nine) (i32.const 2)) (i32.const 1))
        (call $check (table.size $t) (i32.const 3))
        (call $check (table.grow $t (ref.null func) (i32.const 20)) (i32.const -1))
        (call $check (call_indirect $t (type $r) (i32.const 0)) (i32.const 7))
        (call $check (call_indirect $t (type $r) (i32.const 2)) (i32.const 9))
        (i32.store (i32.const 0) (i32.const 16))
        (i32.store (i32.const 4) (i32.const 3))
        (i32.store (i32.const 16) (i32.const 0x0a6b6f))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    for (out, exit) in run_small_stack(wat, &Backend::ALL) {
        assert_eq!((out.as_str(), exit), ("ok\n", tabi_libos::Exit::Code(0)));
    }
    // This build of wasmtime has no GC support, which `externref` needs: wasmi alone.
    let externs = r#"(module
      (table $x 0 externref)
      (func (export "_start") (local $i i32)
        (loop $l
          (drop (table.grow $x (ref.null extern) (i32.and (local.get $i) (i32.const 0))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 200000))))
        (if (i32.ne (table.grow $x (ref.null extern) (i32.const 5)) (i32.const 0)) (then unreachable))
        (if (i32.ne (table.size $x) (i32.const 5)) (then unreachable))))"#;
    for (out, exit) in run_small_stack(externs, &[Backend::Wasmi]) {
        assert_eq!((out.as_str(), exit), ("", tabi_libos::Exit::Code(0)));
    }
    // A module with no imports and no exports section of its own but `_start`.
    let bare = r#"(module
      (memory 1)
      (func (export "_start") (local $i i32)
        (loop $l
          (drop (memory.grow (i32.and (local.get $i) (i32.const 0))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 200000))))
        (if (i32.ne (memory.grow (i32.const 1)) (i32.const 1)) (then unreachable))))"#;
    for (out, exit) in run_small_stack(bare, &Backend::ALL) {
        assert_eq!((out.as_str(), exit), ("", tabi_libos::Exit::Code(0)));
    }
    // A 64-bit memory and table, which grow by `i64` deltas (wasmi runs them with its
    // `memory64` feature; without helpers of their own, this aborted the process).
    let wide = r#"(module
      (memory i64 1 8)
      (table $t i64 1 10 funcref)
      (func (export "_start") (local $i i64)
        (loop $l
          (drop (memory.grow (i64.and (local.get $i) (i64.const 0))))
          (drop (table.grow $t (ref.null func) (i64.and (local.get $i) (i64.const 0))))
          (local.set $i (i64.add (local.get $i) (i64.const 1)))
          (br_if $l (i64.lt_u (local.get $i) (i64.const 200000))))
        (if (i64.ne (memory.grow (i64.const 2)) (i64.const 1)) (then unreachable))
        (if (i64.ne (memory.grow (i64.const 100)) (i64.const -1)) (then unreachable))
        (if (i64.ne (memory.size) (i64.const 3)) (then unreachable))
        (if (i64.ne (table.grow $t (ref.null func) (i64.const 4)) (i64.const 1)) (then unreachable))
        (if (i64.ne (table.grow $t (ref.null func) (i64.const 40)) (i64.const -1)) (then unreachable))
        (if (i64.ne (table.size $t) (i64.const 5)) (then unreachable))))"#;
    for (out, exit) in run_small_stack(wide, &Backend::ALL) {
        assert_eq!((out.as_str(), exit), ("", tabi_libos::Exit::Code(0)));
    }
}

/// A module's start function runs while the instance is made, before the adapters cache its
/// memory: its WASI calls must find the memory all the same (they got `EFAULT`, and the
/// start function's output was lost). Checked plainly on both engines, and instrumented with
/// a pause at every migration point, where the start function becomes an export the host
/// calls.
#[test]
fn a_start_function_can_call_wasi() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "start\0a")
      (data (i32.const 200) "main\0a")
      (global $calls (mut i32) (i32.const 0))
      (func $print (param i32 i32)
        (i32.store (i32.const 0) (local.get 0))
        (i32.store (i32.const 4) (local.get 1))
        ;; Traps if the write failed: the errno would otherwise be lost.
        (if (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
          (then unreachable)))
      (func $init
        (call $print (i32.const 100) (i32.const 6))
        (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
        (call $print (i32.const 100) (i32.const 6)))
      (start $init)
      (func (export "_start")
        (call $print (i32.const 200) (i32.const 5))
        (call $print (i32.const 200) (global.get $calls))))"#;
    for (out, exit) in run_small_stack(wat, &Backend::ALL) {
        assert_eq!(exit, tabi_libos::Exit::Code(0));
        // The last write is as long as the start function's count of calls: one byte.
        assert_eq!(out, "start\nstart\nmain\nm");
    }
    let wasm = wat::parse_str(wat).unwrap();
    let spec = Spec::new("start").sandbox(Sandbox::None);
    let points = tabi_tests::migrate::check_every(&spec, &wasm, 1).unwrap();
    assert!(points >= 4, "{points}");
}

/// A guest that exits, or traps, in its start function ends its run as it would in `_start`
/// (it was reported as a module that cannot be linked).
#[test]
fn exiting_or_trapping_in_the_start_function_ends_the_run() {
    let exits = r#"(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func $init (call $exit (i32.const 3)))
      (start $init)
      (func (export "_start") unreachable))"#;
    for (_, exit) in run_small_stack(exits, &Backend::ALL) {
        assert_eq!(exit, tabi_libos::Exit::Code(3));
    }
    let traps = r#"(module
      (memory (export "memory") 1)
      (func $init unreachable)
      (start $init)
      (func (export "_start")))"#;
    for (_, exit) in run_small_stack(traps, &Backend::ALL) {
        assert!(
            matches!(&exit, tabi_libos::Exit::Trap(m) if m.contains("unreachable")),
            "{exit:?}"
        );
    }
    // An import nothing defines is still a link error, not a run that ended.
    let wasm = wat::parse_str(
        r#"(module (import "env" "missing" (func)) (func (export "_start") (call 0)))"#,
    )
    .unwrap();
    for backend in Backend::ALL {
        let (process, _, _) = tabi_tests::process_for(&Spec::new("x").sandbox(Sandbox::None));
        assert!(matches!(
            backend.engine().run(&wasm, process),
            Err(tabi_libos::EngineError::Link(_))
        ));
    }
}

/// Both engines accept the same proposals: a module one of them refuses, the other refuses too,
/// so a guest that starts on either can resume on the other.
#[test]
fn both_engines_accept_the_same_proposals() {
    let module = |items: &str| {
        wat::parse_str(format!(
            r#"(module (memory (export "memory") 1) {items}
                 (func (export "_start") (drop (call $f))))"#
        ))
        .unwrap()
    };
    let accepted = [
        (
            "memory64",
            r#"(memory $m i64 1) (func $f (result i32) (i32.load $m (i64.const 8)))"#,
        ),
        (
            "tail calls",
            r#"(func $f (result i32) (return_call $g (i32.const 3)))
               (func $g (param i32) (result i32) (local.get 0))"#,
        ),
        (
            "relaxed SIMD",
            r#"(func $f (result i32) (i32x4.extract_lane 0 (i32x4.relaxed_laneselect
                 (v128.const i32x4 1 2 3 4) (v128.const i32x4 5 6 7 8) (v128.const i32x4 -1 0 -1 0))))"#,
        ),
        (
            "extended constants",
            r#"(global $g i32 (i32.add (i32.const 40) (i32.const 2))) (func $f (result i32) (global.get $g))"#,
        ),
        (
            "reference types",
            r#"(table $x 2 externref) (table $g 1 funcref) (elem (table $g) (i32.const 0) func $f)
               (func $f (result i32)
                 (table.set $x (i32.const 1) (ref.null extern))
                 (i32.add (table.size $x) (ref.is_null (table.get $g (i32.const 0)))))"#,
        ),
        (
            "multiple memories",
            r#"(memory $b 1) (func $f (result i32) (i32.load $b (i32.const 0)))"#,
        ),
    ];
    let refused = [
        (
            "typed function references",
            r#"(type $t (func (result i32))) (elem declare func $k) (func $k (type $t) (i32.const 1))
               (func $f (result i32) (call_ref $t (ref.func $k)))"#,
        ),
        (
            "GC",
            r#"(type $s (struct (field i32))) (func $f (result i32) (struct.get $s 0 (struct.new $s (i32.const 1))))"#,
        ),
        (
            "exceptions",
            r#"(tag $e) (func $f (result i32) (block $h (try_table (catch_all $h) (throw $e))) (i32.const 0))"#,
        ),
        (
            "threads",
            r#"(memory $s 1 1 shared) (func $f (result i32) (i32.atomic.load $s (i32.const 0)))"#,
        ),
        (
            "wide arithmetic",
            r#"(func $f (result i32) (drop (drop (i64.add128 (i64.const 1) (i64.const 2) (i64.const 3) (i64.const 4)))) (i32.const 0))"#,
        ),
        (
            "custom page sizes",
            r#"(memory $p 1 (pagesize 1)) (func $f (result i32) (i32.const 0))"#,
        ),
    ];
    let spec = Spec::new("wat").sandbox(Sandbox::None);
    for (expect, cases) in [(true, &accepted[..]), (false, &refused[..])] {
        for (what, items) in cases {
            let wasm = module(items);
            for backend in Backend::ALL {
                let (process, _, _) = tabi_tests::process_for(&spec);
                let got = backend.engine().run(&wasm, process);
                match (expect, got) {
                    (true, Ok(f)) => assert_eq!(f.exit, tabi_libos::Exit::Code(0), "{what}"),
                    (false, Err(tabi_libos::engine::EngineError::InvalidModule(_))) => {}
                    (_, Ok(f)) => panic!("{what} ran on {backend:?}: {:?}", f.exit),
                    (_, Err(e)) => panic!("{what} on {backend:?}: {e:?}"),
                }
            }
        }
    }
}

/// A host whose standard output panics (a bug in an embedder's `Host`, or in tabi): on either
/// engine the guest stops with a trap that names the import, and the host process goes on.
/// On wasmi the panic used to unwind into the interpreter and abort the whole process.
#[test]
fn a_panic_in_the_host_stops_the_guest_not_the_process() {
    use tabi_libos::errno::Errno;

    struct Panicking;
    impl tabi_libos::Host for Panicking {
        fn wall_clock_ns(&mut self) -> u64 {
            0
        }
        fn monotonic_ns(&mut self) -> u64 {
            0
        }
        fn random_bytes(&mut self, _: &mut [u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn stdin_read(&mut self, _: &mut [u8]) -> Result<usize, Errno> {
            Ok(0)
        }
        fn stdout_write(&mut self, _: &[u8]) -> Result<(), Errno> {
            panic!("the embedder's stdout broke")
        }
        fn stderr_write(&mut self, _: &[u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn sleep_ns(&mut self, _: u64) {}
    }

    let wasm = wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 100) "hi\0a")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 100))
            (i32.store (i32.const 4) (i32.const 3))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .unwrap();
    for backend in Backend::ALL {
        let process = tabi_libos::Process::new(tabi_libos::Kernel::new(), Panicking);
        let finished = backend.engine().run(&wasm, process).unwrap();
        match finished.exit {
            tabi_libos::Exit::Trap(why) => {
                assert!(why.contains("fd_write"), "{backend:?}: {why}");
                assert!(why.contains("stdout broke"), "{backend:?}: {why}");
            }
            other => panic!("{backend:?}: {other:?}"),
        }
    }
}
