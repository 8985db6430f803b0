//! An edge application that links tabi: it runs a guest stage in-process on an "edge" tabi
//! (wasmi, as on a device without a JIT), pauses it half-way, and hands the snapshot to a
//! second, "cloud" tabi (wasmtime) that finishes it. The two trust each other's snapshots
//! through a shared key; in a later issue the second tabi runs on another node.

use tabi::{Backend, Ended, Engine, Exit, GuestBuilder, Key, Limits, Resume, RewriteCache, Stdio};

/// The stage: prints `step 0` to `step 9`, one line a call.
const STAGE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "step 0\n")
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 7))
    (loop $l
      (i32.store8 (i32.const 105) (i32.add (i32.const 48) (local.get $i)))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10))))))"#;

/// One tabi instance: its engine, its cache of rewritten modules, the limits and key it
/// holds snapshots to.
struct Instance {
    name: &'static str,
    engine: Engine,
    cache: RewriteCache,
    limits: Limits,
}

impl Instance {
    fn new(name: &'static str, backend: Backend, key: Key) -> Result<Instance, tabi::Error> {
        let mut limits = Limits::default().with_memory_bytes(64 << 20);
        limits.key = Some(key);
        Ok(Instance {
            name,
            engine: Engine::new(backend)?,
            cache: RewriteCache::in_memory(4),
            limits,
        })
    }
}

fn main() -> Result<(), tabi::Error> {
    let key = Key::derive(b"a secret the edge and the cloud share");
    let edge = Instance::new("edge", Backend::Wasmi, key)?;
    let cloud = Instance::new("cloud", Backend::Wasmtime, key)?;

    // The stage starts on the edge and pauses after its fifth line.
    let (edge_out, edge_printed) = Stdio::buffer();
    let guest = GuestBuilder::new(&edge.engine, STAGE.as_bytes())?
        .stdout(edge_out)
        .rewrite_cache(edge.cache.clone())
        .snapshot_limits(edge.limits)
        .pause_after(5)
        .build()?;
    let Ended::Paused(paused) = guest.run()? else {
        return Err(tabi::Error::Config("the stage did not pause".into()));
    };
    let snapshot = paused.snapshot_bytes()?;
    println!(
        "{} ({}): paused at migration point {}, handing over {} bytes",
        edge.name,
        edge.engine.backend(),
        paused.points(),
        snapshot.len()
    );

    // The cloud takes it from the bytes, checks the key, and finishes the stage.
    let (cloud_out, cloud_printed) = Stdio::buffer();
    let resumed = Resume::new(&cloud.engine)
        .stdout(cloud_out)
        .rewrite_cache(cloud.cache.clone())
        .limits(cloud.limits)
        .from_reader(&snapshot[..])?;
    let ended = resumed.run()?;
    if ended.exit() != Some(&Exit::Code(0)) {
        return Err(tabi::Error::Config(format!("the stage ended {ended:?}")));
    }
    for (who, printed) in [(edge.name, edge_printed), (cloud.name, cloud_printed)] {
        let text = printed
            .lock()
            .map_err(|_| tabi::Error::GuestThread)?
            .clone();
        for line in String::from_utf8_lossy(&text).lines() {
            println!("{who}: {line}");
        }
    }
    Ok(())
}
