//! Builds the guest programs the tests run: the Rust guests for `wasm32-wasip1` with a nested
//! cargo, and the C guests with clang-16 and wasi-libc. Each path is exported to the tests as
//! `GUEST_<NAME>`.

use std::path::{Path, PathBuf};
use std::process::Command;

const RUST_GUESTS: &[&str] = &[
    "hello",
    "p1_calls",
    "std_fs",
    "compute",
    "mixed",
    "nn_classify",
    "nn_raw",
    "nn_cases",
    "nn_bench",
];
/// Each C guest with the flags it needs beyond `-O2`.
const C_GUESTS: &[(&str, &[&str])] = &[
    ("posix", &[]),
    ("callbacks", &[]),
    ("reactor", &["-mexec-model=reactor"]),
    ("tail_calls", &["-mtail-call"]),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let guests = manifest.join("guests");
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("rust/src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("rust/Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", guests.join("c").display());

    build_rust(&guests.join("rust"), &out);
    for (name, flags) in C_GUESTS {
        build_c(
            &guests.join("c").join(format!("{name}.c")),
            &out.join(format!("{name}.wasm")),
            flags,
        );
        println!(
            "cargo:rustc-env=GUEST_{}={}",
            name.to_uppercase(),
            out.join(format!("{name}.wasm")).display()
        );
    }
}

fn build_rust(dir: &Path, out: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("rust-guests");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--target-dir",
        ])
        .arg(&target_dir);
    // Settings meant for the host build must not leak into the guest build. That includes the
    // toolchain: the guests build with the default one (which has the wasm target) even when
    // the host build runs on another, such as nightly for `cargo fuzz`.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key == "RUSTFLAGS"
            || key.starts_with("RUSTC")
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the Rust guests");
    if !status.success() {
        panic!(
            "building the Rust guests failed; they need the wasm32-wasip1 target \
             (rustup target add wasm32-wasip1)"
        );
    }
    for name in RUST_GUESTS {
        let wasm = target_dir
            .join("wasm32-wasip1/release")
            .join(format!("{name}.wasm"));
        println!(
            "cargo:rustc-env=GUEST_{}={}",
            name.to_uppercase(),
            wasm.display()
        );
    }
}

fn build_c(src: &Path, wasm: &Path, flags: &[&str]) {
    let status = Command::new("clang-16")
        .args(["--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-Wall"])
        .args(flags)
        .arg("-o")
        .arg(wasm)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        _ => panic!(
            "building the C guest {} failed; it needs clang-16, lld-16, wasi-libc and \
             libclang-rt-16-dev-wasm32 (apt-get install clang-16 lld-16 wasi-libc \
             libclang-rt-16-dev-wasm32)",
            src.display()
        ),
    }
}
