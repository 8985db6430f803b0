//! Incremental checkpoints: a chain written from a guest that goes on in place after each
//! checkpoint, read back link by link, resumed from, and written by the binary.

mod common;

use std::path::Path;

use common::{run, setup};
use tabi::{AfterPause, Backend, Chain, Ended, PauseHandle, Resume, Stdio};
use tabi_snapshot::{Limits, Snapshot};
use tabi_tests::guests;
use tabi_tests::harness::{Setup, engine};

/// Whether this host tracks writes to memory (Linux 6.7 and later with userfaultfd); where
/// it does not, every checkpoint of a chain is a full one.
fn host_tracks() -> bool {
    let v = vec![0u8; 1 << 20];
    tabi_hostmem::written::Tracker::start(&v).is_some()
}

/// The guest's standard output when its rewrite runs without pausing.
fn plain_output(backend: Backend, wasm: &[u8], s: &Setup) -> Vec<u8> {
    let (out, buf) = Stdio::buffer();
    let guest = s
        .builder(&engine(backend), wasm)
        .stdout(out)
        .stderr(Stdio::Null)
        .rewrite(tabi::rewrite_options(false))
        .build()
        .unwrap();
    assert!(matches!(guest.run().unwrap(), Ended::Exited(_)));
    buf.lock().unwrap().clone()
}

/// A guest checkpointed at every migration point, going on in place after each: every link
/// of the chain, applied to the ones before, gives the memories exactly as they were at its
/// pause; the links after the first are incremental (where the host tracks writes); and a state taken from the middle of the chain resumes on the other backend to
/// the uninterrupted run's output.
#[test]
fn a_chain_of_incremental_checkpoints_holds_every_state() {
    let tracks = host_tracks();
    let cases: &[(&str, &[&str])] = &[
        (guests::STD_FS, &["churn", "30"]),
        (guests::COMPUTE, &["all", "1"]),
    ];
    for (path, args) in cases {
        let original = std::fs::read(path).unwrap();
        let s = setup(path, args);
        for backend in Backend::ALL {
            let plain = plain_output(backend, &original, &s);
            let request = PauseHandle::new();
            request.request();
            let (out, buf) = Stdio::buffer();
            let guest = s
                .builder(&engine(backend), &original)
                .stdout(out)
                .stderr(Stdio::Null)
                .pause_handle(&request)
                .build()
                .unwrap();
            let mut chain = Chain::new();
            // Per link: the state it gives and the output so far.
            let mut states: Vec<(Snapshot, usize)> = Vec::new();
            let mut incremental = 0;
            let o = guest
                .run_with(|view| {
                    let mut bytes = Vec::new();
                    let w = view.write_incremental_to(&mut chain, &mut bytes).unwrap();
                    let before = states.last().map(|(s, _)| s);
                    let state = tabi_snapshot::read(&mut &bytes[..], &Limits::default(), before)
                        .unwrap_or_else(|e| panic!("link {}: {e}", states.len()));
                    let now: Vec<&[u8]> = state.memories.iter().map(Vec::as_slice).collect();
                    assert!(
                        now == view.memories(),
                        "{path} {args:?} on {backend:?}: link {} gives other memories",
                        states.len()
                    );
                    if let Some(p) = w.parent {
                        assert_eq!(Some(p), before.map(|s| s.hash));
                        incremental += 1;
                    }
                    states.push((state, buf.lock().unwrap().len()));
                    request.request();
                    Ok(AfterPause::Continue)
                })
                .unwrap();
            assert!(matches!(o, Ended::Exited(_)));
            assert_eq!(
                *buf.lock().unwrap(),
                plain,
                "{path} {args:?} on {backend:?}"
            );
            let links = states.len();
            assert!(links >= 5, "{path} {args:?}: {links} checkpoints");
            if tracks {
                // wasmtime grows a memory in place; wasmi moves it, which starts the chain
                // again with a full checkpoint.
                if backend == Backend::Wasmtime {
                    assert_eq!(
                        incremental,
                        links - 1,
                        "{path} {args:?}: every link after the first is incremental"
                    );
                } else {
                    assert!(incremental >= 1, "{path} {args:?} on wasmi");
                }
            }

            // A state from the middle of the chain, and the last, resumed on the other backend.
            let other = if backend == Backend::Wasmtime {
                Backend::Wasmi
            } else {
                Backend::Wasmtime
            };
            for k in [links / 2, links - 1] {
                let (state, printed) = &states[k];
                let (out, rest) = Stdio::buffer();
                let resumed = Resume::new(&engine(other))
                    .stdin(Stdio::Null)
                    .stdout(out)
                    .stderr(Stdio::Null)
                    .from_snapshot(state.clone())
                    .unwrap();
                assert!(matches!(resumed.run().unwrap(), Ended::Exited(_)));
                assert_eq!(
                    *rest.lock().unwrap(),
                    plain[*printed..],
                    "{path} {args:?}: link {k} resumed on {other:?}"
                );
            }
        }
    }
}

/// Through the binary: a guest that asks for three checkpoints, changing a page of a large
/// memory between them, run with `--incremental`, writes FILE, FILE.1 and FILE.2; the later
/// two are small, `inspect` reads the chain, and `resume FILE FILE.1 FILE.2` finishes the run
/// as the uninterrupted one does, on either backend. Without its parent an incremental file
/// is refused with the reason.
#[test]
fn the_binary_writes_and_resumes_a_chain() {
    let wasm = wat::parse_str(
        r#"(module
  (import "tabi" "checkpoint" (func $checkpoint))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 256)
  (func $fill (param $page i32) (param $v i32)
    (memory.fill (i32.mul (local.get $page) (i32.const 65536)) (local.get $v) (i32.const 65536)))
  (func $say (param $v i32)
    ;; Prints the byte at the start of pages 10, 20 and 30, offset by 'a'.
    (i32.store8 (i32.const 16) (i32.add (i32.load8_u (i32.const 655360)) (i32.const 97)))
    (i32.store8 (i32.const 17) (i32.add (i32.load8_u (i32.const 1310720)) (i32.const 97)))
    (i32.store8 (i32.const 18) (i32.add (i32.load8_u (i32.const 1966080)) (i32.const 97)))
    (i32.store8 (i32.const 19) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (local $p i32)
    ;; 64 pages of data first, so that the full snapshot is large.
    (loop $l
      (call $fill (i32.add (local.get $p) (i32.const 100)) (i32.add (local.get $p) (i32.const 1)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $p) (i32.const 64))))
    (call $fill (i32.const 10) (i32.const 1))
    (call $say (i32.const 0))
    (call $checkpoint)
    (call $fill (i32.const 20) (i32.const 2))
    (call $say (i32.const 0))
    (call $checkpoint)
    (call $fill (i32.const 10) (i32.const 0))
    (call $fill (i32.const 30) (i32.const 3))
    (call $say (i32.const 0))
    (call $checkpoint)
    (call $fill (i32.const 20) (i32.const 4))
    (call $say (i32.const 0))))"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("chain.wasm");
    std::fs::write(&module, &wasm).unwrap();
    let module = module.to_str().unwrap();
    let plain = run(&["run", module]);
    assert_eq!(plain.status.code(), Some(0), "{plain:?}");
    assert_eq!(plain.stdout, b"baa\nbca\nacd\naed\n");

    for backend in ["wasmtime", "wasmi"] {
        let file = dir.path().join(format!("{backend}.snap"));
        let f = file.to_str().unwrap();
        let a = run(&[
            "run",
            "--backend",
            backend,
            "--incremental",
            "--snapshot",
            f,
            module,
        ]);
        assert_eq!(a.status.code(), Some(0), "{a:?}");
        assert_eq!(
            a.stdout, plain.stdout,
            "the run goes on after each checkpoint"
        );
        let link = |n: u32| format!("{f}.{n}");
        let size = |p: &str| std::fs::metadata(p).unwrap().len();
        assert!(Path::new(&link(2)).exists(), "{a:?}");
        if host_tracks() {
            let stderr = String::from_utf8_lossy(&a.stderr);
            assert_eq!(
                stderr.matches("incremental checkpoint").count(),
                2,
                "{stderr}"
            );
            assert!(
                size(&link(1)) * 10 < size(f),
                "{} against {}",
                size(&link(1)),
                size(f)
            );
            assert!(size(&link(2)) * 10 < size(f));
        }

        let i = run(&["inspect", f, &link(1), &link(2)]);
        assert_eq!(i.status.code(), Some(0), "{i:?}");
        let text = String::from_utf8_lossy(&i.stdout);
        if host_tracks() {
            assert!(text.contains("parent"), "{text}");
        }
        // Alone, a later link is refused: it needs its parent.
        let alone = run(&["inspect", &link(2)]);
        assert_eq!(alone.status.code(), Some(1));
        if host_tracks() {
            assert!(
                String::from_utf8_lossy(&alone.stderr).contains("parent"),
                "{alone:?}"
            );
            let alone = run(&["resume", &link(1)]);
            assert_eq!(alone.status.code(), Some(1));
            assert!(
                String::from_utf8_lossy(&alone.stderr).contains("give the chain"),
                "{alone:?}"
            );
            // Out of order, too.
            let wrong = run(&["resume", f, &link(2)]);
            assert_ne!(wrong.status.code(), Some(0), "{wrong:?}");
        }

        for resume_on in ["wasmtime", "wasmi"] {
            // From the last link: only the last line is left to print.
            let b = run(&["resume", "--backend", resume_on, f, &link(1), &link(2)]);
            assert_eq!(b.status.code(), Some(0), "{backend} -> {resume_on}: {b:?}");
            assert_eq!(b.stdout, b"aed\n", "{backend} -> {resume_on}");
            // From the middle one.
            let b = run(&["resume", "--backend", resume_on, f, &link(1)]);
            assert_eq!(b.stdout, b"acd\naed\n", "{backend} -> {resume_on}");
        }
    }
}
