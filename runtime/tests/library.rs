//! The library as an embedder uses it: custom migration points, the caller's own host, pause
//! requests from another thread, snapshots as values.

use std::sync::{Arc, Mutex};

use tabi::{
    AfterPause, Backend, Ended, Engine, Engines, Errno, Exit, GuestBuilder, Host, PauseHandle,
    PointRule, Resume, RewriteOptions, Stdio,
};

/// Prints the letters `a` to `h`, one `fd_write` each, with a `sched_yield` before and after.
const LETTERS: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "abcdefgh")
  (func $print (param $i i32)
    (i32.store (i32.const 0) (i32.add (i32.const 16) (local.get $i)))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (local $i i32)
    (loop $l
      (drop (call $y))
      (call $print (local.get $i))
      (drop (call $y))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 8))))))"#;

fn engines() -> Vec<Engine> {
    Backend::available_all()
        .into_iter()
        .map(|b| Engine::new(b).unwrap())
        .collect()
}

/// Only `fd_write` is a migration point.
fn fd_write_only() -> RewriteOptions {
    RewriteOptions {
        points: vec![PointRule {
            module: "wasi_snapshot_preview1".into(),
            name: Some("fd_write".into()),
        }],
        safepoints: false,
    }
}

/// A module rewritten with its own point rules pauses at its own points (the third
/// `fd_write`, however many `sched_yield`s came between), its snapshot records the rules, and
/// it resumes on every engine from a file to the uninterrupted output.
#[test]
fn custom_point_rules_checkpoint_and_resume_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    for first in engines() {
        for second in engines() {
            let (out, printed) = Stdio::buffer();
            let guest = GuestBuilder::new(&first, LETTERS.as_bytes())
                .unwrap()
                .stdout(out.clone())
                .rewrite(fd_write_only())
                .pause_after(3)
                .build()
                .unwrap();
            let Ended::Paused(paused) = guest.run().unwrap() else {
                panic!("no pause");
            };
            assert_eq!(paused.points(), 3);
            assert_eq!(&*printed.lock().unwrap(), b"abc");
            let file = dir.path().join("letters.snap");
            paused.write_file(&file).unwrap();
            let snapshot = tabi::read_snapshot(&file, &tabi::Limits::default()).unwrap();
            assert_eq!(
                tabi::options_of_identity(&snapshot.identity.options).unwrap(),
                fd_write_only()
            );
            let inspection = tabi::Inspection::of(&snapshot);
            assert!(
                inspection
                    .options
                    .contains("wasi_snapshot_preview1::fd_write"),
                "{}",
                inspection.options
            );
            // Resumed, it pauses again at its own points: two more letters.
            let resumed = Resume::new(&second)
                .stdout(out.clone())
                .pause_after(2)
                .from_file(&file)
                .unwrap();
            let Ended::Paused(again) = resumed.run().unwrap() else {
                panic!("no second pause");
            };
            assert_eq!(&*printed.lock().unwrap(), b"abcde");
            let rest = again.into_guest(&first, None, None).run().unwrap();
            assert_eq!(rest.exit(), Some(&Exit::Code(0)));
            assert_eq!(
                &*printed.lock().unwrap(),
                b"abcdefgh",
                "{:?} then {:?}",
                first.backend(),
                second.backend()
            );
        }
    }
    // The harness, at each of the eight points, across the engines.
    let mut engines = Engines::new();
    let builder = GuestBuilder::new(&engines.get(Backend::Wasmi).unwrap(), LETTERS.as_bytes())
        .unwrap()
        .rewrite(fd_write_only());
    let report = tabi::migrate_test(&builder, 1, &Backend::available_all(), &mut engines).unwrap();
    assert!(report.divergences.is_empty(), "{report:?}");
    assert_eq!(report.checkpoints, 8);
}

/// The caller's host answers for the guest's output and clock; tabi's streams are not used.
#[test]
fn the_callers_host_serves_the_guest() {
    #[derive(Clone, Default)]
    struct Recording(Arc<Mutex<Vec<u8>>>);
    impl Host for Recording {
        fn wall_clock_ns(&mut self) -> u64 {
            7
        }
        fn monotonic_ns(&mut self) -> u64 {
            7
        }
        fn random_bytes(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
            buf.fill(1);
            Ok(())
        }
        fn stdin_read(&mut self, _: &mut [u8]) -> Result<usize, Errno> {
            Ok(0)
        }
        fn stdout_write(&mut self, buf: &[u8]) -> Result<(), Errno> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(())
        }
        fn stderr_write(&mut self, _: &[u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn sleep_ns(&mut self, _: u64) {}
    }
    let host = Recording::default();
    let (unused, unused_buf) = Stdio::buffer();
    for engine in engines() {
        let h = host.clone();
        let guest = GuestBuilder::new(&engine, LETTERS.as_bytes())
            .unwrap()
            .stdout(unused.clone())
            .host_factory(move || Box::new(h.clone()))
            .pause_after(4)
            .build()
            .unwrap();
        let Ended::Paused(p) = guest.run().unwrap() else {
            panic!("no pause");
        };
        // The resumed guest gets a new host from its own factory.
        let h = host.clone();
        let bytes = p.snapshot_bytes().unwrap();
        let resumed = Resume::new(&engine)
            .host_factory(move || Box::new(h.clone()))
            .from_reader(&bytes[..])
            .unwrap();
        assert_eq!(resumed.run().unwrap().exit(), Some(&Exit::Code(0)));
    }
    assert_eq!(&*host.0.lock().unwrap(), b"abcdefghabcdefgh");
    assert!(unused_buf.lock().unwrap().is_empty());
}

/// A pause asked for from another thread is taken at the next migration point, and the guest
/// goes on in place after the checkpoint is written.
#[test]
fn a_pause_requested_from_another_thread_is_taken() {
    for engine in engines() {
        let handle = PauseHandle::new();
        let (out, printed) = Stdio::buffer();
        let guest = GuestBuilder::new(&engine, LETTERS.as_bytes())
            .unwrap()
            .stdout(out)
            .pause_handle(&handle)
            .build()
            .unwrap();
        let asker = handle.clone();
        std::thread::spawn(move || asker.request()).join().unwrap();
        let mut pauses = Vec::new();
        let ended = guest
            .run_with(|pause| {
                let mut bytes = Vec::new();
                pause.write_to(&mut bytes).unwrap();
                pauses.push((pause.points(), bytes.len()));
                Ok(AfterPause::Continue)
            })
            .unwrap();
        assert_eq!(ended.exit(), Some(&Exit::Code(0)));
        assert_eq!(pauses.len(), 1, "{pauses:?}");
        assert_eq!(pauses[0].0, 1, "taken at the first point");
        assert_eq!(&*printed.lock().unwrap(), b"abcdefgh");
    }
}

/// Errors are typed: a snapshot refused is a snapshot error at the root, a module that is
/// not one says so, an engine the build lacks is named.
#[test]
fn errors_are_typed() {
    let engine = Engine::new(Backend::Wasmi).unwrap();
    let e = Resume::new(&engine)
        .from_reader(&b"not a snapshot"[..])
        .unwrap_err();
    assert_eq!(
        e.snapshot_error(),
        Some(&tabi::SnapshotError::BadMagic),
        "{e}"
    );
    let e = GuestBuilder::new(&engine, &[0xff, 0, 1]).unwrap_err();
    assert!(matches!(e.root(), tabi::Error::InvalidModule(_)), "{e}");
    for b in Backend::ALL {
        match Engine::new(b) {
            Ok(e) => assert_eq!(e.backend(), b),
            Err(e) => assert!(matches!(e, tabi::Error::NoEngine(_))),
        }
    }
}
