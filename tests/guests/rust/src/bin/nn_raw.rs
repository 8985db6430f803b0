//! Calls every `wasi_ephemeral_nn` function directly, with its error paths, and prints each
//! result code: `nn_raw DIR [NAME]`, where `DIR/model.onnx` is a model of two float inputs
//! of shape [1, 4] giving their sum and its argmax (tests/models/add) and NAME a model the
//! host preloaded (or none).

use std::fs;

#[link(wasm_import_module = "wasi_ephemeral_nn")]
unsafe extern "C" {
    fn load(builders: *const u32, n: u32, encoding: u32, target: u32, graph: *mut u32) -> u32;
    fn load_by_name(name: *const u8, len: u32, graph: *mut u32) -> u32;
    fn load_by_name_with_config(
        name: *const u8,
        len: u32,
        config: *const u8,
        config_len: u32,
        graph: *mut u32,
    ) -> u32;
    fn init_execution_context(graph: u32, ctx: *mut u32) -> u32;
    fn set_input(ctx: u32, index: u32, tensor: *const u32) -> u32;
    fn compute(ctx: u32) -> u32;
    fn get_output(ctx: u32, index: u32, out: *mut u8, max: u32, size: *mut u32) -> u32;
}

const WILD: u32 = 0xFFFF_FFF0;

/// A tensor as the ABI lays it out: dims pointer and count, type, data pointer and length.
fn tensor(dims: &[u32], ty: u32, data: &[u8]) -> [u32; 5] {
    [
        dims.as_ptr() as u32,
        dims.len() as u32,
        ty,
        data.as_ptr() as u32,
        data.len() as u32,
    ]
}

fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = fs::read(format!("{}/model.onnx", args[1])).expect("the model");
    let garbage = b"this is not an ONNX model".to_vec();
    let builders = [model.as_ptr() as u32, model.len() as u32];
    let bad = [garbage.as_ptr() as u32, garbage.len() as u32];
    let wild = [WILD, 64];
    let mut g = u32::MAX;
    unsafe {
        println!("load bad encoding number: {}", load(builders.as_ptr(), 1, 9, 0, &mut g));
        println!("load openvino: {}", load(builders.as_ptr(), 1, 0, 0, &mut g));
        println!("load onnx on a gpu: {} graph {g}", load(builders.as_ptr(), 1, 1, 1, &mut g));
        println!("load bad target number: {}", load(builders.as_ptr(), 1, 1, 7, &mut g));
        println!("load garbage: {}", load(bad.as_ptr(), 1, 1, 0, &mut g));
        println!("load wild builder: {}", load(wild.as_ptr(), 1, 1, 0, &mut g));
        println!("load wild array: {}", load(WILD as *const u32, 4, 1, 0, &mut g));
        println!("load no builders: {}", load(builders.as_ptr(), 0, 1, 0, &mut g));
        println!("load wild result: {}", load(builders.as_ptr(), 1, 1, 0, WILD as *mut u32));
        println!("load: {} graph {g}", load(builders.as_ptr(), 1, 1, 0, &mut g));
        let mut g2 = u32::MAX;
        println!("load again: {} graph {g2}", load(builders.as_ptr(), 1, 1, 0, &mut g2));

        let missing = b"no-such-model";
        let mut named = u32::MAX;
        println!(
            "load_by_name missing: {}",
            load_by_name(missing.as_ptr(), missing.len() as u32, &mut named)
        );
        println!("load_by_name wild: {}", load_by_name(WILD as *const u8, 8, &mut named));
        let invalid = [0xffu8, 0xfe];
        println!("load_by_name not UTF-8: {}", load_by_name(invalid.as_ptr(), 2, &mut named));
        let config = b"{}";
        println!(
            "load_by_name_with_config wild config: {}",
            load_by_name_with_config(missing.as_ptr(), 13, WILD as *const u8, 8, &mut named)
        );
        println!(
            "load_by_name_with_config missing: {}",
            load_by_name_with_config(missing.as_ptr(), 13, config.as_ptr(), 2, &mut named)
        );
        if let Some(name) = args.get(2) {
            println!(
                "load_by_name {name}: {} graph {named}",
                load_by_name(name.as_ptr(), name.len() as u32, &mut named)
            );
        }

        let mut c = u32::MAX;
        println!("init stale graph: {}", init_execution_context(g + 100, &mut c));
        println!("init wild result: {}", init_execution_context(g, WILD as *mut u32));
        println!("init: {} context {c}", init_execution_context(g, &mut c));

        let a = floats(&[1.0, 2.0, 3.0, 4.0]);
        let b = floats(&[0.5, -1.0, 2.5, -4.0]);
        let dims = [1u32, 4];
        let good = tensor(&dims, 1, &a);
        println!("set_input stale context: {}", set_input(c + 100, 0, good.as_ptr()));
        println!("set_input index past the inputs: {}", set_input(c, 2, good.as_ptr()));
        println!("set_input wild tensor: {}", set_input(c, 0, WILD as *const u32));
        let short = tensor(&dims, 1, &a[..12]);
        println!("set_input dims and bytes disagree: {}", set_input(c, 0, short.as_ptr()));
        let huge_dims = [u32::MAX, u32::MAX, u32::MAX, 16];
        let huge = tensor(&huge_dims, 1, &a);
        println!("set_input dims overflow: {}", set_input(c, 0, huge.as_ptr()));
        let big_dims = [1u32 << 16, 1 << 14];
        let big = tensor(&big_dims, 1, &a);
        println!("set_input past the tensor limit: {}", set_input(c, 0, big.as_ptr()));
        let bad_type = tensor(&dims, 9, &a);
        println!("set_input bad type: {}", set_input(c, 0, bad_type.as_ptr()));
        let wild_data = [dims.as_ptr() as u32, 2, 1, WILD, 16];
        println!("set_input wild data: {}", set_input(c, 0, wild_data.as_ptr()));
        let many_dims = [1u32; 40];
        let many = tensor(&many_dims, 1, &a[..4]);
        println!("set_input too many dims: {}", set_input(c, 0, many.as_ptr()));

        println!("set_input a: {}", set_input(c, 0, good.as_ptr()));
        println!("compute with an input missing: {}", compute(c));
        let mut out = [0u8; 64];
        let mut size = 0u32;
        println!(
            "get_output before compute: {}",
            get_output(c, 0, out.as_mut_ptr(), 64, &mut size)
        );
        let second = tensor(&dims, 1, &b);
        println!("set_input b: {}", set_input(c, 1, second.as_ptr()));
        println!("compute stale context: {}", compute(c + 100));
        println!("compute: {}", compute(c));
        println!(
            "get_output too small: {}",
            get_output(c, 0, out.as_mut_ptr(), 15, &mut size)
        );
        println!(
            "get_output past the outputs: {}",
            get_output(c, 2, out.as_mut_ptr(), 64, &mut size)
        );
        println!(
            "get_output wild buffer: {}",
            get_output(c, 0, WILD as *mut u8, 64, &mut size)
        );
        println!(
            "get_output wild size: {}",
            get_output(c, 0, out.as_mut_ptr(), 64, WILD as *mut u32)
        );
        println!(
            "get_output stale context: {}",
            get_output(c + 100, 0, out.as_mut_ptr(), 64, &mut size)
        );
        let r = get_output(c, 0, out.as_mut_ptr(), 64, &mut size);
        let sum: Vec<f32> = out[..size as usize]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        println!("get_output sum: {r} {size} bytes {sum:?}");
        let r = get_output(c, 1, out.as_mut_ptr(), 64, &mut size);
        let top = i64::from_le_bytes(out[..8].try_into().unwrap());
        println!("get_output argmax: {r} {size} bytes {top}");

        // A second context of the second graph: contexts are independent.
        let mut c2 = u32::MAX;
        println!("init second: {} context {c2}", init_execution_context(g2, &mut c2));
        let twice = floats(&[2.0, 4.0, 6.0, 8.0]);
        let t2 = tensor(&dims, 1, &twice);
        println!("set_input second: {} {}", set_input(c2, 0, t2.as_ptr()), set_input(c2, 1, t2.as_ptr()));
        println!("compute second: {}", compute(c2));
        let r = get_output(c2, 0, out.as_mut_ptr(), 64, &mut size);
        let sum: Vec<f32> = out[..size as usize]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        println!("get_output second: {r} {sum:?}");
        // The first context kept its outputs.
        let r = get_output(c, 0, out.as_mut_ptr(), 64, &mut size);
        println!("get_output first again: {r} {size} bytes");
    }
}
