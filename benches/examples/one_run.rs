//! Runs one benchmark guest once on one engine, after a warm-up run, so that an outside tool
//! (callgrind, in `scripts/instructions.sh`) can count what the measured run costs.
//!
//! Usage: `one_run wasmtime|wasmi orig|tabi|tabi+sp compute|fs ARGS...`
//!
//! - `orig` runs the guest as built, the way `tabi run` does; `tabi` and `tabi+sp` run its
//!   rewrite (without and with safepoints) through the pausing driver, never pausing: the
//!   same variants as the `instrument` bench.
//! - The guest is compiled, then run once to warm up (wasmi translates functions when they
//!   are first called), then run again inside `measured_run`: the function a counting tool
//!   should be limited to.
//! - With `TABI_REPEAT=N` it then times N more runs in the same process and prints their
//!   median and minimum: compiled code and caches stay warm, so two variants' times compare
//!   with less of the noise of separate processes (still only roughly on a shared machine).

use std::process::ExitCode;
use std::time::Instant;

use tabi_instrument::{Options, instrument};
use tabi_libos::machine::{PauseControl, Points};
use tabi_tests::{Spec, guests, process_for};

/// A guest compiled for one engine.
enum Compiled {
    Wasmtime(tabi_wasmtime::Wasmtime, wasmtime::Module),
    Wasmi(tabi_wasmi::Wasmi, wasmi::Module),
}

impl Compiled {
    /// One run; `pausable` for an instrumented module.
    fn run(&self, pausable: bool, spec: &Spec) {
        let (process, ..) = process_for(spec);
        let (never, all) = (PauseControl::never(), Points::all());
        match (self, pausable) {
            (Compiled::Wasmtime(e, m), true) => {
                e.run_pausable(m, process, never, all, None).map(drop)
            }
            (Compiled::Wasmtime(e, m), false) => e.run_module(m, process).map(drop),
            (Compiled::Wasmi(e, m), true) => e.run_pausable(m, process, never, all, None).map(drop),
            (Compiled::Wasmi(e, m), false) => e.run_module(m, process).map(drop),
        }
        .expect("the guest runs");
    }
}

/// The measured run: the function a counting tool is limited to.
#[inline(never)]
fn measured_run(compiled: &Compiled, pausable: bool, spec: &Spec) {
    compiled.run(pausable, spec);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: one_run wasmtime|wasmi orig|tabi|tabi+sp compute|fs ARGS...");
        return ExitCode::from(2);
    }
    let guest = match args[2].as_str() {
        "compute" => guests::COMPUTE,
        "fs" => guests::STD_FS,
        other => {
            eprintln!("unknown guest `{other}` (compute or fs)");
            return ExitCode::from(2);
        }
    };
    let rest: Vec<&str> = args[3..].iter().map(String::as_str).collect();
    let spec = Spec::new(guest).args(&rest);
    let orig = std::fs::read(guest).expect("the guest is built");
    let options = match args[1].as_str() {
        "orig" => None,
        "tabi" => Some(Options::default()),
        "tabi+sp" => Some(Options {
            safepoints: true,
            ..Options::default()
        }),
        other => {
            eprintln!("unknown variant `{other}` (orig, tabi or tabi+sp)");
            return ExitCode::from(2);
        }
    };
    let pausable = options.is_some();
    let wasm = match options {
        None => orig,
        Some(o) => instrument(&orig, &o).expect("the guest instruments").wasm,
    };
    let start = Instant::now();
    let compiled = match args[0].as_str() {
        "wasmtime" => {
            let e = tabi_wasmtime::Wasmtime::new();
            let m = e.compile(&wasm).expect("the module compiles");
            Compiled::Wasmtime(e, m)
        }
        "wasmi" => {
            let e = tabi_wasmi::Wasmi::new();
            let m = e.compile(&wasm).expect("the module compiles");
            Compiled::Wasmi(e, m)
        }
        other => {
            eprintln!("unknown engine `{other}` (wasmtime or wasmi)");
            return ExitCode::from(2);
        }
    };
    compiled.run(pausable, &spec);
    let t = Instant::now();
    measured_run(&compiled, pausable, &spec);
    eprintln!("measured run: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    let repeat: usize = std::env::var("TABI_REPEAT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if repeat > 0 {
        let mut times: Vec<f64> = (0..repeat)
            .map(|_| {
                let t = Instant::now();
                measured_run(&compiled, pausable, &spec);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{repeat} more runs: median {:.3} ms, minimum {:.3} ms",
            times[repeat / 2],
            times[0]
        );
    }
    eprintln!("in all: {:.2} ms", start.elapsed().as_secs_f64() * 1e3);
    ExitCode::SUCCESS
}
