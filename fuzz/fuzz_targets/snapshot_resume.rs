//! A valid snapshot (the std_fs guest paused after its 10th migration point), or a valid
//! incremental one on top of it (the same run paused again two points later), mutated by the
//! input, either is refused with an error or resumes (the guest may trap or fail, but nothing
//! panics).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tabi::{AfterPause, Backend, Chain, Engine, PauseHandle, Resume, Stdio};
use tabi_snapshot::{Limits, Snapshot};
use tabi_tests::harness::Setup;

struct Seed {
    /// The full snapshot's bytes, and the snapshot they give.
    full: Vec<u8>,
    base: Snapshot,
    /// The next link of the chain: incremental where the host tracks writes, else full.
    link: Vec<u8>,
    wasm: Vec<u8>,
    engine: Engine,
}

fn seed() -> &'static Seed {
    static SEED: OnceLock<Seed> = OnceLock::new();
    SEED.get_or_init(|| {
        let original = std::fs::read(tabi_tests::guests::STD_FS).unwrap();
        let options = tabi::rewrite_options(false);
        let wasm = tabi::RewriteCache::default()
            .rewrite(&original, &options)
            .unwrap()
            .to_vec();
        let setup = Setup {
            args: vec!["std_fs".into()],
            memory_dirs: vec!["/sandbox".into()],
            deterministic: Some(1),
            stdin: Stdio::Null,
            ..Setup::default()
        };
        let engine = Engine::new(Backend::Wasmi).unwrap();
        let request = PauseHandle::new();
        let guest = setup
            .builder(&engine, &original)
            .stdout(Stdio::Null)
            .stderr(Stdio::Null)
            .rewrite(options)
            .pause_after(10)
            .pause_handle(&request)
            .build()
            .unwrap();
        let mut chain = Chain::new();
        let mut links: Vec<Vec<u8>> = Vec::new();
        let _ = guest
            .run_with(|pause| {
                let mut bytes = Vec::new();
                pause.write_incremental_to(&mut chain, &mut bytes).unwrap();
                links.push(bytes);
                if links.len() == 1 {
                    request.request();
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
            engine,
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
    let Ok(snapshot) = tabi_snapshot::read(&mut &b[..], &Limits::default(), base) else {
        return;
    };
    if snapshot.check_module(None, &seed.wasm).is_err() {
        return;
    }
    let Ok(guest) = Resume::new(&seed.engine)
        .stdin(Stdio::Null)
        .stdout(Stdio::Null)
        .stderr(Stdio::Null)
        .from_snapshot(snapshot)
    else {
        return;
    };
    let _ = guest.run();
});
