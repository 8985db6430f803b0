//! A valid snapshot (the std_fs guest paused after its 10th migration point), mutated by the
//! input, either is refused with an error or resumes (the guest may trap or fail, but nothing
//! panics).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tabi_cli::checkpoint::{self, Backend, Setup};
use tabi_libos::host::Stdio;
use tabi_libos::machine::{Outcome, PauseControl};

fn seed() -> &'static (Vec<u8>, Vec<u8>) {
    static SEED: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SEED.get_or_init(|| {
        let original = std::fs::read(tabi_tests::guests::STD_FS).unwrap();
        let wasm = checkpoint::instrumented(&original, false).unwrap();
        let setup = Setup {
            args: vec!["std_fs".into()],
            memory_dirs: vec!["/sandbox".into()],
            deterministic: Some(1),
            ..Setup::default()
        };
        let p = setup.process(Stdio::Null, Stdio::Null).unwrap();
        let Outcome::Paused(paused) =
            checkpoint::run(Backend::Wasmi, &wasm, p, PauseControl::after(10), None).unwrap()
        else {
            panic!("the seed run did not pause");
        };
        let mut bytes = Vec::new();
        checkpoint::write_to(&mut bytes, &paused.view(&paused.memories()), &original, &wasm, &[]).unwrap();
        (bytes, wasm)
    })
}

fuzz_target!(|data: &[u8]| {
    let (bytes, wasm) = seed();
    let mut b = bytes.clone();
    // Each 5 bytes of input: a position and a byte to xor there.
    for m in data.chunks_exact(5) {
        let at = u32::from_le_bytes([m[0], m[1], m[2], m[3]]) as usize % b.len();
        b[at] ^= m[4];
    }
    let Ok(mut snapshot) = tabi_snapshot::read(&mut &b[..], &tabi_snapshot::Limits::default(), None)
    else {
        return;
    };
    if snapshot.check_module(None, wasm).is_err() {
        return;
    }
    let Ok(process) = checkpoint::resume_process(&snapshot, &[], Stdio::Null, Stdio::Null) else {
        return;
    };
    let state = snapshot.take_machine_state();
    let _ = checkpoint::run(
        Backend::Wasmi,
        wasm,
        process,
        PauseControl::never(),
        Some(&state),
    );
});
