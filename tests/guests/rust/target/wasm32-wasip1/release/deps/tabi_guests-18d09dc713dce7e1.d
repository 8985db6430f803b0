/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/tabi_guests-18d09dc713dce7e1.d: src/lib.rs

/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/libtabi_guests-18d09dc713dce7e1.rlib: src/lib.rs

/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/libtabi_guests-18d09dc713dce7e1.rmeta: src/lib.rs

src/lib.rs:
