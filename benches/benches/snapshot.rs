//! Checkpoint and resume speed, against the floor of copying and compressing the same pages.
//!
//! The guest has 256 MiB of linear memory of which 64 MiB is written: every fourth page, half
//! of them random (incompressible) and half text-like (compressible). It runs on wasmtime,
//! writes its pages, and pauses at a migration point. Measured, medians of `TABI_BENCH_REPS`
//! (default 7):
//!
//! - checkpoint: from the guest paused in its instance to the snapshot file written and
//!   synced and renamed into place, its directory synced, compressed straight from the
//!   instance's memory (`Guest::run_with`). Each run replaces the previous run's file, as
//!   periodic checkpoints to one path do; the replaced file is released on a thread of its own,
//!   so freeing its blocks is not counted (`tabi` does the same), and the runs are spaced as
//!   periodic checkpoints would be, each starting once the file system has settled what the
//!   one before left it; beside it, the same to a path where no file was. Beside
//!   it, the encoder alone into memory, and the copy of the memory out of the instance that a
//!   run which stops makes afterwards;
//! - resume: from the file to the guest running again (read and check the head, instantiate,
//!   decode the memories into the instance, restore, rewind) and on to its end, a fraction of
//!   a millisecond after the point; beside it, reading the file into buffers of its own;
//! - incremental: after the guest changed 1 MiB, the snapshot against the first, written
//!   from the live instance with the host's dirty-page tracking (as `tabi run --incremental`
//!   does), and, beside it, by comparing every page with the parent's;
//! - the floor: a plain copy of the touched pages plus an LZ4 pass over them, in the same run.
//!
//! Targets: checkpoint ≤ 60 ms and ≥ 1.5 GB/s of touched memory, snapshot no larger than the
//! touched pages compressed; resume ≤ 60 ms; incremental ≤ 5 ms and ≤ 1.2 MiB.

use std::time::{Duration, Instant};
use tabi_benches::{median, ms, reps};

use tabi::{AfterPause, Ended, Engine, GuestBuilder, PausedGuest, Resume, Stdio};

const PAGE: usize = 65536;
const MIB: f64 = 1024.0 * 1024.0;

/// The guest: 4,096 pages; `_start` fills every fourth page (random, or text-like for odd
/// ones), calls `sched_yield` (the migration point), then, if `$again` is set, changes 16
/// pages and yields again.
fn guest() -> Vec<u8> {
    wat::parse_str(
        r#"(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (memory (export "memory") 4096)
  (global $x (mut i64) (i64.const 88172645463325252))
  (func $rand (result i64)
    (global.set $x (i64.xor (global.get $x) (i64.shl (global.get $x) (i64.const 13))))
    (global.set $x (i64.xor (global.get $x) (i64.shr_u (global.get $x) (i64.const 7))))
    (global.set $x (i64.xor (global.get $x) (i64.shl (global.get $x) (i64.const 17))))
    (global.get $x))
  (func $fill (param $page i32) (param $text i32)
    (local $a i32) (local $end i32)
    (local.set $a (i32.mul (local.get $page) (i32.const 65536)))
    (local.set $end (i32.add (local.get $a) (i32.const 65536)))
    (loop $l
      (if (local.get $text)
        (then (i64.store (local.get $a)
          (i64.add (i64.const 0x2065756c61762061) (i64.and (call $rand) (i64.const 3)))))
        (else (i64.store (local.get $a) (call $rand))))
      (local.set $a (i32.add (local.get $a) (i32.const 8)))
      (br_if $l (i32.lt_u (local.get $a) (local.get $end)))))
  (func (export "_start") (local $p i32)
    (loop $l
      (call $fill (i32.mul (local.get $p) (i32.const 4)) (i32.and (local.get $p) (i32.const 1)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $p) (i32.const 1024))))
    (drop (call $yield))
    ;; 1 MiB changed: 16 pages rewritten.
    (local.set $p (i32.const 0))
    (loop $m
      (call $fill (i32.mul (local.get $p) (i32.const 4)) (i32.const 0))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $m (i32.lt_u (local.get $p) (i32.const 16))))
    (drop (call $yield))))"#,
    )
    .expect("valid guest")
}

/// Lets the file system finish what earlier runs left it, as the seconds between periodic
/// checkpoints would: the release of a replaced file (on tabi's background thread), and the
/// journal commit of the blocks freed, which on a disk mounted with `discard` also waits for
/// the device to drop them. Without this, each run's sync pays for the run before.
fn settle(dir: &std::path::Path) {
    std::thread::sleep(Duration::from_millis(20));
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

/// The engine every run uses, made once (with its compiled modules).
fn engine() -> Engine {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(Engine::wasmtime).clone()
}

/// The guest, set up to be checkpointed, its rewrite made once.
fn setup(original: &[u8]) -> GuestBuilder {
    static CACHE: std::sync::OnceLock<tabi::RewriteCache> = std::sync::OnceLock::new();
    GuestBuilder::of_binary(&engine(), original.to_vec())
        .program_name("bench")
        .deterministic(1)
        .stdin(Stdio::Null)
        .stdout(Stdio::Null)
        .stderr(Stdio::Null)
        .rewrite(tabi::rewrite_options(false))
        .rewrite_cache(CACHE.get_or_init(Default::default).clone())
}

fn pause(original: &[u8], after: u64) -> PausedGuest {
    match setup(original)
        .pause_after(after)
        .build()
        .unwrap()
        .run()
        .unwrap()
    {
        Ended::Paused(p) => *p,
        Ended::Exited(_) => panic!("the guest did not pause"),
    }
}

fn main() {
    let original = guest();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.snap");
    let n = reps();

    // The pages the guest touched, for the floor.
    let paused = pause(&original, 1);
    let mem = &paused.state().memories[0];
    let touched: Vec<&[u8]> = mem
        .chunks_exact(PAGE)
        .filter(|p| p.iter().any(|&b| b != 0))
        .collect();
    let touched_bytes = touched.len() * PAGE;
    assert_eq!(touched_bytes, 64 << 20, "the guest touches 64 MiB");

    let mut floor_copy = Vec::new();
    let mut floor_lz4 = Vec::new();
    let (mut own_lz4, mut own_out, mut own_table, mut own_size) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut lz4_size = 0;
    let mut buf = vec![0u8; touched_bytes];
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(16 * PAGE)];
    for _ in 0..n {
        let t = Instant::now();
        for (i, p) in touched.iter().enumerate() {
            buf[i * PAGE..(i + 1) * PAGE].copy_from_slice(p);
        }
        floor_copy.push(t.elapsed());
        let t = Instant::now();
        lz4_size = 0;
        for c in buf.chunks(16 * PAGE) {
            lz4_size += lz4_flex::block::compress_into(c, &mut out).unwrap();
        }
        floor_lz4.push(t.elapsed());
        // tabi's own compressor (byte-order independent) over the same bytes.
        let t = Instant::now();
        own_size = 0;
        for c in buf.chunks(16 * PAGE) {
            tabi_snapshot::lz4::compress(c, &mut own_out, &mut own_table);
            own_size += own_out.len();
        }
        own_lz4.push(t.elapsed());
    }
    let floor = median(floor_copy.clone()) + median(floor_lz4.clone());

    // Checkpoint: from the guest paused in its instance to the snapshot file written and
    // synced, straight from the instance's memory (as `tabi run` does).
    let mut write_times = Vec::new();
    let mut encode_times = Vec::new();
    let mut fresh_times = Vec::new();
    let mut size = 0;
    let mut sink = Vec::with_capacity(64 << 20);
    let guest = setup(&original).pause_after(1).build().unwrap();
    let o = guest
        .run_with(|view| {
            for _ in 0..n {
                settle(dir.path());
                let t = Instant::now();
                let s = view.write_file(&file).unwrap();
                write_times.push(t.elapsed());
                size = s.bytes;
            }
            // To a path where no file was.
            for i in 0..n {
                let fresh = dir.path().join(format!("fresh-{i}.snap"));
                settle(dir.path());
                let t = Instant::now();
                view.write_file(&fresh).unwrap();
                fresh_times.push(t.elapsed());
                std::fs::remove_file(&fresh).unwrap();
            }
            // The encoder alone, into memory: no file system.
            for _ in 0..n {
                sink.clear();
                let t = Instant::now();
                view.write_to(&mut sink).unwrap();
                encode_times.push(t.elapsed());
            }
            Ok(AfterPause::Stop)
        })
        .unwrap();
    assert!(matches!(o, Ended::Paused(_)));
    let mut capture_times = Vec::new();
    for _ in 0..n {
        // Copying the instance's memory out, as a run that stops does (only its non-zero
        // blocks are written).
        let t = Instant::now();
        let copy = tabi_hostmem::sparse_copy(mem);
        capture_times.push(t.elapsed());
        drop(copy);
    }
    let write = median(write_times);
    let capture = median(capture_times);

    // Resume: from the file to the guest running again; it then changes 1 MiB and exits, a
    // fraction of a millisecond.
    let mut resume_times = Vec::new();
    let mut read_times = Vec::new();
    for _ in 0..n {
        // The old path, for comparison: the file read into buffers of its own first.
        let t = Instant::now();
        let s = tabi::read_snapshot(&file, &tabi::Limits::default()).unwrap();
        read_times.push(t.elapsed());
        drop(s);
        let t = Instant::now();
        let r = Resume::new(&engine())
            .stdin(Stdio::Null)
            .stdout(Stdio::Null)
            .stderr(Stdio::Null)
            .from_file(&file)
            .unwrap()
            .run()
            .unwrap();
        resume_times.push(t.elapsed());
        assert!(matches!(r, Ended::Exited(_)));
    }
    let resume = median(resume_times);
    let read_only = median(read_times);

    // Incremental: the second pause against the first.
    let base_snapshot = tabi::read_snapshot(&file, &tabi::Limits::default()).unwrap();
    let second = pause(&original, 2);
    let kernel = tabi_libos::encode_state(second.kernel()).unwrap();
    let base_kernel = base_snapshot.kernel_bytes.clone();
    let mut inc_times = Vec::new();
    let mut inc_size = 0;
    for _ in 0..n {
        let contents = tabi_snapshot::Contents {
            identity: tabi_snapshot::Identity {
                original_sha256: base_snapshot.identity.original_sha256,
                module_sha256: base_snapshot.identity.module_sha256,
                options: base_snapshot.identity.options.clone(),
                parent: None,
            },
            module: None,
            entry: &second.state().entry,
            budget: second.state().budget,
            points: second.points(),
            globals: &second.state().globals,
            tables: &[],
            memories: second.state().memories.iter().map(Vec::as_slice).collect(),
            stack: &second.state().stack,
            kernel: &kernel,
            mounts: &[],
            extensions: &[],
        };
        let base = tabi_snapshot::Base {
            hash: base_snapshot.hash,
            memories: base_snapshot
                .memories
                .iter()
                .map(|m| tabi_snapshot::Prior::Bytes(m))
                .collect(),
            kernel: &base_kernel,
        };
        let t = Instant::now();
        let f = std::fs::File::create(dir.path().join("inc.snap")).unwrap();
        let mut sink = tabi_snapshot::IoSink(std::io::BufWriter::new(f));
        let s = tabi_snapshot::write(&mut sink, &contents, Some(&base)).unwrap();
        sink.0.into_inner().unwrap().sync_all().unwrap();
        inc_times.push(t.elapsed());
        inc_size = s.bytes;
    }
    let inc = median(inc_times);

    // Incremental as `tabi run --incremental` writes it: the guest goes on in its instance
    // after a full checkpoint, and the host's dirty-page tracking (started at that
    // checkpoint) says which pages it wrote; nothing is compared.
    let mut tracked_times = Vec::new();
    let (mut tracked_size, mut tracked_incremental) = (0, true);
    for _ in 0..n {
        let request = tabi::PauseHandle::new();
        let guest = setup(&original)
            .pause_after(1)
            .pause_handle(&request)
            .build()
            .unwrap();
        let mut chain = tabi::Chain::new();
        // The chain starts at a path of its own: releasing a replaced 41 MiB file on the
        // background thread would otherwise overlap the timed link that follows at once.
        let first = dir.path().join("chain.snap");
        let _ = std::fs::remove_file(&first);
        let mut links = 0;
        let o = guest
            .run_with(|view| {
                links += 1;
                if links == 1 {
                    view.write_incremental(&mut chain, &first)
                        .expect("full checkpoint");
                    // Pause again at the next point.
                    request.request();
                    return Ok(AfterPause::Continue);
                }
                let t = Instant::now();
                let w = view
                    .write_incremental(&mut chain, &dir.path().join("tracked.snap"))
                    .expect("incremental checkpoint");
                tracked_times.push(t.elapsed());
                tracked_size = w.summary.bytes;
                tracked_incremental &= w.parent.is_some();
                Ok(AfterPause::Stop)
            })
            .unwrap();
        assert!(matches!(o, Ended::Paused(_)));
    }
    let tracked = median(tracked_times);
    // The incremental snapshot applies to its parent and gives the second state.
    let inc_bytes = std::fs::read(dir.path().join("inc.snap")).unwrap();
    let applied = tabi_snapshot::read(
        &mut &inc_bytes[..],
        &tabi_snapshot::Limits::default(),
        Some(&base_snapshot),
    )
    .unwrap();
    assert_eq!(applied.memories, second.state().memories);

    let gbs = |d: Duration| touched_bytes as f64 / d.as_secs_f64() / 1e9;
    println!("guest: 256 MiB of memory, 64 MiB touched (half compressible); medians of {n} runs");
    println!(
        "floor: copy {:.1} ms + lz4 {:.1} ms = {:.1} ms; lz4 output {:.1} MiB",
        ms(median(floor_copy)),
        ms(median(floor_lz4.clone())),
        ms(floor),
        lz4_size as f64 / MIB
    );
    println!(
        "tabi's LZ4 compressor on the same bytes: {:.1} ms, output {:.1} MiB (lz4_flex: {:.1} ms)",
        ms(median(own_lz4)),
        own_size as f64 / MIB,
        ms(median(floor_lz4.clone()))
    );
    println!(
        "checkpoint from the paused instance to the file synced: {:.1} ms ({:.2} GB/s of touched memory; {:.2}x the floor; target <= 60 ms, >= 1.5 GB/s)",
        ms(write),
        gbs(write),
        write.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  to a new path, no file replaced: {:.1} ms ({:.2} GB/s)",
        ms(median(fresh_times.clone())),
        gbs(median(fresh_times))
    );
    println!(
        "  of which encoding (into memory, no file): {:.1} ms",
        ms(median(encode_times))
    );
    println!(
        "  copying the memory out of the instance, as a stopped run does afterwards: {:.1} ms",
        ms(capture)
    );
    println!(
        "  snapshot {:.2} MiB vs the touched pages compressed {:.2} MiB (target: no larger)",
        size as f64 / MIB,
        lz4_size as f64 / MIB
    );
    println!(
        "resume from file to running guest: {:.1} ms (target <= 60 ms); reading the file into buffers alone takes {:.1} ms",
        ms(resume),
        ms(read_only)
    );
    if tracked_incremental {
        println!(
            "incremental after 1 MiB changed, from the live instance with dirty-page tracking: {:.2} ms, {:.3} MiB (targets <= 5 ms, <= 1.2 MiB)",
            ms(tracked),
            tracked_size as f64 / MIB
        );
    } else {
        println!(
            "incremental with dirty-page tracking: not available on this host (the checkpoint was full: {:.2} ms, {:.3} MiB)",
            ms(tracked),
            tracked_size as f64 / MIB
        );
    }
    println!(
        "incremental after 1 MiB changed, by comparing with the parent's pages: {:.2} ms, {:.3} MiB",
        ms(inc),
        inc_size as f64 / MIB
    );
}
