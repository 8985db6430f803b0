//! `--copy-dir` of deep host trees: copied whole when tabi walks that deep, refused with an
//! error that says why when deeper, and never a crash.

use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use tabi_vfs::{FileType, MemFs};

/// A chain of `levels` directories `d/d/…/d` under `root`, with `leaf.txt` at its bottom,
/// made through directory handles: past a few thousand levels its path is longer than the
/// host lets a path be. With `beside`, each level also holds `e.txt`, which names its level
/// and comes after `d` in name order.
fn deep_chain(root: &Path, levels: usize, beside: bool) {
    let mut dir = Dir::open_ambient_dir(root, ambient_authority()).unwrap();
    for level in 0..levels {
        if beside {
            dir.write("e.txt", level.to_string()).unwrap();
        }
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
        // Only files are left in it.
        dir.remove_dir_all("d").unwrap();
        dir.rename("next", &dir, "d").unwrap();
    }
    dir.remove_dir_all("d").unwrap();
}

/// The contents of the file at `path` under `root` in `fs`.
fn read(fs: &MemFs, root: tabi_vfs::Ino, path: &str) -> Vec<u8> {
    let ino = fs.resolve(root, path, false).unwrap().ino.unwrap();
    assert_eq!(fs.stat(ino).unwrap().filetype, FileType::RegularFile);
    let mut buf = [0u8; 64];
    let n = fs.read_at(ino, 0, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// A tree a few hundred levels deep, with a file after the directory at every level (which
/// the walk comes back for once the levels below are done), is copied whole.
#[test]
fn a_deep_tree_is_copied_whole() {
    let root = tempfile::tempdir().unwrap();
    deep_chain(root.path(), 300, true);
    let mut fs = MemFs::new();
    let copy = tabi_vfs::import_host_dir(&mut fs, root.path(), 0).unwrap();
    let leaf = format!("{}leaf.txt", "d/".repeat(300));
    assert_eq!(read(&fs, copy, &leaf), b"at the bottom");
    for level in 0..300 {
        let beside = format!("{}e.txt", "d/".repeat(level));
        assert_eq!(read(&fs, copy, &beside), level.to_string().as_bytes());
    }
    remove_chain(root.path());
}

/// A tree as deep as tabi copies is copied; one deeper is refused with an error naming the
/// depth and where, where a tree of 19,000 levels used to overflow the host's stack.
#[test]
fn a_tree_deeper_than_tabi_copies_is_refused_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    deep_chain(root.path(), tabi_vfs::MAX_HOST_DEPTH, false);
    let mut fs = MemFs::new();
    let copy = tabi_vfs::import_host_dir(&mut fs, root.path(), 0).unwrap();
    // Too deep for one path: a level at a time.
    let mut bottom = copy;
    for _ in 0..tabi_vfs::MAX_HOST_DEPTH {
        bottom = fs.resolve(bottom, "d", false).unwrap().ino.unwrap();
    }
    assert_eq!(read(&fs, bottom, "leaf.txt"), b"at the bottom");
    remove_chain(root.path());

    deep_chain(root.path(), 20_000, false);
    let mut fs = MemFs::new();
    let e = tabi_vfs::import_host_dir(&mut fs, root.path(), 0).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("deeper than 4096 levels"), "{e}");
    assert!(e.contains("d/d/d"), "{e}");
    remove_chain(root.path());
}
