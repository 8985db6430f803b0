//! The cost of tabi's stack-capture rewrite, beside Binaryen's Asyncify, measured in one run.
//!
//! For each guest (release builds: call-heavy recursion, a hashing loop, sorting, a
//! floating-point simulation, file-heavy I/O) it compares
//!
//! - `orig`: the module as built, and `orig -O`: the same after `wasm-opt -O`;
//! - `tabi`: tabi's rewrite with migration points at WASI calls, and `tabi+sp`: with safepoints;
//! - `asyncify`: `wasm-opt --asyncify -O` with the module's WASI imports as its async imports.
//!
//! Sizes are ratios to `orig` (tabi) and to `orig -O` (Asyncify, whose output is optimized);
//! times are medians of `TABI_BENCH_REPS` runs (default 7) of the guest on tabi, modules
//! compiled beforehand, variants interleaved; ratios to the same baselines. tabi's variants run
//! through the pausing driver (`run_pausable`), never pausing; `tabi+sp` runs with a request
//! flag that is never set, as `tabi run --checkpoint-on-signal` does, so the guest yields to
//! the host each time its budget runs out, and a summary line gives the same rewrite with
//! nothing able to ask for a pause, which never yields. Targets: size ≤ 1.25
//! (geometric mean), time ≤ 1.05 on wasmtime and ≤ 1.03 on wasmi, ≤ 1.15 with safepoints on
//! wasmtime. It also measures an unwind and rewind of a 1,000-frame stack on wasmtime (target
//! under 1 ms) and the rewrite of a generated 10 MB module (target under 2 s).
//! Run with `./scripts/bench.sh` (it installs `binaryen` when missing).

use std::process::Command;
use std::time::Instant;

use tabi_instrument::{Options, instrument};
use tabi_libos::machine::{Driven, PauseControl, Points, Start};
use tabi_tests::{Sandbox, Spec, guests, process_for};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn reps() -> usize {
    std::env::var("TABI_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

fn geomean(v: &[f64]) -> f64 {
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// Runs `wasm-opt` over `wasm` with `args`; `None` when it is missing or fails.
fn wasm_opt(wasm: &[u8], args: &[String]) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().ok()?;
    let (i, o) = (dir.path().join("in.wasm"), dir.path().join("out.wasm"));
    std::fs::write(&i, wasm).ok()?;
    let status = Command::new("wasm-opt")
        .arg(&i)
        .arg("-o")
        .arg(&o)
        .args([
            "--enable-bulk-memory",
            "--enable-sign-ext",
            "--enable-nontrapping-float-to-int",
            "--enable-mutable-globals",
            "--enable-multivalue",
            "--enable-reference-types",
        ])
        .args(args)
        .status()
        .ok()?;
    status.success().then(|| std::fs::read(&o).ok()).flatten()
}

fn wasi_imports(wasm: &[u8]) -> Vec<String> {
    let mut v = Vec::new();
    for p in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Ok(wasmparser::Payload::ImportSection(r)) = p {
            for imp in r.into_imports().flatten() {
                if imp.module == "wasi_snapshot_preview1" && imp.name != "proc_exit" {
                    v.push(format!("{}.{}", imp.module, imp.name));
                }
            }
        }
    }
    v
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    /// Through the pausing driver, with nothing that can ask for a pause: with safepoints the
    /// guest then never yields.
    Tabi,
    /// Through the pausing driver, with a request flag that is never set, as
    /// `tabi run --checkpoint-on-signal` has: with safepoints the guest yields each time its
    /// budget runs out, and the frames rewound run on in their resume copies.
    Interruptible,
}

/// The pause control of a `kind` run.
fn control(kind: Kind) -> PauseControl {
    let mut control = PauseControl::never();
    if let Kind::Interruptible = kind {
        control.request = Some(Default::default());
    }
    control
}

struct Variant {
    wasm: Vec<u8>,
    kind: Kind,
}

fn run_wasmtime(
    e: &tabi_wasmtime::Wasmtime,
    m: &wasmtime::Module,
    kind: Kind,
    spec: &Spec,
) -> String {
    let (process, out, _) = process_for(spec);
    match kind {
        Kind::Plain => {
            e.run_module(m, process).unwrap();
        }
        Kind::Tabi | Kind::Interruptible => {
            let o = e
                .run_pausable(m, process, control(kind), Points::all(), None)
                .unwrap();
            assert!(matches!(o, tabi_libos::machine::Outcome::Finished(_)));
        }
    }
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

fn run_wasmi(e: &tabi_wasmi::Wasmi, m: &wasmi::Module, kind: Kind, spec: &Spec) -> String {
    let (process, out, _) = process_for(spec);
    match kind {
        Kind::Plain => {
            e.run_module(m, process).unwrap();
        }
        Kind::Tabi | Kind::Interruptible => {
            let o = e
                .run_pausable(m, process, control(kind), Points::all(), None)
                .unwrap();
            assert!(matches!(o, tabi_libos::machine::Outcome::Finished(_)));
        }
    }
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

/// Medians of each variant's run time, variants interleaved; checks that outputs agree.
fn time_all(run: &mut dyn FnMut(usize) -> String, n: usize) -> Vec<f64> {
    let expected = run(0);
    for i in 1..n {
        assert_eq!(run(i), expected, "variant {i} printed something else");
    }
    let mut times = vec![Vec::new(); n];
    for _ in 0..reps() {
        for (i, t) in times.iter_mut().enumerate() {
            let start = Instant::now();
            run(i);
            t.push(start.elapsed().as_secs_f64());
        }
    }
    times.into_iter().map(median).collect()
}

fn main() {
    let wasmtime = tabi_wasmtime::Wasmtime::new();
    let wasmi = tabi_wasmi::Wasmi::new();
    let cases: Vec<(&str, Spec, Spec)> = vec![
        (
            "fib (recursion)",
            Spec::new(guests::COMPUTE).args(&["fib", "36"]),
            Spec::new(guests::COMPUTE).args(&["fib", "30"]),
        ),
        (
            "hash loop",
            Spec::new(guests::COMPUTE).args(&["hash", "300"]),
            Spec::new(guests::COMPUTE).args(&["hash", "30"]),
        ),
        (
            "sort",
            Spec::new(guests::COMPUTE).args(&["sort", "300"]),
            Spec::new(guests::COMPUTE).args(&["sort", "30"]),
        ),
        (
            "float (n-body)",
            Spec::new(guests::COMPUTE).args(&["float", "200"]),
            Spec::new(guests::COMPUTE).args(&["float", "20"]),
        ),
        (
            "file churn",
            Spec::new(guests::STD_FS).args(&["churn", "30000"]),
            Spec::new(guests::STD_FS).args(&["churn", "3000"]),
        ),
    ];
    let have_wasm_opt = wasm_opt(&std::fs::read(guests::HELLO).unwrap(), &["-O".into()]).is_some();
    if !have_wasm_opt {
        println!("wasm-opt (binaryen) not found: the Asyncify columns are left out");
    }
    let sp = Options {
        safepoints: true,
        ..Options::default()
    };

    println!(
        "{:<16} {:>9} {:>7} {:>7} {:>9} | {:>7} {:>7} {:>9} | {:>7} {:>9}",
        "guest",
        "orig B",
        "tabi",
        "tabi+sp",
        "asyncify",
        "wt tabi",
        "wt +sp",
        "wt async",
        "wi tabi",
        "wi async"
    );
    let (mut size_tabi, mut size_async) = (Vec::new(), Vec::new());
    let mut worst = [0f64; 5];
    // Every guest's ratios, for the geometric means.
    let mut ratios: [Vec<f64>; 5] = Default::default();
    let mut no_yield_ratios = Vec::new();
    // Compiled modules are shared by the guests built from one file.
    let only = std::env::var("TABI_BENCH_ONLY").ok();
    for (name, big, small) in &cases {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let orig = std::fs::read(&big.wasm).unwrap();
        let tabi = instrument(&orig, &Options::default()).unwrap().wasm;
        let tabi_sp = instrument(&orig, &sp).unwrap().wasm;
        let mut variants = vec![
            Variant {
                wasm: orig.clone(),
                kind: Kind::Plain,
            },
            Variant {
                wasm: tabi,
                kind: Kind::Tabi,
            },
            Variant {
                wasm: tabi_sp.clone(),
                kind: Kind::Interruptible,
            },
        ];
        if have_wasm_opt {
            let o = wasm_opt(&orig, &["-O".into()]).unwrap();
            let imports = wasi_imports(&orig).join(",");
            let a = wasm_opt(
                &orig,
                &[
                    "--asyncify".into(),
                    format!("--pass-arg=asyncify-imports@{imports}"),
                    "-O".into(),
                ],
            )
            .unwrap();
            variants.push(Variant {
                wasm: o,
                kind: Kind::Plain,
            });
            variants.push(Variant {
                wasm: a,
                kind: Kind::Plain,
            });
        }
        // The same rewrite with safepoints, run with nothing that can ask for a pause.
        let no_yields = variants.len();
        variants.push(Variant {
            wasm: tabi_sp,
            kind: Kind::Tabi,
        });
        let size = |i: usize| variants[i].wasm.len() as f64;
        let st = size(1) / size(0);
        let ssp = size(2) / size(0);
        size_tabi.push(st);
        let sa = if have_wasm_opt {
            size(4) / size(3)
        } else {
            f64::NAN
        };
        if have_wasm_opt {
            size_async.push(sa);
        }

        let wt: Vec<wasmtime::Module> = variants
            .iter()
            .map(|v| wasmtime.compile(&v.wasm).unwrap())
            .collect();
        let wtt = time_all(
            &mut |i| run_wasmtime(&wasmtime, &wt[i], variants[i].kind, big),
            variants.len(),
        );
        let wi: Vec<wasmi::Module> = variants
            .iter()
            .map(|v| wasmi.compile(&v.wasm).unwrap())
            .collect();
        // wasmi skips the safepoint variants (their target is for wasmtime).
        let wi_idx: Vec<usize> = (0..variants.len())
            .filter(|&i| i != 2 && i != no_yields)
            .collect();
        let wit_sub = time_all(
            &mut |j| run_wasmi(&wasmi, &wi[wi_idx[j]], variants[wi_idx[j]].kind, small),
            wi_idx.len(),
        );
        let wit = |i: usize| wit_sub[wi_idx.iter().position(|&x| x == i).unwrap()];
        let (wt_t, wt_sp) = (wtt[1] / wtt[0], wtt[2] / wtt[0]);
        no_yield_ratios.push(wtt[no_yields] / wtt[0]);
        let wi_t = wit(1) / wit(0);
        let (wt_a, wi_a) = if have_wasm_opt {
            (wtt[4] / wtt[3], wit(4) / wit(3))
        } else {
            (f64::NAN, f64::NAN)
        };
        for ((w, r), v) in worst
            .iter_mut()
            .zip(&mut ratios)
            .zip([wt_t, wt_sp, wi_t, wt_a, wi_a])
        {
            *w = w.max(v);
            r.push(v);
        }
        println!(
            "{name:<16} {:>9} {st:>7.3} {ssp:>7.3} {sa:>9.3} | {wt_t:>7.3} {wt_sp:>7.3} {wt_a:>9.3} | {wi_t:>7.3} {wi_a:>9.3}",
            orig.len(),
        );
    }
    println!(
        "size, geometric mean: tabi {:.3} (target <= 1.25), asyncify {:.3}",
        geomean(&size_tabi),
        if size_async.is_empty() {
            f64::NAN
        } else {
            geomean(&size_async)
        }
    );
    println!(
        "time, worst guest: wasmtime tabi {:.3} (<= 1.05), tabi+sp {:.3} (<= 1.15), wasmi tabi {:.3} (<= 1.03); asyncify wasmtime {:.3}, wasmi {:.3}",
        worst[0], worst[1], worst[2], worst[3], worst[4]
    );
    let g: Vec<f64> = ratios.iter().map(|r| geomean(r)).collect();
    println!(
        "time, geometric mean: wasmtime tabi {:.3}, tabi+sp {:.3}, wasmi tabi {:.3}; asyncify wasmtime {:.3}, wasmi {:.3}",
        g[0], g[1], g[2], g[3], g[4]
    );
    println!(
        "tabi+sp on wasmtime with nothing able to ask for a pause (so no yields): worst guest {:.3}, geometric mean {:.3}",
        no_yield_ratios.iter().fold(0f64, |a, &b| a.max(b)),
        geomean(&no_yield_ratios)
    );

    // `TABI_BENCH_ONLY=unwind` or `=module` runs only that measure.
    let wants = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    if wants("unwind") {
        unwind_rewind(&wasmtime);
    }
    if wants("big module") {
        big_module();
    }
}

/// An unwind of 1,000 frames into the save stack and the rewind, in place, on wasmtime: the
/// run with a pause at the innermost migration point minus the run without.
fn unwind_rewind(e: &tabi_wasmtime::Wasmtime) {
    let spec = Spec::new(guests::COMPUTE)
        .args(&["deep", "1000"])
        .sandbox(Sandbox::None);
    let wasm = instrument(&std::fs::read(&spec.wasm).unwrap(), &Options::default())
        .unwrap()
        .wasm;
    let m = e.compile(&wasm).unwrap();
    // The migration point at the bottom of the recursion is the next-to-last one.
    let total = {
        let (p, ..) = process_for(&spec);
        let mut s = e
            .session(&m, p, PauseControl::never(), Points::all())
            .unwrap();
        assert!(matches!(s.drive(Start::Fresh).unwrap(), Driven::Exit(_)));
        s.points()
    };
    let at = total - 1;
    let run = |pause: bool| -> (f64, usize) {
        let (p, out, _) = process_for(&spec);
        let control = if pause {
            PauseControl::after(at)
        } else {
            PauseControl::never()
        };
        let mut s = e.session(&m, p, control, Points::all()).unwrap();
        let t = Instant::now();
        let mut stack = 0;
        match s.drive(Start::Fresh).unwrap() {
            Driven::Paused(state, _) => {
                stack = state.stack.len();
                let entry = state.entry.clone();
                assert!(matches!(
                    s.drive(Start::InPlace(&entry)).unwrap(),
                    Driven::Exit(_)
                ));
            }
            Driven::Exit(_) => assert!(!pause),
            Driven::Returned(_) => panic!("a command's run ended in a return"),
        }
        let el = t.elapsed().as_secs_f64();
        assert!(String::from_utf8_lossy(&out.lock().unwrap()).contains("bottom"));
        (el, stack)
    };
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut stack = 0;
    for _ in 0..(reps() * 3) {
        let (t, s) = run(true);
        with.push(t);
        stack = s;
        without.push(run(false).0);
    }
    let (a, b) = (median(with), median(without));
    println!(
        "unwind + rewind of 1,000 frames on wasmtime: {:.3} ms (run with the pause {:.3} ms, without {:.3} ms; save stack {} bytes; target < 1 ms)",
        (a - b) * 1e3,
        a * 1e3,
        b * 1e3,
        stack
    );
}

/// Generates a module of about 15 MB (the target names 10 MB): many functions with loops,
/// arithmetic, calls of each other, and some calls of a WASI import. Times its rewrite as
/// `instrument` runs it (on several threads when the machine has them) and on one thread.
fn big_module() {
    use wasm_encoder::{
        CodeSection, EntityType, ExportKind, ExportSection, Function, FunctionSection,
        ImportSection, Instruction as I, MemorySection, MemoryType, Module, TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]); // 0: sched_yield
    types
        .ty()
        .function([ValType::I32, ValType::I32], [ValType::I32]); // 1: ours
    types.ty().function([], []); // 2: _start
    let mut imports = ImportSection::new();
    imports.import(
        "wasi_snapshot_preview1",
        "sched_yield",
        EntityType::Function(0),
    );
    let n = 60_000u32;
    let mut funcs = FunctionSection::new();
    let mut code = CodeSection::new();
    let mut seed = 0x2545_f491u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for i in 0..n {
        funcs.function(1);
        let mut f = Function::new([(2, ValType::I32), (1, ValType::I64)]);
        f.instruction(&I::Block(wasm_encoder::BlockType::Empty));
        f.instruction(&I::Loop(wasm_encoder::BlockType::Empty));
        for k in 0..12 {
            f.instruction(&I::LocalGet(k % 2))
                .instruction(&I::I32Const((next() % 1000) as i32))
                .instruction(&I::I32Add)
                .instruction(&I::LocalGet(2))
                .instruction(&I::I32Mul)
                .instruction(&I::LocalSet(2 + k % 2))
                .instruction(&I::LocalGet(4))
                .instruction(&I::I64Const(k as i64))
                .instruction(&I::I64Add)
                .instruction(&I::LocalSet(4));
        }
        let callee = 1 + next() % (i + 1);
        if next() % 4 == 0 {
            f.instruction(&I::Call(0)).instruction(&I::Drop);
        } else if callee <= i {
            f.instruction(&I::I32Const(1))
                .instruction(&I::LocalGet(3))
                .instruction(&I::Call(callee))
                .instruction(&I::LocalSet(2));
        }
        f.instruction(&I::LocalGet(2))
            .instruction(&I::I32Const(100))
            .instruction(&I::I32LtS)
            .instruction(&I::BrIf(0))
            .instruction(&I::End)
            .instruction(&I::End)
            .instruction(&I::LocalGet(2))
            .instruction(&I::LocalGet(3))
            .instruction(&I::I32Xor)
            .instruction(&I::End);
        code.function(&f);
    }
    funcs.function(2);
    let mut start = Function::new([]);
    start
        .instruction(&I::I32Const(0))
        .instruction(&I::I32Const(0))
        .instruction(&I::Call(n))
        .instruction(&I::Drop)
        .instruction(&I::End);
    code.function(&start);
    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, n + 1);
    exports.export("memory", ExportKind::Memory, 0);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&funcs)
        .section(&memory)
        .section(&exports)
        .section(&code);
    let wasm = module.finish();
    let one = std::num::NonZeroUsize::MIN;
    let (mut times, mut times_one) = (Vec::new(), Vec::new());
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        out = Some(instrument(&wasm, &Options::default()).unwrap());
        times.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let single = tabi_instrument::instrument_on_threads(&wasm, &Options::default(), one);
        times_one.push(t.elapsed().as_secs_f64());
        assert!(single.unwrap().wasm == out.as_ref().unwrap().wasm);
    }
    let out = out.unwrap();
    println!(
        "instrumenting a {:.1} MB module ({} functions, {} rewritten): {:.3} s (target < 2 s; on one thread {:.3} s), output {:.1} MB",
        wasm.len() as f64 / 1e6,
        n + 1,
        out.manifest.instrumented_functions,
        median(times),
        median(times_one),
        out.wasm.len() as f64 / 1e6
    );
}
