//! Kernel states from arbitrary bytes, framed validly as a snapshot's kernel section (the
//! checksums and content hash right, so nothing dies in the framing), read with the real
//! limits. The read either refuses the state or accepts one that passes every check, and it
//! never has more than a small multiple of the file live at once (the bound of
//! `docs/snapshot-format.md`). An accepted state then runs through the operations a guest can
//! ask for, which must leave it valid, and round-trips through a snapshot the writer accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tabi_snapshot::Limits;
use tabi_tests::hostile::{PeakAlloc, exercise, framed};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc::new();

fuzz_target!(|data: &[u8]| {
    let file = framed(data, 1);
    let limits = Limits::default();
    let before = ALLOC.reset();
    let read = tabi_snapshot::read(&mut &file[..], &limits, None);
    let grown = ALLOC.peak().saturating_sub(before);
    // Structure: 4 MiB and 64 bytes per stored byte, at most doubled by a growing `Vec`;
    // content: the state's bytes, held twice; the page of memory and the file itself.
    let bound = (16 << 20) + 1024 * file.len();
    assert!(grown <= bound, "reading a {}-byte file took {grown} bytes", file.len());
    let Ok(snapshot) = read else {
        return;
    };
    let mut kernel = snapshot.kernel;
    let bytes = tabi_libos::encode_state(&kernel).expect("a decoded state encodes");
    let contents = tabi_snapshot::Contents {
        identity: tabi_snapshot::Identity::default(),
        module: None,
        entry: "_start",
        budget: None,
        points: 1,
        globals: &[],
        tables: &[],
        memories: vec![],
        stack: &[],
        kernel: &bytes,
        mounts: &[],
        extensions: &[],
    };
    let mut out = Vec::new();
    tabi_snapshot::write(&mut out, &contents, None).expect("a state the reader took is written");
    let again = tabi_snapshot::read(&mut &out[..], &limits, None).expect("and read back");
    assert_eq!(again.kernel, kernel);
    exercise(&mut kernel, &limits.state);
});
