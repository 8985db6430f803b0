//! DRAFT: this crate is not yet a workspace member and has not been built or run; the next
//! session adds it to the workspace, runs it and reports the figures.
//!
//! tabi against the plain engines, measured in one run and reported as ratios.
//!
//! - compute-bound guests: tabi on wasmtime vs wasmtime + wasmtime-wasi (target ≤ 1.02), tabi on
//!   wasmi vs wasmi + wasmi_wasi (target ≤ 1.03);
//! - a file-heavy guest: tabi's in-memory VFS vs wasmtime-wasi on a temporary host directory
//!   (target: at least 2× faster), and tabi's host-backed `--dir` vs the same (target ≤ 1.1);
//! - the encoded size of an idle guest's kernel state (target ≤ 64 KiB).
//!
//! Each figure is the median of repeated runs, the two sides interleaved so that drift in the
//! machine hits both. Run with `cargo bench -p tabi-benches` (`TABI_BENCH_REPS` sets the count).

use std::path::Path;
use std::time::Instant;

use tabi_libos::host::{StdHost, Stdio};
use tabi_libos::{Kernel, Process};
use tabi_tests::guests;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn reps() -> usize {
    std::env::var("TABI_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(7)
}

/// Times `a` and `b` interleaved; returns (median a, median b) in seconds.
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

fn tabi_process(args: &[&str], host_dir: Option<&Path>, memory_sandbox: bool) -> Process {
    let mut kernel = Kernel::new();
    let mut argv = vec!["guest".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    kernel.set_args(argv);
    let mut host = StdHost::new();
    host.stdout = Stdio::Null;
    host.stderr = Stdio::Null;
    host.stdin = Stdio::Null;
    if memory_sandbox {
        kernel.mount_memory("/sandbox", 0).unwrap();
    }
    if let Some(dir) = host_dir {
        let index = host.fs.grant(dir).unwrap();
        kernel.mount_host("/sandbox", index).unwrap();
    }
    Process::new(kernel, host)
}

struct PlainWasmtime {
    engine: wasmtime::Engine,
    linker: wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx>,
}

impl PlainWasmtime {
    fn new() -> Self {
        let engine = wasmtime::Engine::default();
        let mut linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).unwrap();
        PlainWasmtime { engine, linker }
    }

    fn run(&self, module: &wasmtime::Module, args: &[&str], dir: Option<&Path>) {
        let mut b = wasmtime_wasi::WasiCtxBuilder::new();
        let mut argv = vec!["guest"];
        argv.extend(args);
        b.args(&argv);
        if let Some(dir) = dir {
            b.preopened_dir(dir, "/sandbox", wasmtime_wasi::FsPerms::ReadWrite)
                .unwrap();
        }
        let mut store = wasmtime::Store::new(&self.engine, b.build_p1());
        let instance = self.linker.instantiate(&mut store, module).unwrap();
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start").unwrap();
        if let Err(e) = start.call(&mut store, ()) {
            let code = e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|e| e.0);
            assert_eq!(code, Some(0), "baseline run failed: {e:#}");
        }
    }
}

fn plain_wasmi(engine: &wasmi::Engine, module: &wasmi::Module, args: &[&str]) {
    let mut argv = vec!["guest".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let ctx = wasmi_wasi::WasiCtxBuilder::new().args(&argv).unwrap().build();
    let mut store = wasmi::Store::new(engine, ctx);
    let mut linker = wasmi::Linker::new(engine);
    wasmi_wasi::add_to_linker(&mut linker, |c| c).unwrap();
    let instance = linker.instantiate_and_start(&mut store, module).unwrap();
    let start = instance.get_typed_func::<(), ()>(&store, "_start").unwrap();
    if let Err(e) = start.call(&mut store, ()) {
        assert_eq!(e.i32_exit_status(), Some(0), "baseline run failed: {e}");
    }
}

fn row(what: &str, ours: f64, base: f64, target: &str) {
    println!("{what:<44} {:>9.2} ms {:>9.2} ms {:>7.3}   {target}", ours * 1e3, base * 1e3, ours / base);
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent; only measure when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let compute = std::fs::read(guests::COMPUTE).unwrap();
    let std_fs = std::fs::read(guests::STD_FS).unwrap();
    println!("{:<44} {:>12} {:>12} {:>7}   target", "case", "tabi", "baseline", "ratio");

    // Compute-bound, wasmtime.
    let tabi_wt = tabi_wasmtime::Wasmtime::new();
    let tabi_module = tabi_wt.compile(&compute).unwrap();
    let plain = PlainWasmtime::new();
    let plain_module = wasmtime::Module::new(&plain.engine, &compute).unwrap();
    for (case, n) in [("hash", "60"), ("sort", "40"), ("float", "60")] {
        let args = [case, n];
        let (ours, base) = compare(
            || {
                let f = tabi_wt.run_module(&tabi_module, tabi_process(&args, None, false)).unwrap();
                assert_eq!(f.exit, tabi_libos::Exit::Code(0));
            },
            || plain.run(&plain_module, &args, None),
        );
        row(&format!("compute {case}: tabi/wasmtime vs wasmtime-wasi"), ours, base, "<= 1.02");
    }

    // Compute-bound, wasmi.
    let tabi_wi = tabi_wasmi::Wasmi::new();
    let tabi_wi_module = tabi_wi.compile(&compute).unwrap();
    let wasmi_engine = wasmi::Engine::default();
    let wasmi_module = wasmi::Module::new(&wasmi_engine, &compute).unwrap();
    for (case, n) in [("hash", "6"), ("sort", "4"), ("float", "6")] {
        let args = [case, n];
        let (ours, base) = compare(
            || {
                let f = tabi_wi.run_module(&tabi_wi_module, tabi_process(&args, None, false)).unwrap();
                assert_eq!(f.exit, tabi_libos::Exit::Code(0));
            },
            || plain_wasmi(&wasmi_engine, &wasmi_module, &args),
        );
        row(&format!("compute {case}: tabi/wasmi vs wasmi_wasi"), ours, base, "<= 1.03");
    }

    // File-heavy, wasmtime.
    let fs_tabi = tabi_wt.compile(&std_fs).unwrap();
    let fs_plain = wasmtime::Module::new(&plain.engine, &std_fs).unwrap();
    let args = ["churn", "2000"];
    let (ours, base) = compare(
        || {
            let f = tabi_wt.run_module(&fs_tabi, tabi_process(&args, None, true)).unwrap();
            assert_eq!(f.exit, tabi_libos::Exit::Code(0));
        },
        || {
            let dir = tempfile::tempdir().unwrap();
            plain.run(&fs_plain, &args, Some(dir.path()));
        },
    );
    row("files: tabi memory VFS vs wasmtime-wasi tmpdir", ours, base, "<= 0.5");
    let (ours, base) = compare(
        || {
            let dir = tempfile::tempdir().unwrap();
            let f = tabi_wt.run_module(&fs_tabi, tabi_process(&args, Some(dir.path()), false)).unwrap();
            assert_eq!(f.exit, tabi_libos::Exit::Code(0));
        },
        || {
            let dir = tempfile::tempdir().unwrap();
            plain.run(&fs_plain, &args, Some(dir.path()));
        },
    );
    row("files: tabi --dir vs wasmtime-wasi tmpdir", ours, base, "<= 1.1");

    // Kernel memory of an idle guest.
    let idle = tabi_process(&["arg"], None, true);
    let bytes = tabi_libos::encode_state(&idle.kernel).unwrap();
    println!("idle kernel state: {} bytes encoded (target <= 65536)", bytes.len());
}
