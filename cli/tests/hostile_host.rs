//! A host that works against tabi, and snapshots that do: files planted where tabi writes,
//! a cache directory others can write, names with terminal escapes, and directory trees
//! deeper than a path can name.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use common::{run, setup, tabi};
use tabi::Backend;
use tabi_libos::host::Stdio;
use tabi_tests::guests;

/// A chain of `levels` directories `d/d/…/d` under `root`, with `leaf.txt` at its bottom,
/// made through directory handles: its path is longer than the host lets a path be.
fn deep_chain(root: &Path, levels: usize) {
    let mut dir = Dir::open_ambient_dir(root, ambient_authority()).unwrap();
    for _ in 0..levels {
        dir.create_dir("d").unwrap();
        dir = dir.open_dir("d").unwrap();
    }
    dir.write("leaf.txt", b"at the bottom").unwrap();
}

/// Removes the chain `deep_chain` made under `root`, a level at a time from the top, so that
/// nothing needs a path or a descriptor per level.
fn remove_chain(root: &Path) {
    let dir = Dir::open_ambient_dir(root, ambient_authority()).unwrap();
    while dir.open_dir("d").unwrap().exists("d") {
        dir.rename("d/d", &dir, "next").unwrap();
        dir.remove_dir_all("d").unwrap();
        dir.rename("next", &dir, "d").unwrap();
    }
    dir.remove_dir_all("d").unwrap();
}

/// The fingerprint as it was computed before it walked through directory handles: each entry's
/// path, type, size and modification time, in name order, depth first. Snapshots written then
/// must still verify.
fn reference_fingerprint(dir: &Path) -> [u8; 32] {
    use sha2::Digest;
    fn walk(dir: &Path, rel: &str, h: &mut sha2::Sha256) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let name = format!("{rel}/{}", e.file_name().to_string_lossy());
            let kind = if meta.is_dir() {
                b'd'
            } else if meta.file_type().is_symlink() {
                b'l'
            } else {
                b'f'
            };
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update([kind]);
            h.update(meta.len().to_le_bytes());
            h.update(mtime.to_le_bytes());
            if meta.is_dir() {
                walk(&e.path(), &name, h);
            }
        }
    }
    let mut h = sha2::Sha256::new();
    walk(dir, "", &mut h);
    h.finalize().into()
}

/// The fingerprint of a tree of files, directories and links is the one it had before it
/// walked through handles.
#[test]
fn the_fingerprint_is_the_one_snapshots_already_hold() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("b/c/d")).unwrap();
    std::fs::create_dir_all(r.join("a/empty")).unwrap();
    std::fs::write(r.join("z.txt"), b"zz").unwrap();
    std::fs::write(r.join("a/one.txt"), b"1").unwrap();
    std::fs::write(r.join("b/c/d/deep.txt"), b"deeper").unwrap();
    std::fs::write(r.join("b/c/two.txt"), b"22").unwrap();
    std::os::unix::fs::symlink("../z.txt", r.join("a/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", r.join("b/dangling")).unwrap();
    let got = tabi::fingerprint(r).unwrap();
    assert_eq!(got, reference_fingerprint(r));
    // And it sees a change.
    std::fs::write(r.join("b/c/d/deep.txt"), b"changed").unwrap();
    assert_ne!(tabi::fingerprint(r).unwrap(), got);

    // Deeper, with a file after the directory at every level, which the walk comes back for
    // once the levels below are done (and which a path can still name, for the reference).
    let mut dir = Dir::open_ambient_dir(r.join("a"), ambient_authority()).unwrap();
    for level in 0..300 {
        dir.create_dir("d").unwrap();
        dir.write("e.txt", level.to_string()).unwrap();
        dir = dir.open_dir("d").unwrap();
    }
    assert_eq!(tabi::fingerprint(r).unwrap(), reference_fingerprint(r));
}

/// A host directory holding a tree deeper than a path can name (which a guest can make
/// through its descriptors) is fingerprinted; one deeper than tabi walks is refused with an
/// error that says so, not with the host's "file name too long".
#[test]
fn a_tree_deeper_than_a_path_is_fingerprinted() {
    let root = tempfile::tempdir().unwrap();
    deep_chain(root.path(), 2_500);
    let first = tabi::fingerprint(root.path()).unwrap();
    assert_eq!(tabi::fingerprint(root.path()).unwrap(), first);
    remove_chain(root.path());

    deep_chain(root.path(), 5_000);
    let e = tabi::fingerprint(root.path()).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("deeper than 4096"), "{e}");
    remove_chain(root.path());
}

/// A symbolic link planted at the name tabi used to write a snapshot's temporary file under
/// (`.PID.NAME` beside it) does not lead the checkpoint to the file it points at: that file
/// is left as it was, and the snapshot lands whole under its own name, as a file.
#[test]
fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let victim = root.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let snaps = root.path().join("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let path = snaps.join("s.snap");
    let planted = snaps.join(format!(".{}.s.snap", std::process::id()));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();

    let original = std::fs::read(guests::HELLO).unwrap();
    let guest = setup(guests::HELLO, &["a"])
        .builder(&tabi_tests::harness::engine(Backend::Wasmi), &original)
        .stdout(Stdio::Null)
        .stderr(Stdio::Null)
        .pause_after(1)
        .build()
        .unwrap();
    let tabi::Ended::Paused(p) = guest.run().unwrap() else {
        panic!("the guest did not pause");
    };
    p.write_file(&path).unwrap();

    assert!(
        std::fs::read(&victim).unwrap() == b"precious",
        "the checkpoint wrote through the planted link"
    );
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    tabi::read_snapshot(&path, &tabi::Limits::default()).unwrap();
    // The planted link is still there, and still a link: nothing was written through it.
    assert!(
        std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// `tabi` with `cache` as its cache directory and its own home.
fn tabi_with_cache(home: &Path, cache: &Path) -> Command {
    let mut cmd = tabi();
    cmd.env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("TABI_CACHE")
        .env("TABI_CACHE_DIR", cache);
    cmd
}

/// The files under `dir`, however deep, without following links.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p);
            } else {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

/// A cache directory that others can write to, or that is a symbolic link, is not used: a
/// rewritten module planted in it (its manifest claiming the guest's hash) is not run, tabi
/// runs without a cache and writes nothing there, and says so once.
#[test]
fn a_cache_directory_others_could_have_written_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let (genuine, planted) = (
        tabi_tests::module_saying("genuine"),
        tabi_tests::module_saying("planted"),
    );
    let (want, other) = (
        tabi_snapshot::sha256(&genuine),
        tabi_snapshot::sha256(&planted),
    );
    let mut forged = tabi_instrument::instrument(&planted, &tabi::rewrite_options(false))
        .unwrap()
        .wasm;
    let at = forged.windows(32).position(|w| w == other).unwrap();
    forged[at..at + 32].copy_from_slice(&want);
    let name = format!(
        "{}-v{}.wasm",
        tabi_snapshot::hex(&want),
        tabi_instrument::FORMAT_VERSION
    );

    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let module = root.path().join("genuine.wasm");
    std::fs::write(&module, &genuine).unwrap();
    let run = |cache: &Path, checkpointed: bool| -> Output {
        let mut cmd = tabi_with_cache(&home, cache);
        cmd.arg("run");
        if checkpointed {
            cmd.args(["--checkpoint-after", "100", "--snapshot"])
                .arg(root.path().join("never.snap"));
        }
        let out = cmd.arg(&module).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        out
    };

    // Writable by all.
    let open = root.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(open.join(&name), &forged).unwrap();
    // A link to a directory of the user's own, as private as a cache should be.
    let private = root.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(private.join(&name), &forged).unwrap();
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&private, &link).unwrap();

    for (cache, real) in [(&open, &open), (&link, &private)] {
        let before = files_under(real);
        for checkpointed in [true, false] {
            let out = run(cache, checkpointed);
            assert_eq!(String::from_utf8_lossy(&out.stdout), "genuine\n", "{out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let warnings = stderr.lines().filter(|l| l.contains("cache")).count();
            assert_eq!(warnings, 1, "{}: {stderr}", cache.display());
            assert!(stderr.contains(&cache.display().to_string()), "{stderr}");
        }
        assert_eq!(files_under(real), before, "{}", cache.display());
    }
    // The same forgery in a cache directory that passes the checks is used: what was refused
    // above is the directory, not the file.
    let out = run(&private, true);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "planted\n", "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

/// A module that writes `hi` from its export `go<ESC>[2J`, which a checkpoint names.
const ESCAPING: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi\n")
  (func (export "go\1b[2J")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// `tabi inspect` prints the names a snapshot holds (its entry, its host mounts' guest paths)
/// with their control characters escaped: a snapshot cannot clear or rewrite the terminal it
/// is inspected on.
#[test]
fn inspect_prints_no_terminal_escape_from_a_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let module = root.path().join("escaping.wasm");
    std::fs::write(&module, wat::parse_str(ESCAPING).unwrap()).unwrap();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let file = root.path().join("s.snap");
    let dir = format!("{}::/da\x1b[2Jta", granted.display());
    let out = run(&[
        "run",
        "--backend",
        "wasmi",
        "--dir",
        &dir,
        "--invoke",
        "go\x1b[2J",
        "--checkpoint-after",
        "1",
        "--snapshot",
        file.to_str().unwrap(),
        module.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let info = run(&["inspect", file.to_str().unwrap()]);
    assert!(info.status.success(), "{info:?}");
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(!info.stdout.contains(&0x1b), "{text:?}");
    // The names are still there, escaped.
    assert!(text.contains("go\\u{1b}[2J"), "{text}");
    assert!(text.contains("/da\\u{1b}[2Jta"), "{text}");
}
