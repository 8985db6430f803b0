//! Exercises the file system through Rust's standard library, as ordinary programs do, and
//! prints a canonical listing of what it built. `std_fs churn N` instead creates, writes,
//! renames, reads back and deletes N small files (the file-heavy benchmark).
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

fn listing(dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let kind = if meta.is_dir() { "dir" } else if meta.file_type().is_symlink() { "link" } else { "file" };
        let detail = if meta.is_file() {
            let data = fs::read(&path).unwrap();
            format!("{} bytes, sum {}", data.len(), data.iter().map(|&b| b as u64).sum::<u64>())
        } else if meta.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&path).unwrap().display())
        } else {
            String::new()
        };
        out.push(format!("{} {kind} {detail}", path.display()));
        if meta.is_dir() {
            listing(&path, out);
        }
    }
}

fn churn(n: usize) {
    let root = Path::new("/sandbox/churn");
    fs::create_dir_all(root).unwrap();
    let mut total = 0usize;
    for i in 0..n {
        let a = root.join(format!("file-{i}.tmp"));
        let b = root.join(format!("file-{i}.dat"));
        let mut f = fs::File::create(&a).unwrap();
        writeln!(f, "record {i}: {}", "x".repeat(i % 64)).unwrap();
        drop(f);
        fs::rename(&a, &b).unwrap();
        total += fs::read(&b).unwrap().len();
        fs::remove_file(&b).unwrap();
    }
    fs::remove_dir(root).unwrap();
    println!("churned {n} files, {total} bytes");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("churn") {
        churn(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000));
        return;
    }
    let base = Path::new("/sandbox/tree");
    fs::create_dir_all(base.join("a/b/c")).unwrap();
    for i in 0..20 {
        fs::write(base.join(format!("a/file{i:02}.txt")), format!("line {i}\n").repeat(i + 1)).unwrap();
    }
    // Seek, overwrite, extend and truncate one file through a handle.
    let mut f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(base.join("a/b/edit.bin")).unwrap();
    f.write_all(&[1u8; 1000]).unwrap();
    f.seek(SeekFrom::Start(10)).unwrap();
    f.write_all(&[2u8; 10]).unwrap();
    f.seek(SeekFrom::End(100)).unwrap();
    f.write_all(b"tail").unwrap();
    f.set_len(1050).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 1050);
    assert_eq!(&back[10..20], &[2u8; 10]);
    assert!(back[1000..1050].iter().all(|&b| b == 0));
    drop(f);
    // Append mode.
    let mut log = fs::OpenOptions::new().append(true).create(true).open(base.join("log.txt")).unwrap();
    for i in 0..5 {
        writeln!(log, "entry {i}").unwrap();
    }
    drop(log);
    // Renames, hard links, removal.
    fs::rename(base.join("a/file00.txt"), base.join("a/b/c/moved.txt")).unwrap();
    fs::hard_link(base.join("a/file01.txt"), base.join("hard.txt")).unwrap();
    fs::remove_file(base.join("a/file03.txt")).unwrap();
    fs::create_dir(base.join("empty")).unwrap();
    fs::remove_dir(base.join("empty")).unwrap();
    assert!(fs::remove_dir(base.join("a")).is_err());
    assert_eq!(fs::metadata(base.join("hard.txt")).unwrap().len(), 14);
    // Open files go on working when they are unlinked, renamed (or their directory is), or
    // replaced by another file: across a migration too.
    let mut scratch = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(base.join("scratch.tmp")).unwrap();
    scratch.write_all(b"scratch").unwrap();
    fs::remove_file(base.join("scratch.tmp")).unwrap();
    let mut walker = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(base.join("a/b/walk.txt")).unwrap();
    walker.write_all(b"walk").unwrap();
    fs::rename(base.join("a/b"), base.join("a/bb")).unwrap();
    fs::write(base.join("fresh.txt"), b"fresh").unwrap();
    let mut replaced = fs::File::open(base.join("a/file02.txt")).unwrap();
    fs::rename(base.join("fresh.txt"), base.join("a/file02.txt")).unwrap();
    scratch.write_all(b"!").unwrap();
    walker.write_all(b"ed").unwrap();
    let mut text = String::new();
    scratch.seek(SeekFrom::Start(0)).unwrap();
    scratch.read_to_string(&mut text).unwrap();
    assert_eq!(text, "scratch!");
    text.clear();
    replaced.read_to_string(&mut text).unwrap();
    assert_eq!(text, "line 2\n".repeat(3));
    assert_eq!(fs::read(base.join("a/bb/walk.txt")).unwrap(), b"walked");
    assert!(!base.join("scratch.tmp").exists());
    drop((scratch, walker, replaced));
    fs::rename(base.join("a/bb"), base.join("a/b")).unwrap();
    // Errors surface as io::ErrorKind.
    assert_eq!(fs::read(base.join("nope")).unwrap_err().kind(), std::io::ErrorKind::NotFound);
    assert_eq!(fs::create_dir(base.join("a")).unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    let mut out = Vec::new();
    listing(base, &mut out);
    for line in out {
        println!("{line}");
    }
    fs::remove_dir_all(base).unwrap();
    assert!(!base.exists());
    println!("done");
}
