//! Arbitrary bytes into the rewrite: an error or a valid module, never a panic. The rewrite
//! validates its own output and reports an invalid one as `Error::Internal`, which is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for safepoints in [false, true] {
        let options = tabi_instrument::Options {
            safepoints,
            ..Default::default()
        };
        if let Err(tabi_instrument::Error::Internal(e)) = tabi_instrument::instrument(data, &options)
        {
            panic!("invalid output: {e}");
        }
    }
});
