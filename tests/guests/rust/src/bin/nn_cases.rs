//! Runs many models through wasi-nn, for conformance tests: `nn_cases DIR`.
//!
//! `DIR/cases.txt` has a line per case: `NAME MODEL INPUTS OUTPUTS`. Input K of a case is
//! `DIR/NAME/in_K.bin`: the tensor type (u32), the number of dimensions (u32), each
//! dimension (u32), then the elements, all little-endian. The guest loads MODEL, sets the
//! inputs, computes, and writes output K's bytes to `DIR/NAME/out_K.bin`. It prints a line
//! per case: `NAME load compute get_output` with each call's error code (the first that
//! failed ends the case).

use std::fs;

#[link(wasm_import_module = "wasi_ephemeral_nn")]
unsafe extern "C" {
    fn load(builders: *const u32, n: u32, encoding: u32, target: u32, graph: *mut u32) -> u32;
    fn init_execution_context(graph: u32, ctx: *mut u32) -> u32;
    fn set_input(ctx: u32, index: u32, tensor: *const u32) -> u32;
    fn compute(ctx: u32) -> u32;
    fn get_output(ctx: u32, index: u32, out: *mut u8, max: u32, size: *mut u32) -> u32;
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn run(dir: &str, name: &str, model: &str, inputs: u32, outputs: u32) -> String {
    let Ok(model) = fs::read(model) else {
        return "unreadable".into();
    };
    let builders = [model.as_ptr() as u32, model.len() as u32];
    let (mut g, mut c) = (0u32, 0u32);
    let r = unsafe { load(builders.as_ptr(), 1, 1, 0, &mut g) };
    if r != 0 {
        return format!("load {r}");
    }
    let r = unsafe { init_execution_context(g, &mut c) };
    if r != 0 {
        return format!("init {r}");
    }
    for k in 0..inputs {
        let raw = fs::read(format!("{dir}/{name}/in_{k}.bin")).expect("an input");
        let (ty, n) = (word(&raw, 0), word(&raw, 4) as usize);
        let dims: Vec<u32> = (0..n).map(|i| word(&raw, 8 + 4 * i)).collect();
        let data = &raw[8 + 4 * n..];
        let tensor = [
            dims.as_ptr() as u32,
            n as u32,
            ty,
            data.as_ptr() as u32,
            data.len() as u32,
        ];
        let r = unsafe { set_input(c, k, tensor.as_ptr()) };
        if r != 0 {
            return format!("set_input {r}");
        }
    }
    let r = unsafe { compute(c) };
    if r != 0 {
        return format!("compute {r}");
    }
    for k in 0..outputs {
        let mut size = 0u32;
        let mut buf = vec![0u8; 1 << 16];
        let mut r = unsafe { get_output(c, k, buf.as_mut_ptr(), buf.len() as u32, &mut size) };
        if r == 7 {
            buf = vec![0u8; 64 << 20];
            r = unsafe { get_output(c, k, buf.as_mut_ptr(), buf.len() as u32, &mut size) };
        }
        if r != 0 {
            return format!("get_output {r}");
        }
        fs::write(format!("{dir}/{name}/out_{k}.bin"), &buf[..size as usize]).expect("written");
    }
    "ok".into()
}

fn main() {
    let dir = std::env::args().nth(1).expect("a directory");
    let cases = fs::read_to_string(format!("{dir}/cases.txt")).expect("cases.txt");
    for line in cases.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (inputs, outputs) = (w[2].parse().unwrap(), w[3].parse().unwrap());
        println!("{} {}", w[0], run(&dir, w[0], w[1], inputs, outputs));
    }
}
