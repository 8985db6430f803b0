//! wasi-nn: inference through a guest against native tract, and checkpoint and resume of a
//! guest holding a loaded model. One run, on this machine:
//!
//! - inference: a model of one `MatMul` (`[1, K] x [K, N]` f32 weights, K = 2048, N = 4096:
//!   32 MiB), made by the benchmark (`tabi_tests::onnx_pb::matmul_model`). Native: tract
//!   (the same version and single-threaded plan tabi uses) runs it on the same input, each
//!   run making its input tensor and reading its output, as the guest does. Guest: the
//!   `nn_bench` guest on wasmtime sets the input, computes and reads the output in a loop and
//!   times the loop itself on the host's clock, after one untimed run (the native loop too
//!   runs on a thread that has run the plan). Medians of `TABI_BENCH_REPS` (default 7)
//!   loops of 50 runs each; the target is a ratio ≤ 1.05.
//! - checkpoint and resume: the same guest paused once it loaded the model (once, then
//!   twice) and made an execution context (its own copy of the bytes zeroed by then): the time to write the snapshot into memory, its size against the model's, and
//!   the time from those bytes to the guest instantiated again (`Resume::from_reader`), on
//!   wasmtime; then the first compute after the resume, which compiles the plan again from
//!   the model's bytes (a resume in another process has no plan).
//!
//! Run: `cargo bench -p tabi-benches --bench nn`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tabi_benches::{median, ms, reps};

use tabi::{AfterPause, Backend, Engine, GuestBuilder, PauseHandle, Resume, Stdio};
use tract_onnx::prelude::*;

const K: u64 = 2048;
const N: u64 = 4096;
const RUNS: usize = 50;

fn input() -> Vec<f32> {
    (0..K as usize)
        .map(|i| ((i % 97) as f32) / 97.0 - 0.5)
        .collect()
}

/// Native tract: `RUNS` runs of the plan, each making its input and reading its output.
fn native(model: &[u8]) -> (Duration, f64) {
    let plan = onnx()
        .model_for_read(&mut &model[..])
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let x = input();
    let mut sum = 0.0;
    let mut times = Vec::new();
    for _ in 0..reps() {
        let start = Instant::now();
        for _ in 0..RUNS {
            let t = Tensor::from_shape(&[1, K as usize], &x).unwrap();
            let out = plan.run(tvec![t.into()]).unwrap();
            let y = out[0].to_plain_array_view::<f32>().unwrap();
            let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
            sum = bytes
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .sum();
        }
        times.push(start.elapsed());
    }
    (median(times), sum)
}

/// tabi's backend called directly, without a guest: the kernel's wasi-nn state and tract,
/// as the guest's calls reach them.
fn backend_direct(model: &[u8]) -> Duration {
    use tabi_libos::nn_state::{
        Backend as _, Encoding, Limits, NnState, Target, Tensor as T, TensorType,
    };
    let mut tract = tabi_libos::nn_state::tract::Tract::new();
    let limits = Limits::default();
    let mut nn = NnState::new();
    let g = nn
        .load(&mut tract, &[model], Encoding::Onnx, Target::Cpu, &limits)
        .unwrap();
    let c = nn.init_execution_context(g, &limits).unwrap();
    let x: Vec<u8> = input().iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = vec![0u8; 1 << 18];
    let _ = tract.named("");
    let mut times = Vec::new();
    for _ in 0..reps() {
        let start = Instant::now();
        for _ in 0..RUNS {
            let t = T::new(vec![1, K as u32], TensorType::F32, x.clone(), &limits).unwrap();
            nn.set_input(c, 0, t, &limits).unwrap();
            nn.compute(c, &mut tract, &limits).unwrap();
            nn.get_output(c, 0, &mut out).unwrap();
        }
        times.push(start.elapsed());
    }
    median(times)
}

fn builder(
    engine: &Engine,
    wasm: &[u8],
    dir: &std::path::Path,
    runs: usize,
    loads: usize,
) -> GuestBuilder {
    GuestBuilder::of_binary(engine, wasm.to_vec())
        .program_name("nn_bench")
        .args(["/m".to_string(), runs.to_string(), loads.to_string()])
        .dir(dir, "/m")
}

/// The guest's own time for `RUNS` runs, medians over fresh runs sharing one plan cache.
fn guest(engine: &Engine, wasm: &[u8], dir: &std::path::Path) -> (Duration, String) {
    let plans = tabi::PlanCache::default();
    let mut times = Vec::new();
    let mut last = String::new();
    for _ in 0..reps() + 1 {
        let (out, printed) = Stdio::buffer();
        let guest = builder(engine, wasm, dir, RUNS, 1)
            .nn_plan_cache(plans.clone())
            .stdout(out)
            .build()
            .unwrap();
        let ended = guest.run().unwrap();
        assert_eq!(ended.exit(), Some(&tabi::Exit::Code(0)));
        last = String::from_utf8(printed.lock().unwrap().clone()).unwrap();
        let ns: u64 = last.split(' ').next().unwrap().parse().unwrap();
        times.push(Duration::from_nanos(ns));
    }
    times.remove(0); // the first compiles the plan into the cache
    (median(times), last)
}

/// Pauses the guest just after its `loads` loads; gives the checkpoint's time and bytes, the
/// resume's time, and the time of the resumed guest's run to its end (its first compute
/// compiles the plan again).
fn checkpoint(
    engine: &Engine,
    wasm: &[u8],
    dir: &std::path::Path,
    loads: usize,
) -> (Duration, usize, Duration, Duration) {
    let mut write = Vec::new();
    let mut bytes = Vec::new();
    let mut resume = Vec::new();
    let mut rest = Vec::new();
    for _ in 0..reps() {
        let handle = PauseHandle::new();
        handle.request();
        let snapshot = Arc::new(Mutex::new(None));
        let guest = builder(engine, wasm, dir, 1, loads)
            .stdout(Stdio::Null)
            .pause_handle(&handle)
            .build()
            .unwrap();
        let _stopped = guest
            .run_with(|pause| {
                // At the context's creation: after the loads, and after the guest zeroed
                // its own copy of the model's bytes.
                if pause.kernel().nn().contexts.iter().count() == 1 {
                    let start = Instant::now();
                    let mut out = Vec::new();
                    pause.write_to(&mut out)?;
                    write.push(start.elapsed());
                    *snapshot.lock().unwrap() = Some(out);
                    return Ok(AfterPause::Stop);
                }
                handle.request();
                Ok(AfterPause::Continue)
            })
            .unwrap();
        let snap = snapshot
            .lock()
            .unwrap()
            .take()
            .expect("paused after the loads");
        bytes.push(snap.len());
        let start = Instant::now();
        let resumed = Resume::new(engine)
            .dir(dir, "/m")
            .stdout(Stdio::Null)
            .from_reader(&snap[..])
            .unwrap();
        resume.push(start.elapsed());
        let start = Instant::now();
        assert_eq!(resumed.run().unwrap().exit(), Some(&tabi::Exit::Code(0)));
        rest.push(start.elapsed());
    }
    bytes.sort_unstable();
    (
        median(write),
        bytes[bytes.len() / 2],
        median(resume),
        median(rest),
    )
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let model = tabi_tests::onnx_pb::matmul_model(K, N, 7);
    std::fs::write(dir.path().join("model.onnx"), &model).unwrap();
    std::fs::write(dir.path().join("input.shape"), format!("1 {K}\n")).unwrap();
    let wasm = std::fs::read(tabi_tests::guests::NN_BENCH).unwrap();
    let engine = Engine::new(Backend::Wasmtime).unwrap();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "model: MatMul [1, {K}] x [{K}, {N}], {:.1} MiB; {} reps of {RUNS} runs",
        mib(model.len()),
        reps()
    );

    let (native_t, native_sum) = native(&model);
    let (guest_t, printed) = guest(&engine, &wasm, dir.path());
    let guest_sum: f64 = printed.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (guest_sum - native_sum).abs() <= 1e-3 * native_sum.abs().max(1.0),
        "the guest computed {guest_sum}, native tract {native_sum}"
    );
    let direct_t = backend_direct(&model);
    println!(
        "tabi's backend without a guest, {RUNS} runs: {:.2} ms (x{:.3} native)",
        ms(direct_t),
        direct_t.as_secs_f64() / native_t.as_secs_f64()
    );
    let ratio = guest_t.as_secs_f64() / native_t.as_secs_f64();
    println!(
        "inference, {RUNS} runs: native tract {:.2} ms, guest on wasmtime {:.2} ms: x{ratio:.3} (target <= 1.05) {}",
        ms(native_t),
        ms(guest_t),
        if ratio <= 1.05 { "ok" } else { "MISSED" }
    );

    for loads in [1, 2] {
        let (write, size, resume, rest) = checkpoint(&engine, &wasm, dir.path(), loads);
        println!(
            "model loaded {loads}x: checkpoint {:.1} ms, snapshot {:.1} MiB ({:.2}x the model), resume {:.1} ms, then a compute with the plan rebuilt and exit {:.1} ms",
            ms(write),
            mib(size),
            size as f64 / model.len() as f64,
            ms(resume),
            ms(rest),
        );
    }
}
