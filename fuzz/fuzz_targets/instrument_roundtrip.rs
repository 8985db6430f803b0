//! A generated module (with tail calls for half the inputs) → rewrite → run, paused at a
//! migration point chosen by the input and resumed → the same output and exit as the
//! original. Built without wasmtime, it pauses and resumes on wasmi (the test suite moves
//! generated modules between the engines).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let mut u = arbitrary::Unstructured::new(rest);
    // The low bit turns tail calls on; the others choose the pause.
    let Ok(wasm) = tabi_tests::smith::generate_with_tail_calls(&mut u, choice & 1 == 1) else {
        return;
    };
    let pick = |n: u64| if n == 0 { vec![] } else { vec![1 + u64::from(choice >> 1) % n] };
    if let Err(e) = tabi_tests::smith::check(&wasm, &pick) {
        panic!("{e}");
    }
});
