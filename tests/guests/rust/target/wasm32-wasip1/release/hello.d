/work/main/tests/guests/rust/target/wasm32-wasip1/release/hello.wasm: /work/main/tests/guests/rust/src/bin/hello.rs /work/main/tests/guests/rust/src/lib.rs
