/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/compute-f2fcbb95aca62561.d: src/bin/compute.rs

/work/main/tests/guests/rust/target/wasm32-wasip1/release/deps/compute-f2fcbb95aca62561.wasm: src/bin/compute.rs

src/bin/compute.rs:
