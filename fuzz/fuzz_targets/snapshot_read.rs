//! The snapshot reader on hostile bytes: a typed error or a snapshot, never a panic, and never
//! an allocation past the limits. Some inputs get a valid header first, so that the fuzzer
//! spends its time past it; with the incremental flag set, they are read against a parent,
//! which takes the reader down the path that applies changes to it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tabi_snapshot::{Contents, Identity, Limits, Snapshot};

/// A small full snapshot: one memory of two pages, some globals, an empty kernel.
fn parent() -> &'static Snapshot {
    static PARENT: OnceLock<Snapshot> = OnceLock::new();
    PARENT.get_or_init(|| {
        let mut mem = vec![0u8; 2 * tabi_snapshot::PAGE];
        mem[..300].iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let kernel = tabi_libos::encode_state(&tabi_libos::Kernel::new()).unwrap();
        let globals = [tabi_libos::machine::Value::I32(7)];
        let contents = Contents {
            identity: Identity {
                original_sha256: [1; 32],
                module_sha256: [2; 32],
                options: b"fuzz".to_vec(),
                parent: None,
            },
            module: None,
            entry: "_start",
            budget: None,
            points: 3,
            globals: &globals,
            tables: &[tabi_libos::machine::TableImage::Funcs(vec![Some(1), None])],
            memories: vec![&mem],
            stack: &[1, 2, 3, 4],
            kernel: &kernel,
            mounts: &[],
            extensions: &[],
        };
        let mut bytes = Vec::new();
        tabi_snapshot::write(&mut bytes, &contents, None).unwrap();
        tabi_snapshot::read(&mut &bytes[..], &Limits::default(), None).unwrap()
    })
}

fn with_header(flags: u16, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&tabi_snapshot::MAGIC);
    b.extend_from_slice(&tabi_snapshot::VERSION.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(data);
    b
}

/// A header with the incremental flag and an identity section that names [`parent`], valid
/// down to their CRCs: what follows is read against the parent.
fn incremental_head() -> &'static [u8] {
    static HEAD: OnceLock<Vec<u8>> = OnceLock::new();
    HEAD.get_or_init(|| {
        let p = parent();
        let mut payload = Vec::new();
        payload.extend_from_slice(&p.identity.original_sha256);
        payload.extend_from_slice(&p.identity.module_sha256);
        payload.push(1);
        payload.extend_from_slice(&p.hash);
        payload.extend_from_slice(&(p.identity.options.len() as u32).to_le_bytes());
        payload.extend_from_slice(&p.identity.options);
        let mut b = with_header(1, &[]);
        let id = tabi_snapshot::SectionId::Identity as u8;
        let len = payload.len() as u32;
        b.push(id);
        b.extend_from_slice(&len.to_le_bytes());
        let mut digest = blake3::Hasher::new();
        digest.update(&[id]);
        digest.update(&len.to_le_bytes());
        digest.update(&payload);
        b.extend_from_slice(digest.finalize().as_bytes());
        b.extend_from_slice(&payload);
        b
    })
}

#[global_allocator]
static ALLOC: tabi_tests::hostile::PeakAlloc = tabi_tests::hostile::PeakAlloc::new();

/// Pages of memory a snapshot may claim here: claims are allocated (lazily), so they are kept
/// small; every other limit is the real one.
const PAGES: u32 = 64;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        pages: PAGES,
        total_pages: PAGES.into(),
        ..Default::default()
    };
    parent();
    incremental_head();
    let before = ALLOC.reset();
    let _ = tabi_snapshot::read(&mut &data[..], &limits, None);
    let _ = tabi_snapshot::read(&mut &with_header(0, data)[..], &limits, None);
    let mut b = incremental_head().to_vec();
    b.extend_from_slice(data);
    let _ = tabi_snapshot::read(&mut &b[..], &limits, Some(parent()));
    // What `docs/snapshot-format.md` bounds a read by: the memories claimed, and a small
    // multiple of the file (decompressed sections, the kernel state's structure and content).
    let grown = ALLOC.peak().saturating_sub(before);
    let bound = 2 * PAGES as usize * tabi_snapshot::PAGE + (16 << 20) + 1024 * b.len();
    assert!(grown <= bound, "a read of {} bytes took {grown}", b.len());
});
