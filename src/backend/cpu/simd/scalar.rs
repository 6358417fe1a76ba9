//! The reference math: every weight decoded exactly, then the eight-lane dot of
//! `linear::dot` (same products, same order, bit for bit).

use super::*;

/// Eight lanes over whole chunks of eight, a serial tail, then the fixed reduction.
#[inline]
pub(super) fn dot_map<T: Copy>(w: &[T], x: &[f32], f: impl Fn(T) -> f32) -> f32 {
    let n = w.len().min(x.len());
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (xs, ws) = (&x[c * 8..c * 8 + 8], &w[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += xs[l] * f(ws[l]);
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 8..n {
        tail += x[i] * f(w[i]);
    }
    reduce(&acc) + tail
}

#[inline]
fn reduce(acc: &[f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

pub(super) fn dot_nvfp4(packed: &[u8], scales: &[u8], ts: f32, x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (blk, (&s, pk)) in scales.iter().zip(packed.chunks_exact(8)).enumerate() {
        let d = E4M3_TO_F32[s as usize] * ts;
        let xs = &x[blk * 16..blk * 16 + 16];
        for (j, &byte) in pk.iter().enumerate() {
            // Columns 2j and 2j+1 of the block fall in lanes (2j)%8 and (2j+1)%8.
            let l = (2 * j) % 8;
            acc[l] += xs[2 * j] * (E2M1_VALUES[(byte & 0x0f) as usize] * d);
            acc[l + 1] += xs[2 * j + 1] * (E2M1_VALUES[(byte >> 4) as usize] * d);
        }
    }
    reduce(&acc) + 0.0
}

pub(super) fn dot_fp8(row: &[u8], scale: f32, x: &[f32]) -> f32 {
    dot_map(row, x, |b| E4M3_TO_F32[b as usize] * scale)
}

pub(super) fn decode_nvfp4(packed: &[u8], scales: &[u8], ts: f32, out: &mut [f32]) {
    for (blk, (&s, pk)) in scales.iter().zip(packed.chunks_exact(8)).enumerate() {
        // Scales are multiplied together first, as ModelOpt's dequantize does, so the
        // decoded weight is bit-identical to the reference's.
        let d = E4M3_TO_F32[s as usize] * ts;
        let o = &mut out[blk * 16..blk * 16 + 16];
        for (j, &byte) in pk.iter().enumerate() {
            o[2 * j] = E2M1_VALUES[(byte & 0x0f) as usize] * d;
            o[2 * j + 1] = E2M1_VALUES[(byte >> 4) as usize] * d;
        }
    }
}
