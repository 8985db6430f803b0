//! The `wasi_ephemeral_nn` ABI with hostile arguments against a kernel (see
//! `tabi_tests::hostile::nn_calls`): error codes, never a panic or a trap; at most 256 KiB
//! allocated by a call over a 64 KiB memory; the kernel's state valid after each call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tabi_tests::hostile::PeakAlloc;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc::new();

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let _ = tabi_tests::hostile::nn_calls(&mut u, &ALLOC, 256 << 10);
});
