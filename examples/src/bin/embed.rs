//! A host runtime that embeds tabi: runs a guest on a host of its own, checkpoints it from a
//! timer thread, and resumes the snapshot on the other engine.
//!
//! The guest reads standard input a byte at a time until it reads `q`, counting what it read,
//! then prints the count. This runtime's host gives it dots forever, so the first run can
//! only end by the timer's pause; the host of the resumed run gives three dots and a `q`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tabi::{AfterPause, Backend, Ended, Engine, Errno, GuestBuilder, Host, PauseHandle, Resume};

const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $n i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1))
    (block $done
      (loop $more
        (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (br_if $done (i32.eq (i32.load8_u (i32.const 64)) (i32.const 113)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $more)))
    ;; Prints the count in decimal, then a line break.
    (i32.store8 (i32.const 127) (i32.const 10))
    (i32.store (i32.const 16) (i32.const 127))
    (loop $digit
      (i32.store (i32.const 16) (i32.sub (i32.load (i32.const 16)) (i32.const 1)))
      (i32.store8 (i32.load (i32.const 16))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $n)))
    (i32.store (i32.const 20) (i32.sub (i32.const 128) (i32.load (i32.const 16))))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))"#;

/// This runtime's host: a clock of its own, no entropy but zeros, standard input from a
/// script (`dots` dots, then `q` if `quits`), standard output to a shared buffer.
struct RuntimeHost {
    dots: Option<u64>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Host for RuntimeHost {
    fn wall_clock_ns(&mut self) -> u64 {
        1_700_000_000_000_000_000
    }
    fn monotonic_ns(&mut self) -> u64 {
        0
    }
    fn random_bytes(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        buf.fill(0);
        Ok(())
    }
    fn stdin_read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let Some(first) = buf.first_mut() else {
            return Ok(0);
        };
        *first = match &mut self.dots {
            None => b'.',
            Some(0) => b'q',
            Some(n) => {
                *n -= 1;
                b'.'
            }
        };
        Ok(1)
    }
    fn stdout_write(&mut self, buf: &[u8]) -> Result<(), Errno> {
        self.out
            .lock()
            .map_err(|_| Errno::Io)?
            .extend_from_slice(buf);
        Ok(())
    }
    fn stderr_write(&mut self, _: &[u8]) -> Result<(), Errno> {
        Ok(())
    }
    fn sleep_ns(&mut self, ns: u64) {
        std::thread::sleep(Duration::from_nanos(ns));
    }
}

fn main() -> Result<(), tabi::Error> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let first = Engine::new(Backend::Wasmtime)?;
    let second = Engine::new(Backend::Wasmi)?;

    // The guest, on this runtime's host, pausable from another thread.
    let handle = PauseHandle::new();
    let host_out = out.clone();
    let guest = GuestBuilder::new(&first, GUEST.as_bytes())?
        .host_factory(move || {
            Box::new(RuntimeHost {
                dots: None,
                out: host_out.clone(),
            })
        })
        .pause_handle(&handle)
        .build()?;
    let timer = handle.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        timer.request();
    });
    let mut snapshot = Vec::new();
    let ended = guest.run_with(|pause| {
        pause.write_to(&mut snapshot)?;
        println!(
            "checkpointed on {} at migration point {} ({} bytes)",
            first.backend(),
            pause.points(),
            snapshot.len()
        );
        Ok(AfterPause::Stop)
    })?;
    let Ended::Paused(_) = ended else {
        return Err(tabi::Error::Config(
            "the guest ended before the timer".into(),
        ));
    };

    // Resumed on the other engine, with a host that ends the input.
    let host_out = out.clone();
    let resumed = Resume::new(&second)
        .host_factory(move || {
            Box::new(RuntimeHost {
                dots: Some(3),
                out: host_out.clone(),
            })
        })
        .from_reader(&snapshot[..])?;
    let ended = resumed.run()?;
    println!(
        "resumed on {}: {:?}, the guest printed {}",
        second.backend(),
        ended.exit(),
        String::from_utf8_lossy(&out.lock().map_err(|_| tabi::Error::GuestThread)?).trim()
    );
    Ok(())
}
