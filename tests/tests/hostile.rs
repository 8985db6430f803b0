//! Hostile snapshots: valid framing (checksums and content hash right) around hostile content.
//! Each is refused with a clear error before it can cost more than a small, stated amount of
//! memory, and the limits a resume applies are the resumer's, not the snapshot's.
//!
//! The kernel states are built with a mirror of the kernel's serde shape ([`K`]), since the
//! kernel's own types cannot hold what a hostile file can say. [`mirror_matches_the_kernel`]
//! keeps the mirror honest.

use tabi_libos::kernel::Clocks;
use tabi_libos::{Descriptor, Kernel, Mount, MountKind, Object};
use tabi_snapshot::{Contents, Error, Identity, Limits, PAGE, read, write};
use tabi_tests::hostile::{I, K, Many, N, contents, encode, framed, sandbox, with_many};

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
    for which in [Many::Descriptors, Many::Inodes, Many::Args] {
        let state = with_many(&sandbox(), which, 10_000_000);
        let file = framed(&state, 1);
        assert!(file.len() < 100_000, "{which:?}: {}", file.len());
        let before = peak_rss();
        let err = match read_with(&file, &Limits::default()) {
            Err(Error::BadKernelState(why)) => why,
            other => panic!("{which:?}: {:?}", other.map(|_| ())),
        };
        assert!(err.contains("more memory than its encoding"), "{err}");
        let grown = peak_rss().saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "{which:?}: the read took {grown} bytes more at its peak"
        );
    }
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
        points: 2,
        ..contents(&grown, &kernel)
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
        points: 0,
        ..contents(&mem, &state)
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

/// Recomputes, in a version 4 snapshot whose payloads were edited (lengths unchanged), every
/// section's and chunk's BLAKE3 and the content hash: a valid snapshot with other contents.
fn reframe(mut bytes: Vec<u8>) -> Vec<u8> {
    let mut digest = blake3::Hasher::new();
    digest.update(&bytes[..16]);
    let mut at = 16;
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    loop {
        let id = bytes[at];
        if id == 0xFF {
            digest.update(&[id]);
            let hash = digest.finalize();
            bytes[at + 1..at + 33].copy_from_slice(hash.as_bytes());
            return bytes;
        }
        if id == 6 {
            digest.update(&bytes[at..at + 13]);
            at += 13;
            loop {
                if u32_at(&bytes, at) == u32::MAX {
                    digest.update(&bytes[at..at + 4]);
                    at += 4;
                    break;
                }
                let len = u32_at(&bytes, at + 9) as usize;
                let hash = blake3::hash(&bytes[at + 45..at + 45 + len]);
                bytes[at + 13..at + 45].copy_from_slice(hash.as_bytes());
                digest.update(&bytes[at..at + 45]);
                at += 45 + len;
            }
            continue;
        }
        let len = u32_at(&bytes, at + 1);
        let mut h = blake3::Hasher::new();
        h.update(&[id]);
        h.update(&len.to_le_bytes());
        h.update(&bytes[at + 37..at + 37 + len as usize]);
        let hash = h.finalize();
        bytes[at + 5..at + 37].copy_from_slice(hash.as_bytes());
        digest.update(&bytes[at..at + 37]);
        at += 37 + len as usize;
    }
}

/// Class 4: the content hash covers every byte. A parent whose memory was changed and framed
/// again validly is another snapshot (another hash), so the link that names the real one
/// refuses it; the same change without new framing is a checksum error.
#[test]
fn a_forged_parent_is_not_the_parent() {
    let mut mem = vec![0u8; 2 * PAGE];
    mem[..11].copy_from_slice(b"the parent!");
    let kernel = encode(&sandbox());
    let c = Contents {
        identity: Identity::default(),
        ..contents(&mem, &kernel)
    };
    let mut parent_bytes = Vec::new();
    write(&mut parent_bytes, &c, None).unwrap();
    let parent = read_with(&parent_bytes, &Limits::default()).unwrap();
    let mut later = mem.clone();
    later[PAGE] = 9;
    let c = Contents {
        identity: Identity::default(),
        points: 2,
        ..contents(&later, &kernel)
    };
    let base = tabi_snapshot::Base {
        hash: parent.hash,
        memories: vec![tabi_snapshot::Prior::Bytes(&parent.memories[0])],
        kernel: &parent.kernel_bytes,
    };
    let mut link = Vec::new();
    write(&mut link, &c, Some(&base)).unwrap();

    // The page is stored raw or compressed; either way "parent" is in it.
    let at = parent_bytes
        .windows(6)
        .position(|w| w == b"parent")
        .expect("the text is stored as it is");
    let mut forged = parent_bytes.clone();
    forged[at..at + 6].copy_from_slice(b"forged");
    assert!(matches!(
        read_with(&forged, &Limits::default()),
        Err(Error::BadChecksum { .. })
    ));
    let forged = reframe(forged);
    let forged = read_with(&forged, &Limits::default()).unwrap();
    assert_eq!(&forged.memories[0][4..10], b"forged");
    assert_ne!(forged.hash, parent.hash);
    assert!(matches!(
        read(&mut &link[..], &Limits::default(), Some(&forged)),
        Err(Error::Parent { .. })
    ));
    let child = read(&mut &link[..], &Limits::default(), Some(&parent)).unwrap();
    assert_eq!(&child.memories[0][..11], b"the parent!");
    assert_eq!(child.memories[0][PAGE], 9);
}

/// Class 4: with a key, a snapshot carries a MAC and a reader given the key refuses one
/// without a valid MAC: unauthenticated, made with another key, or changed and framed again.
#[test]
fn a_key_authenticates_snapshots() {
    let mem = vec![1u8; PAGE];
    let kernel = encode(&sandbox());
    let c = Contents {
        identity: Identity::default(),
        points: 1,
        ..contents(&mem, &kernel)
    };
    let key = tabi_snapshot::Key::derive(b"a secret shared by the two nodes");
    let with_key = Limits {
        key: Some(key),
        ..Limits::default()
    };
    let mut signed = Vec::new();
    tabi_snapshot::write_within(&mut signed, &c, None, &with_key).unwrap();
    let mut plain = Vec::new();
    write(&mut plain, &c, None).unwrap();
    assert_eq!(signed.len(), plain.len() + 32);

    assert!(read_with(&signed, &with_key).is_ok());
    assert!(read_with(&signed, &Limits::default()).is_ok());
    let unauthenticated = |bytes: &[u8], limits: &Limits| {
        matches!(read_with(bytes, limits), Err(Error::Unauthenticated { .. }))
    };
    assert!(unauthenticated(&plain, &with_key));
    let other = Limits {
        key: Some(tabi_snapshot::Key::derive(b"another secret")),
        ..Limits::default()
    };
    assert!(unauthenticated(&signed, &other));
    // Changed and framed again (a valid content hash): the MAC no longer matches.
    let mut changed = signed.clone();
    let end = changed.len() - 65;
    assert_eq!(changed[end], 0xFF);
    let at = changed
        .windows(4)
        .position(|w| w == b"_sta")
        .expect("the entry name");
    changed[at] = b'X';
    let mac = changed.split_off(changed.len() - 32);
    let mut changed = reframe(changed);
    changed.extend_from_slice(&mac);
    assert!(unauthenticated(&changed, &with_key));
    // The flag taken off (the header's CRC fixed): refused for want of a MAC.
    let mut stripped = signed[..signed.len() - 32].to_vec();
    stripped[10] &= !2;
    let crc = crc32fast::hash(&stripped[..12]);
    stripped[12..16].copy_from_slice(&crc.to_le_bytes());
    let stripped = reframe(stripped);
    assert!(unauthenticated(&stripped, &with_key));
    assert!(read_with(&stripped, &Limits::default()).is_ok());
}

#[global_allocator]
static ALLOC: tabi_tests::hostile::PeakAlloc = tabi_tests::hostile::PeakAlloc::new();

/// Pseudo-random bytes for the fuzzers' drivers, the same on every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The structured kernel fuzzer's driver on 300 fixed inputs: every state the kernel reaches
/// through a guest's file operations on a memory and a host mount, restores included, passes
/// the check, and every open host file's recorded path names the object its handle holds.
#[test]
fn kernel_operations_keep_every_invariant_and_the_host_paths_right() {
    let tmp = tempfile::tempdir().unwrap();
    for seed in 0..300 {
        let data = noise(seed, 400);
        let mut u = arbitrary::Unstructured::new(&data);
        tabi_tests::hostile::kernel_ops(&mut u, &tmp.path().join("h")).unwrap();
    }
}

/// The preview-1 fuzzer's driver on 2,000 fixed inputs: hostile arguments give errnos, each
/// call allocates at most 1 MiB over a 64 KiB memory, and the state stays valid.
#[test]
fn hostile_p1_arguments_are_errnos_within_bounded_allocation() {
    for seed in 0..2000 {
        let data = noise(seed, 600);
        let mut u = arbitrary::Unstructured::new(&data);
        tabi_tests::hostile::p1_calls(&mut u, &ALLOC, 1 << 20).unwrap();
    }
}

/// The wasi-nn fuzzer's driver on 2,000 fixed inputs: hostile arguments give error codes,
/// never a trap; each call allocates at most 256 KiB over a 64 KiB memory whatever sizes
/// the guest claims; the state stays valid and round-trips through its encoding.
#[test]
fn hostile_nn_arguments_are_error_codes_within_bounded_allocation() {
    let mut succeeded = [0usize; 7];
    for seed in 0..2000 {
        let data = noise(seed, 600);
        let mut u = arbitrary::Unstructured::new(&data);
        let s = tabi_tests::hostile::nn_calls(&mut u, &ALLOC, 256 << 10).unwrap();
        for (t, n) in succeeded.iter_mut().zip(s) {
            *t += n;
        }
    }
    // The inputs reach past the first checks of every function.
    for (name, n) in tabi_libos::nn::NAMES.iter().zip(succeeded) {
        assert!(n > 0, "no call of {name} succeeded: {succeeded:?}");
    }
}

/// A kernel state holding wasi-nn's (a model, a graph, a context with an input and the
/// outputs of a compute) reads back from a snapshot as it was; the same state with one byte
/// of the model changed, or a context naming a graph that is not there, is refused, naming
/// wasi-nn. The first is also a seed of the `kernel_roundtrip` fuzz target's corpus.
#[test]
fn a_snapshots_wasi_nn_state_is_checked() {
    use tabi_tests::hostile::NnHost;
    let mut host = NnHost::new();
    let mut k = Kernel::new();
    let mut mem = vec![0u8; 64 << 10];
    let model = b"\x00 a model of the fake backend, one input";
    mem[8192..8192 + model.len()].copy_from_slice(model);
    mem[1024..1032].copy_from_slice(&[0, 32, 0, 0, model.len() as u8, 0, 0, 0]);
    assert_eq!(
        tabi_libos::nn::load(&mut k, &mut host, &mut mem, 1024, 1, 1, 0, 2000),
        Ok(0)
    );
    assert_eq!(
        tabi_libos::nn::init_execution_context(&mut k, &mut host, &mut mem, 0, 2004),
        Ok(0)
    );
    mem[4096..4116]
        .copy_from_slice(&[0, 20, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 24, 0, 0, 4, 0, 0, 0]);
    mem[5120..5124].copy_from_slice(&4u32.to_le_bytes());
    mem[6144..6148].copy_from_slice(b"abcd");
    assert_eq!(
        tabi_libos::nn::set_input(&mut k, &mut host, &mut mem, 0, 0, 4096),
        Ok(0)
    );
    assert_eq!(
        tabi_libos::nn::compute(&mut k, &mut host, &mut mem, 0),
        Ok(0)
    );

    let bytes = tabi_libos::encode_state(&k).unwrap();
    if std::env::var_os("TABI_WRITE_SEEDS").is_some() {
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fuzz/corpus/kernel_roundtrip/wasi-nn-state"
            ),
            &bytes,
        )
        .unwrap();
    }
    let file = framed(&bytes, 1);
    let s = read(&mut &file[..], &Limits::default(), None).unwrap();
    assert_eq!(s.kernel.nn(), k.nn());

    let at = bytes
        .windows(model.len())
        .position(|w| w == model)
        .expect("the model's bytes are in the state");
    let mut forged = bytes.clone();
    forged[at + 3] ^= 1;
    let e = read(&mut &framed(&forged, 1)[..], &Limits::default(), None).unwrap_err();
    assert!(e.to_string().contains("wasi-nn"), "{e}");

    // The context's graph handle is the byte just before its inputs map: 0 -> 9.
    let mut forged = bytes.clone();
    let graph_at = bytes
        .windows(3)
        .rposition(|w| w == [1, 1, 0])
        .expect("a context slot: Some, graph 0");
    forged[graph_at + 2] = 9;
    let e = read(&mut &framed(&forged, 1)[..], &Limits::default(), None).unwrap_err();
    assert!(e.to_string().contains("wasi-nn"), "{e}");
}
