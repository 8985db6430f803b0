//! Hostile snapshots given to the `tabi` binary: each is refused with a clear error, and no
//! `tabi inspect` or `tabi resume` of one grows past a small peak of resident memory (the
//! bound `docs/snapshot-format.md` states). Authenticated snapshots: a key given to `run` and
//! `resume`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use tabi_snapshot::{Contents, Limits, Snapshot};
use tabi_tests::guests;
use tabi_tests::hostile::{Many, encode, sandbox, with_many};

fn tabi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabi"))
}

/// Runs `module` with a checkpoint at migration point `after` written to `snap`, with
/// `flags` before the module; asserts that the run checkpointed and stopped (status 75).
fn checkpointed(module: &OsStr, after: &str, snap: &Path, flags: &[&OsStr]) {
    let out = tabi()
        .args(["run", "--checkpoint-after", after, "--snapshot"])
        .arg(snap)
        .args(flags)
        .arg(module)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The largest peak resident memory of any child this process has waited for, in bytes.
#[allow(
    unsafe_code,
    reason = "getrusage through libc; the struct is plain data"
)]
fn children_peak() -> u64 {
    // SAFETY: `getrusage` writes a `rusage` into the zeroed one we own and reads nothing else;
    // RUSAGE_CHILDREN is a valid `who`.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut u), 0);
        u
    };
    u64::try_from(usage.ru_maxrss).unwrap() << 10
}

/// A real snapshot: the hello guest paused at its second migration point.
fn real_snapshot(dir: &Path) -> (std::path::PathBuf, Snapshot) {
    let path = dir.join("real.snap");
    checkpointed(OsStr::new(guests::HELLO), "2", &path, &[]);
    let bytes = std::fs::read(&path).unwrap();
    let snap = tabi_snapshot::read(&mut &bytes[..], &Limits::default(), None).unwrap();
    (path, snap)
}

/// `snap` written again, whole, with `kernel` as its kernel state and its first memory
/// `pages` long (as it is when `None`), framed validly whatever they hold.
fn rewritten(snap: &Snapshot, kernel: &[u8], pages: Option<usize>) -> Vec<u8> {
    // A zeroed allocation stays unbacked where nothing is written (the writer skips those
    // pages unread), so a 4 GiB memory costs this process, and its forked children, nothing.
    let old = &snap.memories[0];
    let mut memory = vec![0u8; pages.map_or(old.len(), |p| p * tabi_snapshot::PAGE)];
    memory[..old.len()].copy_from_slice(old);
    let contents = Contents {
        identity: snap.identity.clone(),
        module: snap.module.as_deref(),
        entry: &snap.entry,
        budget: snap.budget,
        points: snap.points,
        globals: &snap.globals,
        tables: &snap.tables,
        memories: vec![&memory],
        stack: &snap.stack,
        kernel,
        mounts: &snap.mounts,
        extensions: &[],
    };
    let mut out = Vec::new();
    tabi_snapshot::write_unchecked(&mut out, &contents, None).unwrap();
    out
}

fn refused(out: &Output, why: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert_ne!(out.status.code(), Some(134), "aborted: {err}");
    assert!(err.contains(why), "wanted {why:?} in: {err}");
}

/// Class 1 and 2 through the binary: a kernel state of ten million one-byte `None`s, one whose
/// free list names a live inode, and a memory claimed at 4 GiB over a resumer's cap. Each
/// `inspect` and `resume` (on both engines) refuses it, and none of them grew past 96 MiB.
#[test]
fn hostile_snapshots_are_refused_within_a_small_peak() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, snap) = real_snapshot(tmp.path());
    // Made without building them: the test process stays small, and so do the children it
    // forks (a forked child's peak counts the parent's pages until it runs `tabi`).
    let nones = with_many(&sandbox(), Many::Descriptors, 10_000_000);
    let mut broken = sandbox();
    broken.fs.free.push(0);
    let cases = [
        (
            "nones.snap",
            rewritten(&snap, &nones, None),
            "more memory",
            vec![],
        ),
        (
            "broken.snap",
            rewritten(&snap, &encode(&broken), None),
            "free list",
            vec![],
        ),
        (
            "huge.snap",
            rewritten(&snap, &snap.kernel_bytes, Some(65536)),
            "over the limit",
            vec!["--max-memory", "256M"],
        ),
    ];
    for (name, bytes, why, flags) in &cases {
        assert!(bytes.len() < 1 << 20, "{name}: {} bytes", bytes.len());
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = tabi()
            .arg("inspect")
            .args(flags)
            .arg(&path)
            .output()
            .unwrap();
        refused(&out, why);
        for backend in ["wasmtime", "wasmi"] {
            let out = tabi()
                .args(["resume", "--backend", backend])
                .args(flags)
                .arg(&path)
                .output()
                .unwrap();
            refused(&out, why);
        }
    }
    let peak = children_peak();
    eprintln!(
        "peak resident memory of inspect and resume: {} MiB",
        peak >> 20
    );
    assert!(peak < 96 << 20, "a child grew to {} MiB", peak >> 20);
}

/// Class 4 through the binary: with `--key-file`, `run` writes a MAC and `resume` refuses a
/// snapshot without a valid one.
#[test]
fn a_key_file_authenticates_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    std::fs::write(&key, b"thirty-two bytes of shared secret").unwrap();
    let other = tmp.path().join("other");
    std::fs::write(&other, b"another secret, also long enough").unwrap();
    let signed = tmp.path().join("signed.snap");
    checkpointed(
        OsStr::new(guests::HELLO),
        "2",
        &signed,
        &[OsStr::new("--key-file"), key.as_ref()],
    );
    let (plain, _) = real_snapshot(tmp.path());

    let resume = |file: &Path, key: &Path| {
        tabi()
            .args(["resume", "--key-file"])
            .arg(key)
            .arg(file)
            .output()
            .unwrap()
    };
    let ok = resume(&signed, &key);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("hello"));
    refused(&resume(&signed, &other), "not authenticated");
    refused(&resume(&plain, &key), "not authenticated");
    let short = tmp.path().join("short");
    std::fs::write(&short, b"tiny").unwrap();
    refused(&resume(&signed, &short), "at least 16");
}

/// Class 5 through the binary: a checkpoint that a resume with the same limits would refuse
/// (here, a guest memory over `--max-memory`) is not written, and the guest is not lost: it
/// goes on to its own end and output.
#[test]
fn a_checkpoint_a_resume_would_refuse_is_not_taken_and_the_guest_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("s.snap");
    let out = tabi()
        .args([
            "run",
            "--max-memory",
            "64K",
            "--checkpoint-after",
            "2",
            "--snapshot",
        ])
        .arg(&snap)
        .arg(guests::HELLO)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("was not written") && err.contains("over the limit"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
    assert!(!snap.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "a temporary file was left"
    );
}

/// Class 1: a memory claim is checked against the module's declared limits on both engines. A
/// module whose memory may grow to 2 pages, checkpointed, then claimed at 3 pages (framed
/// validly): the resume is refused, saying the memory does not fit the module.
#[test]
fn a_memory_claim_past_the_modules_maximum_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let module = tmp.path().join("small.wat");
    std::fs::write(
        &module,
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1 2)
          (data (i32.const 100) "hi\0a")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 100))
            (i32.store (i32.const 4) (i32.const 3))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .unwrap();
    let snap = tmp.path().join("s.snap");
    checkpointed(module.as_os_str(), "1", &snap, &[]);
    let bytes = std::fs::read(&snap).unwrap();
    let real = tabi_snapshot::read(&mut &bytes[..], &Limits::default(), None).unwrap();
    let claimed = tmp.path().join("claimed.snap");
    std::fs::write(&claimed, rewritten(&real, &real.kernel_bytes, Some(3))).unwrap();
    for backend in ["wasmtime", "wasmi"] {
        let out = tabi()
            .args(["resume", "--backend", backend])
            .arg(&claimed)
            .output()
            .unwrap();
        refused(&out, "does not fit the module");
        let out = tabi()
            .args(["resume", "--backend", backend])
            .arg(&snap)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    }
}
