//! Guest programs and runners shared by tabi's cross-engine tests and benchmarks.
//!
//! [`Spec`] describes one run (guest, arguments, environment, sandbox); [`run_tabi`] runs it on
//! tabi with either engine, [`run_reference`] on plain wasmtime with `wasmtime-wasi`, the
//! reference implementation of preview 1. Each gives an [`Outcome`] to compare.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub mod harness;
pub mod hostile;
pub mod onnx_pb;

use tabi_libos::host::{StdHost, Stdio};
use tabi_libos::{Engine, Exit, Kernel, Process};

/// A library module in the text format whose start function, `_initialize` and export
/// `count` each print a line (`start`, `init`, `call`) through `fd_write`. `count(n: i64)`
/// returns `(i32, i64)`: its calls so far plus 100 once `_initialize` ran, and `3 * n`.
pub const INITIALIZED_LIBRARY: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "start\n")
  (data (i32.const 32) "init\n")
  (data (i32.const 48) "call\n")
  (global $calls (mut i32) (i32.const 0))
  ;; Prints `len` bytes at `at`: the iovec is at 0, the count written at 8.
  (func $print (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $start (call $print (i32.const 16) (i32.const 6)))
  (start $start)
  (func (export "_initialize")
    (call $print (i32.const 32) (i32.const 5))
    (global.set $calls (i32.const 100)))
  (func (export "count") (param i64) (result i32 i64)
    (call $print (i32.const 48) (i32.const 5))
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (global.get $calls)
    (i64.mul (local.get 0) (i64.const 3))))"#;

/// The guest programs, built by `build.rs`.
pub mod guests {
    /// The demo guest.
    pub const HELLO: &str = env!("GUEST_HELLO");
    /// Calls every preview-1 import directly.
    pub const P1_CALLS: &str = env!("GUEST_P1_CALLS");
    /// File-system work through Rust's standard library.
    pub const STD_FS: &str = env!("GUEST_STD_FS");
    /// Compute-bound work.
    pub const COMPUTE: &str = env!("GUEST_COMPUTE");
    /// wasi-libc's POSIX layer, from C.
    pub const POSIX: &str = env!("GUEST_POSIX");
    /// Trait objects, closures the standard library calls, a seeded map, mutual recursion,
    /// a sleep, the clocks and standard input, from Rust.
    pub const MIXED: &str = env!("GUEST_MIXED");
    /// Callbacks from libc (qsort, bsearch, atexit), function pointers, variadic functions,
    /// mutual recursion and standard input, from C.
    pub const CALLBACKS: &str = env!("GUEST_CALLBACKS");
    /// A library module in C (`-mexec-model=reactor`): exports to call, no `main`.
    pub const REACTOR: &str = env!("GUEST_REACTOR");
    /// A threaded interpreter in C whose handlers tail-call each other through a table
    /// (`-mtail-call`).
    pub const TAIL_CALLS: &str = env!("GUEST_TAIL_CALLS");
    /// Image classification through wasi-nn with the `wasi-nn` 0.6 crate.
    pub const NN_CLASSIFY: &str = env!("GUEST_NN_CLASSIFY");
    /// Every `wasi_ephemeral_nn` function called directly, with its error paths.
    pub const NN_RAW: &str = env!("GUEST_NN_RAW");
    /// Runs a list of models through wasi-nn (the conformance tests').
    pub const NN_CASES: &str = env!("GUEST_NN_CASES");
    /// Inference in a loop, timed by the guest (the wasi-nn benchmark's).
    pub const NN_BENCH: &str = env!("GUEST_NN_BENCH");
}

/// The ONNX models the wasi-nn tests use (`tests/models`, made by `tests/models/make.py`),
/// each a directory with `model.onnx` and its reference inputs and outputs.
pub fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

/// A reference tensor of a model directory (`input_K` or `output_K`): its dimensions, its
/// element type as numpy names it, and its little-endian bytes.
pub fn reference_tensor(dir: &Path, name: &str) -> (Vec<usize>, String, Vec<u8>) {
    let shape = std::fs::read_to_string(dir.join(format!("{name}.shape"))).expect("a shape file");
    let mut words: Vec<&str> = shape.split_whitespace().collect();
    let ty = words.pop().expect("a type").to_string();
    let dims = words
        .iter()
        .map(|w| w.parse().expect("a dimension"))
        .collect();
    let bytes = std::fs::read(dir.join(format!("{name}.bin"))).expect("a tensor file");
    (dims, ty, bytes)
}

/// Whether `got` agrees with `want` as ONNX's own test runner asks
/// (`numpy.testing.assert_allclose(want, got, rtol=1e-3, atol=1e-7)`): for each element,
/// `|got - want| <= atol + rtol * |want|`, NaNs in the same places.
pub fn all_close(got: &[f64], want: &[f64], rtol: f64, atol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} elements, expected {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= atol + rtol * w.abs()
        };
        if !ok {
            return Err(format!("element {i}: got {g}, expected {w}"));
        }
    }
    Ok(())
}

/// A module in the text format's binary form whose `_start` prints `text` and a line break
/// through `fd_write`: small stand-ins for a guest, told apart by what they print.
pub fn module_saying(text: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "{text}\n")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const {len}))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        len = text.len() + 1
    ))
    .unwrap()
}

/// Which engine tabi runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// wasmtime (Cranelift).
    Wasmtime,
    /// The wasmi interpreter.
    Wasmi,
}

impl Backend {
    /// Both engines (wasmi alone without the `wasmtime` feature).
    #[cfg(feature = "wasmtime")]
    pub const ALL: [Backend; 2] = [Backend::Wasmtime, Backend::Wasmi];
    /// Both engines (wasmi alone without the `wasmtime` feature).
    #[cfg(not(feature = "wasmtime"))]
    pub const ALL: [Backend; 1] = [Backend::Wasmi];

    /// The engine.
    pub fn engine(self) -> Box<dyn Engine> {
        match self {
            #[cfg(feature = "wasmtime")]
            Backend::Wasmtime => Box::new(tabi_wasmtime::Wasmtime::new()),
            #[cfg(not(feature = "wasmtime"))]
            Backend::Wasmtime => panic!("tabi-tests is built without the `wasmtime` feature"),
            Backend::Wasmi => Box::new(tabi_wasmi::Wasmi::new()),
        }
    }
}

/// Where the guest's `/sandbox` lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// No sandbox directory.
    None,
    /// An empty in-memory directory.
    Memory,
    /// A host directory, granted like `--dir`.
    Host(PathBuf),
}

/// One run of a guest.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Path of the module.
    pub wasm: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// The sandbox directory.
    pub sandbox: Sandbox,
    /// Standard input (none when empty).
    pub stdin: Vec<u8>,
}

impl Spec {
    /// A run of `wasm` with an in-memory sandbox, no arguments and no environment.
    pub fn new(wasm: &str) -> Self {
        Spec {
            wasm: wasm.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            sandbox: Sandbox::Memory,
            stdin: Vec::new(),
        }
    }

    /// Sets standard input.
    pub fn stdin(mut self, input: &[u8]) -> Self {
        self.stdin = input.to_vec();
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Sets the sandbox.
    pub fn sandbox(mut self, s: Sandbox) -> Self {
        self.sandbox = s;
        self
    }

    /// The program name the guest is given as its first argument: the module's file name.
    pub fn program_name(&self) -> String {
        Path::new(&self.wasm)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status (`None` for a trap).
    pub code: Option<u32>,
}

fn take(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// A captured standard stream.
pub type Captured = Arc<Mutex<Vec<u8>>>;

/// Builds the kernel and host for `spec`, with captured standard streams.
pub fn process_for(spec: &Spec) -> (Process, Captured, Captured) {
    process_reading(spec, &stdin_for(spec))
}

/// A buffer holding `spec`'s standard input, for [`process_reading`].
pub fn stdin_for(spec: &Spec) -> Captured {
    Arc::new(Mutex::new(spec.stdin.clone()))
}

/// [`process_for`], with standard input taken from `stdin`: the parts of a migrated run share
/// one buffer, so each reads on where the last stopped.
pub fn process_reading(spec: &Spec, stdin: &Captured) -> (Process, Captured, Captured) {
    let mut kernel = Kernel::new();
    let mut argv = vec![spec.program_name()];
    argv.extend(spec.args.iter().cloned());
    kernel.set_args(argv);
    kernel.set_env(spec.env.iter().cloned());
    let mut host = StdHost::new();
    let (out, out_buf) = Stdio::buffer();
    let (err, err_buf) = Stdio::buffer();
    host.stdout = out;
    host.stderr = err;
    host.stdin = if spec.stdin.is_empty() {
        Stdio::Null
    } else {
        Stdio::Buffer(stdin.clone())
    };
    match &spec.sandbox {
        Sandbox::None => {}
        Sandbox::Memory => {
            kernel.mount_memory("/sandbox", 0).unwrap();
        }
        Sandbox::Host(dir) => {
            let index = host.fs.grant(dir).unwrap();
            kernel.mount_host("/sandbox", index).unwrap();
        }
    }
    (Process::new(kernel, host), out_buf, err_buf)
}

/// Runs `spec` on tabi with `backend`; returns the outcome and the kernel afterwards.
pub fn run_tabi(backend: Backend, spec: &Spec) -> (Outcome, Kernel) {
    let wasm = std::fs::read(&spec.wasm).unwrap();
    let (process, out, err) = process_for(spec);
    let finished = backend.engine().run(&wasm, process).unwrap();
    let code = match finished.exit {
        Exit::Code(c) => Some(c),
        Exit::Signal(_) | Exit::Trap(_) => None,
    };
    (
        Outcome {
            stdout: take(&out),
            stderr: take(&err),
            code,
        },
        finished.process.kernel,
    )
}

/// Plain wasmtime with `wasmtime-wasi`'s preview 1: the reference tabi is compared against, in
/// the differential tests and in the benchmarks.
#[cfg(feature = "wasmtime")]
pub struct Reference {
    engine: wasmtime::Engine,
    linker: wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx>,
}

#[cfg(feature = "wasmtime")]
impl Default for Reference {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "wasmtime")]
impl Reference {
    /// An engine with wasmtime's default configuration and the preview-1 imports linked.
    pub fn new() -> Self {
        let engine = wasmtime::Engine::default();
        let mut linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).unwrap();
        Reference { engine, linker }
    }

    /// Compiles the module at `path`.
    pub fn compile(&self, path: &str) -> wasmtime::Module {
        wasmtime::Module::from_file(&self.engine, path).unwrap()
    }

    /// Runs `spec` on `module`; an in-memory sandbox becomes a fresh temporary host directory.
    pub fn run(&self, module: &wasmtime::Module, spec: &Spec) -> Outcome {
        use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
        let tmp = tempfile::tempdir().unwrap();
        let out = MemoryOutputPipe::new(usize::MAX);
        let err = MemoryOutputPipe::new(usize::MAX);
        let mut b = wasmtime_wasi::WasiCtxBuilder::new();
        let mut argv = vec![spec.program_name()];
        argv.extend(spec.args.iter().cloned());
        b.args(&argv).stdout(out.clone()).stderr(err.clone()).stdin(
            wasmtime_wasi::p2::pipe::MemoryInputPipe::new(spec.stdin.clone()),
        );
        for (k, v) in &spec.env {
            b.env(k, v);
        }
        let dir = match &spec.sandbox {
            Sandbox::None => None,
            Sandbox::Memory => Some(tmp.path().to_path_buf()),
            Sandbox::Host(p) => Some(p.clone()),
        };
        if let Some(dir) = dir {
            b.preopened_dir(dir, "/sandbox", wasmtime_wasi::FsPerms::ReadWrite)
                .unwrap();
        }
        let mut store = wasmtime::Store::new(&self.engine, b.build_p1());
        let instance = self.linker.instantiate(&mut store, module).unwrap();
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .unwrap();
        let code = match start.call(&mut store, ()) {
            Ok(()) => Some(0),
            Err(e) => e
                .downcast_ref::<wasmtime_wasi::I32Exit>()
                .map(|e| e.0 as u32),
        };
        drop(store);
        Outcome {
            stdout: String::from_utf8_lossy(&out.contents()).into_owned(),
            stderr: String::from_utf8_lossy(&err.contents()).into_owned(),
            code,
        }
    }
}

/// Runs `spec` on the [`Reference`], compiling the module first.
#[cfg(feature = "wasmtime")]
pub fn run_reference(spec: &Spec) -> Outcome {
    let reference = Reference::new();
    reference.run(&reference.compile(&spec.wasm), spec)
}

/// Pausing and resuming guests: the checks the instrument and snapshot work rely on.
pub mod migrate {
    use super::*;
    use tabi_libos::machine::{self, MachineState, PauseControl, Points};

    use std::collections::HashMap;
    use std::sync::OnceLock;

    type Cache<M> = Mutex<HashMap<Vec<u8>, M>>;

    /// Engines and compiled modules, shared by every run of a test process.
    #[cfg(feature = "wasmtime")]
    fn wasmtime_module(wasm: &[u8]) -> (&'static tabi_wasmtime::Wasmtime, wasmtime::Module) {
        static E: OnceLock<tabi_wasmtime::Wasmtime> = OnceLock::new();
        static C: OnceLock<Cache<wasmtime::Module>> = OnceLock::new();
        let e = E.get_or_init(tabi_wasmtime::Wasmtime::new);
        let mut c = C.get_or_init(Default::default).lock().unwrap();
        let m = c
            .entry(wasm.to_vec())
            .or_insert_with(|| e.compile(wasm).unwrap())
            .clone();
        (e, m)
    }

    fn wasmi_module(wasm: &[u8]) -> (&'static tabi_wasmi::Wasmi, wasmi::Module) {
        static E: OnceLock<tabi_wasmi::Wasmi> = OnceLock::new();
        static C: OnceLock<Cache<wasmi::Module>> = OnceLock::new();
        let e = E.get_or_init(tabi_wasmi::Wasmi::new);
        let mut c = C.get_or_init(Default::default).lock().unwrap();
        let m = c
            .entry(wasm.to_vec())
            .or_insert_with(|| e.compile(wasm).unwrap())
            .clone();
        (e, m)
    }

    /// Runs an instrumented module on `backend` until it finishes or pauses, on a thread with
    /// a stack large enough for the engines' deepest guest stacks.
    pub fn run_pausable(
        backend: Backend,
        wasm: &[u8],
        process: Process,
        control: PauseControl,
        resume: Option<&MachineState>,
    ) -> machine::Outcome {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(s, || {
                    run_pausable_here(backend, wasm, process, control, resume)
                })
                .unwrap()
                .join()
                .unwrap()
        })
    }

    fn run_pausable_here(
        backend: Backend,
        wasm: &[u8],
        process: Process,
        control: PauseControl,
        resume: Option<&MachineState>,
    ) -> machine::Outcome {
        match backend {
            #[cfg(not(feature = "wasmtime"))]
            Backend::Wasmtime => panic!("tabi-tests is built without the `wasmtime` feature"),
            #[cfg(feature = "wasmtime")]
            Backend::Wasmtime => {
                let (e, m) = wasmtime_module(wasm);
                e.run_pausable(&m, process, control, Points::all(), resume)
                    .unwrap()
            }
            Backend::Wasmi => {
                let (e, m) = wasmi_module(wasm);
                e.run_pausable(&m, process, control, Points::all(), resume)
                    .unwrap()
            }
        }
    }

    /// One session of a library module (a reactor) on `backend`: the instance resumes
    /// `resume` if given, then makes `calls` in turn (export and arguments) until one pauses.
    /// Gives each call's end (the resumed call's first), and the process.
    pub fn session_calls(
        backend: Backend,
        wasm: &[u8],
        process: Process,
        control: PauseControl,
        resume: Option<&MachineState>,
        calls: &[(&str, Vec<machine::Value>)],
    ) -> (Vec<machine::Driven>, Process) {
        fn go(
            m: &mut dyn machine::Machine,
            resume: Option<&MachineState>,
            calls: &[(&str, Vec<machine::Value>)],
        ) -> Vec<machine::Driven> {
            let starts = resume.map(machine::Start::Resume).into_iter().chain(
                calls
                    .iter()
                    .map(|(export, args)| machine::Start::Call { export, args }),
            );
            let mut ends = Vec::new();
            for start in starts {
                ends.push(machine::drive(m, start).unwrap());
                if let Some(machine::Driven::Paused(..)) = ends.last() {
                    break;
                }
            }
            ends
        }
        match backend {
            #[cfg(not(feature = "wasmtime"))]
            Backend::Wasmtime => panic!("tabi-tests is built without the `wasmtime` feature"),
            #[cfg(feature = "wasmtime")]
            Backend::Wasmtime => {
                let (e, m) = wasmtime_module(wasm);
                let mut s = e.session(&m, process, control, Points::all()).unwrap();
                (go(&mut s, resume, calls), s.into_process())
            }
            Backend::Wasmi => {
                let (e, m) = wasmi_module(wasm);
                let mut s = e.session(&m, process, control, Points::all()).unwrap();
                (go(&mut s, resume, calls), s.into_process())
            }
        }
    }

    /// What a run leaves that must not depend on pauses: output, status, in-memory files.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Observed {
        /// Standard output, standard error and exit status.
        pub outcome: Outcome,
        /// The in-memory file tree of the sandbox, when it has one.
        pub files: Option<Vec<(String, tabi_vfs::FileType, Vec<u8>)>>,
    }

    fn observed(spec: &Spec, stdout: String, stderr: String, exit: &Exit, k: &Kernel) -> Observed {
        let code = match exit {
            Exit::Code(c) => Some(*c),
            Exit::Signal(_) | Exit::Trap(_) => None,
        };
        Observed {
            outcome: Outcome {
                stdout,
                stderr,
                code,
            },
            files: (spec.sandbox == Sandbox::Memory)
                .then(|| k.fs().tree(0).ok())
                .flatten(),
        }
    }

    /// Runs `wasm` (original or instrumented) plainly on wasmtime (on wasmi without it).
    pub fn plain(spec: &Spec, wasm: &[u8]) -> Observed {
        let (process, out, err) = process_for(spec);
        let f = Backend::ALL[0].engine().run(wasm, process).unwrap();
        observed(spec, take(&out), take(&err), &f.exit, &f.process.kernel)
    }

    /// Runs instrumented `wasm` on `first`, pausing after migration point `k`; carries the
    /// state through postcard and resumes it on `second`. `None` when the run ended before
    /// point `k`.
    pub fn paused_at(
        spec: &Spec,
        wasm: &[u8],
        k: u64,
        first: Backend,
        second: Backend,
    ) -> Option<Observed> {
        let stdin = stdin_for(spec);
        let (process, out1, err1) = process_reading(spec, &stdin);
        let paused = match run_pausable(first, wasm, process, PauseControl::after(k), None) {
            machine::Outcome::Finished(_) => return None,
            machine::Outcome::Paused(p) => p,
        };
        assert_eq!(paused.points, k, "paused at the wrong point");
        let state_bytes = postcard::to_allocvec(&paused.state).unwrap();
        let kernel_bytes = tabi_libos::encode_state(&paused.process.kernel).unwrap();
        drop(paused);
        let state: MachineState = postcard::from_bytes(&state_bytes).unwrap();
        let (mut process, out2, err2) = process_reading(spec, &stdin);
        process.kernel = tabi_libos::decode_state(&kernel_bytes).unwrap();
        match run_pausable(second, wasm, process, PauseControl::never(), Some(&state)) {
            machine::Outcome::Finished(f) => Some(observed(
                spec,
                take(&out1) + &take(&out2),
                take(&err1) + &take(&err2),
                &f.exit,
                &f.process.kernel,
            )),
            machine::Outcome::Paused(p) => panic!("paused again ({:?})", p.reason),
        }
    }

    /// Checks that pausing after every `every`-th migration point and resuming on the other
    /// backends gives what an uninterrupted run of the original gives. Returns the number of
    /// points checked.
    pub fn check_every(spec: &Spec, original: &[u8], every: u64) -> Result<u64, String> {
        check_every_with(spec, original, &tabi_instrument::Options::default(), every)
    }

    /// [`check_every`] with the module rewritten with `options`.
    pub fn check_every_with(
        spec: &Spec,
        original: &[u8],
        options: &tabi_instrument::Options,
        every: u64,
    ) -> Result<u64, String> {
        let wasm = tabi_instrument::instrument(original, options)
            .map_err(|e| e.to_string())?
            .wasm;
        let expected = plain(spec, original);
        let mut k = every;
        let mut checked = 0;
        let all = Backend::ALL;
        let pairs = [(all[0], all[all.len() - 1]), (all[all.len() - 1], all[0])];
        loop {
            let (a, b) = pairs[(k as usize / every as usize) % 2];
            match paused_at(spec, &wasm, k, a, b) {
                None => break,
                Some(got) if got == expected => checked += 1,
                Some(got) => {
                    return Err(format!(
                        "paused at point {k} on {a:?}, resumed on {b:?}:\nexpected {expected:?}\ngot {got:?}"
                    ));
                }
            }
            k += every;
        }
        Ok(checked)
    }
}

/// Generated modules (wasm-smith) as a differential check of the rewrite: the original, the
/// instrumented module, and the instrumented module paused at a migration point and resumed on
/// the other engine must print the same bytes and end the same way. The fuzz target and a test
/// share it.
pub mod smith {
    use super::*;
    use arbitrary::Unstructured;
    use tabi_libos::machine::{self, PauseControl, Points};

    const IMPORTS: &str = r#"(module
        (import "wasi_snapshot_preview1" "sched_yield" (func (result i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))))"#;
    const EXPORTS: &str = r#"(module (memory (export "memory") 1 16) (func (export "_start")))"#;

    /// The generator's configuration: the features tabi's rewrite and both engines support.
    /// Off: exceptions, GC and threads (both engines refuse them), relaxed SIMD (its results
    /// may differ between engines by design), and tail calls ([`generate_with_tail_calls`]
    /// turns them on; the fixed seeds of the test suite give a corpus in which fewer modules
    /// pass a migration point with them, and `tests/instrument.rs` covers them by hand).
    pub fn config() -> wasm_smith::Config {
        wasm_smith::Config {
            available_imports: Some(wat::parse_str(IMPORTS).expect("valid imports")),
            exports: Some(wat::parse_str(EXPORTS).expect("valid exports")),
            canonicalize_nans: true,
            exceptions_enabled: false,
            gc_enabled: false,
            simd_enabled: true,
            relaxed_simd_enabled: false,
            threads_enabled: false,
            memory64_enabled: true,
            tail_call_enabled: false,
            reference_types_enabled: true,
            max_memory32_bytes: 1 << 20,
            max_memory64_bytes: 1 << 20,
            // Without a maximum a memory can grow to 4 GiB, which a pause would copy out whole.
            memory_max_size_required: true,
            max_table_elements: 1000,
            max_memories: 2,
            ..wasm_smith::Config::default()
        }
    }

    /// A module from fuzzer bytes, made to terminate.
    pub fn generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
        generate_with_tail_calls(u, false)
    }

    /// [`generate`], with the tail-call proposal on when `tail_calls` (the fuzz target turns
    /// it on for half its inputs).
    pub fn generate_with_tail_calls(
        u: &mut Unstructured<'_>,
        tail_calls: bool,
    ) -> arbitrary::Result<Vec<u8>> {
        let mut c = config();
        c.tail_call_enabled = tail_calls;
        let mut m = wasm_smith::Module::new(c, u)?;
        m.ensure_termination(20_000)
            .map_err(|_| arbitrary::Error::IncorrectFormat)?;
        Ok(m.to_bytes())
    }

    /// What a run printed and how it ended (a trap's text differs between engines; only that
    /// it trapped counts).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Seen {
        /// Standard output.
        pub stdout: Vec<u8>,
        /// Exit status, or `None` for a trap or signal.
        pub code: Option<u32>,
    }

    fn process() -> (Process, Captured) {
        let mut kernel = Kernel::new();
        kernel.set_deterministic(1);
        let mut host = StdHost::new();
        let (out, buf) = Stdio::buffer();
        host.stdout = out;
        host.stderr = Stdio::Null;
        host.stdin = Stdio::Null;
        (Process::new(kernel, host), buf)
    }

    fn seen(exit: &Exit, out: &Captured) -> Seen {
        Seen {
            stdout: out.lock().unwrap().clone(),
            code: match exit {
                Exit::Code(c) => Some(*c),
                _ => None,
            },
        }
    }

    /// Runs `wasm` plainly; `None` when an engine refuses it.
    pub fn run_plain(backend: Backend, wasm: &[u8]) -> Option<Seen> {
        let (p, out) = process();
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(s, || {
                    let f = backend.engine().run(wasm, p).ok()?;
                    Some(seen(&f.exit, &out))
                })
                .unwrap()
                .join()
                .unwrap()
        })
    }

    /// Checks one generated module, pausing at the migration points `pick` chooses among the
    /// `n` the run passes. `Ok(None)` when the case does not apply (refused by the rewrite as
    /// unsupported, or by an engine); an `Err` is a bug.
    pub fn check(wasm: &[u8], pick: &dyn Fn(u64) -> Vec<u64>) -> Result<Option<u64>, String> {
        let Some(expected) = run_plain(Backend::ALL[0], wasm) else {
            return Ok(None);
        };
        for &other in &Backend::ALL[1..] {
            if run_plain(other, wasm).as_ref() != Some(&expected) {
                return Ok(None); // the engines themselves disagree (resource limits)
            }
        }
        let inst = match tabi_instrument::instrument(wasm, &tabi_instrument::Options::default()) {
            Ok(o) => o.wasm,
            Err(tabi_instrument::Error::Unsupported { .. }) => return Ok(None),
            Err(e) => return Err(format!("rewrite failed: {e}")),
        };
        // Runs `wasm` through the pausing driver on both engines, never asking for a pause.
        let unpaused = |wasm: &[u8], budget: Option<i32>, what: &str| -> Result<(), String> {
            for b in Backend::ALL {
                let (p, out) = process();
                let mut control = PauseControl::never();
                control.budget = budget;
                match migrate::run_pausable(b, wasm, p, control, None) {
                    machine::Outcome::Finished(f) => {
                        let got = seen(&f.exit, &out);
                        if got != expected {
                            return Err(format!("{what} on {b:?}: {got:?}, expected {expected:?}"));
                        }
                    }
                    machine::Outcome::Paused(_) => return Err("paused without a request".into()),
                }
            }
            Ok(())
        };
        unpaused(&inst, None, "instrumented")?;
        // With safepoints and a small budget: the run yields after every 40 safepoints (loop
        // headers and recursive functions' entries; the generator's termination fuel keeps
        // every loop short), and each yield is rewound in place.
        let sp = tabi_instrument::Options {
            safepoints: true,
            ..tabi_instrument::Options::default()
        };
        // Safepoints rewrite more functions (every loop and recursive function can pause), so
        // a construct can be refused here that the plain rewrite left alone: a `call_ref` of
        // a function that now reaches a pause.
        match tabi_instrument::instrument(wasm, &sp) {
            Ok(o) => unpaused(&o.wasm, Some(40), "with safepoints")?,
            Err(tabi_instrument::Error::Unsupported { .. }) => {}
            Err(e) => return Err(format!("rewrite with safepoints failed: {e}")),
        }
        // The migration points an uninterrupted run passes.
        let n = {
            let e = tabi_wasmi::Wasmi::new();
            let m = e.compile(&inst).map_err(|e| e.to_string())?;
            let (p, _) = process();
            let mut s = match e.session(&m, p, PauseControl::never(), Points::all()) {
                Ok(s) => s,
                // The run traps while its instance is made (a segment that does not fit), as
                // the uninterrupted runs above did: it passes no point.
                Err(_) if expected.code.is_none() => return Ok(Some(0)),
                Err(e) => return Err(e.to_string()),
            };
            let _ = s.drive(machine::Start::Fresh).map_err(|e| e.to_string())?;
            s.points()
        };
        for k in pick(n) {
            // Each engine pauses, the other resumes (one engine does both without wasmtime).
            let all = Backend::ALL;
            for (i, &a) in all.iter().enumerate() {
                let b = all[all.len() - 1 - i];
                let (p, out1) = process();
                let paused = match migrate::run_pausable(a, &inst, p, PauseControl::after(k), None)
                {
                    machine::Outcome::Paused(p) => p,
                    machine::Outcome::Finished(f) => {
                        // A pause inside a function that cannot return waits; the run may end.
                        if seen(&f.exit, &out1) != expected {
                            return Err(format!("run with a pause at {k} on {a:?} differs"));
                        }
                        continue;
                    }
                };
                let state: machine::MachineState =
                    postcard::from_bytes(&postcard::to_allocvec(&paused.state).unwrap()).unwrap();
                let (mut p, out2) = process();
                p.kernel = paused.process.kernel;
                match migrate::run_pausable(b, &inst, p, PauseControl::never(), Some(&state)) {
                    machine::Outcome::Finished(f) => {
                        let mut stdout = out1.lock().unwrap().clone();
                        stdout.extend_from_slice(&out2.lock().unwrap());
                        let got = Seen {
                            stdout,
                            code: seen(&f.exit, &out2).code,
                        };
                        if got != expected {
                            return Err(format!(
                                "paused at {k} on {a:?}, resumed on {b:?}: {got:?}, expected {expected:?}"
                            ));
                        }
                    }
                    machine::Outcome::Paused(_) => return Err("paused again".into()),
                }
            }
        }
        Ok(Some(n))
    }
}
