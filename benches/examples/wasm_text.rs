//! Prints a WebAssembly module in the text format, so that a script can edit a rewrite by
//! hand (`scripts/floor.sh` does) and `tabi run` the edited text.
//!
//! Usage: `wasm_text MODULE.wasm > MODULE.wat`

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: wasm_text MODULE.wasm");
        return ExitCode::from(2);
    };
    let text = std::fs::read(&path)
        .map_err(|e| format!("cannot read {path}: {e}"))
        .and_then(|wasm| wasmprinter::print_bytes(wasm).map_err(|e| format!("{path}: {e:#}")));
    match text {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wasm_text: {e}");
            ExitCode::from(1)
        }
    }
}
