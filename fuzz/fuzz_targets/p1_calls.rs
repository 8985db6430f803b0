//! The preview-1 ABI with hostile arguments against a kernel (see
//! `tabi_tests::hostile::p1_calls`): errnos, never a panic; at most 1 MiB allocated by a call
//! over a 64 KiB memory; the kernel's state valid after each call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tabi_tests::hostile::PeakAlloc;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc::new();

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let _ = tabi_tests::hostile::p1_calls(&mut u, &ALLOC, 1 << 20);
});
