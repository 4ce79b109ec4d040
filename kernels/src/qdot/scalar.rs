//! Portable reference kernels: the uniform block decoder, activation quantizer and dot products
//! every SIMD path is tested against.

use super::{Block32, QActs, QK};
use crate::quant::{QMatrix, QuantType, rd_f16, scale_min_k4};

/// Quantizes one row of activations to int8 blocks of 32 (round half to even, like `cvtps2dq`).
pub(crate) fn quantize_acts(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (k, blk) in x.chunks_exact(QK).enumerate() {
        let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let dk = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sums = [0i32; 2];
        for (i, &v) in blk.iter().enumerate() {
            let q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i32;
            qs[k * QK + i] = q as i8;
            sums[i / 16] += q;
        }
        d[k] = dk;
        s[2 * k] = dk * sums[0] as f32;
        s[2 * k + 1] = dk * sums[1] as f32;
    }
}

/// Decodes block `k` (of 32 elements) of a quantized row into the uniform view.
pub(crate) fn decode_block32(ty: QuantType, row: &[u8], k: usize) -> Block32 {
    let mut q = [0u8; 32];
    let (scale, off, signed);
    match ty {
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1 => {
            let b = &row[k * ty.block_bytes()..];
            let d = rd_f16(b, 0);
            let (qs_at, qh, min) = match ty {
                QuantType::Q4_0 => (2, 0u32, -8.0 * d),
                QuantType::Q4_1 => (4, 0, rd_f16(b, 2)),
                QuantType::Q5_0 => (6, u32::from_le_bytes([b[2], b[3], b[4], b[5]]), -16.0 * d),
                _ => (
                    8,
                    u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    rd_f16(b, 2),
                ),
            };
            for j in 0..16 {
                let v = b[qs_at + j];
                q[j] = (v & 0xF) | ((((qh >> j) & 1) << 4) as u8);
                q[j + 16] = (v >> 4) | ((((qh >> (j + 16)) & 1) << 4) as u8);
            }
            scale = [d; 2];
            off = [min; 2];
            signed = false;
        }
        QuantType::Q8_0 => {
            let b = &row[k * 34..];
            q.copy_from_slice(&b[2..34]);
            scale = [rd_f16(b, 0); 2];
            off = [0.0; 2];
            signed = true;
        }
        QuantType::Q4K | QuantType::Q5K => {
            let bb = ty.block_bytes();
            let b = &row[(k / 8) * bb..(k / 8 + 1) * bb];
            let j = k % 8;
            let (d, dmin) = (rd_f16(b, 0), rd_f16(b, 2));
            let (sc, m) = scale_min_k4(j, &b[4..16]);
            let qs_at = if ty == QuantType::Q4K { 16 } else { 48 };
            let qs = &b[qs_at + 32 * (j / 2)..qs_at + 32 * (j / 2) + 32];
            for l in 0..32 {
                let v = if j.is_multiple_of(2) {
                    qs[l] & 0xF
                } else {
                    qs[l] >> 4
                };
                let h = if ty == QuantType::Q5K {
                    ((b[16 + l] >> j) & 1) << 4
                } else {
                    0
                };
                q[l] = v | h;
            }
            scale = [d * sc as f32; 2];
            off = [-dmin * m as f32; 2];
            signed = false;
        }
        QuantType::Q6K => {
            let b = &row[(k / 8) * 210..(k / 8 + 1) * 210];
            let j = k % 8;
            let (half, jj) = (j / 4, j % 4);
            let ql = &b[64 * half + 32 * (jj % 2)..];
            let qh = &b[128 + 32 * half..];
            let sc = &b[192 + 8 * half + 2 * jj..];
            let d = rd_f16(b, 208);
            for l in 0..32 {
                let lo = if jj < 2 { ql[l] & 0xF } else { ql[l] >> 4 };
                q[l] = lo | (((qh[l] >> (2 * jj)) & 3) << 4);
            }
            let s0 = d * (sc[0] as i8) as f32;
            let s1 = d * (sc[1] as i8) as f32;
            scale = [s0, s1];
            off = [-32.0 * s0, -32.0 * s1];
            signed = false;
        }
        QuantType::F32 | QuantType::F16 => {
            scale = [0.0; 2];
            off = [0.0; 2];
            signed = false;
        }
    }
    Block32 {
        q,
        signed,
        scale,
        off,
    }
}

/// Dot of one quantized row with token `t` of `acts`.
pub(crate) fn dot_row(ty: QuantType, row: &[u8], acts: &QActs, t: usize) -> f32 {
    let nb = acts.nb();
    let a = &acts.qs[t * acts.cols..(t + 1) * acts.cols];
    let d = &acts.d[t * nb..(t + 1) * nb];
    let s = &acts.s[t * nb * 2..(t + 1) * nb * 2];
    let mut sum = 0.0f32;
    for k in 0..nb {
        let b = decode_block32(ty, row, k);
        let mut isum = [0i32; 2];
        for i in 0..QK {
            let w = if b.signed {
                b.q[i] as i8 as i32
            } else {
                b.q[i] as i32
            };
            isum[i / 16] += w * a[k * QK + i] as i32;
        }
        sum += d[k] * (b.scale[0] * isum[0] as f32 + b.scale[1] * isum[1] as f32)
            + b.off[0] * s[2 * k]
            + b.off[1] * s[2 * k + 1];
    }
    sum
}

/// Reference matvec over rows `r0..r1`.
pub(crate) fn matvec_rows(w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: &mut [f32]) {
    for r in r0..r1 {
        y[r - r0] = dot_row(w.ty, w.row(r), acts, 0);
    }
}

/// Reference matmul over rows `r0..r1`.
///
/// # Safety
/// See [`super::MatmulRowsFn`].
pub(crate) unsafe fn matmul_rows(w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: *mut f32) {
    for r in r0..r1 {
        let row = w.row(r);
        for t in 0..acts.n {
            let v = dot_row(w.ty, row, acts, t);
            // SAFETY: the caller guarantees `y` spans `n * rows` floats and owns these rows.
            unsafe { *y.add(t * w.rows + r) = v };
        }
    }
}
