//! Hostile snapshots: valid framing (checksums and content hash right) around hostile content.
//! Each is refused with a clear error before it can cost more than a small, stated amount of
//! memory, and the limits a resume applies are the resumer's, not the snapshot's.
//!
//! The kernel states are built with a mirror of the kernel's serde shape ([`K`]), since the
//! kernel's own types cannot hold what a hostile file can say. [`mirror_matches_the_kernel`]
//! keeps the mirror honest.

use std::collections::BTreeMap;

use serde::Serialize;
use tabi_libos::kernel::{Clocks, Random};
use tabi_libos::{Descriptor, Kernel, Mount, MountKind, Object};
use tabi_snapshot::{Contents, Error, Identity, Limits, PAGE, read, write, write_unchecked};

/// The kernel's shape, field for field.
#[derive(Serialize, Clone)]
struct K {
    args: Vec<String>,
    env: Vec<(String, String)>,
    fds: Vec<Option<Descriptor>>,
    fs: F,
    mounts: Vec<Mount>,
    clocks: Clocks,
    random: Random,
    exit: Option<u32>,
    next_key: u64,
}

/// `MemFs`'s shape.
#[derive(Serialize, Clone)]
struct F {
    nodes: Vec<Option<I>>,
    free: Vec<u32>,
    used: u64,
    limit: u64,
}

/// `Inode`'s shape.
#[derive(Serialize, Clone)]
struct I {
    node: N,
    nlink: u32,
    open: u32,
    atim: u64,
    mtim: u64,
    ctim: u64,
}

/// `Node`'s shape.
#[derive(Serialize, Clone)]
enum N {
    #[allow(dead_code, reason = "the variant keeps the others' indices")]
    File(Vec<u8>),
    Dir(D),
    #[allow(dead_code, reason = "the variant keeps the others' indices")]
    Symlink(String),
}

/// `Directory`'s shape.
#[derive(Serialize, Clone)]
struct D {
    entries: BTreeMap<String, (u32, u64)>,
    order: BTreeMap<u64, String>,
    next_seq: u64,
    parent: u32,
}

fn stdio(object: Object) -> Option<Descriptor> {
    Kernel::new()
        .get(match object {
            Object::Stdin => 0,
            Object::Stdout => 1,
            _ => 2,
        })
        .ok()
        .cloned()
}

/// What `Kernel::new()` with one memory mount at `/sandbox` (made at time 0) is.
fn sandbox() -> K {
    let root = I {
        node: N::Dir(D {
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 3,
            parent: 0,
        }),
        nlink: 1,
        open: 1,
        atim: 0,
        mtim: 0,
        ctim: 0,
    };
    let mut preopen = Kernel::new();
    let fd = preopen.mount_memory("/sandbox", 0).unwrap().0;
    K {
        args: vec![],
        env: vec![],
        fds: vec![
            stdio(Object::Stdin),
            stdio(Object::Stdout),
            stdio(Object::Stderr),
            preopen.get(fd).ok().cloned(),
        ],
        fs: F {
            nodes: vec![Some(root)],
            free: vec![],
            used: tabi_libos::vfs::INODE_COST,
            limit: tabi_libos::vfs::MemFs::DEFAULT_LIMIT_BYTES,
        },
        mounts: vec![Mount {
            guest_path: "/sandbox".into(),
            kind: MountKind::Memory { root: 0 },
        }],
        clocks: Clocks::Host,
        random: Random::Host,
        exit: None,
        next_key: 1,
    }
}

fn encode(k: &K) -> Vec<u8> {
    postcard::to_allocvec(k).unwrap()
}

/// A snapshot with one memory of `pages` pages (the first byte set) and the kernel state
/// `kernel`, framed validly whatever the state is.
fn framed(kernel: &[u8], pages: usize) -> Vec<u8> {
    let mut mem = vec![0u8; pages * PAGE];
    if let Some(b) = mem.first_mut() {
        *b = 1;
    }
    let contents = Contents {
        identity: Identity {
            original_sha256: [1; 32],
            module_sha256: [2; 32],
            options: vec![],
            parent: None,
        },
        module: None,
        entry: "_start",
        budget: None,
        points: 1,
        globals: &[],
        tables: &[],
        memories: vec![&mem],
        stack: &[],
        kernel,
        mounts: &[],
    };
    let mut out = Vec::new();
    write_unchecked(&mut out, &contents, None).unwrap();
    out
}

fn read_with(bytes: &[u8], limits: &Limits) -> Result<tabi_snapshot::Snapshot, Error> {
    read(&mut &bytes[..], limits, None)
}

/// The kernel state the reader refuses, and why.
fn refused_state(k: &K) -> String {
    match read_with(&framed(&encode(k), 1), &Limits::default()) {
        Err(Error::BadKernelState(why)) => why,
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

/// The peak resident memory of this process so far, in bytes (nextest runs each test in a
/// process of its own).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn mirror_matches_the_kernel() {
    let mut real = Kernel::new();
    real.mount_memory("/sandbox", 0).unwrap();
    assert_eq!(encode(&sandbox()), tabi_libos::encode_state(&real).unwrap());
    let snap = read_with(&framed(&encode(&sandbox()), 1), &Limits::default()).unwrap();
    assert_eq!(snap.kernel, real);
}

/// Class 1: ten million one-byte `None` descriptors (10 MB that LZ4 stores in 40 KB) would
/// take a gigabyte once decoded. The structure's budget is relative to the stored bytes, so
/// the read stops after a few megabytes.
#[test]
fn one_byte_nones_cannot_amplify_the_decode() {
    let mut k = sandbox();
    k.fds.resize(10_000_000, None);
    let file = framed(&encode(&k), 1);
    assert!(file.len() < 100_000, "{}", file.len());
    let before = peak_rss();
    let err = refused_state(&k);
    assert!(err.contains("more memory than its encoding"), "{err}");
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the read took {grown} bytes more at its peak"
    );
    // The same with freed inodes, and with empty names in a directory.
    let mut k = sandbox();
    k.fs.nodes.resize(10_000_000, None);
    assert!(refused_state(&k).contains("more memory"));
    let mut k = sandbox();
    k.args = vec![String::new(); 10_000_000];
    assert!(refused_state(&k).contains("more memory"));
}

/// Class 2: a decoded state whose parts disagree is refused before any guest runs on it,
/// each with a message naming what is wrong (each of these panicked a host before).
#[test]
fn an_inconsistent_state_is_refused() {
    let base = sandbox();
    let mut file = I {
        node: N::File(b"abc".to_vec()),
        nlink: 1,
        open: 0,
        atim: 0,
        mtim: 0,
        ctim: 0,
    };
    let mut named = base.clone();
    if let Some(Some(I {
        node: N::Dir(d), ..
    })) = named.fs.nodes.first_mut()
    {
        d.entries.insert("f".into(), (1, 3));
        d.order.insert(3, "f".into());
        d.next_seq = 4;
    }
    named.fs.nodes.push(Some(file.clone()));
    // The directory names an inode the table lacks.
    let mut k = named.clone();
    k.fs.nodes.pop();
    assert!(refused_state(&k).contains("free inode"));
    // The free list points at a live inode.
    let mut k = named.clone();
    k.fs.free.push(1);
    assert!(refused_state(&k).contains("free list"));
    // The entries and the order disagree.
    let mut k = named.clone();
    if let Some(Some(I {
        node: N::Dir(d), ..
    })) = k.fs.nodes.first_mut()
    {
        d.order.clear();
    }
    assert!(refused_state(&k).contains("disagree"));
    // A link count the entries do not bear out.
    file.nlink = 5;
    let mut k = named.clone();
    k.fs.nodes[1] = Some(file);
    assert!(refused_state(&k).contains("links"));
    // A descriptor on an inode that does not exist, or on a host mount never mounted.
    let mut k = base.clone();
    k.fds.push(Some(Descriptor {
        object: Object::MemFile { ino: 9, offset: 0 },
        ..k.fds[0].clone().unwrap()
    }));
    assert!(refused_state(&k).contains("inode 9"));
    let mut k = base.clone();
    k.fds.push(Some(Descriptor {
        object: Object::HostFile {
            mount: 3,
            key: 0,
            path: "x".into(),
            offset: 0,
        },
        rights: 0,
        ..k.fds[0].clone().unwrap()
    }));
    assert!(refused_state(&k).contains("not mounted"));
    // A descriptor with rights its kind cannot have (stdout that can open paths).
    let mut k = base.clone();
    if let Some(Some(d)) = k.fds.get_mut(1) {
        d.rights = u64::MAX;
    }
    assert!(refused_state(&k).contains("rights"));
    // A host path that climbs out of its mount.
    let mut k = base;
    k.mounts.push(Mount {
        guest_path: "/data".into(),
        kind: MountKind::Host { index: 0 },
    });
    k.fds.push(Some(Descriptor {
        object: Object::HostFile {
            mount: 0,
            key: 0,
            path: "../../etc/passwd".into(),
            offset: 0,
        },
        rights: 0,
        ..k.fds[0].clone().unwrap()
    }));
    assert!(refused_state(&k).contains("malformed path"));
}

/// Class 3: the snapshot does not set its own limits. Its file-system limit is replaced by
/// the resumer's (and a tree over that is refused); a sleep owed for ever is refused.
#[test]
fn limits_are_the_resumers() {
    let mut k = sandbox();
    k.fs.limit = u64::MAX;
    k.fs.used = 0;
    let snap = read_with(&framed(&encode(&k), 1), &Limits::default()).unwrap();
    assert_eq!(
        snap.kernel.fs().limit_bytes(),
        tabi_libos::vfs::MemFs::DEFAULT_LIMIT_BYTES
    );
    assert_eq!(snap.kernel.fs().used_bytes(), tabi_libos::vfs::INODE_COST);
    let mut tight = Limits::default();
    tight.state = tabi_libos::StateLimits {
        fs_bytes: 10,
        ..tight.state
    };
    assert!(matches!(
        read_with(&framed(&encode(&k), 1), &tight),
        Err(Error::BadKernelState(why)) if why.contains("over the limit")
    ));

    let mut k = sandbox();
    k.clocks = Clocks::HostCarried {
        offset_ns: 0,
        last_ns: 5,
        owed_until: Some(u64::MAX),
    };
    assert!(refused_state(&k).contains("owes a sleep"));
}

/// Class 1: a memory claim is checked against the resumer's cap, and an incremental link that
/// grows a one-page memory to 4 GiB costs what it writes, not what it claims.
#[test]
fn memory_claims_are_capped_and_growth_costs_nothing_until_written() {
    let small = framed(&encode(&sandbox()), 1);
    let limits = Limits::default().with_memory_bytes(1 << 30);
    let big = framed(&encode(&sandbox()), 1 << 15);
    assert!(matches!(
        read_with(&big, &limits),
        Err(Error::TooLarge { what, .. }) if what.contains("memory 0")
    ));
    drop(big);
    let parent = read_with(&small, &Limits::default()).unwrap();
    let grown = vec![0u8; 0x10000 * PAGE];
    let kernel = encode(&sandbox());
    let contents = Contents {
        identity: parent.identity.clone(),
        module: None,
        entry: "_start",
        budget: None,
        points: 2,
        globals: &[],
        tables: &[],
        memories: vec![&grown],
        stack: &[],
        kernel: &kernel,
        mounts: &[],
    };
    let base = tabi_snapshot::Base {
        hash: parent.hash,
        memories: vec![tabi_snapshot::Prior::Bytes(&parent.memories[0])],
        kernel: &parent.kernel_bytes,
    };
    let mut link = Vec::new();
    write(&mut link, &contents, Some(&base)).unwrap();
    drop(grown);
    assert!(link.len() < 4096, "{}", link.len());
    let before = peak_rss();
    let child = read(&mut &link[..], &Limits::default(), Some(&parent)).unwrap();
    assert_eq!(child.memories[0].len(), 0x10000 * PAGE);
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the read took {grown} bytes more at its peak"
    );
}

/// Class 5: the writer refuses what the reader would, before writing a byte.
#[test]
fn the_writer_refuses_what_the_reader_would() {
    let mut k = sandbox();
    k.fs.free.push(0);
    let state = encode(&k);
    let mem = vec![0u8; PAGE];
    let contents = Contents {
        identity: Identity::default(),
        module: None,
        entry: "_start",
        budget: None,
        points: 0,
        globals: &[],
        tables: &[],
        memories: vec![&mem],
        stack: &[],
        kernel: &state,
        mounts: &[],
    };
    let mut out = Vec::new();
    let err = write(&mut out, &contents, None).unwrap_err();
    assert!(err.to_string().contains("free list"), "{err}");
    assert!(out.is_empty());
    let small = Limits {
        section: 8,
        ..Limits::default()
    };
    let mut contents = contents;
    let good = encode(&sandbox());
    contents.kernel = &good;
    let err = tabi_snapshot::write_within(&mut out, &contents, None, &small).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert!(out.is_empty());
}
