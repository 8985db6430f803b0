//! The snapshot reader on hostile bytes: a typed error or a snapshot, never a panic, and never
//! an allocation past the limits. Half the inputs get a valid header first, so that the fuzzer
//! spends its time past it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = tabi_snapshot::Limits {
        pages: 64,
        total_pages: 64,
        section: 1 << 20,
        ..Default::default()
    };
    let _ = tabi_snapshot::read(&mut &data[..], &limits, None);
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&tabi_snapshot::MAGIC);
    b.extend_from_slice(&tabi_snapshot::VERSION.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(data);
    let _ = tabi_snapshot::read(&mut &b[..], &limits, None);
});
