//! Makes a core WebAssembly module's call stack capturable, on any engine.
//!
//! No Wasm engine lets its host save a running call stack and rebuild it somewhere else. This
//! crate rewrites the module instead, so that the program saves its own execution state into a
//! memory the host can read, and rebuilds it from there. It sits below the engine adapters
//! (`tabi-wasmi`, `tabi-wasmtime`), which drive the protocol described here, and above
//! `wasmparser`/`wasm-encoder`, which read and write the bytes.
//!
//! # The rewrite
//!
//! [`instrument`] finds the *migration points*: calls to chosen imports (by default every
//! `wasi_snapshot_preview1` import except `proc_exit`, and every import of the `tabi` module).
//! A call-graph analysis marks every function that can reach one, resolving `call_indirect` by
//! the function type and the table's possible contents. Only those functions are rewritten; every
//! other body is copied byte for byte.
//!
//! A rewritten function can *unwind*: after a call that may pause, it tests the state global
//! ([`STATE_GLOBAL`]); when the host has set it to [`UNWINDING`], the function stores its locals,
//! the operand-stack values live across the call and the number of the call site into a frame on
//! a save stack, and returns. Every caller does the same, up to the export the host called.
//!
//! On resume the host writes the save stack back, sets the state to [`REWINDING`] and calls the
//! same export again. Each function reloads its frame, jumps (through a `br_table` at each nesting
//! level) to the call site it stopped at with its operand stack rebuilt, and calls the next frame
//! down. At the innermost frame, the migration point's results are taken from the frame (the host
//! call had already run when the pause began) and the state goes back to [`NORMAL`].
//!
//! The save stack lives in a memory of its own, appended after the module's memories and exported
//! as [`STACK_MEMORY`]; [`SP_GLOBAL`] is its top. The guest's own memories are not touched, so
//! memory + globals + tables + save stack is the whole execution state. Every global, memory and
//! table is exported under [`global_export`], [`memory_export`] and [`table_export`].
//!
//! With [`Options::safepoints`], every loop header and the entry of every recursive function
//! counts down [`BUDGET_GLOBAL`]; when it reaches zero the guest unwinds on its own, so a host can
//! pause a guest that loops without calling anything, within a bounded number of iterations.
//! Each rewritten function then also gets a *resume copy*, added after the module's functions:
//! the function itself has no rewind paths (they cost hot loops registers). The copy rebuilds
//! the frame, calls the next frame's copy while rewinding, and runs on until the function
//! returns; a function the host or an indirect call can enter hands over to its copy when
//! called while rewinding. Frames and the host protocol are the same with or without.
//!
//! Tail calls (`return_call`, `return_call_indirect`) stay tail calls. In a module where a
//! rewritten function tail-calls one that can unwind, each frame also records its function's
//! owner number, and a function that tail-called on (and so left no frame) hands the rewind
//! over to the owner of the frame on top of the save stack, through a table of thunks the
//! rewrite adds. What is refused (`call_ref` that can reach a point, exception handling in a
//! rewritten function, ...) is an [`Error::Unsupported`] naming the construct; see
//! `docs/instrument.md`.
//!
//! The output records what was done in a custom section ([`MANIFEST_SECTION`], see
//! [`Manifest`]), is validated before it is returned, and depends only on the input bytes and the
//! options.
//!
//! # Example
//!
//! ```
//! let wasm = wat::parse_str(r#"
//!     (module
//!       (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
//!       (func (export "_start") (drop (call $yield))))
//! "#).unwrap();
//! let out = tabi_instrument::instrument(&wasm, &tabi_instrument::Options::default()).unwrap();
//! let manifest = tabi_instrument::Manifest::from_module(&out.wasm).unwrap().unwrap();
//! assert_eq!(manifest.instrumented_functions, 1);
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

mod analysis;
mod module;
mod parallel;
mod rewrite;

/// Name of the custom section holding the [`Manifest`].
pub const MANIFEST_SECTION: &str = "tabi-instrument";
/// Version of the rewrite and of its state layout; part of the [`Manifest`]. It changes whenever
/// the output for some input changes, so that caches keyed by it never mix two builds.
pub const FORMAT_VERSION: u32 = 9;
/// Export name of the `i32` global holding [`NORMAL`], [`UNWINDING`] or [`REWINDING`].
pub const STATE_GLOBAL: &str = "__tabi_state";
/// Export name of the `i32` global holding the top of the save stack, in bytes.
pub const SP_GLOBAL: &str = "__tabi_sp";
/// Export name of the memory holding the save stack.
pub const STACK_MEMORY: &str = "__tabi_stack";
/// Export name of the `i32` global counting entries into functions that cannot return (panic
/// and abort paths). While it is not zero, the host must not start an unwind: such functions
/// are not rewritten, so a stack through them cannot be saved. Safepoints respect it too.
pub const NOPAUSE_GLOBAL: &str = "__tabi_nopause";
/// Export name of an immutable `i32` global of facts about the module a host must know.
pub const FLAGS_GLOBAL: &str = "__tabi_flags";
/// Bit of [`FLAGS_GLOBAL`]: the guest writes its tables (`table.set`, `grow`, `fill`, `copy`,
/// `init`), so their contents are part of its state.
pub const FLAG_WRITES_TABLES: i32 = 1;
/// Export name of the `i32` global counted down by safepoints (only with
/// [`Options::safepoints`]).
pub const BUDGET_GLOBAL: &str = "__tabi_budget";
/// Export name of a table the rewrite adds to a module that writes its tables: function `i`
/// (counting imported functions) at index `i`. A host maps the functions it finds in the
/// guest's tables to their indices with it, and back.
pub const FUNCS_TABLE: &str = "__tabi_funcs";
/// Export name of the module's start function, which the rewrite turns into an export so that a
/// resumed instance does not run it twice. The host calls it before the entry point on a fresh
/// run.
pub const START_EXPORT: &str = "__tabi_start";
/// The guest runs normally.
pub const NORMAL: i32 = 0;
/// The guest is saving its frames and returning to the host.
pub const UNWINDING: i32 = 1;
/// The guest is rebuilding its frames from the save stack.
pub const REWINDING: i32 = 2;
/// Initial value of [`BUDGET_GLOBAL`]: safepoints passed before the guest yields to the host.
pub const DEFAULT_BUDGET: i32 = 1 << 20;

/// Export name of global `index` (counting imported globals).
pub fn global_export(index: u32) -> String {
    format!("__tabi_global_{index}")
}

/// Export name of memory `index` (counting imported memories).
pub fn memory_export(index: u32) -> String {
    format!("__tabi_memory_{index}")
}

/// Export name of table `index` (counting imported tables).
pub fn table_export(index: u32) -> String {
    format!("__tabi_table_{index}")
}

/// Which imports are migration points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRule {
    /// The import's module name.
    pub module: String,
    /// The import's field name; `None` means every import of `module`.
    pub name: Option<String>,
}

/// What [`instrument`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Imports whose calls are migration points. `proc_exit` of `wasi_snapshot_preview1` never
    /// returns, so it is never one.
    pub points: Vec<PointRule>,
    /// Adds safepoints at loop headers and at the entries of recursive functions.
    pub safepoints: bool,
}

impl Default for Options {
    /// Every `wasi_snapshot_preview1`, `wasi_ephemeral_nn` and `tabi` import, no safepoints.
    fn default() -> Self {
        Options {
            points: vec![
                PointRule {
                    module: "wasi_snapshot_preview1".into(),
                    name: None,
                },
                PointRule {
                    module: "wasi_ephemeral_nn".into(),
                    name: None,
                },
                PointRule {
                    module: "tabi".into(),
                    name: None,
                },
            ],
            safepoints: false,
        }
    }
}

impl Options {
    /// Whether a call to import `module`.`name` is a migration point.
    pub fn is_point(&self, module: &str, name: &str) -> bool {
        if module == "wasi_snapshot_preview1" && name == "proc_exit" {
            return false;
        }
        self.points
            .iter()
            .any(|r| r.module == module && r.name.as_deref().is_none_or(|n| n == name))
    }
}

/// What the rewrite did, stored in the output's [`MANIFEST_SECTION`] custom section.
///
/// A runtime compares it with a snapshot's record so that a stack saved by one build of a module
/// is never rebuilt by another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the rewrite.
    pub version: u32,
    /// The options used.
    pub options: Options,
    /// SHA-256 of the original module's bytes.
    pub original_sha256: [u8; 32],
    /// Number of globals of the original module (imported ones included).
    pub globals: u32,
    /// Number of memories of the original module (imported ones included).
    pub memories: u32,
    /// Number of tables of the original module (imported ones included).
    pub tables: u32,
    /// Whether the start function was moved to [`START_EXPORT`].
    pub start_moved: bool,
    /// Whether the guest writes its tables; the value of [`FLAGS_GLOBAL`]'s bit
    /// [`FLAG_WRITES_TABLES`].
    pub writes_tables: bool,
    /// Number of functions rewritten.
    pub instrumented_functions: u32,
    /// Number of call sites (and safepoints) at which a frame can stop.
    pub sites: u32,
}

impl Manifest {
    /// Reads the manifest of an instrumented module: `Ok(None)` when the module has none (it
    /// was not instrumented), an error when the section is there but unreadable.
    pub fn from_module(wasm: &[u8]) -> Result<Option<Manifest>, Error> {
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            let payload = payload.map_err(|e| Error::Invalid(e.to_string()))?;
            if let wasmparser::Payload::CustomSection(c) = payload
                && c.name() == MANIFEST_SECTION
            {
                return postcard::from_bytes(c.data()).map(Some).map_err(|e| {
                    Error::Invalid(format!("unreadable `{MANIFEST_SECTION}` section: {e}"))
                });
            }
        }
        Ok(None)
    }
}

/// An instrumented module.
#[derive(Clone, Debug)]
pub struct Output {
    /// The module's bytes.
    pub wasm: Vec<u8>,
    /// What was done; also stored in the module.
    pub manifest: Manifest,
}

/// Why a module could not be instrumented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The input is not a valid module.
    Invalid(String),
    /// The input uses a construct the rewrite does not support where it would matter.
    Unsupported {
        /// The function where it was found, if it is in one.
        function: Option<u32>,
        /// What the construct is.
        construct: String,
    },
    /// The rewrite produced an invalid module: a bug in tabi. The output is never returned.
    Internal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "invalid module: {m}"),
            Error::Unsupported {
                function: Some(i),
                construct,
            } => write!(f, "unsupported in function {i}: {construct}"),
            Error::Unsupported {
                function: None,
                construct,
            } => write!(f, "unsupported: {construct}"),
            Error::Internal(m) => write!(
                f,
                "internal error (the rewrite produced an invalid module): {m}"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<wasmparser::BinaryReaderError> for Error {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        Error::Invalid(e.to_string())
    }
}

pub(crate) fn unsupported(function: Option<u32>, construct: impl Into<String>) -> Error {
    Error::Unsupported {
        function,
        construct: construct.into(),
    }
}

/// The Wasm features tabi accepts in its input and uses in its output.
pub fn features() -> wasmparser::WasmFeatures {
    use wasmparser::WasmFeatures as F;
    F::MUTABLE_GLOBAL
        | F::SATURATING_FLOAT_TO_INT
        | F::SIGN_EXTENSION
        | F::REFERENCE_TYPES
        | F::MULTI_VALUE
        | F::BULK_MEMORY
        | F::SIMD
        | F::RELAXED_SIMD
        | F::THREADS
        | F::TAIL_CALL
        | F::FLOATS
        | F::MULTI_MEMORY
        | F::EXCEPTIONS
        | F::MEMORY64
        | F::EXTENDED_CONST
        | F::FUNCTION_REFERENCES
        | F::GC_TYPES
}

/// Rewrites `wasm` as the crate documentation describes.
///
/// The result is deterministic: the same bytes and options give the same output. Malformed input
/// and unsupported constructs give an [`Error`]; the output always validates.
///
/// A large module's function bodies are rewritten and validated on several threads: one per
/// 256 KiB of code, up to the machine's parallelism and at most 8. The output does not depend
/// on how many ran. [`instrument_on_threads`] sets the number.
pub fn instrument(wasm: &[u8], options: &Options) -> Result<Output, Error> {
    instrument_with(wasm, options, None)
}

/// [`instrument`] on at most `threads` threads (the caller's included), for a host that keeps
/// the rewrite to a share of its cores. The output is the same bytes as [`instrument`]'s.
pub fn instrument_on_threads(
    wasm: &[u8],
    options: &Options,
    threads: std::num::NonZeroUsize,
) -> Result<Output, Error> {
    instrument_with(wasm, options, Some(threads.get()))
}

fn instrument_with(
    wasm: &[u8],
    options: &Options,
    threads: Option<usize>,
) -> Result<Output, Error> {
    if wasmparser::Parser::is_component(wasm) {
        return Err(Error::Invalid(
            "this is a WebAssembly component (the component model, as WASI 0.2 builds are), \
             not a core module; the rewrite takes core modules"
                .into(),
        ));
    }
    let mut info = analysis::Module::parse(wasm, options, threads)?;
    let out = module::assemble(wasm, &mut info, options)?;
    validate_output(&out.wasm, info.threads)?;
    Ok(out)
}

/// Validates the rewrite's output, its function bodies on `threads` threads: any error is the
/// rewrite's own fault.
fn validate_output(wasm: &[u8], threads: usize) -> Result<(), Error> {
    let internal = |e: wasmparser::BinaryReaderError| Error::Internal(e.to_string());
    let mut validator = wasmparser::Validator::new_with_features(features());
    let mut bodies = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::ValidPayload::Func(to_validate, body) = validator
            .payload(&payload.map_err(internal)?)
            .map_err(internal)?
        {
            bodies.push((to_validate, body));
        }
    }
    let (results, _) = parallel::run(
        bodies,
        threads,
        parallel::Stack::Any,
        wasmparser::FuncValidatorAllocations::default,
        |allocations, (to_validate, body)| {
            let mut v = to_validate.into_validator(std::mem::take(allocations));
            let result = v.validate(&body);
            *allocations = v.into_allocations();
            result
        },
    );
    for (_, result) in results {
        result.map_err(internal)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    /// A module whose functions pause with different operand stacks below the call, so each
    /// needs block types of its own, first used in an order that differs from thread to
    /// thread.
    fn many_types() -> Vec<u8> {
        let tys = ["i32", "i64", "f32", "f64"];
        let mut text = String::from(
            "(module (import \"wasi_snapshot_preview1\" \"sched_yield\" \
             (func $y (result i32)))",
        );
        for k in 0..300u32 {
            // Counting down, so that later functions use the shorter stacks first.
            let mut n = 299 - k;
            let mut below = Vec::new();
            while below.len() < 1 + (k as usize % 4) {
                below.push(tys[(n % 4) as usize]);
                n /= 4;
            }
            text.push_str("(func (result i32) (local $r i32)");
            for t in &below {
                text.push_str(&format!(" ({t}.const 1)"));
            }
            text.push_str(" (call $y) (local.set $r)");
            for _ in &below {
                text.push_str(" (drop)");
            }
            text.push_str(" (local.get $r))");
        }
        text.push_str("(func (export \"_start\") (drop (call 1))))");
        wat::parse_str(&text).unwrap()
    }

    #[test]
    fn threads_do_not_change_the_output() {
        let wasm = many_types();
        for safepoints in [false, true] {
            let options = Options {
                safepoints,
                ..Options::default()
            };
            let one = instrument_on_threads(&wasm, &options, NonZeroUsize::MIN).unwrap();
            for n in [2, 3, 7] {
                let many =
                    instrument_on_threads(&wasm, &options, NonZeroUsize::new(n).unwrap()).unwrap();
                assert!(
                    one.wasm == many.wasm,
                    "{n} threads, safepoints {safepoints}"
                );
            }
            assert_eq!(instrument(&wasm, &options).unwrap().wasm, one.wasm);
        }
    }

    #[test]
    fn threads_report_the_first_error_in_order() {
        // 300 functions, those in `invalid` returning an i64 where an i32 is declared (a body
        // of the same length, so every offset is the same in each module).
        let module = |invalid: &[usize]| {
            let mut text = String::from("(module");
            for k in 0..300 {
                let ty = if invalid.contains(&k) { "i64" } else { "i32" };
                text.push_str(&format!("(func (result i32) ({ty}.const 0))"));
            }
            text.push(')');
            wat::parse_str(&text).unwrap()
        };
        let error = |wasm: &[u8], threads: usize| {
            let threads = NonZeroUsize::new(threads).unwrap();
            instrument_on_threads(wasm, &Options::default(), threads)
                .err()
                .unwrap()
                .to_string()
        };
        // Functions 40 and 250 are invalid, in batches that different threads take: the
        // error is function 40's, as on one thread.
        let first = error(&module(&[40]), 1);
        assert_ne!(first, error(&module(&[250]), 1));
        let both = module(&[40, 250]);
        for threads in [1, 2, 4] {
            assert_eq!(error(&both, threads), first, "{threads} threads");
        }
    }
}
