//! Snapshots written by earlier versions of tabi still resume: each file in `tests/golden` was
//! written by the tabi of its name and is kept as it was.
//!
//! Each holds the guest below paused at its third migration point, with a file open in its
//! in-memory directory:
//!
//! - `golden/v4-kernel1.snap`: written by `tabi run` of `main` as of December 2026 (commit
//!   cffe312): format version 4, kernel state schema 1 (before kernel states carried a schema),
//!   the rewrite's options stored as text;
//! - `golden/v5-kernel2.snap`: format version 5, kernel state schema 2, options as data.

use tabi::{Backend, Ended, Engine, Exit, GuestBuilder, Resume, Stdio};

/// Writes a line to `/sandbox/f`, yields (the snapshot is taken there), then reads the file
/// back from its start and prints it.
const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "f")
  (data (i32.const 200) "kept across the golden snapshot\n")
  (func (export "_start")
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 1)
      (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 300)))
    (i32.store (i32.const 0) (i32.const 200))
    (i32.store (i32.const 4) (i32.const 32))
    (drop (call $write (i32.load (i32.const 300)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $yield))
    (drop (call $seek (i32.load (i32.const 300)) (i64.const 0) (i32.const 0) (i32.const 16)))
    (i32.store (i32.const 20) (i32.const 400))
    (i32.store (i32.const 24) (i32.const 64))
    (drop (call $read (i32.load (i32.const 300)) (i32.const 20) (i32.const 1) (i32.const 28)))
    (i32.store (i32.const 32) (i32.const 400))
    (i32.store (i32.const 36) (i32.load (i32.const 28)))
    (drop (call $write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))))"#;

const OUTPUT: &[u8] = b"kept across the golden snapshot\n";

fn golden(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// The snapshot `main` wrote before this change (format 4, kernel schema 1, options as
/// text) resumes on every engine this build has, and the guest reads back the file it wrote
/// before the checkpoint.
#[test]
fn a_version_4_snapshot_still_resumes() {
    resumes("v4-kernel1.snap", 4, 1);
}

/// The current format's golden file.
#[test]
fn a_version_5_snapshot_resumes() {
    resumes("v5-kernel2.snap", 5, 2);
}

/// Format 5 with kernel state schema 3 (wasi-nn's state, empty here).
#[test]
fn a_schema_3_snapshot_still_resumes() {
    resumes("v5-kernel3.snap", 5, 3);
}

fn resumes(name: &str, version: u16, schema: u16) {
    let path = golden(name);
    let snapshot = tabi::read_snapshot(&path, &tabi::Limits::default()).unwrap();
    assert_eq!(
        (snapshot.version, snapshot.kernel_schema),
        (version, schema)
    );
    for backend in Backend::available_all() {
        let (out, printed) = Stdio::buffer();
        let guest = Resume::new(&Engine::new(backend).unwrap())
            .stdout(out)
            .from_file(&path)
            .unwrap();
        assert_eq!(guest.run().unwrap().exit(), Some(&Exit::Code(0)));
        assert_eq!(&*printed.lock().unwrap(), OUTPUT, "on {backend}");
    }
}

/// Writes the golden file of the current version: run by hand (`--ignored`) when a new
/// format or schema version is made, and the file committed beside the others.
#[test]
#[ignore = "writes a golden file; run by hand when the format or the kernel schema changes"]
fn write_golden() {
    let engine = Engine::new(Backend::Wasmi).unwrap();
    let guest = GuestBuilder::new(&engine, GUEST.as_bytes())
        .unwrap()
        .memory_dir("/sandbox")
        .deterministic(5)
        .pause_after(3)
        .build()
        .unwrap();
    let Ended::Paused(p) = guest.run().unwrap() else {
        panic!("no pause");
    };
    let name = std::env::var("TABI_GOLDEN").unwrap_or_else(|_| "new.snap".into());
    p.write_file(&golden(&name)).unwrap();
}

/// The golden snapshot of the current format written again with `extension` added.
fn with_extension(extension: tabi_snapshot::Extension) -> Vec<u8> {
    let s = tabi::read_snapshot(&golden("v5-kernel3.snap"), &tabi::Limits::default()).unwrap();
    let contents = tabi_snapshot::Contents {
        identity: tabi_snapshot::Identity {
            parent: None,
            ..s.identity.clone()
        },
        module: s.module.as_deref(),
        entry: &s.entry,
        budget: s.budget,
        points: s.points,
        globals: &s.globals,
        tables: &s.tables,
        memories: s.memories.iter().map(Vec::as_slice).collect(),
        stack: &s.stack,
        kernel: &s.kernel_bytes,
        mounts: &s.mounts,
        extensions: &[extension],
    };
    let mut bytes = Vec::new();
    tabi_snapshot::write(&mut bytes, &contents, None).unwrap();
    bytes
}

/// A snapshot with a section this tabi does not know resumes when the section is optional,
/// and is refused, naming the section, when it is required.
#[test]
fn unknown_sections_are_skipped_if_optional_and_refused_by_name_if_required() {
    let engine = Engine::new(Backend::preferred()).unwrap();
    let optional = with_extension(tabi_snapshot::Extension {
        name: "gpu-buffers".into(),
        required: false,
        data: vec![7; 100],
    });
    let (out, printed) = Stdio::buffer();
    let guest = Resume::new(&engine)
        .stdout(out)
        .from_reader(&optional[..])
        .unwrap();
    assert_eq!(guest.run().unwrap().exit(), Some(&Exit::Code(0)));
    assert_eq!(&*printed.lock().unwrap(), OUTPUT);

    let required = with_extension(tabi_snapshot::Extension {
        name: "gpu-buffers".into(),
        required: true,
        data: vec![7; 100],
    });
    let e = Resume::new(&engine).from_reader(&required[..]).unwrap_err();
    assert_eq!(
        e.snapshot_error(),
        Some(&tabi::SnapshotError::UnknownSection {
            name: "gpu-buffers".into()
        }),
        "{e}"
    );
    assert!(e.to_string().contains("`gpu-buffers`"), "{e}");
}
