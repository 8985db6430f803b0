//! The `tabi` binary: exit statuses pass through, and bad input gets a clear one-line error.

use std::process::Command;
use tabi_tests::guests;

fn tabi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabi"))
}

#[test]
fn exit_status_passes_through_on_both_backends() {
    for backend in ["wasmtime", "wasmi"] {
        let out = tabi()
            .args(["run", "--backend", backend, guests::HELLO, "--exit", "42"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(42), "{backend}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("hello from a WASI guest"));
    }
}

#[test]
fn a_trap_is_reported_with_status_134() {
    for backend in ["wasmtime", "wasmi"] {
        let out = tabi()
            .args(["run", "--backend", backend, guests::HELLO, "--trap"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(134), "{backend}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("tabi: guest trapped"), "{backend}: {err}");
    }
}

#[test]
fn missing_module_is_a_clear_error() {
    let out = tabi()
        .args(["run", "/no/such/module.wasm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("tabi: error: cannot read module `/no/such/module.wasm`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn invalid_module_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\x99garbage").unwrap();
    for backend in ["wasmtime", "wasmi"] {
        let out = tabi()
            .args(["run", "--backend", backend])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{backend}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid module"), "{backend}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{backend}: {err}");
    }
}

/// A component (what `wasm32-wasip2` builds are) is named as one, on each backend, when
/// checkpoints are asked for (the rewrite) and by `tabi instrument`.
#[test]
fn a_component_is_named_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("component.wasm");
    // The smallest component: the header alone.
    std::fs::write(&component, b"\0asm\x0d\0\x01\0").unwrap();
    let snap = dir.path().join("s.snap");
    let runs: [Vec<std::ffi::OsString>; 4] = [
        vec!["run".into(), "--backend".into(), "wasmtime".into()],
        vec!["run".into(), "--backend".into(), "wasmi".into()],
        vec![
            "run".into(),
            "--checkpoint-after".into(),
            "1".into(),
            "--snapshot".into(),
            snap.into(),
        ],
        vec![
            "instrument".into(),
            "-o".into(),
            dir.path().join("o.wasm").into(),
        ],
    ];
    for args in runs {
        let out = tabi().args(&args).arg(&component).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("this is a WebAssembly component"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn missing_host_directory_is_a_clear_error() {
    for flag in ["--dir", "--copy-dir"] {
        let out = tabi()
            .args(["run", flag, "/no/such/dir::/sandbox", guests::HELLO])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("/no/such/dir"), "{flag}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{flag}: {err}");
    }
}

#[test]
fn deterministic_runs_print_the_same_bytes_on_both_engines() {
    let run = |backend: &str| {
        let dir = tempfile::tempdir().unwrap();
        let spec = format!("{}::/sandbox", dir.path().display());
        tabi()
            .args([
                "run",
                "--deterministic",
                "--seed",
                "5",
                "--backend",
                backend,
                "--copy-dir",
                &spec,
            ])
            .args(["--env", "TABI_TEST=yes"])
            .args([guests::P1_CALLS, "alpha", "beta gamma"])
            .output()
            .unwrap()
    };
    let a = run("wasmtime");
    let b = run("wasmi");
    assert_eq!(
        a.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.status.code(), b.status.code());
}

#[test]
fn dir_mounts_write_to_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{}::/sandbox", dir.path().display());
    let out = tabi()
        .args(["run", "--dir", &spec, guests::HELLO])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(dir.path().join("greeting.txt").exists());
}

#[test]
fn instrument_writes_a_module_that_runs_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("hello.tabi.wasm");
    let out = tabi()
        .args(["instrument", guests::HELLO, "-o"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("instrumented"));
    let bytes = std::fs::read(&out_path).unwrap();
    assert!(
        tabi_instrument::Manifest::from_module(&bytes)
            .unwrap()
            .is_some()
    );
    for backend in ["wasmtime", "wasmi"] {
        let run = tabi()
            .args(["run", "--backend", backend])
            .arg(&out_path)
            .args(["--exit", "7"])
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(7), "{backend}");
        assert!(String::from_utf8_lossy(&run.stdout).contains("hello from a WASI guest"));
    }
    // Bad input: a clear error, status 1.
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\x0a\xff").unwrap();
    let out = tabi()
        .args(["instrument"])
        .arg(&bad)
        .arg("-o")
        .arg(dir.path().join("x.wasm"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tabi: error: cannot instrument"));
}

/// `--invoke` calls a library module's export with typed arguments and prints its results;
/// a checkpoint inside the export resumes on the other backend, which finishes the call and
/// prints the results, and the two parts print what the plain call does.
#[test]
fn invoke_calls_an_export_and_a_checkpoint_inside_it_resumes() {
    let mut want = String::new();
    let mut sum = 0i64;
    for i in 1..=4i64 {
        sum += i * i;
        want += &format!("square {i} -> {sum}\n");
    }
    want += &format!("{sum}\n");
    for backend in ["wasmtime", "wasmi"] {
        let out = tabi()
            .args(["run", "--backend", backend, "--invoke", "squares"])
            .args([guests::REACTOR, "4"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{backend}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{backend}");
    }
    // A float parameter and result; a fresh instance's journal is empty.
    let out = tabi()
        .args(["run", "--invoke", "replay", guests::REACTOR, "2.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    let dir = tempfile::tempdir().unwrap();
    for (after, (first, then)) in (1..=4).zip(
        [("wasmtime", "wasmi"), ("wasmi", "wasmtime")]
            .iter()
            .cycle(),
    ) {
        let snap = dir.path().join(format!("s{after}.snap"));
        let part1 = tabi()
            .args([
                "run",
                "--backend",
                first,
                "--invoke",
                "squares",
                "--checkpoint-after",
            ])
            .arg(after.to_string())
            .arg("--snapshot")
            .arg(&snap)
            .args([guests::REACTOR, "4"])
            .output()
            .unwrap();
        assert_eq!(part1.status.code(), Some(75), "after {after}");
        let part2 = tabi()
            .args(["resume", "--backend", then])
            .arg(&snap)
            .output()
            .unwrap();
        assert_eq!(part2.status.code(), Some(0), "after {after}");
        let both = [part1.stdout, part2.stdout].concat();
        assert_eq!(String::from_utf8_lossy(&both), want, "after {after}");
    }
}

/// What `--invoke` cannot call, or call with the arguments given, is a one-line error.
#[test]
fn invoke_refuses_what_it_cannot_call() {
    for (export, args, says) in [
        ("squares", &[][..], "takes 1 argument (i32), not 0"),
        ("squares", &["x"][..], "`x` is not an i32"),
        ("squares", &["4294967296"][..], "is not an i32"),
        ("nope", &[][..], "exports no function `nope`"),
        ("memory", &[][..], "`memory` is not a function"),
    ] {
        let out = tabi()
            .args(["run", "--invoke", export, guests::REACTOR])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{export} {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{export} {args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{export} {args:?}: {err}"
        );
    }
}

/// Under `--invoke` the start function runs first, then `_initialize`, then the export; an
/// invoked `_initialize` runs once.
#[test]
fn invoke_runs_the_start_function_and_initialize_first() {
    // `tabi run` reads the text format as wasmtime does.
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib.wat");
    std::fs::write(&lib, tabi_tests::INITIALIZED_LIBRARY).unwrap();
    // Without checkpoints the module runs as it is; with them (a snapshot file to write if
    // the guest asks for one), its rewrite runs, where the start function is an export.
    let snapshot = dir.path().join("never.snap");
    let rewritten = ["--snapshot".as_ref(), snapshot.as_os_str()];
    for (export, args, want) in [
        ("count", &["14"][..], "start\ninit\ncall\n101\n42\n"),
        ("_initialize", &[][..], "start\ninit\n"),
    ] {
        for backend in ["wasmtime", "wasmi"] {
            for form in [&[][..], &rewritten[..]] {
                let out = tabi()
                    .args(["run", "--backend", backend, "--invoke", export])
                    .args(form)
                    .arg(&lib)
                    .args(args)
                    .output()
                    .unwrap();
                let what = format!("{export} on {backend} {form:?}");
                assert_eq!(out.status.code(), Some(0), "{what}");
                assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{what}");
            }
        }
    }
    assert!(!snapshot.exists());
}

/// Without checkpoints `--invoke` calls the module as it is, so a module the rewrite refuses
/// (here a migration point in a table) can still be called; asking for checkpoints gives the
/// rewrite's reason.
#[test]
fn invoke_without_checkpoints_calls_the_module_as_it_is() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (type $write (func (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "via a table\n")
      (table 1 funcref)
      (elem (i32.const 0) $fd_write)
      (func (export "next") (param i32) (result i32)
        (i32.store (i32.const 0) (i32.const 16))
        (i32.store (i32.const 4) (i32.const 12))
        (drop (call_indirect (type $write)
          (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8) (i32.const 0)))
        (i32.add (local.get 0) (i32.const 1))))"#;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("table.wasm");
    std::fs::write(&lib, wat::parse_str(wat).unwrap()).unwrap();
    for backend in ["wasmtime", "wasmi"] {
        let out = tabi()
            .args(["run", "--backend", backend, "--invoke", "next"])
            .arg(&lib)
            .arg("41")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{backend}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "via a table\n42\n",
            "{backend}"
        );
    }
    let out = tabi()
        .args([
            "run",
            "--invoke",
            "next",
            "--checkpoint-after",
            "1",
            "--snapshot",
        ])
        .arg(dir.path().join("never.snap"))
        .arg(&lib)
        .arg("41")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("used as a function value"), "{err}");
    assert!(out.stdout.is_empty());
}

/// A module in the text format runs; text that does not parse, and bytes that are neither
/// format, are errors of one line.
#[test]
fn text_modules_run_and_other_files_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("exit.wat");
    std::fs::write(
        &good,
        r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (func (export "_start") (call $exit (i32.const 7))))"#,
    )
    .unwrap();
    let broken = dir.path().join("broken.wat");
    std::fs::write(&broken, "(module\n  (func (export \"_start\")\n").unwrap();
    let noise = dir.path().join("noise.wasm");
    std::fs::write(&noise, [0xff_u8, 0xfe, 0x00, 0x13, 0x37, 0x80]).unwrap();
    for backend in ["wasmtime", "wasmi"] {
        let run = |path: &std::path::Path| {
            tabi()
                .args(["run", "--backend", backend])
                .arg(path)
                .output()
                .unwrap()
        };
        assert_eq!(run(&good).status.code(), Some(7), "{backend}");
        for (path, want) in [
            (&broken, "cannot read WebAssembly text"),
            (&noise, "lacks the `\\0asm` header"),
        ] {
            let out = run(path);
            assert_eq!(out.status.code(), Some(1), "{backend} {path:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("invalid module") && err.contains(want),
                "{err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
    }
    let err = tabi().args(["run"]).arg(&broken).output().unwrap().stderr;
    let err = String::from_utf8_lossy(&err);
    assert!(err.contains("broken.wat:3:"), "{err}");
}

/// `tabi migrate-test --invoke` checkpoints inside the export and compares its results.
#[test]
fn migrate_test_invokes_an_export() {
    let out = tabi()
        .args(["migrate-test", "--every", "1", "--invoke", "squares"])
        .args([guests::REACTOR, "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("migrate-test: 3 checkpoints"), "{text}");
    assert!(
        text.contains("ok: output, exit status, results and files match"),
        "{text}"
    );
    let out = tabi()
        .args(["migrate-test", "--invoke", "squares", guests::REACTOR])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("takes 1 argument (i32), not 0"), "{err}");
}
