//! The start-up baseline: the smallest useful runner of a WASI preview-1 module on plain wasmtime
//! and wasmtime-wasi, with the same engine configuration `tabi run` uses. Usage:
//! `plain-wasmtime-run MODULE.wasm [ARGS]...`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: plain-wasmtime-run MODULE.wasm [ARGS]...");
        return ExitCode::from(2);
    };
    let engine = wasmtime::Engine::default();
    let module = match wasmtime::Module::from_file(&engine, path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let mut linker: wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx> = wasmtime::Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).expect("link preview 1");
    let ctx = wasmtime_wasi::WasiCtxBuilder::new()
        .inherit_stdio()
        .args(&args)
        .build_p1();
    let mut store = wasmtime::Store::new(&engine, ctx);
    let result = linker
        .instantiate(&mut store, &module)
        .and_then(|i| i.get_typed_func::<(), ()>(&mut store, "_start"))
        .and_then(|start| start.call(&mut store, ()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => ExitCode::from(exit.0 as u8),
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(134)
            }
        },
    }
}
