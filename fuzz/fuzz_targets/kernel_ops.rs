//! Sequences of file operations on a memory mount and a host mount, with checkpoints and
//! restores among them (see `tabi_tests::hostile::kernel_ops`): every state passes the
//! kernel's check, and every open host file's recorded path names the object its handle holds.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A scratch directory of this process's own, laid anew for each input.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| std::env::temp_dir().join(format!("tabi-kernel-ops-{}", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let _ = tabi_tests::hostile::kernel_ops(&mut u, scratch());
});
