//! Image classification through wasi-nn, with the `wasi-nn` 0.6 crate:
//! `nn_classify DIR IMAGES [NAME]`.
//!
//! Loads `DIR/model.onnx` (or, given NAME, the model the host preloaded under it), then for
//! each of IMAGES images sets the input, computes and reads the ten class probabilities.
//! Image 0 is `DIR/input_0.bin`; the others are rings the guest draws. It loads the model a
//! second time when IMAGES > 1, as two graphs of one model, which tabi stores once. Prints
//! every probability in full (`{:?}`), then the top class.

use std::fs;

use wasi_nn::{ExecutionTarget, GraphBuilder, GraphEncoding, TensorType};

fn ring(k: usize) -> Vec<f32> {
    let mut img = Vec::with_capacity(28 * 28);
    for y in 0..28 {
        for x in 0..28 {
            let (dx, dy) = (x as f32 - 13.5, y as f32 - 13.5);
            let r = (dx * dx + dy * dy).sqrt();
            let d = r - (4.0 + 3.0 * k as f32);
            img.push((-(d * d) / 4.0).exp());
        }
    }
    img
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = &args[1];
    let images: usize = args[2].parse().expect("a number of images");
    let builder = || GraphBuilder::new(GraphEncoding::Onnx, ExecutionTarget::CPU);
    let graph = match args.get(3) {
        Some(name) => builder().build_from_cache(name).expect("load_by_name"),
        None => {
            let model = fs::read(format!("{dir}/model.onnx")).expect("the model");
            builder().build_from_bytes([&model]).expect("load")
        }
    };
    let second = if images > 1 && args.get(3).is_none() {
        let model = fs::read(format!("{dir}/model.onnx")).expect("the model");
        Some(builder().build_from_bytes([&model]).expect("load again"))
    } else {
        None
    };
    let first = fs::read(format!("{dir}/input_0.bin")).expect("image 0");
    let first: Vec<f32> = first
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut ctx = graph.init_execution_context().expect("context");
    for k in 0..images {
        let img = if k == 0 { first.clone() } else { ring(k) };
        if k % 2 == 1 && let Some(g) = &second {
            let mut other = g.init_execution_context().expect("context of the second graph");
            other
                .set_input(0, TensorType::F32, &[1, 1, 28, 28], &img)
                .expect("set_input");
            other.compute().expect("compute");
            let mut out = [0f32; 10];
            let n = other.get_output(0, &mut out).expect("get_output");
            report(k, n, &out);
            continue;
        }
        ctx.set_input(0, TensorType::F32, &[1, 1, 28, 28], &img)
            .expect("set_input");
        ctx.compute().expect("compute");
        let mut out = [0f32; 10];
        let n = ctx.get_output(0, &mut out).expect("get_output");
        report(k, n, &out);
    }
}

fn report(k: usize, bytes: usize, out: &[f32; 10]) {
    println!("image {k}: {bytes} bytes: {out:?}");
    let top = out
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    println!("image {k}: class {top}");
}
