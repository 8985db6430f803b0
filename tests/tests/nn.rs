//! wasi-nn guests: the same output on both engines, results that agree with onnxruntime's
//! (the reference outputs `tests/models/make.py` wrote), migration at every call, models
//! held once, and host models found again (or missed, clearly) on resume.
#![cfg(feature = "nn")]

use std::sync::{Arc, Mutex};

use tabi::{AfterPause, Backend, Ended, Exit, NnGraph, PauseHandle, Resume, Stdio};
use tabi_tests::harness::{self, Setup};
use tabi_tests::{all_close, guests, model_dir, reference_tensor};

fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).expect("the guest was built")
}

fn graph(name: &str) -> NnGraph {
    NnGraph::from_dir(&format!("onnx::{}", model_dir(name).display())).expect("the model")
}

/// Runs `wasm` set up as `setup` on `backend`; gives its output and how it ended.
fn run(backend: Backend, wasm: &[u8], setup: &Setup) -> (String, Exit) {
    let (out, printed) = Stdio::buffer();
    let guest = setup
        .builder(&harness::engine(backend), wasm)
        .stdout(out)
        .build()
        .expect("the guest builds");
    let ended = guest.run().expect("the guest runs");
    let exit = ended.exit().cloned().expect("the guest exits");
    let text = String::from_utf8(printed.lock().unwrap().clone()).expect("UTF-8 output");
    (text, exit)
}

/// Runs on every engine this build has; all must print the same bytes. Gives that output.
fn run_everywhere(wasm: &[u8], setup: &Setup) -> String {
    let mut first: Option<(Backend, String)> = None;
    for backend in Backend::available_all() {
        let (out, exit) = run(backend, wasm, setup);
        assert_eq!(exit, Exit::Code(0), "on {backend:?}:\n{out}");
        match &first {
            None => first = Some((backend, out)),
            Some((b, o)) => assert_eq!(o, &out, "{b:?} and {backend:?} differ"),
        }
    }
    first.expect("at least one engine").1
}

fn floats_after(line: &str, marker: &str) -> Vec<f64> {
    let list = line
        .split_once(marker)
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no `{marker}` in {line:?}"));
    let list = list.trim().trim_start_matches('[').trim_end_matches(']');
    list.split(", ")
        .map(|v| v.parse().expect("a number"))
        .collect()
}

fn reference_f32(name: &str, tensor: &str) -> Vec<f64> {
    let (_, ty, bytes) = reference_tensor(&model_dir(name), tensor);
    assert_eq!(ty, "float32");
    bytes
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

fn raw_setup() -> Setup {
    Setup {
        args: vec!["nn_raw".into(), "/m".into(), "add".into()],
        dirs: vec![(model_dir("add"), "/m".into())],
        nn_graphs: vec![graph("add")],
        ..Setup::default()
    }
}

/// The raw guest gets each error code the ABI defines for its bad calls, on both engines,
/// with no trap where wasmtime traps (a wild pointer); its sum and argmax agree with
/// onnxruntime's.
#[test]
fn every_call_and_its_errors_on_both_engines() {
    let out = run_everywhere(&wasm(guests::NN_RAW), &raw_setup());
    let code = |label: &str| -> u32 {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{label}: ")))
            .unwrap_or_else(|| panic!("no `{label}` in:\n{out}"));
        line[label.len() + 2..]
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no code in {line:?}"))
    };
    let (success, invalid_argument, invalid_encoding, too_large, not_found) = (0, 1, 2, 7, 8);
    for (label, want) in [
        ("load bad encoding number", invalid_argument),
        ("load openvino", invalid_encoding),
        ("load onnx on a gpu", success),
        ("load bad target number", invalid_argument),
        ("load garbage", invalid_encoding),
        ("load wild builder", invalid_argument),
        ("load wild array", invalid_argument),
        ("load no builders", invalid_argument),
        ("load wild result", invalid_argument),
        ("load", success),
        ("load again", success),
        ("load_by_name missing", not_found),
        ("load_by_name wild", invalid_argument),
        ("load_by_name not UTF-8", invalid_argument),
        ("load_by_name_with_config wild config", invalid_argument),
        ("load_by_name_with_config missing", not_found),
        ("load_by_name add", success),
        ("init stale graph", invalid_argument),
        ("init wild result", invalid_argument),
        ("init", success),
        ("set_input stale context", invalid_argument),
        ("set_input index past the inputs", invalid_argument),
        ("set_input wild tensor", invalid_argument),
        ("set_input dims and bytes disagree", invalid_argument),
        ("set_input dims overflow", invalid_argument),
        ("set_input past the tensor limit", too_large),
        ("set_input bad type", invalid_argument),
        ("set_input wild data", invalid_argument),
        ("set_input too many dims", invalid_argument),
        ("set_input a", success),
        ("compute with an input missing", invalid_argument),
        ("get_output before compute", not_found),
        ("set_input b", success),
        ("compute stale context", invalid_argument),
        ("compute", success),
        ("get_output too small", too_large),
        ("get_output past the outputs", not_found),
        ("get_output wild buffer", invalid_argument),
        ("get_output wild size", invalid_argument),
        ("get_output stale context", invalid_argument),
        ("get_output sum", success),
        ("get_output argmax", success),
        ("compute second", success),
        ("get_output second", success),
        ("get_output first again", success),
    ] {
        assert_eq!(code(label), want, "{label}, in:\n{out}");
    }
    // Graph handles: each load of one model is a graph (a GPU's runs on the CPU, as on
    // wasmtime); the named one is a fourth.
    assert!(out.contains("load onnx on a gpu: 0 graph 0\n"), "{out}");
    assert!(out.contains("load: 0 graph 1\n") && out.contains("load again: 0 graph 2\n"));
    assert!(out.contains("load_by_name add: 0 graph 3\n"), "{out}");
    let sum_line = out
        .lines()
        .find(|l| l.starts_with("get_output sum"))
        .unwrap();
    all_close(
        &floats_after(sum_line, "bytes"),
        &reference_f32("add", "output_0"),
        1e-3,
        1e-7,
    )
    .unwrap();
    let (_, ty, top) = reference_tensor(&model_dir("add"), "output_1");
    assert_eq!(ty, "int64");
    let top = i64::from_le_bytes(top[..8].try_into().unwrap());
    assert!(
        out.contains(&format!("get_output argmax: 0 8 bytes {top}\n")),
        "{out}"
    );
    let second = out
        .lines()
        .find(|l| l.starts_with("get_output second"))
        .unwrap();
    assert_eq!(floats_after(second, ": 0 "), [4.0, 8.0, 12.0, 16.0]);
}

fn classify_setup(images: usize) -> Setup {
    Setup {
        args: vec!["nn_classify".into(), "/m".into(), images.to_string()],
        dirs: vec![(model_dir("cnn"), "/m".into())],
        ..Setup::default()
    }
}

/// The classifier built on the `wasi-nn` crate prints the same bytes on both engines, and
/// its probabilities for the reference image agree with onnxruntime's within the
/// tolerances ONNX's test runner uses.
#[test]
fn classifier_agrees_with_onnxruntime() {
    let out = run_everywhere(&wasm(guests::NN_CLASSIFY), &classify_setup(4));
    let first = out
        .lines()
        .find(|l| l.starts_with("image 0: 40 bytes"))
        .unwrap_or_else(|| panic!("no probabilities in:\n{out}"));
    let got = floats_after(first, "bytes:");
    let want = reference_f32("cnn", "output_0");
    all_close(&got, &want, 1e-3, 1e-7).unwrap();
    assert!(
        (got.iter().sum::<f64>() - 1.0).abs() < 1e-5,
        "a softmax sums to one"
    );
    assert_eq!(out.lines().filter(|l| l.contains(": class ")).count(), 4);
}

/// Both nn guests survive a checkpoint at every migration point (every wasi-nn call is one:
/// between `set_input` and `compute`, and between `compute` and `get_output`), each resumed
/// on the other engine, with output equal to the uninterrupted run's.
#[test]
fn nn_guests_survive_migration_at_every_call() {
    let backends = Backend::available_all();
    for (name, wasm, setup, least) in [
        ("nn_raw", wasm(guests::NN_RAW), raw_setup(), 40),
        (
            "nn_classify",
            wasm(guests::NN_CLASSIFY),
            classify_setup(3),
            12,
        ),
        (
            "nn_classify by name",
            wasm(guests::NN_CLASSIFY),
            Setup {
                args: vec!["nn_classify".into(), "/m".into(), "2".into(), "cnn".into()],
                copy_dirs: vec![(model_dir("cnn"), "/m".into())],
                nn_graphs: vec![graph("cnn")],
                ..Setup::default()
            },
            8,
        ),
    ] {
        let report = harness::migrate_test(&wasm, &setup, 1, &backends)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            report.divergences.is_empty(),
            "{name}: {:?}",
            report.divergences
        );
        assert!(
            report.checkpoints >= least,
            "{name}: only {} checkpoints",
            report.checkpoints
        );
    }
}

/// Pauses `setup`'s guest at every migration point; gives, at each, the number of graphs
/// the kernel holds and the size of a full snapshot.
fn snapshots_at_every_point(wasm: &[u8], setup: &Setup) -> Vec<(usize, usize)> {
    let handle = PauseHandle::new();
    handle.request();
    let guest = setup
        .builder(&harness::engine(Backend::Wasmi), wasm)
        .stdout(Stdio::Null)
        .pause_handle(&handle)
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ended = guest
        .run_with(|pause| {
            let mut bytes = Vec::new();
            pause.write_to(&mut bytes)?;
            let graphs = pause.kernel().nn().graphs.iter().count();
            seen.lock().unwrap().push((graphs, bytes.len()));
            handle.request();
            Ok(AfterPause::Continue)
        })
        .unwrap();
    assert_eq!(ended.exit(), Some(&Exit::Code(0)));
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

/// A model loaded twice travels in the snapshot once: the snapshot after the second load
/// is not a model's size larger than the one after the first, and the kernel holds one
/// model. A model the host preloaded does not travel at all.
#[test]
fn a_model_travels_once() {
    let model = std::fs::read(model_dir("cnn").join("model.onnx"))
        .unwrap()
        .len();
    let seen = snapshots_at_every_point(&wasm(guests::NN_CLASSIFY), &classify_setup(2));
    let before = seen.iter().rev().find(|(g, _)| *g == 0).unwrap().1;
    let one = seen.iter().find(|(g, _)| *g == 1).unwrap().1;
    let two = seen.iter().find(|(g, _)| *g == 2).unwrap().1;
    assert!(
        one >= before + model / 2,
        "the first load adds the model: {before} -> {one} bytes, model {model}"
    );
    assert!(
        two < one + model / 4,
        "the second load of the same model adds {} bytes (model {model})",
        two as i64 - one as i64
    );

    let named = Setup {
        args: vec!["nn_classify".into(), "/m".into(), "1".into(), "cnn".into()],
        copy_dirs: vec![],
        dirs: vec![(model_dir("cnn"), "/m".into())],
        nn_graphs: vec![graph("cnn")],
        ..Setup::default()
    };
    let seen = snapshots_at_every_point(&wasm(guests::NN_CLASSIFY), &named);
    let before = seen.iter().rev().find(|(g, _)| *g == 0).unwrap().1;
    let after = seen.iter().find(|(g, _)| *g == 1).unwrap().1;
    assert!(
        after < before + model / 4,
        "a host model does not travel: {before} -> {after} bytes, model {model}"
    );
}

/// Runs `guest`, pausing it at every migration point through `handle` (already requested),
/// until it holds a graph; gives the snapshot written there, where it stopped.
fn snapshot_after_load(guest: tabi::Guest, handle: &PauseHandle) -> Vec<u8> {
    let mut snapshot = None;
    let stopped = guest
        .run_with(|pause| {
            if pause.kernel().nn().graphs.iter().count() == 1 {
                let mut bytes = Vec::new();
                pause.write_to(&mut bytes)?;
                snapshot = Some(bytes);
                return Ok(AfterPause::Stop);
            }
            handle.request();
            Ok(AfterPause::Continue)
        })
        .unwrap();
    assert!(stopped.exit().is_none(), "stopped at the pause");
    snapshot.expect("a pause after the load")
}

/// A guest that loaded a model by name resumes only where a model of the same content is
/// preloaded under that name: without it, or with other bytes, the error names the model.
#[test]
fn a_named_model_is_found_again_by_content() {
    let setup = Setup {
        args: vec!["nn_classify".into(), "/m".into(), "2".into(), "cnn".into()],
        dirs: vec![(model_dir("cnn"), "/m".into())],
        nn_graphs: vec![graph("cnn")],
        ..Setup::default()
    };
    let wasm = wasm(guests::NN_CLASSIFY);
    let (whole, _) = run(Backend::Wasmi, &wasm, &setup);
    // Pause at the first point where the graph is loaded.
    let handle = PauseHandle::new();
    handle.request();
    let (out, printed) = Stdio::buffer();
    let guest = setup
        .builder(&harness::engine(Backend::Wasmi), &wasm)
        .stdout(out)
        .pause_handle(&handle)
        .build()
        .unwrap();
    let snapshot = snapshot_after_load(guest, &handle);
    let resumer =
        || Resume::new(&harness::engine(Backend::preferred())).dir(model_dir("cnn"), "/m");

    let Err(missing) = resumer().from_reader(&snapshot[..]) else {
        panic!("resumed without the model")
    };
    let message = missing.to_string();
    assert!(
        message.contains("`cnn`") && message.contains("--nn-graph"),
        "{message}"
    );

    let other = tempfile::tempdir().unwrap();
    let impostor = other.path().join("cnn");
    std::fs::create_dir(&impostor).unwrap();
    std::fs::copy(
        model_dir("add").join("model.onnx"),
        impostor.join("model.onnx"),
    )
    .unwrap();
    let wrong = NnGraph::from_dir(&format!("onnx::{}", impostor.display())).unwrap();
    let Err(refused) = resumer().nn_graph(wrong).from_reader(&snapshot[..]) else {
        panic!("resumed with another model under the name")
    };
    assert!(refused.to_string().contains("`cnn`"), "{refused}");

    let resumed = resumer()
        .nn_graph(graph("cnn"))
        .stdout(Stdio::Buffer(printed.clone()))
        .from_reader(&snapshot[..])
        .unwrap();
    let ended = resumed.run().unwrap();
    assert!(matches!(ended, Ended::Exited(_)));
    assert_eq!(ended.exit(), Some(&Exit::Code(0)));
    assert_eq!(
        String::from_utf8(printed.lock().unwrap().clone()).unwrap(),
        whole
    );
}

/// tract, except that every model it loads claims one input more than it has: what a forged
/// snapshot's graph would record.
struct Lying(tabi_libos::nn_state::tract::Tract);

impl tabi_libos::nn_state::Backend for Lying {
    fn check(
        &mut self,
        parts: &[&[u8]],
        hash: &[u8; 32],
        graph: &tabi_libos::nn_state::Graph,
    ) -> Result<tabi_libos::nn_state::ModelInfo, tabi_libos::nn_state::NnErrno> {
        let mut info = self.0.check(parts, hash, graph)?;
        info.inputs += 1;
        Ok(info)
    }
    fn compute(
        &mut self,
        parts: &[&[u8]],
        hash: &[u8; 32],
        graph: &tabi_libos::nn_state::Graph,
        inputs: &std::collections::BTreeMap<u32, tabi_libos::nn_state::Tensor>,
        limits: &tabi::NnLimits,
    ) -> Result<Vec<tabi_libos::nn_state::Tensor>, tabi_libos::nn_state::NnErrno> {
        self.0.compute(parts, hash, graph, inputs, limits)
    }
}

/// A snapshot whose graph records inputs its model does not have (so that its guest could
/// keep tensors for them) is refused when it is resumed: the resumer loads each graph's
/// model and compares.
#[test]
fn a_graph_its_model_does_not_match_is_refused_on_resume() {
    let setup = classify_setup(1);
    let wasm = wasm(guests::NN_CLASSIFY);
    let handle = PauseHandle::new();
    handle.request();
    let guest = setup
        .builder(&harness::engine(Backend::Wasmi), &wasm)
        .host(tabi_tests::hostile::NnHost::with_backend(Lying(
            tabi_libos::nn_state::tract::Tract::new(),
        )))
        .pause_handle(&handle)
        .build()
        .unwrap();
    let snapshot = snapshot_after_load(guest, &handle);
    let Err(refused) = Resume::new(&harness::engine(Backend::preferred()))
        .dir(model_dir("cnn"), "/m")
        .from_reader(&snapshot[..])
    else {
        panic!("resumed a graph that does not match its model")
    };
    let message = refused.to_string();
    assert!(
        message.contains("wasi-nn") && message.contains("records 2 inputs"),
        "{message}"
    );
}
