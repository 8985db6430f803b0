//! The snapshot format: round trips, incremental snapshots, and each class of bad input
//! refused with its own error.

use std::path::Path;

use tabi_hostmem::resident::Touched;
use tabi_libos::Kernel;
use tabi_libos::machine::{TableImage, Value};
use tabi_snapshot::{
    Base, Contents, Error, Identity, Limits, PAGE, Prior, Snapshot, read, write, write_unchecked,
};

/// Three pages: data, zeros, a repeating pattern; and a second, one-page memory.
fn memories() -> (Vec<u8>, Vec<u8>) {
    let mut a = vec![0u8; 3 * PAGE];
    for (i, b) in a[..PAGE].iter_mut().enumerate() {
        *b = (i * 7 + i / 300) as u8;
    }
    for (i, b) in a[2 * PAGE..].iter_mut().enumerate() {
        *b = (i % 5) as u8;
    }
    let mut b = vec![0u8; PAGE];
    b[100] = 42;
    (a, b)
}

fn kernel_bytes() -> Vec<u8> {
    let mut k = Kernel::new();
    k.set_args(vec!["guest".to_string(), "x".to_string()]);
    k.mount_memory("/sandbox", 0).unwrap();
    tabi_libos::encode_state(&k).unwrap()
}

fn snapshot_bytes(a: &[u8], b: &[u8], kernel: &[u8], base: Option<&Base<'_>>) -> Vec<u8> {
    let globals = [
        Value::I32(-5),
        Value::I64(1 << 40),
        Value::F32(0x4049_0fdb),
        Value::F64(0x4009_21fb_5444_2d18),
        Value::V128(u128::MAX - 3),
    ];
    let contents = Contents {
        identity: Identity {
            original_sha256: [1; 32],
            module_sha256: [2; 32],
            options: b"safepoints=no".to_vec(),
            parent: None,
        },
        module: Some(b"\0asm\x01\0\0\0"),
        entry: "_start",
        budget: Some(77),
        points: 12,
        globals: &globals,
        tables: &tables(),
        memories: vec![a, b],
        stack: &[9, 8, 7, 6],
        kernel,
        mounts: &[tabi_snapshot::HostMount {
            guest_path: "/data".into(),
            fingerprint: [5; 32],
        }],
        extensions: &[],
    };
    let mut out = Vec::new();
    // Unchecked: some tests frame kernel states the reader must refuse.
    write_unchecked(&mut out, &contents, base).unwrap();
    out
}

/// One table as instantiated, one the guest wrote.
fn tables() -> Vec<TableImage> {
    vec![
        TableImage::AsInstantiated,
        TableImage::Funcs(vec![Some(3), None, Some(0), Some(u32::MAX - 1)]),
    ]
}

fn full() -> Vec<u8> {
    let (a, b) = memories();
    snapshot_bytes(&a, &b, &kernel_bytes(), None)
}

fn read_all(bytes: &[u8]) -> Result<Snapshot, Error> {
    read(&mut &bytes[..], &Limits::default(), None)
}

#[test]
fn round_trip_keeps_everything() {
    let (a, b) = memories();
    let bytes = full();
    let s = read_all(&bytes).unwrap();
    assert_eq!(s.memories, vec![a, b]);
    assert_eq!(s.entry, "_start");
    assert_eq!(s.budget, Some(77));
    assert_eq!(s.points, 12);
    assert_eq!(s.globals[1], Value::I64(1 << 40));
    assert_eq!(s.globals[4], Value::V128(u128::MAX - 3));
    assert_eq!(s.stack, vec![9, 8, 7, 6]);
    assert_eq!(s.tables, tables());
    assert_eq!(s.module.as_deref(), Some(&b"\0asm\x01\0\0\0"[..]));
    assert_eq!(s.kernel_bytes, kernel_bytes());
    assert_eq!(s.identity.options, b"safepoints=no");
    assert_eq!(s.mounts[0].guest_path, "/data");
    // The zero page is left out: less than the two data pages' raw size is stored.
    let mem = &s
        .sections
        .iter()
        .find(|i| i.id == tabi_snapshot::SectionId::Memory)
        .unwrap();
    assert_eq!(mem.raw, 2 * PAGE as u64);
    assert!(mem.stored < PAGE as u64, "compressed to {}", mem.stored);
    // Writing is deterministic.
    assert_eq!(full(), bytes);
}

#[test]
fn incremental_snapshots_hold_only_changes_and_need_their_parent() {
    let (a, b) = memories();
    let k = kernel_bytes();
    let parent_bytes = snapshot_bytes(&a, &b, &k, None);
    let parent = read_all(&parent_bytes).unwrap();
    let mut a2 = a.clone();
    a2[PAGE + 5] = 1; // the zero page gets data
    a2[..PAGE].fill(0); // the first page becomes zero
    a2.extend(vec![3u8; PAGE]); // the memory grew by a page
    let base = Base {
        hash: parent.hash,
        memories: vec![Prior::Bytes(&a), Prior::Bytes(&b)],
        kernel: &k,
    };
    let child_bytes = snapshot_bytes(&a2, &b, &k, Some(&base));
    assert!(child_bytes.len() < parent_bytes.len());
    let child = read(&mut &child_bytes[..], &Limits::default(), Some(&parent)).unwrap();
    assert_eq!(child.memories, vec![a2.clone(), b.clone()]);

    // The same change, known from a map of the blocks written instead of the parent's bytes:
    // the pages not written are not even read (here they hold garbage the parent lacks, and
    // stay out of the child).
    let mut written = vec![false; a.len() / 4096];
    written[0] = true; // the first page, now zero
    written[PAGE / 4096 + 1] = true; // the second page, one block of it
    let written = Touched::from_blocks(written);
    let mut b_unchanged = b.clone();
    b_unchanged[200] = 0x5a; // not in the map: must be skipped unread
    let nothing = Touched::from_blocks(vec![false; b.len() / 4096]);
    let base = Base {
        hash: parent.hash,
        memories: vec![
            Prior::Written {
                len: a.len(),
                blocks: &written,
            },
            Prior::Written {
                len: b.len(),
                blocks: &nothing,
            },
        ],
        kernel: &k,
    };
    let tracked = snapshot_bytes(&a2, &b_unchanged, &k, Some(&base));
    let child = read(&mut &tracked[..], &Limits::default(), Some(&parent)).unwrap();
    assert_eq!(child.memories, vec![a2, b.clone()]);
    // Both ways find the same pages, so they write the same bytes.
    assert_eq!(tracked, child_bytes);
    assert_eq!(child.kernel_bytes, k);
    // Without the parent, or with another, it is refused by name.
    assert!(matches!(
        read_all(&child_bytes),
        Err(Error::Parent { given: None, .. })
    ));
    let other = read_all(&snapshot_bytes(&b, &b, &k, None)).unwrap();
    assert!(matches!(
        read(&mut &child_bytes[..], &Limits::default(), Some(&other)),
        Err(Error::Parent { given: Some(_), .. })
    ));
}

#[test]
fn wrong_magic_is_refused() {
    let mut bytes = full();
    bytes[0] = b'X';
    assert_eq!(read_all(&bytes).unwrap_err(), Error::BadMagic);
    assert_eq!(
        read_all(b"hello, world, not a snapshot").unwrap_err(),
        Error::BadMagic
    );
}

/// Rewrites the header's version (and its CRC, so that only the version is wrong).
/// `bytes` claiming version `v`. A file of this writer's version is framed again the way
/// versions 1 to 3 framed it (CRC-32 where version 4 has BLAKE3, SHA-256 of the framing as
/// the content hash), so that what is read is what an older writer wrote.
fn with_version(bytes: Vec<u8>, v: u16) -> Vec<u8> {
    if v == 0 || v >= 4 {
        let mut bytes = bytes;
        bytes[8..10].copy_from_slice(&v.to_le_bytes());
        let c = crc32fast::hash(&bytes[..12]);
        bytes[12..16].copy_from_slice(&c.to_le_bytes());
        return bytes;
    }
    use sha2::Digest;
    let mut out = bytes[..16].to_vec();
    out[8..10].copy_from_slice(&v.to_le_bytes());
    let c = crc32fast::hash(&out[..12]);
    out[12..16].copy_from_slice(&c.to_le_bytes());
    let mut digest = sha2::Sha256::new();
    digest.update(&out);
    let mut at = 16;
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    loop {
        let id = bytes[at];
        if id == 0xFF {
            out.push(id);
            digest.update([id]);
            out.extend_from_slice(&digest.finalize());
            return out;
        }
        if id == 6 {
            // A memory's header is the same; each chunk's BLAKE3 becomes a CRC-32.
            out.extend_from_slice(&bytes[at..at + 13]);
            digest.update(&bytes[at..at + 13]);
            at += 13;
            loop {
                let first = &bytes[at..at + 4];
                out.extend_from_slice(first);
                digest.update(first);
                if u32_at(at) == u32::MAX {
                    at += 4;
                    break;
                }
                let len = u32_at(at + 9) as usize;
                let data = &bytes[at + 45..at + 45 + len];
                let mut head = bytes[at + 4..at + 13].to_vec();
                head.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
                out.extend_from_slice(&head);
                digest.update(&head);
                out.extend_from_slice(data);
                at += 45 + len;
            }
            continue;
        }
        let len = u32_at(at + 1);
        let payload = &bytes[at + 37..at + 37 + len as usize];
        let mut h = crc32fast::Hasher::new();
        h.update(&[id]);
        h.update(&len.to_le_bytes());
        h.update(payload);
        let mut head = vec![id];
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&h.finalize().to_le_bytes());
        out.extend_from_slice(&head);
        digest.update(&head);
        out.extend_from_slice(payload);
        at += 37 + len as usize;
    }
}

#[test]
fn unknown_versions_are_refused_by_number() {
    assert_eq!(
        read_all(&with_version(full(), tabi_snapshot::VERSION + 1)).unwrap_err(),
        Error::UnsupportedVersion {
            found: tabi_snapshot::VERSION + 1,
            newest: tabi_snapshot::VERSION
        }
    );
    assert!(matches!(
        read_all(&with_version(full(), 0)).unwrap_err(),
        Error::UnsupportedVersion { found: 0, .. }
    ));
}

/// Version 1 had only tables as instantiated: a written table in a file that claims version 1
/// is refused, while the rest of version 1 still reads (see the corpus file in
/// `the_bytes_are_the_same_on_every_host`).
#[test]
fn a_table_kind_newer_than_the_files_version_is_refused() {
    let e = read_all(&with_version(full(), 1)).unwrap_err();
    assert!(
        matches!(&e, Error::Malformed { what } if what.contains("kind 1")),
        "{e:?}"
    );
}

#[test]
fn a_flipped_bit_anywhere_is_caught() {
    let bytes = full();
    // Every byte position, one flipped bit: never a panic, never a silent success.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        assert!(read_all(&b).is_err(), "byte {i} flipped went unnoticed");
    }
    // A flip inside compressed page data is a checksum error on that memory.
    let mut b = bytes.clone();
    let at = bytes.len() / 2;
    b[at] ^= 1;
    let e = read_all(&b).unwrap_err();
    assert!(
        matches!(e, Error::BadChecksum { .. } | Error::Malformed { .. }),
        "{e:?}"
    );
}

#[test]
fn every_truncation_is_refused() {
    let bytes = full();
    for n in 0..bytes.len() {
        match read_all(&bytes[..n]) {
            Err(Error::Truncated { .. }) => {}
            other => panic!("cut at {n}: {other:?}"),
        }
    }
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(matches!(read_all(&extra), Err(Error::Malformed { .. })));
}

/// Byte offset of the first section header after the header and identity.
fn after_identity(bytes: &[u8]) -> usize {
    let len = u32::from_le_bytes(bytes[17..21].try_into().unwrap()) as usize;
    16 + 37 + len
}

#[test]
fn sections_out_of_order_are_refused() {
    let bytes = full();
    let at = after_identity(&bytes);
    assert_eq!(bytes[at], 2, "the module section follows the identity");
    let mut b = bytes.clone();
    b[at] = 3; // claims to be the machine section where the module is: its CRC covers its id
    assert!(matches!(
        read_all(&b).unwrap_err(),
        Error::BadChecksum { .. }
    ));
    let mut b = bytes.clone();
    b[at] = 8;
    assert!(matches!(
        read_all(&b).unwrap_err(),
        Error::OutOfOrder { found: 8, .. }
    ));
    let mut b = bytes.clone();
    b[at] = 0x77;
    assert!(matches!(
        read_all(&b).unwrap_err(),
        Error::OutOfOrder { found: 0x77, .. }
    ));
}

#[test]
fn sizes_over_the_limits_are_refused_before_allocating() {
    let bytes = full();
    let tight = Limits {
        pages: 2,
        ..Limits::default()
    };
    assert!(matches!(
        read(&mut &bytes[..], &tight, None).unwrap_err(),
        Error::TooLarge {
            size: 3,
            limit: 2,
            ..
        }
    ));
    let tight = Limits {
        total_pages: 3,
        ..Limits::default()
    };
    assert!(matches!(
        read(&mut &bytes[..], &tight, None).unwrap_err(),
        Error::TooLarge { .. }
    ));
    let tight = Limits {
        memories: 1,
        ..Limits::default()
    };
    assert!(matches!(
        read(&mut &bytes[..], &tight, None).unwrap_err(),
        Error::TooLarge { .. }
    ));
    // A section declaring 4 GiB in a short file: refused by the limit, not by allocating.
    let mut b = bytes.clone();
    b[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(read_all(&b).unwrap_err(), Error::TooLarge { .. }));
    // Declared within the limit but longer than the file: truncated.
    let mut b = bytes.clone();
    b[17..21].copy_from_slice(&(200u32 << 20).to_le_bytes());
    assert!(matches!(read_all(&b).unwrap_err(), Error::Truncated { .. }));
}

#[test]
fn kernel_state_that_does_not_decode_is_refused() {
    let (a, b) = memories();
    let bytes = snapshot_bytes(&a, &b, &[0xff; 40], None);
    assert!(matches!(
        read_all(&bytes).unwrap_err(),
        Error::BadKernelState(_)
    ));
    let mut k = kernel_bytes();
    k.truncate(k.len() - 3);
    let bytes = snapshot_bytes(&a, &b, &k, None);
    assert!(matches!(
        read_all(&bytes).unwrap_err(),
        Error::BadKernelState(_)
    ));
}

#[test]
fn a_module_hash_that_does_not_match_is_refused() {
    let s = read_all(&full()).unwrap();
    assert!(matches!(
        s.check_module(None, b"some other module"),
        Err(Error::ModuleMismatch { .. })
    ));
}

/// The fuzz targets' seed corpus (and any crash kept there) reads without a panic; the seed
/// snapshot reads back whole.
#[test]
fn the_fuzz_corpus_reads_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/snapshot_read");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let r = read_all(&bytes);
        if path.extension().is_some_and(|x| x == "snap") {
            assert!(r.is_ok(), "{}: {r:?}", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 2);
}

/// Memories given by the caller, each full of garbage to start with.
struct Garbage {
    memories: Vec<Vec<u8>>,
    /// Pages to hand out instead of the ones asked for, to test the size check.
    wrong_size: bool,
}

impl tabi_snapshot::MemoryTarget for Garbage {
    fn memory(
        &mut self,
        head: &tabi_snapshot::Head<'_>,
        index: u32,
        pages: u32,
    ) -> Result<&mut [u8], Error> {
        assert_eq!(
            head.identity.original_sha256, [1; 32],
            "the head is read first"
        );
        assert_eq!(
            index as usize,
            self.memories.len(),
            "memories come in order"
        );
        let pages = if self.wrong_size { pages + 1 } else { pages };
        self.memories.push(vec![0xA5; pages as usize * PAGE]);
        Ok(self.memories.last_mut().unwrap())
    }
}

/// Reading into the caller's memories gives the same bytes as reading into the snapshot's
/// own: the chunks written, and every page the snapshot leaves out zeroed.
#[test]
fn read_into_fills_the_targets_memories_and_zeroes_the_rest() {
    let bytes = full();
    let owned = read_all(&bytes).unwrap();
    let mut target = Garbage {
        memories: Vec::new(),
        wrong_size: false,
    };
    let s = tabi_snapshot::read_into(&mut &bytes[..], &Limits::default(), &mut target).unwrap();
    assert!(s.memories.is_empty());
    assert_eq!(target.memories, owned.memories);
    assert_eq!(s.hash, owned.hash);
    assert_eq!(s.stack, owned.stack);

    // A target whose memory does not have the snapshot's size is refused.
    let mut target = Garbage {
        memories: Vec::new(),
        wrong_size: true,
    };
    let e = tabi_snapshot::read_into(&mut &bytes[..], &Limits::default(), &mut target);
    assert!(matches!(e, Err(Error::Malformed { .. })), "{e:?}");

    // An incremental snapshot needs its parent, which a target cannot give.
    let (a, b) = memories();
    let parent = read_all(&bytes).unwrap();
    let base = Base {
        hash: parent.hash,
        memories: vec![Prior::Bytes(&a[..]), Prior::Bytes(&b[..])],
        kernel: &parent.kernel_bytes,
    };
    let mut c = a.clone();
    c[5] = 9;
    let inc = snapshot_bytes(&c, &b, &kernel_bytes(), Some(&base));
    let mut target = Garbage {
        memories: Vec::new(),
        wrong_size: false,
    };
    let e = tabi_snapshot::read_into(&mut &inc[..], &Limits::default(), &mut target);
    assert!(matches!(e, Err(Error::Parent { .. })), "{e:?}");
}

/// The bytes of a snapshot do not depend on the host: written from the same contents, they
/// hash to the same value on little- and big-endian machines (this test also runs on s390x).
/// A byte-order mistake anywhere in the writer, or in the compressor, changes the hash.
#[test]
fn the_bytes_are_the_same_on_every_host() {
    let bytes = full();
    let hash = tabi_snapshot::hex(&tabi_snapshot::sha256(&bytes));
    // Taken on x86_64. It changes when the format, the compressor or the kernel state's
    // encoding changes on purpose; then the version or the corpus may need a look too. (It
    // changed when the in-memory file system began to charge inodes and names, for version
    // 4, for version 5 with its kernel state schema 2, and for schema 3, wasi-nn's state.)
    assert_eq!(
        hash,
        "6ea8f7769475bead384892abd910dc8e9d739eb926eae7b6679439159a66f137"
    );

    // And a snapshot a real run wrote on x86_64 reads back the same values here.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/snapshot_read/hello-after-2.snap");
    let s = read_all(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(s.entry, "_start");
    assert_eq!(s.points, 2);
    assert_eq!(s.memories.len(), 1);
    assert_eq!(s.kernel.args().len(), 3);
}

/// A memory large enough to be decoded on several threads: 24 MiB with a chunk of random,
/// text-like or zero pages in turn, so that both chunk kinds and gaps alternate.
fn large_memory() -> Vec<u8> {
    let mut m = vec![0u8; 24 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for (p, page) in m.chunks_mut(PAGE).enumerate() {
        match p / 16 % 3 {
            0 => {
                for w in page.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    w.copy_from_slice(&x.to_le_bytes());
                }
            }
            1 => {
                for (i, b) in page.iter_mut().enumerate() {
                    *b = b"a large memory, decoded in parallel "[(i + p) % 36];
                }
            }
            _ => {}
        }
    }
    m
}

/// Where the memory chunk holding page `page` (of memory 0) starts in `bytes`: the offset of
/// its first data byte. Walks the chunk headers from the first memory header.
fn chunk_data_at(bytes: &[u8], page: u32) -> usize {
    let snap = read_all(bytes).unwrap();
    let before: u64 = snap
        .sections
        .iter()
        .take_while(|s| s.id != tabi_snapshot::SectionId::Memory)
        .map(|s| s.stored)
        .sum();
    // The header (16 bytes), the sections before, the memory's id and 12-byte header.
    let mut at = 16 + before as usize + 1 + 12;
    loop {
        let first = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let n = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[at + 9..at + 13].try_into().unwrap()) as usize;
        if (first..first + n).contains(&page) {
            return at + 45;
        }
        at += 45 + len;
    }
}

/// A large memory decodes the same on the reader's threads, into its own buffers and into a
/// target's memory full of garbage; a corrupted chunk is named by its pages, and of two bad
/// places the first in the file is the one reported.
#[test]
fn a_large_memory_decodes_in_parallel_and_reports_the_first_error() {
    let big = large_memory();
    let small = vec![0u8; PAGE];
    let bytes = snapshot_bytes(&big, &small, &kernel_bytes(), None);
    let s = read_all(&bytes).unwrap();
    assert!(s.memories[0] == big, "the memory read back differs");
    let mut target = Garbage {
        memories: Vec::new(),
        wrong_size: false,
    };
    tabi_snapshot::read_into(&mut &bytes[..], &Limits::default(), &mut target).unwrap();
    assert!(target.memories[0] == big, "the target's memory differs");

    // One byte changed in the chunk of pages 160..: its checksum fails, by name.
    let mut bad = bytes.clone();
    bad[chunk_data_at(&bytes, 170) + 100] ^= 1;
    let e = read_all(&bad).unwrap_err();
    assert!(
        matches!(&e, Error::BadChecksum { what } if what.contains("pages 160..176 of memory 0")),
        "{e:?}"
    );
    // Two bad chunks, next to each other (so on two decoders): the first is reported.
    let mut two = bad.clone();
    two[chunk_data_at(&bytes, 200) + 5] ^= 1;
    let e = read_all(&two).unwrap_err();
    assert!(
        matches!(&e, Error::BadChecksum { what } if what.contains("pages 160..176")),
        "{e:?}"
    );
    // And the file cut short after a later chunk: the earlier bad chunk is still reported.
    let cut = chunk_data_at(&bytes, 340) + 10;
    let e = read_all(&bad[..cut]).unwrap_err();
    assert!(
        matches!(&e, Error::BadChecksum { what } if what.contains("pages 160..176")),
        "{e:?}"
    );
    // Cut short with no bad chunk before: truncation.
    let e = read_all(&bytes[..cut]).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e:?}");
}

/// A table entry naming function 2^32 - 1 has no encoding (entries are stored plus one): the
/// writer refuses it instead of wrapping it into a null.
#[test]
fn a_table_entry_past_the_encoding_is_refused() {
    let tables = [TableImage::Funcs(vec![Some(u32::MAX)])];
    let contents = Contents {
        identity: Identity {
            original_sha256: [1; 32],
            module_sha256: [2; 32],
            options: Vec::new(),
            parent: None,
        },
        module: None,
        entry: "_start",
        budget: None,
        points: 0,
        globals: &[],
        tables: &tables,
        memories: Vec::new(),
        stack: &[],
        kernel: &kernel_bytes(),
        mounts: &[],
        extensions: &[],
    };
    let e = write(&mut Vec::new(), &contents, None).unwrap_err();
    assert!(
        matches!(e, tabi_snapshot::WriteError::Invalid(ref w) if w.contains("table entry")),
        "{e}"
    );
}

/// The kernel state (which holds the in-memory files) is stored as one LZ4 block when that is
/// smaller (version 3): a megabyte of repeated argument text takes a few kilobytes, reads
/// back the same, and is held to the section limit by its declared size before it is
/// decompressed. A version 2 file has no such block.
#[test]
fn a_large_kernel_state_is_compressed_and_checked() {
    let mut k = Kernel::new();
    k.set_args(vec!["guest".to_string(), "x".repeat(1 << 20)]);
    let kernel = tabi_libos::encode_state(&k).unwrap();
    let (a, b) = memories();
    let bytes = snapshot_bytes(&a, &b, &kernel, None);
    assert!(bytes.len() < 64 << 10, "{} bytes", bytes.len());
    let s = read_all(&bytes).unwrap();
    assert_eq!(s.kernel, k);
    assert_eq!(s.kernel_bytes, kernel);

    let tight = Limits {
        section: 512 << 10,
        ..Limits::default()
    };
    assert!(matches!(
        read(&mut &bytes[..], &tight, None).unwrap_err(),
        Error::TooLarge { what, .. } if what.contains("kernel")
    ));
    assert!(matches!(
        read_all(&with_version(bytes, 2)).unwrap_err(),
        Error::Malformed { what } if what.contains("kernel section tag")
    ));
}

/// A snapshot with the given extension sections.
fn with_extensions(extensions: &[tabi_snapshot::Extension]) -> Vec<u8> {
    framed_with_extensions(extensions, true)
}

/// [`with_extensions`] without the writer's checks.
fn with_extensions_unchecked(extensions: &[tabi_snapshot::Extension]) -> Vec<u8> {
    framed_with_extensions(extensions, false)
}

fn framed_with_extensions(extensions: &[tabi_snapshot::Extension], checked: bool) -> Vec<u8> {
    let (a, b) = memories();
    let kernel = kernel_bytes();
    let globals = [Value::I32(1)];
    let contents = Contents {
        identity: Identity::default(),
        module: None,
        entry: "_start",
        budget: None,
        points: 3,
        globals: &globals,
        tables: &[],
        memories: vec![&a, &b],
        stack: &[1, 2],
        kernel: &kernel,
        mounts: &[],
        extensions,
    };
    let mut out = Vec::new();
    if checked {
        write(&mut out, &contents, None).unwrap();
    } else {
        write_unchecked(&mut out, &contents, None).unwrap();
    }
    out
}

/// Version 5's extension sections: an optional one a reader does not know is skipped, its
/// bytes still checked and kept; a required one it does not know is refused with its name;
/// a name given twice, a changed byte or a bad name is refused too.
#[test]
fn extension_sections_are_skipped_when_optional_and_refused_by_name_when_required() {
    let optional = tabi_snapshot::Extension {
        name: "from-the-future".into(),
        required: false,
        data: b"whatever it holds".to_vec(),
    };
    let bytes = with_extensions(std::slice::from_ref(&optional));
    let s = read(&mut &bytes[..], &Limits::default(), None).unwrap();
    assert_eq!(s.version, tabi_snapshot::VERSION);
    assert_eq!(s.extensions, vec![optional.clone()]);
    assert_eq!(s.memories.len(), 2);
    assert_eq!(s.kernel_schema, tabi_libos::STATE_SCHEMA);
    assert!(
        s.sections
            .iter()
            .any(|i| i.id == tabi_snapshot::SectionId::Extension)
    );

    let required = tabi_snapshot::Extension {
        name: "sockets-v9".into(),
        required: true,
        data: vec![1, 2, 3],
    };
    let bytes = with_extensions(&[optional.clone(), required]);
    let e = read(&mut &bytes[..], &Limits::default(), None).unwrap_err();
    assert_eq!(
        e,
        Error::UnknownSection {
            name: "sockets-v9".into()
        }
    );
    assert!(e.to_string().contains("`sockets-v9`"), "{e}");

    // The same name twice (framed without the writer's checks, which refuse it too).
    let bytes = with_extensions_unchecked(&[optional.clone(), optional.clone()]);
    let e = read(&mut &bytes[..], &Limits::default(), None).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");

    // A byte of an optional extension's data changed: its digest catches it.
    let mut bytes = with_extensions(std::slice::from_ref(&optional));
    let at = bytes
        .windows(optional.data.len())
        .position(|w| w == optional.data)
        .unwrap();
    bytes[at] ^= 1;
    let e = read(&mut &bytes[..], &Limits::default(), None).unwrap_err();
    assert!(matches!(e, Error::BadChecksum { .. }), "{e}");

    // A name the writer cannot frame.
    let long = tabi_snapshot::Extension {
        name: "x".repeat(tabi_snapshot::MAX_EXTENSION_NAME + 1),
        required: false,
        data: Vec::new(),
    };
    let (a, b) = memories();
    let kernel = kernel_bytes();
    let contents = Contents {
        identity: Identity::default(),
        module: None,
        entry: "_start",
        budget: None,
        points: 0,
        globals: &[],
        tables: &[],
        memories: vec![&a, &b],
        stack: &[],
        kernel: &kernel,
        mounts: &[],
        extensions: &[long],
    };
    assert!(write(&mut Vec::new(), &contents, None).is_err());
}

/// The kernel section of version 5 names its schema: one this reader does not know is
/// refused with both numbers, and the state of schema 1 (formats 1 to 4) still decodes.
#[test]
fn the_kernel_state_carries_its_schema() {
    let bytes = with_extensions(&[]);
    let s = read(&mut &bytes[..], &Limits::default(), None).unwrap();
    // A state framed as schema 1 cannot be the current shape's: the schema decides.
    let e = tabi_snapshot::kernel_state_schema(&s.kernel_bytes, 1 << 20, 99, &Limits::default())
        .unwrap_err();
    assert!(e.to_string().contains("schema 99"), "{e}");
    let again = tabi_snapshot::kernel_state_schema(
        &s.kernel_bytes,
        1 << 20,
        tabi_libos::STATE_SCHEMA,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(again, s.kernel);
}

/// A file cannot make the reader keep more extension bytes than one section may hold, nor
/// more than a few dozen of them, however it splits them; the writer refuses the same.
#[test]
fn extension_sections_are_bounded_in_number_and_bytes() {
    let many: Vec<tabi_snapshot::Extension> = (0..=tabi_snapshot::MAX_EXTENSIONS)
        .map(|i| tabi_snapshot::Extension {
            name: format!("x{i}"),
            required: false,
            data: Vec::new(),
        })
        .collect();
    let bytes = with_extensions_unchecked(&many);
    let e = read(&mut &bytes[..], &Limits::default(), None).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    let fits = with_extensions(&many[..tabi_snapshot::MAX_EXTENSIONS]);
    read(&mut &fits[..], &Limits::default(), None).unwrap();

    // Two extensions of 600 KB each under a section limit of 1 MB: each alone fits, together
    // they do not.
    let big = |name: &str| tabi_snapshot::Extension {
        name: name.into(),
        required: false,
        data: vec![1; 600_000],
    };
    let bytes = with_extensions_unchecked(&[big("a"), big("b")]);
    let limits = Limits {
        section: 1_000_000,
        ..Limits::default()
    };
    let e = read(&mut &bytes[..], &limits, None).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    let one = with_extensions(&[big("a")]);
    read(&mut &one[..], &limits, None).unwrap();
}
