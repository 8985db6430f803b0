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
