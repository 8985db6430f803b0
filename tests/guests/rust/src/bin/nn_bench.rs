//! Inference in a loop, for benchmarks: `nn_bench DIR RUNS LOADS`.
//!
//! Loads `DIR/model.onnx` LOADS times (as that many graphs of one model), zeroing the
//! guest's copy of the bytes after each load (so the guest's memory does not hold the model
//! too), then, after one untimed run, RUNS times sets input 0 (a float tensor of `DIR/input.shape`'s dimensions),
//! computes and reads output 0. Prints the nanoseconds the loop took (the host's monotonic
//! clock) and a checksum of the last output.

use std::fs;
use std::time::Instant;

use wasi_nn::{ExecutionTarget, GraphBuilder, GraphEncoding, TensorType};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = &args[1];
    let runs: usize = args[2].parse().expect("RUNS");
    let loads: usize = args[3].parse().expect("LOADS");
    let shape = fs::read_to_string(format!("{dir}/input.shape")).expect("input.shape");
    let dims: Vec<usize> = shape
        .split_whitespace()
        .map(|d| d.parse().expect("a dimension"))
        .collect();
    let mut graphs = Vec::new();
    for _ in 0..loads {
        let mut model = fs::read(format!("{dir}/model.onnx")).expect("the model");
        let g = GraphBuilder::new(GraphEncoding::Onnx, ExecutionTarget::CPU)
            .build_from_bytes([&model])
            .expect("load");
        model.fill(0);
        // Kept, so that the zeroing is not optimized away with the buffer.
        std::hint::black_box(&mut model);
        graphs.push(g);
    }
    let mut ctx = graphs[0].init_execution_context().expect("context");
    let n: usize = dims.iter().product();
    let input: Vec<f32> = (0..n).map(|i| ((i % 97) as f32) / 97.0 - 0.5).collect();
    let mut out = vec![0f32; 1 << 16];
    // One run first, untimed: the plan's scratch space is made on this thread.
    ctx.set_input(0, TensorType::F32, &dims, &input).expect("set_input");
    ctx.compute().expect("compute");
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..runs {
        ctx.set_input(0, TensorType::F32, &dims, &input).expect("set_input");
        ctx.compute().expect("compute");
        bytes = ctx.get_output(0, &mut out).expect("get_output");
    }
    let ns = start.elapsed().as_nanos();
    let sum: f64 = out[..bytes / 4].iter().map(|&v| f64::from(v)).sum();
    println!("{ns} ns for {runs} runs; checksum {sum:.6}");
}
