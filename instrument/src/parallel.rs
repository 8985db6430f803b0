//! Runs independent pieces of work on a few threads and hands the results back in order.
//!
//! The rewrite of one function body, and the validation of one, need nothing from the others,
//! so a large module's bodies are shared out among threads. The output never depends on how
//! many threads ran or which took what: results come back in the order of the work, and
//! anything a thread numbers on its own is renumbered in that order afterwards (see
//! `rewrite::Types`).

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Jobs a thread takes at a time.
const BATCH: usize = 32;

/// Code bytes below which one more thread is not worth starting.
const BYTES_PER_THREAD: usize = 256 << 10;

/// At most this many threads, whatever the machine has.
const MAX_THREADS: usize = 8;

/// Stack of each thread the work runs on. The rewrite recurses once per nesting level of a
/// body's blocks (up to [`crate::rewrite::MAX_NESTING`]): measured, about 0.6 KiB a level in
/// an optimized build and up to 13 KiB in a debug build. Only the pages used are committed.
pub(crate) const STACK: usize = if cfg!(debug_assertions) {
    160 << 20
} else {
    32 << 20
};

/// Runs `f` on a thread of its own with [`STACK`] bytes of stack, or on the caller's thread
/// when no thread can be made. A panic in `f` is raised again on the caller's thread.
fn with_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let f = Mutex::new(Some(f));
    let take = || {
        f.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    };
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .stack_size(STACK)
            .spawn_scoped(scope, || take().map(|f| f()));
        match spawned.map(|h| h.join()) {
            Ok(Ok(Some(done))) => done,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // No thread was made: run here. (A thread that was made took `f` first.)
            Ok(Ok(None)) | Err(_) => take().expect("run once")(),
        }
    })
}

/// Threads worth using for `bytes` of code: one, plus one per [`BYTES_PER_THREAD`] beyond the
/// first, up to the machine's parallelism.
pub(crate) fn threads_for(bytes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    (1 + bytes / BYTES_PER_THREAD).min(cores).min(MAX_THREADS)
}

/// Runs `work` over `jobs` on up to `threads` threads (the caller's among them), each thread
/// with a state of its own made by `init`. Returns every job's result in the order of `jobs`,
/// each with the index of the state it was made with, and those states.
///
/// A panic in `work` is raised again on the caller's thread.
pub(crate) fn run<J, R, S>(
    jobs: Vec<J>,
    threads: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, J) -> R + Sync,
) -> (Vec<(usize, R)>, Vec<S>)
where
    J: Send,
    R: Send,
    S: Send,
{
    let threads = threads.clamp(1, jobs.len().div_ceil(BATCH).max(1));
    if threads == 1 {
        return with_stack(|| {
            let mut state = init();
            let results = jobs.into_iter().map(|j| (0, work(&mut state, j))).collect();
            (results, vec![state])
        });
    }
    let count = jobs.len();
    let mut batches: Vec<Mutex<Option<Vec<J>>>> = Vec::with_capacity(count.div_ceil(BATCH));
    let mut jobs = jobs.into_iter();
    loop {
        let batch: Vec<J> = jobs.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        batches.push(Mutex::new(Some(batch)));
    }
    let next = AtomicUsize::new(0);
    let worker = |id: usize| {
        let mut state = init();
        let mut done = Vec::new();
        loop {
            let b = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = batches.get(b) else { break };
            let batch = slot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
                .unwrap_or_default();
            let results: Vec<R> = batch.into_iter().map(|j| work(&mut state, j)).collect();
            done.push((b, results));
        }
        (id, state, done)
    };
    let finished: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads)
            .map(|id| {
                let worker = &worker;
                std::thread::Builder::new()
                    .stack_size(STACK)
                    .spawn_scoped(scope, move || worker(id))
            })
            .collect();
        // The caller's thread takes a share too, on a stack as large as the others'.
        let mut finished = vec![with_stack(|| worker(0))];
        for (id, h) in (1..threads).zip(handles) {
            match h.map(|h| h.join()) {
                Ok(Ok(f)) => finished.push(f),
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                // A thread that could not be made: its worker runs here (it finds the
                // batches that are left, if any), so that every id has its state.
                Err(_) => finished.push(with_stack(|| worker(id))),
            }
        }
        finished
    });
    let mut states = Vec::with_capacity(threads);
    let mut by_batch: Vec<Option<(usize, Vec<R>)>> = (0..batches.len()).map(|_| None).collect();
    for (id, state, done) in finished {
        states.push((id, state));
        for (b, results) in done {
            by_batch[b] = Some((id, results));
        }
    }
    states.sort_by_key(|(id, _)| *id);
    let mut results = Vec::with_capacity(count);
    for (id, batch) in by_batch.into_iter().flatten() {
        results.extend(batch.into_iter().map(|r| (id, r)));
    }
    (results, states.into_iter().map(|(_, s)| s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_with_their_thread() {
        for threads in [1, 2, 5] {
            let jobs: Vec<u32> = (0..1000).collect();
            let (results, states) = run(
                jobs,
                threads,
                || 0u32,
                |seen, j| {
                    *seen += 1;
                    j * 2
                },
            );
            assert_eq!(results.len(), 1000);
            for (k, (thread, r)) in results.iter().enumerate() {
                assert_eq!(*r, 2 * k as u32);
                assert!(*thread < states.len());
            }
            // Every job ran once, on some thread.
            assert_eq!(states.iter().sum::<u32>(), 1000);
            assert!(states.len() <= threads);
        }
    }

    #[test]
    fn no_jobs_no_results() {
        let (results, states) = run(Vec::<u8>::new(), 4, || (), |_, j| j);
        assert!(results.is_empty());
        assert_eq!(states.len(), 1);
    }
}
