//! Differential tests against wasmtime-wasi, the reference preview-1 implementation: the same
//! guests, with the sandbox on a temporary host directory, give the same results as tabi on
//! both engines. Differences are either fixed or listed in `KNOWN_DIFFERENCES` with a reason.

use tabi_tests::{Backend, Spec, guests, run_reference, run_tabi};

/// (guest, output key, reason): output lines `key: ...` that may differ from wasmtime-wasi.
///
/// One difference is not in this table because no run can show both sides: a wild pointer or
/// length gets `EFAULT` from tabi, while wasmtime-wasi traps. The differential run of
/// `p1_calls` passes `nowild` to skip those checks; `engines.rs` runs them on tabi.
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "p1_calls",
        "fd_fdstat_set_rights drop",
        "wasmtime-wasi no longer implements fd_fdstat_set_rights (ENOTSUP); tabi keeps preview 1's \
         rights model, so rights can be dropped and are enforced",
    ),
    (
        "p1_calls",
        "write without right",
        "follows from fd_fdstat_set_rights above",
    ),
    (
        "p1_calls",
        "fd_fdstat_set_rights raise",
        "follows from fd_fdstat_set_rights above",
    ),
    (
        "p1_calls",
        "fd_allocate",
        "wasmtime-wasi answers fd_allocate with ENOTSUP; tabi grows the file as POSIX says",
    ),
    (
        "p1_calls",
        "size after allocate",
        "follows from fd_allocate above",
    ),
    (
        "p1_calls",
        "append writes at end",
        "the file size differs since fd_allocate",
    ),
    (
        "p1_calls",
        "fd_readdir on file",
        "POSIX (getdents, fdopendir) says ENOTDIR; wasmtime-wasi answers EBADF",
    ),
    (
        "p1_calls",
        "fd_read on dir",
        "POSIX read(2) on a directory says EISDIR; wasmtime-wasi answers EBADF",
    ),
    (
        "p1_calls",
        "proc_raise 0",
        "tabi implements proc_raise (signal 0 is a no-op, fatal signals end the guest with \
         128 + signal); wasmtime-wasi answers ENOTSUP",
    ),
    (
        "p1_calls",
        "failed checks",
        "counts the rights and trailing-slash checks above on wasmtime-wasi",
    ),
    (
        "p1_calls",
        "rmdir trailing slash",
        "wasmtime-wasi answers `rmdir(\"d/\")` with EINVAL (cap-std takes the last component \
         for `.`); POSIX removes `d`, and so does tabi on both file systems",
    ),
    (
        "p1_calls",
        "rmdir trailing slash gone",
        "follows from rmdir trailing slash above",
    ),
    (
        "p1_calls",
        "rmdir trailing slashes",
        "follows from rmdir trailing slash above",
    ),
    (
        "posix",
        "posix_fallocate",
        "wasmtime-wasi answers fd_allocate with ENOTSUP; tabi grows the file as POSIX says",
    ),
    (
        "posix",
        "size after fallocate",
        "follows from posix_fallocate above",
    ),
    ("posix", "stat size", "follows from posix_fallocate above"),
    (
        "posix",
        "failed checks",
        "counts the fd_allocate checks above on wasmtime-wasi",
    ),
];

fn compare(guest: &str, spec: &Spec) {
    let reference = run_reference(spec);
    let known: Vec<&str> = KNOWN_DIFFERENCES
        .iter()
        .filter(|(g, _, _)| *g == guest)
        .map(|(_, key, _)| *key)
        .collect();
    let significant = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| !known.iter().any(|k| l.starts_with(&format!("{k}:"))))
            .map(String::from)
            .collect()
    };
    for backend in Backend::ALL {
        let (ours, _) = run_tabi(backend, spec);
        assert_eq!(
            significant(&ours.stdout),
            significant(&reference.stdout),
            "{guest} on {backend:?}: stdout differs from wasmtime-wasi"
        );
        if known.is_empty() {
            assert_eq!(
                ours.code, reference.code,
                "{guest} on {backend:?}: exit status"
            );
            assert_eq!(
                ours.stderr, reference.stderr,
                "{guest} on {backend:?}: stderr"
            );
        } else {
            assert_eq!(
                ours.code,
                Some(0),
                "{guest} on {backend:?}: {}",
                ours.stderr
            );
        }
    }
}

#[test]
fn p1_calls_matches_wasmtime_wasi() {
    compare(
        "p1_calls",
        &Spec::new(guests::P1_CALLS)
            .args(&["alpha", "beta gamma", "nowild"])
            .env("TABI_TEST", "yes"),
    );
}

#[test]
fn posix_matches_wasmtime_wasi() {
    compare(
        "posix",
        &Spec::new(guests::POSIX)
            .args(&["one", "two"])
            .env("TABI_TEST", "yes"),
    );
}

#[test]
fn std_fs_matches_wasmtime_wasi() {
    compare("std_fs", &Spec::new(guests::STD_FS));
    compare("std_fs", &Spec::new(guests::STD_FS).args(&["churn", "200"]));
}

#[test]
fn hello_and_compute_match_wasmtime_wasi() {
    compare(
        "hello",
        &Spec::new(guests::HELLO)
            .args(&["x", "--exit", "9"])
            .env("A", "1"),
    );
    compare("compute", &Spec::new(guests::COMPUTE).args(&["all", "1"]));
}

#[test]
fn callbacks_and_mixed_match_wasmtime_wasi() {
    let input = b"one\ntwo words\n";
    compare(
        "callbacks",
        &Spec::new(guests::CALLBACKS).args(&["50"]).stdin(input),
    );
    compare("callbacks", &Spec::new(guests::CALLBACKS));
    compare(
        "mixed",
        &Spec::new(guests::MIXED).args(&["25"]).stdin(input),
    );
    // The input reached the guest (a guest that saw none would agree with the reference too).
    let (ours, _) = run_tabi(
        Backend::Wasmi,
        &Spec::new(guests::CALLBACKS).args(&["50"]).stdin(input),
    );
    assert!(
        ours.stdout.contains("stdin line 2: [two words]"),
        "{}",
        ours.stdout
    );
    assert_eq!(ours.code, Some(5));
}
