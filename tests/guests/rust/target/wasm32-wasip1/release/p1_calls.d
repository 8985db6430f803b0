/work/main/tests/guests/rust/target/wasm32-wasip1/release/p1_calls.wasm: /work/main/tests/guests/rust/src/bin/p1_calls.rs /work/main/tests/guests/rust/src/lib.rs
