//! aarch64 NEON kernels: the uniform block decoder with a NEON int8 dot (`smull`/`smlal2`, no
//! dotprod requirement, so every aarch64 CPU runs it).

use super::scalar::decode_block32;
use super::{QActs, QK};
use crate::quant::QMatrix;
use std::arch::aarch64::*;

/// Σ w·a over each 16-element half of a 32-element block.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot32(w: *const i8, a: *const i8) -> (i32, i32) {
    // SAFETY: the caller passes 32 readable bytes behind both pointers.
    unsafe {
        let w0 = vld1q_s8(w);
        let w1 = vld1q_s8(w.add(16));
        let a0 = vld1q_s8(a);
        let a1 = vld1q_s8(a.add(16));
        // |w|,|a| ≤ 127, so two products fit in an int16 lane.
        let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(a0)), w0, a0);
        let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(a1)), w1, a1);
        (vaddlvq_s16(p0), vaddlvq_s16(p1))
    }
}

#[target_feature(enable = "neon")]
unsafe fn dot_row(w: &QMatrix, row: usize, acts: &QActs, t: usize) -> f32 {
    let nb = acts.nb();
    let bytes = w.row(row);
    let mut sum = 0.0f32;
    for k in 0..nb {
        let b = decode_block32(w.ty, bytes, k);
        // Unsigned values are at most 63 here, so they read the same as int8.
        // SAFETY: k < nb and t < n keep the activation pointer in bounds.
        let (lo, hi) = unsafe {
            dot32(
                b.q.as_ptr() as *const i8,
                acts.qs.as_ptr().add(t * acts.cols + k * QK),
            )
        };
        let d = acts.d[t * nb + k];
        let s = &acts.s[(t * nb + k) * 2..];
        sum += d * (b.scale[0] * lo as f32 + b.scale[1] * hi as f32)
            + b.off[0] * s[0]
            + b.off[1] * s[1];
    }
    sum
}

/// Matvec over rows `r0..r1` (see [`super::MatvecRowsFn`]).
pub(crate) fn matvec_rows(w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: &mut [f32]) {
    for r in r0..r1 {
        // SAFETY: this path is only selected when NEON is detected.
        y[r - r0] = unsafe { dot_row(w, r, acts, 0) };
    }
}

/// Matmul over rows `r0..r1` (see [`super::MatmulRowsFn`]).
///
/// # Safety
/// As [`super::MatmulRowsFn`].
pub(crate) unsafe fn matmul_rows(w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: *mut f32) {
    for r in r0..r1 {
        for t in 0..acts.n {
            // SAFETY: NEON is detected; the caller owns these outputs.
            unsafe { *y.add(t * w.rows + r) = dot_row(w, r, acts, t) };
        }
    }
}
