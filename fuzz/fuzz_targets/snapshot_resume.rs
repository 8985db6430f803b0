//! A valid snapshot (the std_fs guest paused after its 10th migration point), or a valid
//! incremental one on top of it (the same run paused again two points later), mutated by the
//! input, either is refused with an error or resumes (the guest may trap or fail, but nothing
//! panics).
#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tabi_cli::checkpoint::{self, Backend, Chain, Setup};
use tabi_libos::host::Stdio;
use tabi_libos::machine::{AfterPause, PauseControl};
use tabi_snapshot::{Limits, Snapshot};

struct Seed {
    /// The full snapshot's bytes, and the snapshot they give.
    full: Vec<u8>,
    base: Snapshot,
    /// The next link of the chain: incremental where the host tracks writes, else full.
    link: Vec<u8>,
    wasm: Vec<u8>,
}

fn seed() -> &'static Seed {
    static SEED: OnceLock<Seed> = OnceLock::new();
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
        let request = Arc::new(AtomicBool::new(false));
        let mut control = PauseControl::after(10);
        control.request = Some(request.clone());
        let mut chain = Chain::new();
        let mut links: Vec<Vec<u8>> = Vec::new();
        checkpoint::run_with(Backend::Wasmi, &wasm, p, control, None, &mut |view| {
            let mut bytes = Vec::new();
            chain
                .write_to(&mut bytes, view, &original, &wasm, &[])
                .unwrap();
            links.push(bytes);
            if links.len() == 1 {
                request.store(true, Ordering::Release);
                Ok(AfterPause::Continue)
            } else {
                Ok(AfterPause::Stop)
            }
        })
        .unwrap();
        assert_eq!(links.len(), 2, "the seed run paused twice");
        let link = links.pop().unwrap();
        let full = links.pop().unwrap();
        let base = tabi_snapshot::read(&mut &full[..], &Limits::default(), None).unwrap();
        Seed {
            full,
            base,
            link,
            wasm,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let seed = seed();
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    let incremental = which & 1 == 1;
    let mut b = if incremental {
        seed.link.clone()
    } else {
        seed.full.clone()
    };
    // Each 5 bytes of input: a position and a byte to xor there.
    for m in data.chunks_exact(5) {
        let at = u32::from_le_bytes([m[0], m[1], m[2], m[3]]) as usize % b.len();
        b[at] ^= m[4];
    }
    let base = incremental.then_some(&seed.base);
    let Ok(mut snapshot) = tabi_snapshot::read(&mut &b[..], &Limits::default(), base) else {
        return;
    };
    if snapshot.check_module(None, &seed.wasm).is_err() {
        return;
    }
    let Ok(process) = checkpoint::resume_process(
        &snapshot,
        &[],
        checkpoint::HostIo::output(Stdio::Null, Stdio::Null),
    ) else {
        return;
    };
    let state = snapshot.take_machine_state();
    let _ = checkpoint::run(
        Backend::Wasmi,
        &seed.wasm,
        process,
        PauseControl::never(),
        Some(&state),
    );
});
