//! Runs one benchmark guest once on one engine, after a warm-up run, so that an outside tool
//! (callgrind, in `scripts/instructions.sh`) can count what the measured run costs.
//!
//! Usage: `one_run wasmtime|wasmi orig|tabi|tabi+sp|wasi|wasi+epoch compute|fs ARGS...`
//!
//! - `orig` runs the guest as built, the way `tabi run` does; `tabi` and `tabi+sp` run its
//!   rewrite (without and with safepoints) through the pausing driver, never pausing: the
//!   same variants as the `instrument` bench (`tabi+sp` with a request flag that is never
//!   set, so that the guest yields each time its budget runs out).
//! - `wasi` and `wasi+epoch` (wasmtime and the compute guest only) run the guest as built on
//!   plain wasmtime and wasmtime-wasi, with wasmtime's epoch interruption off and on: what
//!   the engine's own way of interrupting a guest costs, as a reference for the safepoints
//!   (`scripts/instructions.sh` prints the ratio of the two).
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
    /// Plain wasmtime and wasmtime-wasi.
    Wasi(Wasi),
}

/// The guest on plain wasmtime and wasmtime-wasi, with epoch interruption or not.
struct Wasi {
    epoch: bool,
    engine: wasmtime::Engine,
    module: wasmtime::Module,
    linker: wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx>,
}

impl Wasi {
    fn new(wasm: &[u8], epoch: bool) -> Wasi {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(epoch);
        let engine = wasmtime::Engine::new(&config).expect("a valid configuration");
        let module = wasmtime::Module::new(&engine, wasm).expect("the module compiles");
        let mut linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).expect("link preview 1");
        Wasi {
            epoch,
            engine,
            module,
            linker,
        }
    }

    fn run(&self, spec: &Spec) {
        let mut argv = vec![spec.program_name()];
        argv.extend(spec.args.iter().cloned());
        let ctx = wasmtime_wasi::WasiCtxBuilder::new()
            .args(&argv)
            .stdout(wasmtime_wasi::p2::pipe::SinkOutputStream)
            .build_p1();
        let mut store = wasmtime::Store::new(&self.engine, ctx);
        if self.epoch {
            // Never reached: the checks run, and never stop the guest.
            store.set_epoch_deadline(1 << 62);
        }
        let result = self
            .linker
            .instantiate(&mut store, &self.module)
            .and_then(|i| i.get_typed_func::<(), ()>(&mut store, "_start"))
            .and_then(|start| start.call(&mut store, ()));
        if let Err(e) = result {
            let exit = e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|x| x.0);
            assert_eq!(exit, Some(0), "the guest runs: {e:#}");
        }
    }
}

impl Compiled {
    /// One run; through the pausing driver with `control` for an instrumented module.
    fn run(&self, control: Option<&PauseControl>, spec: &Spec) {
        let (process, ..) = process_for(spec);
        let all = Points::all();
        match (self, control) {
            (Compiled::Wasmtime(e, m), Some(c)) => {
                e.run_pausable(m, process, c.clone(), all, None).map(drop)
            }
            (Compiled::Wasmtime(e, m), None) => e.run_module(m, process).map(drop),
            (Compiled::Wasmi(e, m), Some(c)) => {
                e.run_pausable(m, process, c.clone(), all, None).map(drop)
            }
            (Compiled::Wasmi(e, m), None) => e.run_module(m, process).map(drop),
            (Compiled::Wasi(w), _) => {
                w.run(spec);
                Ok(())
            }
        }
        .expect("the guest runs");
    }
}

/// The measured run: the function a counting tool is limited to.
#[inline(never)]
fn measured_run(compiled: &Compiled, control: Option<&PauseControl>, spec: &Spec) {
    compiled.run(control, spec);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!(
            "usage: one_run wasmtime|wasmi orig|tabi|tabi+sp|wasi|wasi+epoch compute|fs ARGS..."
        );
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
    let plain = match args[1].as_str() {
        "wasi" => Some(false),
        "wasi+epoch" => Some(true),
        _ => None,
    };
    if plain.is_some() && (args[0] != "wasmtime" || args[2] != "compute") {
        eprintln!("`{}` runs the compute guest on wasmtime only", args[1]);
        return ExitCode::from(2);
    }
    let options = match args[1].as_str() {
        "orig" | "wasi" | "wasi+epoch" => None,
        "tabi" => Some(Options::default()),
        "tabi+sp" => Some(Options {
            safepoints: true,
            ..Options::default()
        }),
        other => {
            eprintln!("unknown variant `{other}` (orig, tabi, tabi+sp, wasi or wasi+epoch)");
            return ExitCode::from(2);
        }
    };
    // With safepoints, a request flag that is never set, as `tabi run --checkpoint-on-signal`
    // has and the bench gives: the guest yields each time its budget runs out.
    let control = options.as_ref().map(|o| {
        let mut c = PauseControl::never();
        if o.safepoints {
            c.request = Some(Default::default());
        }
        c
    });
    let wasm = match options {
        None => orig,
        Some(o) => instrument(&orig, &o).expect("the guest instruments").wasm,
    };
    let start = Instant::now();
    let compiled = match (args[0].as_str(), plain) {
        (_, Some(epoch)) => Compiled::Wasi(Wasi::new(&wasm, epoch)),
        ("wasmtime", None) => {
            let e = tabi_wasmtime::Wasmtime::new();
            let m = e.compile(&wasm).expect("the module compiles");
            Compiled::Wasmtime(e, m)
        }
        ("wasmi", None) => {
            let e = tabi_wasmi::Wasmi::new();
            let m = e.compile(&wasm).expect("the module compiles");
            Compiled::Wasmi(e, m)
        }
        (other, _) => {
            eprintln!("unknown engine `{other}` (wasmtime or wasmi)");
            return ExitCode::from(2);
        }
    };
    compiled.run(control.as_ref(), &spec);
    let t = Instant::now();
    measured_run(&compiled, control.as_ref(), &spec);
    eprintln!("measured run: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    let repeat: usize = std::env::var("TABI_REPEAT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if repeat > 0 {
        let mut times: Vec<f64> = (0..repeat)
            .map(|_| {
                let t = Instant::now();
                measured_run(&compiled, control.as_ref(), &spec);
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
