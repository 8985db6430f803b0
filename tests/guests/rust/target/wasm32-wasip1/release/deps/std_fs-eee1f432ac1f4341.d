/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/std_fs-eee1f432ac1f4341.d: src/bin/std_fs.rs

/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/std_fs-eee1f432ac1f4341.wasm: src/bin/std_fs.rs

src/bin/std_fs.rs:
