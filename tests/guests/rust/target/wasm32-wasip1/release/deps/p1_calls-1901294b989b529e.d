/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/p1_calls-1901294b989b529e.d: src/bin/p1_calls.rs

/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/p1_calls-1901294b989b529e.wasm: src/bin/p1_calls.rs

src/bin/p1_calls.rs:
