/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/hello-f13f37d1cdd36412.d: src/bin/hello.rs

/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/hello-f13f37d1cdd36412.wasm: src/bin/hello.rs

src/bin/hello.rs:
