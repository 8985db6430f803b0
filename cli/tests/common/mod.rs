//! Helpers shared by the binary's integration tests.

use std::process::{Command, Output};

use tabi_tests::harness::Setup;

/// The `tabi` binary under test.
pub fn tabi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabi"))
}

/// Runs `tabi ARGS` to its end, with the instrumentation cache in a directory of the tests.
pub fn run(args: &[&str]) -> Output {
    tabi()
        .env(
            "TABI_CACHE_DIR",
            std::env::temp_dir().join("tabi-test-cache"),
        )
        .args(args)
        .output()
        .unwrap()
}

/// A deterministic guest process for module `wasm` with `args`, and an in-memory `/sandbox`.
pub fn setup(wasm: &str, args: &[&str]) -> Setup {
    let mut argv = vec![wasm.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    Setup {
        args: argv,
        memory_dirs: vec!["/sandbox".into()],
        deterministic: Some(7),
        ..Setup::default()
    }
}
