//! Parallel-or-serial loops. Handing work to the thread pool costs microseconds per op, more
//! than a small op takes, so ops below a size threshold run on the calling thread instead.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

/// Multiply-adds (or similar) below which an op runs serially.
pub(crate) const PAR_MIN_WORK: usize = 1 << 16;

/// `f(i, chunk)` over `size`-element chunks of `data`.
pub(crate) fn chunks_mut<T, F>(data: &mut [T], size: usize, par: bool, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    if par {
        data.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// `[f(0), …, f(n-1)]`.
pub(crate) fn map<T, F>(n: usize, par: bool, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync + Send,
{
    if par {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

/// `f(i, a_chunk, b_chunk)` over the i-th `a_size` chunk of `a` and `b_size` chunk of `b`
/// together (as many as the shorter has).
pub(crate) fn zip_chunks_mut<A, B, F>(
    a: &mut [A],
    a_size: usize,
    b: &mut [B],
    b_size: usize,
    par: bool,
    f: F,
) where
    A: Send,
    B: Send,
    F: Fn(usize, &mut [A], &mut [B]) + Sync + Send,
{
    if par {
        a.par_chunks_mut(a_size)
            .zip(b.par_chunks_mut(b_size))
            .enumerate()
            .for_each(|(i, (x, y))| f(i, x, y));
    } else {
        a.chunks_mut(a_size)
            .zip(b.chunks_mut(b_size))
            .enumerate()
            .for_each(|(i, (x, y))| f(i, x, y));
    }
}

/// `f(item, r0, block)` over `data` seen as items of `item_len` values each, every item cut
/// into blocks of at most `block_len` values starting at offset `r0` within it.
pub(crate) fn row_blocks<T, F>(data: &mut [T], item_len: usize, block_len: usize, par: bool, f: F)
where
    T: Send,
    F: Fn(usize, usize, &mut [T]) + Sync + Send,
{
    let block_len = block_len.max(1);
    let mut tasks: Vec<(usize, usize, &mut [T])> = Vec::new();
    for (item, chunk) in data.chunks_mut(item_len.max(1)).enumerate() {
        for (b, block) in chunk.chunks_mut(block_len).enumerate() {
            tasks.push((item, b * block_len, block));
        }
    }
    if par {
        tasks
            .into_par_iter()
            .for_each(|(item, r0, block)| f(item, r0, block));
    } else {
        for (item, r0, block) in tasks {
            f(item, r0, block);
        }
    }
}

/// Runs `f` on the current pool worker while every other worker of the pool spins, stealing
/// and running whatever `f` hands out, instead of going to sleep between `f`'s parallel ops.
/// An idle rayon worker parks after a few microseconds, and waking it takes tens of
/// microseconds (more under a hypervisor); a decode step runs dozens of parallel ops a few
/// hundred microseconds each, with serial work between them, and would pay that at each one.
/// Outside a pool, or on a one-thread pool, this is just `f()`.
pub(crate) fn keep_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let (Some(owner), helpers) = (
        rayon::current_thread_index(),
        rayon::current_num_threads().saturating_sub(1),
    ) else {
        return f();
    };
    if helpers == 0 {
        return f();
    }
    let stop = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| {
                // A helper left in the owner's deque can be popped by the owner itself while
                // it waits inside one of `f`'s joins: it must return at once, or the owner would
                // spin until `f` ends, which is never.
                if rayon::current_thread_index() == Some(owner) {
                    return;
                }
                let mut idle = 0u32;
                while !stop.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle = 0;
                        continue;
                    }
                    idle = idle.wrapping_add(1);
                    if idle.is_multiple_of(64) {
                        // With more threads than free cores, a spinning helper could hold the
                        // core the owner needs; letting the OS run someone else now and then
                        // costs a microsecond when nobody is waiting.
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let out = f();
        stop.store(true, Ordering::Release);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value is handed out exactly once, with its item and its offset in the item.
    #[test]
    fn row_blocks_cover_every_value_once() {
        for par in [false, true] {
            for (len, item, block) in [(10, 10, 3), (22 * 7, 7, 2), (12, 4, 4), (0, 5, 2)] {
                let mut data = vec![(usize::MAX, usize::MAX); len];
                row_blocks(&mut data, item, block, par, |it, r0, out| {
                    assert!(out.len() <= block);
                    for (j, v) in out.iter_mut().enumerate() {
                        assert_eq!(*v, (usize::MAX, usize::MAX), "handed out twice");
                        *v = (it, r0 + j);
                    }
                });
                for (i, v) in data.iter().enumerate() {
                    assert_eq!(
                        *v,
                        (i / item, i % item),
                        "len {len}, item {item}, block {block}"
                    );
                }
            }
        }
    }

    /// Parallel ops inside `keep_awake` give what they give without it; nested, concurrent
    /// and one-thread uses all return (a helper the owner could pop itself would hang it).
    #[test]
    fn keep_awake_runs_parallel_ops_and_returns() {
        let sum_of_squares = |n: u64| -> u64 {
            let mut v: Vec<u64> = (0..n).collect();
            chunks_mut(&mut v, 7, true, |_, c| c.iter_mut().for_each(|x| *x *= *x));
            v.iter().sum()
        };
        let expected: u64 = (0..1000u64).map(|x| x * x).sum();
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| {
                keep_awake(|| (0..50).map(|_| sum_of_squares(1000)).collect::<Vec<_>>())
            });
            assert!(got.iter().all(|&s| s == expected), "{threads} threads");
            // Two callers sharing the pool at once, each keeping it awake.
            let (a, b) = rayon::join(
                || pool.install(|| keep_awake(|| sum_of_squares(1000))),
                || pool.install(|| keep_awake(|| sum_of_squares(1000))),
            );
            assert_eq!(
                (a, b),
                (expected, expected),
                "{threads} threads, concurrent"
            );
            // Nested: a parallel op whose tasks keep the pool awake again.
            let nested = pool
                .install(|| keep_awake(|| map(4, true, |_| keep_awake(|| sum_of_squares(1000)))));
            assert_eq!(nested, vec![expected; 4], "{threads} threads, nested");
        }
        // Outside any pool it is a plain call.
        assert_eq!(keep_awake(|| sum_of_squares(1000)), expected);
    }
}
