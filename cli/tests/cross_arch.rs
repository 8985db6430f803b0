//! Migration across CPU architectures: a guest starts on this machine (x86_64) under
//! wasmtime, and its snapshot is resumed on aarch64 under wasmi, on big-endian s390x under
//! wasmtime and then wasmi, and back here, checkpointed again at each stop. The other
//! architectures run `tabi` built for them under qemu-user.
//!
//! These tests need those builds, so they are ignored by a plain `cargo test`;
//! `scripts/cross.sh` builds them, names them in `TABI_CROSS_AARCH64` and `TABI_CROSS_S390X`,
//! and runs these tests with `--run-ignored only`. Without the variables they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tabi_tests::guests;

/// A machine that runs `tabi`: this one, or another architecture under qemu-user.
#[derive(Clone, Debug)]
struct Arch {
    name: &'static str,
    /// The command line that starts `tabi` there.
    argv: Vec<String>,
}

impl Arch {
    fn native() -> Arch {
        Arch {
            name: "x86_64",
            argv: vec![env!("CARGO_BIN_EXE_tabi").into()],
        }
    }

    fn emulated(name: &'static str, var: &str, qemu: &str, sysroot: &str) -> Arch {
        let bin = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} must name `tabi` built for {name}; scripts/cross.sh sets it")
        });
        assert!(Path::new(&bin).exists(), "{var}={bin} does not exist");
        Arch {
            name,
            argv: vec![qemu.into(), "-L".into(), sysroot.into(), bin],
        }
    }

    fn aarch64() -> Arch {
        Arch::emulated(
            "aarch64",
            "TABI_CROSS_AARCH64",
            "qemu-aarch64",
            "/usr/aarch64-linux-gnu",
        )
    }

    fn s390x() -> Arch {
        Arch::emulated(
            "s390x",
            "TABI_CROSS_S390X",
            "qemu-s390x",
            "/usr/s390x-linux-gnu",
        )
    }

    fn tabi(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .args(args)
            .env(
                "TABI_CACHE_DIR",
                std::env::temp_dir().join("tabi-test-cache"),
            )
            .output()
            .unwrap_or_else(|e| panic!("cannot start tabi on {}: {e}", self.name));
        // A crash of the emulated binary is a failure of the test, not of the guest.
        assert!(
            out.status.code().is_some(),
            "tabi on {} was killed: {out:?}",
            self.name
        );
        out
    }
}

/// A guest and how it is run.
struct Case {
    wasm: &'static str,
    args: &'static [&'static str],
    /// Whether it works in a host directory mounted at /sandbox (else an in-memory one).
    host_dir: bool,
    /// More options for its first run.
    extra: &'static [&'static str],
}

const CASES: &[Case] = &[
    // The file-heavy guest on a host directory: open files and offsets cross every stop.
    Case {
        wasm: guests::STD_FS,
        args: &[],
        host_dir: true,
        extra: &[],
    },
    Case {
        wasm: guests::STD_FS,
        args: &["churn", "12"],
        host_dir: false,
        extra: &[],
    },
    // A deep call stack: thousands of frames saved on one architecture, rebuilt on another.
    Case {
        wasm: guests::COMPUTE,
        args: &["deep", "2000"],
        host_dir: false,
        extra: &[],
    },
    Case {
        wasm: guests::COMPUTE,
        args: &["all", "1"],
        host_dir: false,
        extra: &[],
    },
    Case {
        wasm: guests::POSIX,
        args: &[],
        host_dir: false,
        extra: &[],
    },
    Case {
        wasm: guests::HELLO,
        args: &["a", "b c"],
        host_dir: false,
        extra: &[],
    },
    // wasi-nn: models, graphs, contexts, inputs and outputs in the kernel state, and tract
    // on each architecture. The model adds and takes an argmax, which every CPU computes
    // to the same bits, so the output is compared byte for byte like the others'.
    Case {
        wasm: guests::NN_RAW,
        args: &["/m"],
        host_dir: false,
        extra: &[
            "--copy-dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/models/add::/m"),
        ],
    },
];

/// Files under `dir`, by relative path, with their contents.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                out.push((rel + "/", Vec::new()));
                stack.push(p);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The guest's options: deterministic, and its /sandbox.
fn guest_options(case: &Case, sandbox: &Path) -> Vec<String> {
    let mut v = vec!["--deterministic".to_string(), "--seed".into(), "5".into()];
    if case.host_dir {
        v.push("--dir".into());
        v.push(format!("{}::/sandbox", sandbox.display()));
    } else {
        v.push("--mem-dir".into());
        v.push("/sandbox".into());
    }
    v.extend(case.extra.iter().map(|s| s.to_string()));
    v
}

/// What a whole run left: stdout, exit code, the host directory's files.
#[derive(Debug, PartialEq)]
struct Result {
    stdout: Vec<u8>,
    code: Option<i32>,
    tree: Vec<(String, Vec<u8>)>,
}

fn plain(case: &Case, work: &Path) -> Result {
    let sandbox = work.join("plain");
    std::fs::create_dir_all(&sandbox).unwrap();
    let mut args = vec!["run".to_string()];
    args.extend(guest_options(case, &sandbox));
    args.push(case.wasm.into());
    args.extend(case.args.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Arch::native().tabi(&args);
    Result {
        stdout: out.stdout,
        code: out.status.code(),
        tree: tree(&sandbox),
    }
}

/// Runs `case` through `stops`: it starts on the first (`tabi run`), and at each stop it is
/// checkpointed after `points[i]` more migration points and resumed on the next. Returns the
/// result and how many checkpoints were taken.
fn migrated(
    case: &Case,
    work: &Path,
    stops: &[(Arch, &str)],
    points: &[u64],
    tag: &str,
) -> (Result, usize) {
    let sandbox = work.join(format!("migrated-{tag}"));
    std::fs::create_dir_all(&sandbox).unwrap();
    let options = guest_options(case, &sandbox);
    let mut stdout = Vec::new();
    let mut snapshot: Option<PathBuf> = None;
    let mut checkpoints = 0;
    for (i, (arch, backend)) in stops.iter().enumerate() {
        let next = work.join(format!("{tag}-{i}.snap"));
        let mut args: Vec<String> = Vec::new();
        match &snapshot {
            None => {
                args.extend(["run".into(), "--backend".into(), backend.to_string()]);
                args.extend(options.iter().cloned());
            }
            Some(_) => {
                args.extend(["resume".into(), "--backend".into(), backend.to_string()]);
                if case.host_dir {
                    args.push("--dir".into());
                    args.push(format!("{}::/sandbox", sandbox.display()));
                }
            }
        }
        if let Some(&n) = points.get(i) {
            args.extend([
                "--checkpoint-after".into(),
                n.to_string(),
                "--snapshot".into(),
                next.display().to_string(),
            ]);
        }
        match &snapshot {
            None => {
                args.push(case.wasm.into());
                args.extend(case.args.iter().map(|s| s.to_string()));
            }
            Some(s) => args.push(s.display().to_string()),
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = arch.tabi(&argv);
        stdout.extend_from_slice(&out.stdout);
        if out.status.code() == Some(75) {
            checkpoints += 1;
            snapshot = Some(next);
            assert!(
                i + 1 < stops.len(),
                "{tag}: checkpointed at the last stop ({}): {out:?}",
                arch.name
            );
            continue;
        }
        // The guest ended here (it may end before a stop's checkpoint).
        return (
            Result {
                stdout,
                code: out.status.code(),
                tree: tree(&sandbox),
            },
            checkpoints,
        );
    }
    unreachable!("the last stop runs to the end")
}

/// The chain of the issue: x86_64 wasmtime → aarch64 wasmi → s390x wasmtime → s390x wasmi →
/// x86_64, for every guest, at several sets of migration points. Each ends with the output,
/// exit code and files of the uninterrupted run, byte for byte.
#[test]
#[ignore = "needs tabi built for aarch64 and s390x; run by scripts/cross.sh"]
fn guests_migrate_across_architectures() {
    let stops = [
        (Arch::native(), "wasmtime"),
        (Arch::aarch64(), "wasmi"),
        (Arch::s390x(), "wasmtime"),
        (Arch::s390x(), "wasmi"),
        (Arch::native(), "wasmtime"),
    ];
    // Points after which each of the first four stops checkpoints.
    let schedules: &[[u64; 4]] = &[[1, 1, 1, 1], [3, 5, 2, 7], [12, 9, 17, 4]];
    for (c, case) in CASES.iter().enumerate() {
        let work = tempfile::tempdir().unwrap();
        let expected = plain(case, work.path());
        assert!(!expected.stdout.is_empty() || expected.code != Some(0));
        let mut total = 0;
        for (s, points) in schedules.iter().enumerate() {
            let tag = format!("c{c}s{s}");
            let (got, checkpoints) = migrated(case, work.path(), &stops, points, &tag);
            assert_eq!(
                got, expected,
                "{} {:?}, checkpoints after {points:?}: the migrated run differs",
                case.wasm, case.args
            );
            total += checkpoints;
        }
        assert!(
            total >= 4,
            "{} {:?}: only {total} checkpoints were taken",
            case.wasm,
            case.args
        );
    }
}

/// The same guest state gives the same snapshot bytes on every architecture and engine.
#[test]
#[ignore = "needs tabi built for aarch64 and s390x; run by scripts/cross.sh"]
fn snapshots_are_the_same_bytes_on_every_architecture() {
    let arches = [Arch::native(), Arch::aarch64(), Arch::s390x()];
    for case in CASES.iter().filter(|c| !c.host_dir) {
        let mut compared = 0;
        for n in [1u64, 2, 6] {
            let work = tempfile::tempdir().unwrap();
            let mut files: Vec<(String, Vec<u8>)> = Vec::new();
            for arch in &arches {
                for backend in ["wasmtime", "wasmi"] {
                    let file = work.path().join(format!("{}-{backend}.snap", arch.name));
                    let mut args = vec!["run".to_string(), "--backend".into(), backend.into()];
                    args.extend(guest_options(case, work.path()));
                    args.extend([
                        "--checkpoint-after".into(),
                        n.to_string(),
                        "--snapshot".into(),
                        file.display().to_string(),
                        case.wasm.into(),
                    ]);
                    args.extend(case.args.iter().map(|s| s.to_string()));
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    let out = arch.tabi(&argv);
                    if files.is_empty() && out.status.code() == Some(0) {
                        // The guest passes fewer points: nothing to compare at this one.
                        break;
                    }
                    assert_eq!(out.status.code(), Some(75), "{}: {out:?}", arch.name);
                    files.push((
                        format!("{} {backend}", arch.name),
                        std::fs::read(&file).unwrap(),
                    ));
                }
            }
            if files.is_empty() {
                continue;
            }
            compared += 1;
            let (first, bytes) = &files[0];
            if let Some((name, _)) = files[1..].iter().find(|(_, other)| other != bytes) {
                // Keep the files to look at.
                let kept = work.keep();
                panic!(
                    "{} {:?} after {n} points: the snapshot from {name} differs from {first}'s (files kept in {})",
                    case.wasm,
                    case.args,
                    kept.display()
                );
            }
        }
        assert!(
            compared >= 2,
            "{} {:?}: too few points",
            case.wasm,
            case.args
        );
    }
}
