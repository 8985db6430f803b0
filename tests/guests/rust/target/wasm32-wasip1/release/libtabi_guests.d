/work/main/tests/guests/rust/target/wasm32-wasip1/release/libtabi_guests.rlib: /work/main/tests/guests/rust/src/lib.rs
