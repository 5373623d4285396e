//! Fork-join for the short phases of a network call.
//!
//! A batch-1 network call is four parallel phases of under a millisecond
//! each, every one ending in a join. With `rayon::join`, the thread that
//! finishes its half first waits for the other half inside rayon, which
//! spins for a few tens of microseconds and then puts the thread to sleep;
//! waking it when the other half is done took 50-100 microseconds on this
//! VM (a halted vCPU is woken by the hypervisor), for every phase: about a
//! tenth of the token-mixing phases. Here the caller's half, once done,
//! waits for a stolen other half by running pending tasks or spinning, so
//! the join finds it done;
//! and while a solve runs, the pool's other threads look for work in a loop
//! ([`team_awake`]) instead of going to sleep between phases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a finished half spins for its stolen partner at most, before it
/// leaves the waiting to rayon (which sleeps): far longer than a phase's
/// imbalance, short enough not to hold a core that other work could use.
const SPIN_LIMIT: Duration = Duration::from_millis(2);

/// `rayon::join(a, b)`, except that once `a` is done, if another thread
/// took `b` and is still running it, the caller runs pending tasks or spins
/// until it is done (spinning [`SPIN_LIMIT`] at most) rather than sleeping
/// inside rayon.
pub(super) fn join_spinning<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let started = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    rayon::join(
        || {
            let result = a();
            // `b` not started: rayon runs it on this thread, or it was
            // just taken and the join waits for it as usual
            if started.load(Ordering::Acquire) {
                let mut deadline = Instant::now() + SPIN_LIMIT;
                'wait: while !done.load(Ordering::Acquire) {
                    // help with pending tasks (the other half's, say) as
                    // rayon's own wait would, without its sleep
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        deadline = Instant::now() + SPIN_LIMIT;
                        continue;
                    }
                    for _ in 0..64 {
                        std::hint::spin_loop();
                        if done.load(Ordering::Acquire) {
                            break 'wait;
                        }
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                    // let another thread have this core if it needs it
                    std::thread::yield_now();
                }
            }
            result
        },
        || {
            started.store(true, Ordering::Release);
            let result = b();
            done.store(true, Ordering::Release);
            result
        },
    )
}

/// `f(index, chunk)` on every `chunk_len` chunk of `data` (the last may be
/// shorter), in parallel by halving, each join by [`join_spinning`].
pub(super) fn par_chunks<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    fn split<T: Send>(
        data: &mut [T],
        first: usize,
        chunk_len: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunks = data.len().div_ceil(chunk_len);
        if chunks <= 1 {
            if !data.is_empty() {
                f(first, data);
            }
            return;
        }
        let half = chunks / 2;
        let (a, b) = data.split_at_mut(half * chunk_len);
        join_spinning(
            || split(a, first, chunk_len, f),
            || split(b, first + half, chunk_len, f),
        );
    }
    split(data, 0, chunk_len.max(1), f);
}

/// Runs `f` (on a pool thread, with `threads` threads in the pool) while the
/// pool's other threads look for its tasks in a loop instead of sleeping
/// between them, so that a phase's tasks start at once rather than after a
/// wake-up.
pub(super) fn team_awake<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    if threads <= 1 {
        return f();
    }
    let leader = rayon::current_thread_index();
    let done = AtomicBool::new(false);
    rayon::in_place_scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|_| {
                // the leader finds a poller left in its own queue only once
                // `f` has returned, or while `f` waits: it must not poll
                if rayon::current_thread_index() == leader {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        // let another thread have this core if it needs it
                        std::thread::yield_now();
                    }
                }
            });
        }
        let result = f();
        done.store(true, Ordering::Release);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_chunks_visits_every_chunk_once_with_its_index() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (97 * 5, 97), (64, 1)] {
            let mut data = vec![0usize; len];
            pool.install(|| {
                team_awake(3, || {
                    par_chunks(&mut data, chunk, &|index, part| {
                        assert!(part.len() == chunk || (index + 1) * chunk >= len);
                        part.iter_mut().for_each(|v| *v += index + 1);
                    })
                })
            });
            let want: Vec<usize> = (0..len).map(|i| i / chunk + 1).collect();
            assert_eq!(data, want, "{len} in chunks of {chunk}");
        }
    }

    #[test]
    fn join_spinning_returns_both_halves_when_nested_and_oversubscribed() {
        // more threads than this machine has cores, joins nested in joins
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .build()
            .unwrap();
        fn sum(range: std::ops::Range<u64>) -> u64 {
            if range.end - range.start <= 1000 {
                return range.sum();
            }
            let mid = (range.start + range.end) / 2;
            let (a, b) = join_spinning(|| sum(range.start..mid), || sum(mid..range.end));
            a + b
        }
        let total = pool.install(|| team_awake(8, || sum(0..1_000_000)));
        assert_eq!(total, 999_999 * 1_000_000 / 2);
        // outside any pool and without pollers, too
        assert_eq!(sum(0..10_000), 9_999 * 10_000 / 2);
    }
}
