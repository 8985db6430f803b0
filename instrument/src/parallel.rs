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

/// Stack of each thread that runs work which recurses deeply ([`Stack::Deep`]). The rewrite
/// recurses once per nesting level of a body's blocks (up to [`crate::rewrite::MAX_NESTING`]):
/// measured, a level takes between 0.4 and 0.8 KiB in an optimized build and between 6.5 and
/// 13 KiB in a debug build. Only the pages used are committed.
const DEEP_STACK: usize = if cfg!(debug_assertions) {
    160 << 20
} else {
    32 << 20
};

/// The stack the work needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stack {
    /// Any thread's, the caller's included: with one thread the work runs on the caller's.
    Any,
    /// [`DEEP_STACK`] bytes: every worker runs on a thread made for it, even when there is one.
    Deep,
}

/// Threads worth using for `bytes` of code: one, plus one per [`BYTES_PER_THREAD`] beyond the
/// first, up to the machine's parallelism.
pub(crate) fn threads_for(bytes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    (1 + bytes / BYTES_PER_THREAD).min(cores).min(MAX_THREADS)
}

/// Runs `work` over `jobs` on up to `threads` threads (the caller's among them, unless `stack`
/// is [`Stack::Deep`]), each thread with a state of its own made by `init`. Returns every
/// job's result in the order of `jobs`, each with the index of the state it was made with, and
/// those states.
///
/// A panic in `work` is raised again on the caller's thread.
pub(crate) fn run<J, R, S>(
    jobs: Vec<J>,
    threads: usize,
    stack: Stack,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, J) -> R + Sync,
) -> (Vec<(usize, R)>, Vec<S>)
where
    J: Send,
    R: Send,
    S: Send,
{
    let threads = threads.clamp(1, jobs.len().div_ceil(BATCH).max(1));
    if threads == 1 && stack == Stack::Any {
        let mut state = init();
        let results = jobs.into_iter().map(|j| (0, work(&mut state, j))).collect();
        return (results, vec![state]);
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
        // With any stack the caller's thread is worker 0; with a deep one every worker gets a
        // thread of its own, and the caller waits.
        let first = match stack {
            Stack::Any => 1,
            Stack::Deep => 0,
        };
        let handles: Vec<_> = (first..threads)
            .map(|id| {
                let worker = &worker;
                let builder = std::thread::Builder::new();
                let builder = match stack {
                    Stack::Any => builder,
                    Stack::Deep => builder.stack_size(DEEP_STACK),
                };
                builder.spawn_scoped(scope, move || worker(id))
            })
            .collect();
        let mut finished = Vec::with_capacity(threads);
        if first == 1 {
            finished.push(worker(0));
        }
        for (id, h) in (first..threads).zip(handles) {
            match h.map(|h| h.join()) {
                Ok(Ok(f)) => finished.push(f),
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                // A thread that could not be made: its worker runs here, on the caller's
                // stack (it finds the batches that are left, if any), so that every id has
                // its state.
                Err(_) => finished.push(worker(id)),
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
        for (threads, stack) in [1, 2, 5]
            .into_iter()
            .flat_map(|t| [(t, Stack::Any), (t, Stack::Deep)])
        {
            let jobs: Vec<u32> = (0..1000).collect();
            let (results, states) = run(
                jobs,
                threads,
                stack,
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
        let (results, states) = run(Vec::<u8>::new(), 4, Stack::Any, || (), |_, j| j);
        assert!(results.is_empty());
        assert_eq!(states.len(), 1);
    }
}
