/work/main/tests/guests/rust/target/wasm32-wasip1/release/std_fs.wasm: /work/main/tests/guests/rust/src/bin/std_fs.rs /work/main/tests/guests/rust/src/lib.rs
