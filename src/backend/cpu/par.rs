//! Parallel-or-serial loops. Handing work to the thread pool costs microseconds per op, more
//! than a small op takes, so ops below a size threshold run on the calling thread instead.

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
