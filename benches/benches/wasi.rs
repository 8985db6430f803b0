//! tabi against the plain engines, measured in one run and reported as ratios (tabi / baseline).
//!
//! | case | baseline | target |
//! | --- | --- | --- |
//! | compute-bound guests on wasmtime | wasmtime + wasmtime-wasi | ≤ 1.02 |
//! | compute-bound guests on wasmi | wasmi + wasmi_wasi | ≤ 1.03 |
//! | file churn, tabi's in-memory VFS | wasmtime-wasi on a temporary host directory | ≤ 0.5 |
//! | file churn, tabi's host-backed `--dir` | the same | ≤ 1.1 |
//! | start-up of hello-world, whole process | `plain-wasmtime-run` | ≤ 1.1 |
//!
//! It also prints the encoded size of an idle guest's kernel state (target ≤ 64 KiB).
//! Modules are compiled once per side before timing, except in the start-up case, where each
//! process compiles its own. Each figure is the median of `TABI_BENCH_REPS` runs (default 9),
//! the two sides interleaved so that drift in the machine hits both.
//! Run with `./scripts/bench.sh`, which builds the `tabi` binary the start-up case launches.

use std::path::PathBuf;
use std::process::{Command, Stdio as ProcStdio};
use std::time::Instant;

use tabi_libos::Exit;
use tabi_tests::{Outcome, Reference, Sandbox, Spec, guests, process_for};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn reps() -> usize {
    std::env::var("TABI_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9)
}

/// Times `a` and `b` interleaved, after one warm-up each; returns the medians in seconds.
fn compare(mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    a();
    b();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..reps() {
        let t = Instant::now();
        a();
        ta.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        b();
        tb.push(t.elapsed().as_secs_f64());
    }
    (median(ta), median(tb))
}

fn row(case: &str, ours: f64, base: f64, target: &str) {
    println!(
        "{case:<46} {:>10.2} {:>10.2} {:>7.3}  {target}",
        ours * 1e3,
        base * 1e3,
        ours / base
    );
}

fn tabi_on_wasmtime(engine: &tabi_wasmtime::Wasmtime, module: &wasmtime::Module, spec: &Spec) {
    let (process, _, err) = process_for(spec);
    let finished = engine.run_module(module, process).unwrap();
    assert_eq!(
        finished.exit,
        Exit::Code(0),
        "{}",
        String::from_utf8_lossy(&err.lock().unwrap())
    );
}

fn tabi_on_wasmi(engine: &tabi_wasmi::Wasmi, module: &wasmi::Module, spec: &Spec) {
    let (process, _, err) = process_for(spec);
    let finished = engine.run_module(module, process).unwrap();
    assert_eq!(
        finished.exit,
        Exit::Code(0),
        "{}",
        String::from_utf8_lossy(&err.lock().unwrap())
    );
}

fn reference(r: &Reference, module: &wasmtime::Module, spec: &Spec) {
    let out: Outcome = r.run(module, spec);
    assert_eq!(out.code, Some(0), "baseline failed: {}", out.stderr);
}

/// wasmi with its own WASI (wasmi_wasi); output goes nowhere, like the captured tabi side.
fn plain_wasmi(engine: &wasmi::Engine, module: &wasmi::Module, spec: &Spec) {
    let mut argv = vec!["guest".to_string()];
    argv.extend(spec.args.iter().cloned());
    let ctx = wasmi_wasi::WasiCtxBuilder::new()
        .args(&argv)
        .unwrap()
        .build();
    let mut store = wasmi::Store::new(engine, ctx);
    let mut linker = wasmi::Linker::new(engine);
    wasmi_wasi::add_to_linker(&mut linker, |c| c).unwrap();
    let instance = linker.instantiate_and_start(&mut store, module).unwrap();
    let start = instance.get_typed_func::<(), ()>(&store, "_start").unwrap();
    if let Err(e) = start.call(&mut store, ()) {
        assert_eq!(e.i32_exit_status(), Some(0), "baseline failed: {e}");
    }
}

/// The `tabi` binary of the same profile, next to this bench's own directory.
fn tabi_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let tabi = profile_dir.join("tabi");
    tabi.exists().then_some(tabi)
}

fn spawn(program: &std::path::Path, args: &[&str]) {
    // tabi would read its compiled code back from its cache; the baseline compiles each time.
    let status = Command::new(program)
        .env("TABI_CACHE", "off")
        .args(args)
        .stdout(ProcStdio::null())
        .stderr(ProcStdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{} failed", program.display());
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: measure only when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!(
        "{:<46} {:>10} {:>10} {:>7}  target",
        "case (median ms)", "tabi", "baseline", "ratio"
    );

    let tabi_wt = tabi_wasmtime::Wasmtime::new();
    let plain = Reference::new();
    let compute_wt = tabi_wt
        .compile(&std::fs::read(guests::COMPUTE).unwrap())
        .unwrap();
    let compute_plain = plain.compile(guests::COMPUTE);
    for (case, n) in [("hash", "60"), ("sort", "40"), ("float", "60")] {
        let spec = Spec::new(guests::COMPUTE)
            .args(&[case, n])
            .sandbox(Sandbox::None);
        let (ours, base) = compare(
            || tabi_on_wasmtime(&tabi_wt, &compute_wt, &spec),
            || reference(&plain, &compute_plain, &spec),
        );
        row(&format!("compute {case}, wasmtime"), ours, base, "<= 1.02");
    }

    let tabi_wi = tabi_wasmi::Wasmi::new();
    let compute_wi = tabi_wi
        .compile(&std::fs::read(guests::COMPUTE).unwrap())
        .unwrap();
    let wasmi_engine = wasmi::Engine::default();
    let compute_plain_wi =
        wasmi::Module::new(&wasmi_engine, std::fs::read(guests::COMPUTE).unwrap()).unwrap();
    for (case, n) in [("hash", "6"), ("sort", "4"), ("float", "6")] {
        let spec = Spec::new(guests::COMPUTE)
            .args(&[case, n])
            .sandbox(Sandbox::None);
        let (ours, base) = compare(
            || tabi_on_wasmi(&tabi_wi, &compute_wi, &spec),
            || plain_wasmi(&wasmi_engine, &compute_plain_wi, &spec),
        );
        row(&format!("compute {case}, wasmi"), ours, base, "<= 1.03");
    }

    let fs_wt = tabi_wt
        .compile(&std::fs::read(guests::STD_FS).unwrap())
        .unwrap();
    let fs_plain = plain.compile(guests::STD_FS);
    let churn = Spec::new(guests::STD_FS).args(&["churn", "2000"]);
    let (ours, base) = compare(
        || tabi_on_wasmtime(&tabi_wt, &fs_wt, &churn),
        || reference(&plain, &fs_plain, &churn),
    );
    row("file churn x2000, tabi memory VFS", ours, base, "<= 0.5");
    let (ours, base) = compare(
        || {
            let dir = tempfile::tempdir().unwrap();
            let spec = churn
                .clone()
                .sandbox(Sandbox::Host(dir.path().to_path_buf()));
            tabi_on_wasmtime(&tabi_wt, &fs_wt, &spec);
        },
        || reference(&plain, &fs_plain, &churn),
    );
    row("file churn x2000, tabi --dir", ours, base, "<= 1.1");

    match tabi_binary() {
        Some(tabi) => {
            let runner = PathBuf::from(env!("CARGO_BIN_EXE_plain-wasmtime-run"));
            let (ours, base) = compare(
                || spawn(&tabi, &["run", guests::HELLO]),
                || spawn(&runner, &[guests::HELLO]),
            );
            row("start-up, hello-world process", ours, base, "<= 1.1");
        }
        None => println!(
            "start-up: skipped, no `tabi` binary beside the bench (build it with \
             `cargo build --release -p tabi-cli`, as scripts/bench.sh does)"
        ),
    }

    let (idle, _, _) = process_for(&Spec::new(guests::HELLO).args(&["arg"]));
    let bytes = tabi_libos::encode_state(&idle.kernel).unwrap();
    println!(
        "idle kernel state (args, env, stdio, one preopen): {} bytes encoded (target <= 65536)",
        bytes.len()
    );
}
