//! Checkpoint, resume, inspect and the migration harness, through the library and the binary.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{run, setup, tabi};
use tabi::Backend;
use tabi_tests::guests;
use tabi_tests::harness::{Setup, migrate_test};

/// Every guest of the kernel and instrument issues survives a checkpoint at every migration
/// point, alternating between the backends.
#[test]
fn every_guest_survives_migration_at_every_point() {
    let cases: &[(&str, &[&str])] = &[
        (guests::HELLO, &["a", "b c"]),
        (guests::HELLO, &["--exit", "3"]),
        // A trap: the runs are compared by its reason, not by the backtrace around it, which
        // names offsets in the instrumented module on one side only.
        (guests::HELLO, &["--trap"]),
        (guests::STD_FS, &[]),
        (guests::STD_FS, &["churn", "40"]),
        (guests::COMPUTE, &["all", "1"]),
        (guests::COMPUTE, &["deep", "3000"]),
        (guests::POSIX, &[]),
    ];
    for (wasm, args) in cases {
        let original = std::fs::read(wasm).unwrap();
        let report = migrate_test(&original, &setup(wasm, args), 1, &Backend::ALL).unwrap();
        assert!(
            report.divergences.is_empty(),
            "{wasm} {args:?}: {:?}",
            report.divergences
        );
        assert!(report.checkpoints >= 2, "{wasm} {args:?}: {report:?}");
    }
}

/// A guest that echoes its standard input three bytes at a time. `tabi migrate-test` gives the
/// uninterrupted run and the migrated run the same piped input, and the migrated run's parts
/// read on where the part before stopped (before, the first run took all of it and the
/// migrated run read nothing).
#[test]
fn migrate_test_gives_both_runs_the_same_standard_input() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 100))
        (i32.store (i32.const 4) (i32.const 3))
        (loop $more
          (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 200)))
          (if (i32.load (i32.const 200)) (then
            (i32.store (i32.const 8) (i32.const 100))
            (i32.store (i32.const 12) (i32.load (i32.const 200)))
            (drop (call $write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 300)))
            (br $more))))))"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.wasm");
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    let input = "migrating input, three bytes at a time\n";
    let with_input = |args: &[&str]| {
        let mut child = tabi()
            .args(args)
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let plain = with_input(&["run"]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout), input);
    let out = with_input(&["migrate-test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok:"), "{text}");
    // One read and one write per three bytes, and the read that sees the end.
    let checkpoints: usize = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(checkpoints >= 2 * input.len() / 3, "{text}");
}

/// A guest that writes its table (sets, grows, nulls entries and calls through them) survives
/// a checkpoint at every migration point through the snapshot file format, on both backends
/// in turn: the entries travel as function indices and come back as the same functions.
#[test]
fn a_guest_writing_its_table_survives_migration_at_every_point() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (table 2 funcref)
      (elem (i32.const 0) $digit)
      (elem declare func $twice)
      (type $t (func (param i32) (result i32)))
      (func $digit (param i32) (result i32) (i32.add (local.get 0) (i32.const 48)))
      (func $twice (param i32) (result i32) (i32.add (i32.mul (local.get 0) (i32.const 2)) (i32.const 48)))
      (func $print (param $v i32)
        (i32.store8 (i32.const 100) (local.get $v))
        (i32.store8 (i32.const 101) (i32.const 10))
        (i32.store (i32.const 0) (i32.const 100))
        (i32.store (i32.const 4) (i32.const 2))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
      (func (export "_start")
        (call $print (call_indirect (type $t) (i32.const 1) (i32.const 0)))
        (table.set (i32.const 1) (ref.func $twice))
        (drop (table.grow (ref.func $digit) (i32.const 3)))
        (call $print (call_indirect (type $t) (i32.const 2) (i32.const 1)))
        (table.set (i32.const 0) (ref.null func))
        (call $print (call_indirect (type $t) (i32.const 3) (i32.const 4)))
        (call $print (i32.add (table.size) (i32.const 48)))
        (call $print (call_indirect (type $t) (i32.const 4) (i32.const 1)))))"#;
    let wasm = wat::parse_str(wat).unwrap();
    let s = Setup {
        args: vec!["tables".into()],
        ..Setup::default()
    };
    for backends in [
        [Backend::Wasmtime, Backend::Wasmi],
        [Backend::Wasmi, Backend::Wasmtime],
    ] {
        let report = migrate_test(&wasm, &s, 1, &backends).unwrap();
        assert!(report.divergences.is_empty(), "{:?}", report.divergences);
        assert!(report.checkpoints >= 4, "{report:?}");
    }
}

/// The file-heavy guest on a granted host directory (each run on its own copy): open files,
/// offsets and the directory's contents cross every checkpoint.
#[test]
fn a_host_directory_guest_survives_migration_at_every_point() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("existing.txt"), b"here before the guest\n").unwrap();
    let original = std::fs::read(guests::STD_FS).unwrap();
    let s = Setup {
        args: vec![guests::STD_FS.into()],
        dirs: vec![(dir.path().to_path_buf(), "/sandbox".into())],
        deterministic: Some(3),
        ..Setup::default()
    };
    let report = migrate_test(&original, &s, 1, &Backend::ALL).unwrap();
    assert!(report.divergences.is_empty(), "{:?}", report.divergences);
    assert!(report.checkpoints > 50, "{report:?}");
    // The harness worked on copies: the granted directory is as it was.
    assert_eq!(
        tree(dir.path()),
        vec![(
            "existing.txt".to_string(),
            b"here before the guest\n".to_vec()
        )]
    );
}

/// A guest printing the host's clock differs from run to run: the harness must say so, at the
/// first checkpoint after the difference shows.
#[test]
fn the_harness_reports_where_a_run_diverges() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $i i32)
        (loop $l
          (drop (call $now (i32.const 0) (i64.const 1) (i32.const 64)))
          ;; print the 8 bytes of the time as they are
          (i32.store (i32.const 0) (i32.const 64))
          (i32.store (i32.const 4) (i32.const 8))
          (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 4))))))"#;
    let wasm = wat::parse_str(wat).unwrap();
    let s = Setup {
        args: vec!["clock".into()],
        ..Setup::default()
    };
    let report = migrate_test(&wasm, &s, 1, &Backend::ALL).unwrap();
    let first = report.divergences.first().expect("a divergence");
    assert!(first.point <= 2, "{report:?}");
    assert!(
        first.what.contains("prefix") || first.what.contains("stdout"),
        "{first:?}"
    );
}

fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
                out.push((rel + "/", Vec::new()));
            } else {
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A file-heavy guest on a real host directory: checkpointed at several points by the binary,
/// resumed on the other backend, it leaves the same output and the same files.
#[test]
fn checkpoint_and_resume_on_a_host_directory() {
    let plain_dir = tempfile::tempdir().unwrap();
    let spec = format!("{}::/sandbox", plain_dir.path().display());
    let plain = run(&["run", "--dir", &spec, guests::STD_FS]);
    assert_eq!(plain.status.code(), Some(0), "{plain:?}");
    for (n, first, second) in [
        (3, "wasmtime", "wasmi"),
        (40, "wasmi", "wasmtime"),
        (90, "wasmtime", "wasmtime"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let snap = tempfile::tempdir().unwrap();
        let file = snap.path().join("s.snap");
        let file = file.to_str().unwrap();
        let spec = format!("{}::/sandbox", dir.path().display());
        let n_text = n.to_string();
        let a = run(&[
            "run",
            "--backend",
            first,
            "--dir",
            &spec,
            "--checkpoint-after",
            &n_text,
            "--snapshot",
            file,
            guests::STD_FS,
        ]);
        assert_eq!(a.status.code(), Some(75), "{a:?}");
        let info = run(&["inspect", file]);
        assert!(info.status.success(), "{info:?}");
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(
            info.contains(&format!("after migration point {n}")),
            "{info}"
        );
        assert!(info.contains("host mounts"), "{info}");
        let b = run(&["resume", "--backend", second, "--dir", &spec, file]);
        assert_eq!(b.status.code(), Some(0), "{b:?}");
        assert_eq!(
            [a.stdout, b.stdout].concat(),
            plain.stdout,
            "checkpoint at {n}"
        );
        assert_eq!(
            tree(dir.path()),
            tree(plain_dir.path()),
            "checkpoint at {n}"
        );
    }
}

#[test]
fn resume_refuses_a_changed_or_missing_host_directory() {
    let dir = tempfile::tempdir().unwrap();
    let snap = tempfile::tempdir().unwrap();
    let file = snap.path().join("s.snap");
    let file = file.to_str().unwrap();
    let spec = format!("{}::/sandbox", dir.path().display());
    let a = run(&[
        "run",
        "--dir",
        &spec,
        "--checkpoint-after",
        "30",
        "--snapshot",
        file,
        guests::STD_FS,
    ]);
    assert_eq!(a.status.code(), Some(75), "{a:?}");

    // No grant: refused, naming the guest path.
    let b = run(&["resume", file]);
    assert_eq!(b.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&b.stderr).contains("--dir HOST::/sandbox"),
        "{b:?}"
    );

    // The directory changed since: refused, and left as it was.
    std::fs::write(dir.path().join("intruder.txt"), b"changed").unwrap();
    let before = tree(dir.path());
    let b = run(&["resume", "--dir", &spec, file]);
    assert_eq!(b.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&b.stderr).contains("changed since the checkpoint"),
        "{b:?}"
    );
    assert_eq!(tree(dir.path()), before);
}

#[test]
fn inspect_and_resume_refuse_bad_snapshots_with_the_reason() {
    let snap = tempfile::tempdir().unwrap();
    let path = snap.path().join("s.snap");
    let file = path.to_str().unwrap();
    let a = run(&[
        "run",
        "--mem-dir",
        "/sandbox",
        "--checkpoint-after",
        "5",
        "--snapshot",
        file,
        guests::STD_FS,
    ]);
    assert_eq!(a.status.code(), Some(75), "{a:?}");
    let good = std::fs::read(&path).unwrap();

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() / 2].to_vec(), "truncated"),
        (
            {
                let mut b = good.clone();
                b[good.len() / 2] ^= 0x40;
                b
            },
            "corrupt",
        ),
        (
            {
                let mut b = good.clone();
                b[0] = b'Z';
                b
            },
            "not a tabi snapshot",
        ),
        (Vec::new(), "truncated"),
    ];
    for (bytes, reason) in cases {
        std::fs::write(&path, &bytes).unwrap();
        for cmd in ["inspect", "resume"] {
            let out = run(&[cmd, file]);
            assert_eq!(out.status.code(), Some(1), "{cmd}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(reason), "{cmd}, expected `{reason}`: {err}");
        }
    }
}

#[test]
fn migrate_test_command_reports_success() {
    let out = run(&[
        "migrate-test",
        "--every",
        "3",
        "--mem-dir",
        "/sandbox",
        "--deterministic",
        guests::STD_FS,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok:"));
}

/// Real clocks, a checkpoint after every migration point and a fresh host for each part: the
/// C guest checks that a 1 ms sleep lasted at least 1 ms by its monotonic clock, also when it
/// moved right after sleeping.
#[test]
fn migrate_test_keeps_the_time_slept_across_moves() {
    let out = run(&["migrate-test", "--mem-dir", "/sandbox", guests::POSIX]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok:"));
}

/// Runs `tabi run --safepoints --checkpoint-on-signal [extra] --snapshot FILE COMPUTE args`
/// and sends it SIGUSR1 every `every_ms` until it ends. Returns its output and how many
/// signals were sent. The handler is installed before anything else, so an early signal is
/// only a request that waits for the guest.
fn run_signalled(extra: &[&str], file: &Path, args: &[&str], every_ms: u64) -> (Output, usize) {
    let mut child = tabi()
        .env(
            "TABI_CACHE_DIR",
            std::env::temp_dir().join("tabi-test-cache"),
        )
        .args(["run", "--safepoints", "--checkpoint-on-signal"])
        .args(extra)
        .arg("--snapshot")
        .arg(file)
        .arg(guests::COMPUTE)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Both pipes are read while the child runs: each checkpoint writes a line to stderr, and
    // a full pipe would block the child (and this loop would signal it for ever).
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).unwrap();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let mut signals = 0;
    let status = loop {
        std::thread::sleep(std::time::Duration::from_millis(every_ms));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let _ = Command::new("kill")
            .args(["-USR1", &child.id().to_string()])
            .status();
        signals += 1;
    };
    let output = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (output, signals)
}

/// SIGUSR1 checkpoints a guest that loops without calling anything (with safepoints), and the
/// snapshot resumes to the output of an uninterrupted run.
#[test]
fn sigusr1_writes_a_checkpoint_that_resumes() {
    let args = ["hash", "4000"];
    let plain = run(&[&["run", guests::COMPUTE][..], &args].concat());
    assert_eq!(plain.status.code(), Some(0));
    let snap = tempfile::tempdir().unwrap();
    let file = snap.path().join("s.snap");
    let (first, _) = run_signalled(&["--stop-after-checkpoint"], &file, &args, 100);
    assert_eq!(first.status.code(), Some(75), "{first:?}");
    let b = run(&["resume", file.to_str().unwrap()]);
    assert_eq!(b.status.code(), Some(0), "{b:?}");
    assert_eq!([first.stdout, b.stdout].concat(), plain.stdout);
}

/// SIGUSR1 checkpoints a guest asleep in `poll_oneoff` at once, not when its sleep ends; the
/// resumed guest sleeps the rest, and by its monotonic clock the whole sleep took as long as
/// it asked.
#[test]
fn a_sleeping_guest_is_checkpointed_at_once_and_sleeps_the_rest_after_resume() {
    // Sleeps 2 s on the monotonic clock, then exits with 0 if its clock moved on at least
    // that much, else 1.
    let wasm = wat::parse_str(
        r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $start i64)
    (drop (call $now (i32.const 1) (i64.const 1) (i32.const 0)))
    (local.set $start (i64.load (i32.const 0)))
    ;; One subscription at 64: a relative monotonic clock of 2 s.
    (i64.store (i32.const 64) (i64.const 7))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 2000000000))
    (drop (call $poll (i32.const 64) (i32.const 256) (i32.const 1) (i32.const 8)))
    (drop (call $now (i32.const 1) (i64.const 1) (i32.const 0)))
    (if (i64.lt_u (i64.sub (i64.load (i32.const 0)) (local.get $start)) (i64.const 2000000000))
      (then (call $exit (i32.const 1))))))"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("sleeper.wasm");
    std::fs::write(&module, &wasm).unwrap();
    let file = dir.path().join("s.snap");
    let started = std::time::Instant::now();
    let child = tabi()
        .env(
            "TABI_CACHE_DIR",
            std::env::temp_dir().join("tabi-test-cache"),
        )
        .args(["run", "--checkpoint-on-signal", "--stop-after-checkpoint"])
        .arg("--snapshot")
        .arg(&file)
        .arg(&module)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill")
        .args(["-USR1", &child.id().to_string()])
        .status()
        .unwrap();
    let first = child.wait_with_output().unwrap();
    let checkpointed_after = started.elapsed();
    assert_eq!(first.status.code(), Some(75), "{first:?}");
    assert!(
        checkpointed_after < std::time::Duration::from_millis(1500),
        "the checkpoint waited for the sleep: {checkpointed_after:?}"
    );
    let resumed = std::time::Instant::now();
    let b = run(&["resume", "--backend", "wasmi", file.to_str().unwrap()]);
    assert_eq!(b.status.code(), Some(0), "{b:?}");
    // The rest of the sleep: about 1.7 s.
    assert!(
        resumed.elapsed() >= std::time::Duration::from_millis(1000),
        "{:?}",
        resumed.elapsed()
    );
}

/// A guest that clears the data its module placed in memory before it pauses: resumed on a
/// fresh instance (which holds that data again once instantiated), the page the snapshot
/// leaves out as zero must read as zero, not as the module's data.
#[test]
fn data_the_guest_cleared_stays_cleared_after_resume() {
    let wasm = wat::parse_str(
        r#"(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 4)
  (data (i32.const 131072) "module data on a page of its own")
  (func (export "_start")
    (memory.fill (i32.const 131072) (i32.const 0) (i32.const 32))
    (drop (call $yield))
    (drop (call $yield))
    ;; Exits with 9 unless the page is still clear (a function that always ends in
    ;; `proc_exit` cannot be paused, so the exit is conditional).
    (if (i32.or (i32.load8_u (i32.const 131072)) (i32.load8_u (i32.const 131079)))
      (then (call $exit (i32.const 9))))))"#,
    )
    .unwrap();
    let s = Setup {
        args: vec!["cleared".into()],
        ..Setup::default()
    };
    let report = migrate_test(&wasm, &s, 1, &Backend::ALL).unwrap();
    assert!(report.divergences.is_empty(), "{:?}", report.divergences);
    assert!(report.checkpoints >= 2, "{report:?}");

    // Through the binary too, resuming on each backend.
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("cleared.wasm");
    std::fs::write(&module, &wasm).unwrap();
    let file = dir.path().join("s.snap");
    let (module, file) = (module.to_str().unwrap(), file.to_str().unwrap());
    for backend in ["wasmtime", "wasmi"] {
        let a = run(&[
            "run",
            "--backend",
            backend,
            "--checkpoint-after",
            "1",
            "--snapshot",
            file,
            module,
        ]);
        assert_eq!(a.status.code(), Some(75), "{a:?}");
        for resume_on in ["wasmtime", "wasmi"] {
            let b = run(&["resume", "--backend", resume_on, file]);
            assert_eq!(b.status.code(), Some(0), "{backend} -> {resume_on}: {b:?}");
        }
    }
}

/// Without `--stop-after-checkpoint`, a signal's checkpoint is written from the paused
/// instance and the guest goes on in it: its output is the uninterrupted run's, and the
/// snapshot resumes to the same end.
#[test]
fn a_signal_checkpoint_lets_the_guest_go_on_in_place() {
    let args = ["hash", "8000"];
    let plain = run(&[&["run", guests::COMPUTE][..], &args].concat());
    assert_eq!(plain.status.code(), Some(0));
    let snap = tempfile::tempdir().unwrap();
    let file = snap.path().join("s.snap");
    let (first, signals) = run_signalled(&[], &file, &args, 50);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(first.stdout, plain.stdout);
    if signals == 0 || !file.exists() {
        // The guest ended before any signal took effect: nothing more to check.
        return;
    }
    let written = String::from_utf8_lossy(&first.stderr)
        .matches("checkpoint at")
        .count();
    assert!(written >= 1, "{first:?}");
    let b = run(&["resume", file.to_str().unwrap()]);
    assert_eq!(b.status.code(), Some(0), "{b:?}");
    assert!(plain.stdout.ends_with(&b.stdout), "{b:?}");
}

/// The harness tests a library module through an export: the C reactor's `squares` is
/// checkpointed at each of its migration points and its result compared. An export whose
/// result reads the real-time clock diverges in its results unless the clocks are virtual.
#[test]
fn migrate_test_checks_an_invoked_export_and_its_results() {
    use tabi_libos::machine::Value;
    let reactor = std::fs::read(guests::REACTOR).unwrap();
    let call = ("squares", &[Value::I32(5)][..]);
    for every in [1, 2] {
        let report = tabi_tests::harness::migrate_test_with(
            &reactor,
            &Setup::default(),
            every,
            &Backend::ALL,
            Some(call),
        )
        .unwrap();
        assert!(report.divergences.is_empty(), "{:?}", report.divergences);
        // One fd_write a line: five points.
        assert_eq!(report.checkpoints, 5 / every, "every {every}");
    }
    let clock = wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "clock_time_get"
            (func $now (param i32 i64 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "now") (result i64)
            (drop (call $now (i32.const 0) (i64.const 1) (i32.const 0)))
            (drop (call $now (i32.const 0) (i64.const 1) (i32.const 8)))
            (i64.add (i64.load (i32.const 0)) (i64.load (i32.const 8)))))"#,
    )
    .unwrap();
    let call = ("now", &[][..]);
    let real = tabi_tests::harness::migrate_test_with(
        &clock,
        &Setup::default(),
        1,
        &Backend::ALL,
        Some(call),
    )
    .unwrap();
    assert_eq!(real.divergences.len(), 1, "{real:?}");
    assert!(
        real.divergences[0].what.starts_with("results differ"),
        "{real:?}"
    );
    let virtual_clocks = Setup {
        deterministic: Some(0),
        ..Setup::default()
    };
    let report = tabi_tests::harness::migrate_test_with(
        &clock,
        &virtual_clocks,
        1,
        &Backend::ALL,
        Some(call),
    )
    .unwrap();
    assert!(report.divergences.is_empty(), "{:?}", report.divergences);
    assert_eq!(report.checkpoints, 2);
}

/// The rewritten modules' cache is the user's own: a module planted where the cache used to be
/// (the shared temporary directory), whose manifest claims the guest's hash, is not run in
/// the guest's place. The same file in a cache directory the user names is used, so the
/// forgery itself is one the cache would accept.
#[test]
fn a_module_planted_in_the_temporary_directory_is_not_run() {
    let (genuine, planted) = (
        tabi_tests::module_saying("genuine"),
        tabi_tests::module_saying("planted"),
    );
    let (want, other) = (
        tabi_snapshot::sha256(&genuine),
        tabi_snapshot::sha256(&planted),
    );
    // The planted module's rewrite, its manifest changed to name the genuine module.
    let mut forged = tabi_instrument::instrument(&planted, &tabi::rewrite_options(false))
        .unwrap()
        .wasm;
    let at = forged.windows(32).position(|w| w == other).unwrap();
    forged[at..at + 32].copy_from_slice(&want);

    let root = tempfile::tempdir().unwrap();
    let (tmp, home) = (root.path().join("tmp"), root.path().join("home"));
    let shared = tmp.join("tabi-cache");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let name = format!(
        "{}-v{}.wasm",
        tabi_snapshot::hex(&want),
        tabi_instrument::FORMAT_VERSION
    );
    std::fs::write(shared.join(&name), &forged).unwrap();
    let module = root.path().join("genuine.wasm");
    std::fs::write(&module, &genuine).unwrap();

    let run = |cache: Option<&Path>| {
        let mut cmd = tabi_at_home(&home);
        cmd.env("TMPDIR", &tmp);
        if let Some(dir) = cache {
            cmd.env("TABI_CACHE_DIR", dir);
        }
        let out = cmd
            .args(["run", "--checkpoint-after", "100", "--snapshot"])
            .arg(root.path().join("never.snap"))
            .arg(&module)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(None), "genuine\n");
    // The rewrite went to the user's cache directory, which only its owner can read.
    let own = home.join(".cache").join("tabi");
    assert!(own.join(&name).exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&own).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    assert_eq!(run(Some(&shared)), "planted\n");
}

/// `tabi` with `home` as its user's home and none of the cache settings of the environment it
/// runs in: its caches go under `home/.cache/tabi` unless the test sets otherwise.
fn tabi_at_home(home: &Path) -> Command {
    let mut cmd = tabi();
    cmd.env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("TABI_CACHE_DIR")
        .env_remove("TABI_CACHE");
    cmd
}

/// wasmtime's compiled code is kept in the user's cache directory, beside the rewritten
/// modules; a second start adds no second copy, and `TABI_CACHE=off` keeps nothing. (That the
/// second start is faster is measured, not tested: see the README.)
#[test]
fn compiled_code_is_kept_in_the_users_cache() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |cache: Option<&str>| {
        let mut cmd = tabi_at_home(&home);
        if let Some(setting) = cache {
            cmd.env("TABI_CACHE", setting);
        }
        let out = cmd
            .args(["run", "--deterministic", guests::HELLO, "a"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        out.stdout
    };
    let files = |dir: &Path| -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    // wasmtime's cache worker writes usage statistics on a thread of its own
                    // (`….stats`, and `….wip-atomic-write-stats` while it writes one): they
                    // come and go whenever it gets to them, so only compiled code counts.
                    let name = p.to_string_lossy();
                    if !name.contains(".stats") && !name.contains("wip-atomic-write") {
                        found.push(p);
                    }
                }
            }
        }
        found
    };
    let compiled = home.join(".cache").join("tabi").join("compiled");
    let first = run(None);
    let kept = files(&compiled.join("modules"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(run(None), first);
    assert_eq!(files(&compiled.join("modules")), kept);
    // `TABI_CACHE=off` keeps nothing.
    std::fs::remove_dir_all(home.join(".cache")).unwrap();
    assert_eq!(run(Some("off")), first);
    assert!(!home.join(".cache").exists());
}
