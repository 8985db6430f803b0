//! A guest blocked in a call is checkpointed while it waits, and the wait is carried on after
//! the resume.

#[allow(dead_code, reason = "each test binary uses part of the shared helpers")]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use common::tabi;

/// Prints `ready`, reads a line from standard input, and prints `got: ` and what it read.
const READER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "ready\n")
  (data (i32.const 200) "got: ")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 16) (i32.const 205))
    (i32.store (i32.const 20) (i32.const 100))
    (drop (call $read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (i32.store (i32.const 32) (i32.const 200))
    (i32.store (i32.const 36) (i32.add (i32.const 5) (i32.load (i32.const 24))))
    (drop (call $write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))))"#;

/// Prints `ready`, waits in `poll_oneoff` for standard input to be readable (no clock),
/// then reads a line and prints `got: ` and what it read; `no event` if the poll said
/// anything else.
const POLLER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "ready\n")
  (data (i32.const 200) "got: ")
  (data (i32.const 300) "no event\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    ;; One subscription at 512: userdata 1, fd_read of descriptor 0.
    (i64.store (i32.const 512) (i64.const 1))
    (i32.store8 (i32.const 520) (i32.const 1))
    (i32.store (i32.const 528) (i32.const 0))
    (drop (call $poll (i32.const 512) (i32.const 1024) (i32.const 1) (i32.const 2000)))
    (if (i32.or (i32.ne (i32.load (i32.const 2000)) (i32.const 1))
                (i64.ne (i64.load (i32.const 1024)) (i64.const 1)))
      (then
        (i32.store (i32.const 0) (i32.const 300))
        (i32.store (i32.const 4) (i32.const 9))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (return)))
    (i32.store (i32.const 16) (i32.const 205))
    (i32.store (i32.const 20) (i32.const 100))
    (drop (call $read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (i32.store (i32.const 32) (i32.const 200))
    (i32.store (i32.const 36) (i32.add (i32.const 5) (i32.load (i32.const 24))))
    (drop (call $write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))))"#;

/// The system calls a thread waiting for standard input is in (`poll`, `ppoll`), by this
/// architecture's numbers.
fn polling_syscalls() -> &'static [u64] {
    if cfg!(target_arch = "x86_64") {
        &[7, 271]
    } else if cfg!(target_arch = "aarch64") {
        &[73]
    } else if cfg!(target_arch = "s390x") {
        &[168, 302]
    } else {
        &[]
    }
}

/// Whether a thread of process `pid` is in one of `syscalls` (from `/proc`).
fn waiting_in(pid: u32, syscalls: &[u64]) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("syscall"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .is_some_and(|n| syscalls.contains(&n))
    })
}

/// Sends SIGUSR1 to process `pid` once one of its threads waits for input (on an
/// architecture whose system call numbers are known; elsewhere at once). Says whether it saw
/// the wait.
fn signal_once_waiting(pid: u32) -> bool {
    let syscalls = polling_syscalls();
    if !syscalls.is_empty() {
        while !waiting_in(pid, syscalls) {
            std::thread::yield_now();
        }
    }
    let killed = std::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    !syscalls.is_empty()
}

/// A guest waiting for a line on standard input is checkpointed by SIGUSR1 while it waits
/// (the checkpoint is at its `fd_read`, the second migration point), and, resumed on the
/// other engine with the line on its new standard input, reads it and prints it.
#[test]
fn a_guest_blocked_reading_stdin_is_checkpointed_and_reads_after_resume() {
    blocked_then_resumed(READER);
}

/// The same for a guest waiting in `poll_oneoff` for standard input, with no clock: the poll
/// is finished after the resume, and says standard input is readable.
#[test]
fn a_guest_polling_stdin_is_checkpointed_and_polls_after_resume() {
    blocked_then_resumed(POLLER);
}

fn blocked_then_resumed(guest: &str) {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("guest.wat");
    std::fs::write(&module, guest).unwrap();
    for (first, second) in [("wasmtime", "wasmi"), ("wasmi", "wasmtime")] {
        let file = dir.path().join(format!("{first}.snap"));
        let mut child = tabi()
            .env("TABI_CACHE", "off")
            .args(["run", "--backend", first, "--checkpoint-on-signal"])
            .args(["--stop-after-checkpoint", "--snapshot"])
            .arg(&file)
            .arg(&module)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Held open and empty: the guest waits on it.
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let seen_waiting = signal_once_waiting(child.id());
        let ended = child.wait_with_output().unwrap();
        drop(stdin);
        let stderr = String::from_utf8_lossy(&ended.stderr);
        assert_eq!(ended.status.code(), Some(75), "{stderr}");
        if seen_waiting {
            assert!(
                stderr.contains("at migration point 2 (Requested)"),
                "the pause was not taken in the read: {stderr}"
            );
        }
        assert!(ended.stdout.is_empty(), "nothing after `ready`");

        let mut resumed = tabi()
            .env("TABI_CACHE", "off")
            .args(["resume", "--backend", second])
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        resumed
            .stdin
            .take()
            .unwrap()
            .write_all(b"a line typed later\n")
            .unwrap();
        let ended = resumed.wait_with_output().unwrap();
        assert_eq!(
            ended.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&ended.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&ended.stdout),
            "got: a line typed later\n",
            "{first} then {second}"
        );
    }
}

/// Checkpointed while it waits and let go on in place, the guest gets the line typed after the
/// checkpoint was written.
#[test]
fn a_guest_checkpointed_while_reading_goes_on_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("reader.wat");
    std::fs::write(&module, READER).unwrap();
    let file = dir.path().join("s.snap");
    let mut child = tabi()
        .env("TABI_CACHE", "off")
        .args([
            "run",
            "--backend",
            "wasmi",
            "--checkpoint-on-signal",
            "--snapshot",
        ])
        .arg(&file)
        .arg(&module)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    signal_once_waiting(child.id());
    // The checkpoint is reported written; then the line comes.
    let mut report = String::new();
    err.read_line(&mut report).unwrap();
    assert!(report.contains("written to"), "{report}");
    stdin.write_all(b"after the checkpoint\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "got: after the checkpoint\n");
    assert!(child.wait().unwrap().success());
    assert!(file.exists());
}

/// Reads standard input a byte at a time up to a line break, then prints the line.
const LINE_BY_BYTES: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $at i32)
    (local.set $at (i32.const 100))
    (block $done
      (loop $more
        (i32.store (i32.const 0) (local.get $at))
        (i32.store (i32.const 4) (i32.const 1))
        (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br_if $done (i32.eq (i32.load8_u (i32.sub (local.get $at) (i32.const 1))) (i32.const 10)))
        (br $more)))
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.sub (local.get $at) (i32.const 100)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Input that came in one piece and is read a byte at a time is all there for each read:
/// the wait for input looks at what the process has not read yet, so a guest answering a
/// peer that keeps its end open and waits for the answer does not hang.
#[test]
fn small_reads_of_piped_input_do_not_wait_for_more() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("line.wat");
    std::fs::write(&module, LINE_BY_BYTES).unwrap();
    for signals in [false, true] {
        let mut cmd = tabi();
        cmd.env("TABI_CACHE", "off")
            .args(["run", "--backend", "wasmi"]);
        if signals {
            // A pause can be asked for, so the reads wait through the host's poll.
            cmd.args(["--checkpoint-on-signal", "--snapshot"])
                .arg(dir.path().join("s.snap"));
        }
        let mut child = cmd
            .arg(&module)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"first line\nsecond\n").unwrap();
        stdin.flush().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // With the pipe still open: the guest has its line from what was written.
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "first line\n", "signals {signals}");
        drop(stdin);
        assert!(child.wait().unwrap().success());
    }
}
