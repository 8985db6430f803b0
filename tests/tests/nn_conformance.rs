//! ONNX's single-operator conformance models (the node tests Debian's `libonnx-testdata`
//! ships), run through wasi-nn in a guest: every case whose inputs wasi-nn can express
//! loads, computes, and agrees with ONNX's expected outputs within the tolerances ONNX's own
//! test runner uses (`rtol = 1e-3`, `atol = 1e-7`).
//!
//! The cases tract does not run, and those it runs to other numbers, are listed in
//! `tests/models/onnx-node-*.txt` rather than hidden: the test fails when a case leaves or
//! joins a list, so the lists stay true as tract changes. `TABI_WRITE_CONFORMANCE=1` writes
//! them anew.
#![cfg(feature = "nn")]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tabi::{Backend, Stdio};
use tabi_tests::harness::{self, Setup};
use tabi_tests::onnx_pb::{PbTensor, decode_tensor, values};
use tabi_tests::{all_close, guests};

const NODE_TESTS: &str = "/usr/share/libonnx-testdata/data/node";

/// The wasi-nn tensor type of an ONNX element type, where there is one.
fn wasi_nn_type(dtype: i32) -> Option<u32> {
    Some(match dtype {
        10 => 0,
        1 => 1,
        11 => 2,
        2 => 3,
        6 => 4,
        7 => 5,
        _ => return None,
    })
}

/// The ONNX type tabi gives back for an output of `dtype` (wasi-nn has fewer types: tabi
/// widens the others).
fn returned_type(dtype: i32) -> i32 {
    match dtype {
        9 => 2,
        3 | 4 | 5 | 12 => 6,
        13 => 7,
        t => t,
    }
}

fn tensors(dir: &Path, kind: &str) -> Result<Vec<PbTensor>, String> {
    let mut out = Vec::new();
    for k in 0.. {
        let path = dir.join(format!("{kind}_{k}.pb"));
        if !path.exists() {
            break;
        }
        out.push(decode_tensor(&fs::read(&path).map_err(|e| e.to_string())?)?);
    }
    Ok(out)
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Pass,
    /// Inputs wasi-nn has no type for.
    Inexpressible(String),
    /// tract refused it (the call and its error code).
    Unsupported(String),
    /// Computed, to other numbers.
    Differs(String),
}

fn list_path(name: &str) -> PathBuf {
    tabi_tests::model_dir("").join(format!("onnx-node-{name}.txt"))
}

#[test]
fn onnx_node_tests_agree_through_the_guest() {
    let root = Path::new(NODE_TESTS);
    assert!(
        root.is_dir(),
        "{NODE_TESTS} is missing: install Debian's libonnx-testdata (scripts/setup.sh does)"
    );
    let work = tempfile::tempdir().unwrap();
    let mut cases = String::new();
    let mut verdicts: BTreeMap<String, Verdict> = BTreeMap::new();
    let mut expected: BTreeMap<String, Vec<PbTensor>> = BTreeMap::new();
    let mut names: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let case = root.join(&name);
        let data = case.join("test_data_set_0");
        let (inputs, outputs) = match (tensors(&data, "input"), tensors(&data, "output")) {
            (Ok(i), Ok(o)) => (i, o),
            (Err(e), _) | (_, Err(e)) => {
                verdicts.insert(name, Verdict::Inexpressible(e));
                continue;
            }
        };
        if let Some(t) = inputs.iter().find(|t| wasi_nn_type(t.dtype).is_none()) {
            verdicts.insert(
                name,
                Verdict::Inexpressible(format!("input type {}", t.dtype)),
            );
            continue;
        }
        let dir = work.path().join(&name);
        fs::create_dir(&dir).unwrap();
        for (k, t) in inputs.iter().enumerate() {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&wasi_nn_type(t.dtype).unwrap().to_le_bytes());
            bytes.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                bytes.extend_from_slice(&(d as u32).to_le_bytes());
            }
            bytes.extend_from_slice(&t.bytes);
            fs::write(dir.join(format!("in_{k}.bin")), bytes).unwrap();
        }
        cases.push_str(&format!(
            "{name} /onnx/{name}/model.onnx {} {}\n",
            inputs.len(),
            outputs.len()
        ));
        expected.insert(name, outputs);
    }
    fs::write(work.path().join("cases.txt"), &cases).unwrap();

    let (out, printed) = Stdio::buffer();
    let setup = Setup {
        args: vec!["nn_cases".into(), "/work".into()],
        dirs: vec![
            (root.to_path_buf(), "/onnx".into()),
            (work.path().to_path_buf(), "/work".into()),
        ],
        ..Setup::default()
    };
    let wasm = fs::read(guests::NN_CASES).unwrap();
    let ended = setup
        .builder(&harness::engine(Backend::preferred()), &wasm)
        .stdout(out)
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(ended.exit(), Some(&tabi::Exit::Code(0)));
    let printed = String::from_utf8(printed.lock().unwrap().clone()).unwrap();
    for line in printed.lines() {
        let (name, result) = line.split_once(' ').unwrap();
        let verdict = if result != "ok" {
            Verdict::Unsupported(result.to_string())
        } else {
            let mut v = Verdict::Pass;
            for (k, want) in expected[name].iter().enumerate() {
                let got = fs::read(work.path().join(name).join(format!("out_{k}.bin"))).unwrap();
                let want_values = values(want.dtype, &want.bytes).unwrap();
                let got_values = values(returned_type(want.dtype), &got).unwrap_or_default();
                if let Err(e) = all_close(&got_values, &want_values, 1e-3, 1e-7) {
                    v = Verdict::Differs(format!("output {k}: {e}"));
                    break;
                }
            }
            v
        };
        verdicts.insert(name.to_string(), verdict);
    }
    assert_eq!(
        printed.lines().count(),
        expected.len(),
        "the guest reported every case:\n{printed}"
    );

    let list = |pick: &dyn Fn(&Verdict) -> Option<&String>| -> String {
        verdicts
            .iter()
            .filter_map(|(n, v)| pick(v).map(|why| format!("{n} {why}\n")))
            .collect()
    };
    let unsupported = list(&|v| match v {
        Verdict::Unsupported(w) => Some(w),
        _ => None,
    });
    let differs = list(&|v| match v {
        Verdict::Differs(w) => Some(w),
        _ => None,
    });
    let inexpressible = list(&|v| match v {
        Verdict::Inexpressible(w) => Some(w),
        _ => None,
    });
    let passed = verdicts.values().filter(|v| **v == Verdict::Pass).count();
    let summary = format!(
        "{} cases: {passed} agree, {} not run by tract, {} differ, {} not expressible in wasi-nn\n",
        verdicts.len(),
        unsupported.lines().count(),
        differs.lines().count(),
        inexpressible.lines().count()
    );
    eprint!("{summary}");
    let lists = [
        ("unsupported", unsupported),
        ("differs", differs),
        ("inexpressible", inexpressible),
        ("summary", summary),
    ];
    if std::env::var_os("TABI_WRITE_CONFORMANCE").is_some() {
        for (name, text) in &lists {
            fs::write(list_path(name), text).unwrap();
        }
    }
    for (name, text) in &lists {
        let committed = fs::read_to_string(list_path(name)).unwrap_or_default();
        let names = |t: &str| -> Vec<String> {
            t.lines()
                .map(|l| l.split(' ').next().unwrap_or("").to_string())
                .collect()
        };
        if *name == "summary" {
            assert_eq!(text, &committed, "the conformance summary changed");
        } else {
            assert_eq!(
                names(text),
                names(&committed),
                "the cases in {} changed",
                list_path(name).display()
            );
        }
    }
    // Most of what wasi-nn can express runs and agrees.
    assert!(
        passed * 2 > expected.len(),
        "{passed} of {} agree",
        expected.len()
    );
}
