/work/main/tests/guests/rust/target/wasm32-wasip1/release/compute.wasm: /work/main/tests/guests/rust/src/bin/compute.rs /work/main/tests/guests/rust/src/lib.rs
