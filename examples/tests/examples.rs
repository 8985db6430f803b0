//! The examples run, and say what they did.

use std::process::Command;

/// `embed`: the first run ends only by the timer's pause (its host never ends the input),
/// and the run resumed on wasmi reads the three dots and the `q` its own host gives.
#[test]
fn embed_checkpoints_on_a_timer_and_resumes_on_the_other_engine() {
    let out = Command::new(env!("CARGO_BIN_EXE_embed")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("checkpointed on wasmtime at migration point "),
        "{text}"
    );
    let last = lines.next().unwrap();
    assert!(
        last.starts_with("resumed on wasmi: Some(Code(0))"),
        "{text}"
    );
    // The count is every dot read: those before the pause, and three after.
    let count: u64 = last.rsplit(' ').next().unwrap().parse().unwrap();
    let points: u64 = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert_eq!(count, points + 3, "{text}");
}

/// `edge-app`: the edge prints the first five steps, the cloud the last five.
#[test]
fn edge_app_hands_a_stage_from_the_edge_to_the_cloud() {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-app"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("edge (wasmi): paused at migration point 5"),
        "{text}"
    );
    let steps: Vec<String> = (0..10)
        .map(|i| format!("{}: step {i}", if i < 5 { "edge" } else { "cloud" }))
        .collect();
    assert_eq!(lines[1..], steps, "{text}");
}
