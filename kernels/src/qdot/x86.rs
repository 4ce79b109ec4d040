//! x86-64 kernels. One macro body is compiled four times, for AVX2, AVX2 + AVX-VNNI, AVX-512
//! (256-bit vectors, 32 registers) and AVX-512 + VNNI; the instantiations differ only in the
//! target features, the int8 dot instruction and the register tile of the matmul microkernel.
//! Within a path, matvec and matmul run the same float operations per output (see
//! `rows_direct`), so results do not depend on how many tokens share a call.

use std::arch::x86_64::*;

/// Format codes used as const generic parameters so that each format gets its own loop.
pub(crate) mod fmt {
    pub(crate) const Q4_0: u8 = 0;
    pub(crate) const Q4_1: u8 = 1;
    pub(crate) const Q5_0: u8 = 2;
    pub(crate) const Q5_1: u8 = 3;
    pub(crate) const Q8_0: u8 = 4;
    pub(crate) const Q4K: u8 = 5;
    pub(crate) const Q5K: u8 = 6;
    pub(crate) const Q6K: u8 = 7;
}

/// Quantizes one row of activations exactly like [`super::scalar::quantize_acts`].
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_acts_avx2(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let nb = x.len() / 32;
    debug_assert!(qs.len() >= nb * 32 && d.len() >= nb && s.len() >= 2 * nb);
    let sign = _mm256_set1_ps(-0.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for k in 0..nb {
        // SAFETY: k < nb keeps every access inside the slices checked above.
        unsafe {
            let p = x.as_ptr().add(k * 32);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
            let m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
            let amax = hmax(_mm256_max_ps(m01, m23));
            let dk = amax / 127.0;
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let lim = _mm256_set1_epi32(127);
            let nlim = _mm256_set1_epi32(-127);
            let mut q = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                let r = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], idv));
                q[i] = _mm256_max_epi32(_mm256_min_epi32(r, lim), nlim);
            }
            let lo = hsum_i32(_mm256_add_epi32(q[0], q[1]));
            let hi = hsum_i32(_mm256_add_epi32(q[2], q[3]));
            let p01 = _mm256_packs_epi32(q[0], q[1]);
            let p23 = _mm256_packs_epi32(q[2], q[3]);
            let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm);
            _mm256_storeu_si256(qs.as_mut_ptr().add(k * 32) as *mut __m256i, b);
            *d.get_unchecked_mut(k) = dk;
            *s.get_unchecked_mut(2 * k) = dk * lo as f32;
            *s.get_unchecked_mut(2 * k + 1) = dk * hi as f32;
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    _mm_cvtss_f32(m)
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

macro_rules! x86_path {
    ($name:ident, $feat:literal, tile = ($tr:literal, $tt:literal), interleaved_tokens = $it:literal,
     unpacked_tokens = $ut:literal,
     dot = |$acc:ident, $w:ident, $a:ident| $dot:block, sum16 = $sum16:literal) => {
        /// Kernels compiled for one x86 feature set.
        #[allow(clippy::needless_range_loop)] // const-size register tiles read clearer indexed
        pub(crate) mod $name {
            use super::fmt::*;
            use super::hsum;
            use crate::qdot::{QActs, QK};
            use crate::pack::GROUP;
            use crate::quant::{QMatrix, QuantType, scale_min_k4};
            use std::arch::x86_64::*;
            use std::cell::RefCell;

            /// Rows decoded together by the matmul microkernel.
            const TILE_R: usize = $tr;
            /// Tokens processed together by the matmul microkernel.
            const TILE_T: usize = $tt;
            /// Tokens processed together on an interleaved matrix.
            const INTERLEAVED_T: usize = $it;
            /// Tokens processed together over unpacked interleaved rows (no decoding in the loop,
            /// so more accumulators fit).
            const UNPACKED_T: usize = $ut;
            /// Whether 4-bit products may be summed in 16-bit lanes before widening (exact: 16
            /// products of at most 15 × 127 fit) rather than widened one instruction at a time.
            const SUM16: bool = $sum16;

            /// Σ over 4-byte groups of unsigned `w` times signed `a`, as 8 int32 lanes.
            #[inline]
            #[target_feature(enable = $feat)]
            fn dot_u8i8(w: __m256i, a: __m256i) -> __m256i {
                dot_acc(_mm256_setzero_si256(), w, a)
            }

            /// `acc` plus [`dot_u8i8`]: one instruction where the path has a 4-byte dot.
            #[inline]
            #[target_feature(enable = $feat)]
            fn dot_acc($acc: __m256i, $w: __m256i, $a: __m256i) -> __m256i $dot

            /// Σ over 4-byte groups of signed `w` times signed `a` (|a| ≤ 127).
            #[inline]
            #[target_feature(enable = $feat)]
            fn dot_i8i8(w: __m256i, a: __m256i) -> __m256i {
                dot_u8i8(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
            }

            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn f16(p: *const u8) -> f32 {
                // SAFETY: the caller passes a pointer to two readable bytes.
                let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
            }

            /// 16 bytes of packed nibbles to 32 values: low nibbles first, then high nibbles.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn nibbles(p: *const u8) -> __m256i {
                // SAFETY: the caller passes a pointer to 16 readable bytes.
                let lo = unsafe { _mm_loadu_si128(p as *const __m128i) };
                let hi = _mm_srli_epi16(lo, 4);
                _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
            }

            /// Byte i is 0x10 where bit i of `qh` is set.
            #[inline]
            #[target_feature(enable = $feat)]
            fn high_bits(qh: u32) -> __m256i {
                let v = _mm256_set1_epi32(qh as i32);
                let shuf = _mm256_setr_epi8(
                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                    3, 3, 3, 3, 3, 3,
                );
                let b = _mm256_shuffle_epi8(v, shuf);
                let m = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                let sel = _mm256_cmpeq_epi8(_mm256_and_si256(b, m), m);
                _mm256_and_si256(sel, _mm256_set1_epi8(0x10))
            }

            /// One block of 32 in the uniform view (see the module docs of `qdot`).
            pub(crate) struct Dec {
                pub(crate) q: __m256i,
                pub(crate) sv: __m256,
                pub(crate) off0: f32,
                pub(crate) off1: f32,
            }

            /// Decodes block `k` of a row of format `F`.
            #[inline]
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn decode<const F: u8>(row: *const u8, k: usize) -> Dec {
                // SAFETY: the caller passes a row pointer with at least k+1 blocks of 32.
                unsafe {
                    match F {
                        Q4_0 => {
                            let b = row.add(k * 18);
                            let d = f16(b);
                            Dec { q: nibbles(b.add(2)), sv: _mm256_set1_ps(d), off0: -8.0 * d, off1: -8.0 * d }
                        }
                        Q4_1 => {
                            let b = row.add(k * 20);
                            let (d, m) = (f16(b), f16(b.add(2)));
                            Dec { q: nibbles(b.add(4)), sv: _mm256_set1_ps(d), off0: m, off1: m }
                        }
                        Q5_0 => {
                            let b = row.add(k * 22);
                            let d = f16(b);
                            let qh = std::ptr::read_unaligned(b.add(2) as *const u32);
                            let q = _mm256_or_si256(nibbles(b.add(6)), high_bits(qh));
                            Dec { q, sv: _mm256_set1_ps(d), off0: -16.0 * d, off1: -16.0 * d }
                        }
                        Q5_1 => {
                            let b = row.add(k * 24);
                            let (d, m) = (f16(b), f16(b.add(2)));
                            let qh = std::ptr::read_unaligned(b.add(4) as *const u32);
                            let q = _mm256_or_si256(nibbles(b.add(8)), high_bits(qh));
                            Dec { q, sv: _mm256_set1_ps(d), off0: m, off1: m }
                        }
                        Q8_0 => {
                            let b = row.add(k * 34);
                            let q = _mm256_loadu_si256(b.add(2) as *const __m256i);
                            Dec { q, sv: _mm256_set1_ps(f16(b)), off0: 0.0, off1: 0.0 }
                        }
                        Q4K | Q5K => {
                            let bb = if F == Q4K { 144 } else { 176 };
                            let (sb, j) = (k / 8, k % 8);
                            let b = row.add(sb * bb);
                            let (d, dmin) = (f16(b), f16(b.add(2)));
                            let (sc, m) = scale_min_k4(j, std::slice::from_raw_parts(b.add(4), 12));
                            let qs_at = if F == Q4K { 16 } else { 48 };
                            let raw = _mm256_loadu_si256(b.add(qs_at + 32 * (j / 2)) as *const __m256i);
                            let raw = if j % 2 == 0 { raw } else { _mm256_srli_epi16(raw, 4) };
                            let mut q = _mm256_and_si256(raw, _mm256_set1_epi8(0x0F));
                            if F == Q5K {
                                let qh = _mm256_loadu_si256(b.add(16) as *const __m256i);
                                let bit = _mm256_set1_epi8((1u8 << j) as i8);
                                let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                                q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
                            }
                            let o = -dmin * m as f32;
                            Dec { q, sv: _mm256_set1_ps(d * sc as f32), off0: o, off1: o }
                        }
                        _ => {
                            // Q6_K
                            let (sb, j) = (k / 8, k % 8);
                            let (half, jj) = (j / 4, j % 4);
                            let b = row.add(sb * 210);
                            let ql = _mm256_loadu_si256(b.add(64 * half + 32 * (jj % 2)) as *const __m256i);
                            let ql = if jj < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
                            let lo = _mm256_and_si256(ql, _mm256_set1_epi8(0x0F));
                            let qh = _mm256_loadu_si256(b.add(128 + 32 * half) as *const __m256i);
                            let qh = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * jj as i32));
                            let qh = _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4);
                            let d = f16(b.add(208));
                            let sc = b.add(192 + 8 * half + 2 * jj);
                            let s0 = d * (*sc as i8) as f32;
                            let s1 = d * (*sc.add(1) as i8) as f32;
                            let sv = _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0));
                            Dec { q: _mm256_or_si256(lo, qh), sv, off0: -32.0 * s0, off1: -32.0 * s1 }
                        }
                    }
                }
            }

            #[target_feature(enable = $feat)]
            unsafe fn matvec_rows_f<const F: u8>(
                w: &QMatrix,
                acts: &QActs,
                r0: usize,
                r1: usize,
                y: &mut [f32],
            ) {
                let rb = w.row_bytes();
                let mut r = r0;
                // SAFETY: r..r+R < rows; `y` holds r1 - r0 floats.
                unsafe {
                    while r + 4 <= r1 {
                        rows_direct::<F, 4>(w.data.as_ptr().add(r * rb), rb, acts, y.as_mut_ptr().add(r - r0));
                        r += 4;
                    }
                    while r < r1 {
                        rows_direct::<F, 1>(w.data.as_ptr().add(r * rb), rb, acts, y.as_mut_ptr().add(r - r0));
                        r += 1;
                    }
                }
            }

            /// `R` rows (decoded block by block, straight from the weights) times token 0 of
            /// `acts`, written to `y[0..R]`.
            ///
            /// Batch invariance: each row runs exactly the float operations of `micro` followed
            /// by `dotf` over its offsets (one accumulator in block order, then `hsum`; offsets in
            /// chunks of 8 then a serial tail), so a row's result is bit-identical whether it is
            /// computed here or by the multi-token kernel.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn rows_direct<const F: u8, const R: usize>(
                row0: *const u8,
                rb: usize,
                acts: &QActs,
                y: *mut f32,
            ) {
                let signed = F == Q8_0;
                let nb = acts.nb();
                let aq = acts.qs.as_ptr();
                let ad = acts.d.as_ptr();
                let asum = acts.s.as_ptr();
                let mut acc = [_mm256_setzero_ps(); R];
                let mut offacc = [_mm256_setzero_ps(); R];
                let mut obuf = [[0.0f32; 8]; R];
                let full = nb / 4 * 4;
                // SAFETY: the caller passes R rows of nb blocks; k < nb keeps the activations in
                // bounds.
                unsafe {
                    for k in 0..nb {
                        let a = _mm256_loadu_si256(aq.add(k * QK) as *const __m256i);
                        let da = _mm256_set1_ps(*ad.add(k));
                        for r in 0..R {
                            let dec = decode::<F>(row0.add(r * rb), k);
                            let p = if signed {
                                dot_i8i8(dec.q, a)
                            } else {
                                dot_u8i8(dec.q, a)
                            };
                            let sc = _mm256_mul_ps(dec.sv, da);
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[r]);
                            if !signed {
                                let j = 2 * (k % 4);
                                obuf[r][j] = dec.off0;
                                obuf[r][j + 1] = dec.off1;
                                if k % 4 == 3 {
                                    let o = _mm256_loadu_ps(obuf[r].as_ptr());
                                    let s = _mm256_loadu_ps(asum.add(2 * (k - 3)));
                                    offacc[r] = _mm256_fmadd_ps(o, s, offacc[r]);
                                }
                            }
                        }
                    }
                    for r in 0..R {
                        let off = if signed {
                            0.0
                        } else {
                            let mut tail = 0.0f32;
                            for i in 0..2 * (nb - full) {
                                tail += obuf[r][i] * *asum.add(2 * full + i);
                            }
                            hsum(offacc[r]) + tail
                        };
                        *y.add(r) = hsum(acc[r]) + off;
                    }
                }
            }

            /// `R` decoded rows times `T` tokens; returns the int8 part of each dot.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn micro<const R: usize, const T: usize, const SIGNED: bool>(
                wq: *const u8,
                wsv: *const f32,
                nb: usize,
                aq: *const i8,
                ad: *const f32,
                cols: usize,
                out: &mut [[f32; T]; R],
            ) {
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                for k in 0..nb {
                    // SAFETY: the caller passes tiles of R rows and T tokens of nb blocks each.
                    unsafe {
                        let mut wv = [_mm256_setzero_si256(); R];
                        let mut wa = [_mm256_setzero_si256(); R];
                        let mut sv = [_mm256_setzero_ps(); R];
                        for r in 0..R {
                            wv[r] = _mm256_loadu_si256(wq.add(r * cols + k * QK) as *const __m256i);
                            wa[r] = if SIGNED { _mm256_abs_epi8(wv[r]) } else { wv[r] };
                            sv[r] = _mm256_loadu_ps(wsv.add((r * nb + k) * 8));
                        }
                        for t in 0..T {
                            let a = _mm256_loadu_si256(aq.add(t * cols + k * QK) as *const __m256i);
                            let da = _mm256_set1_ps(*ad.add(t * nb + k));
                            for r in 0..R {
                                let p = if SIGNED {
                                    dot_u8i8(wa[r], _mm256_sign_epi8(a, wv[r]))
                                } else {
                                    dot_u8i8(wv[r], a)
                                };
                                let sc = _mm256_mul_ps(sv[r], da);
                                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[r][t]);
                            }
                        }
                    }
                }
                for r in 0..R {
                    for t in 0..T {
                        out[r][t] = hsum(acc[r][t]);
                    }
                }
            }

            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn dotf(a: *const f32, b: *const f32, n: usize) -> f32 {
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                let mut tail = 0.0;
                // SAFETY: the caller passes n readable floats behind both pointers.
                unsafe {
                    while i + 8 <= n {
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc);
                        i += 8;
                    }
                    while i < n {
                        tail += *a.add(i) * *b.add(i);
                        i += 1;
                    }
                }
                hsum(acc) + tail
            }

            #[target_feature(enable = $feat)]
            unsafe fn tile_run<const R: usize, const T: usize, const SIGNED: bool>(
                w: &QMatrix,
                acts: &QActs,
                sc: &Scratch,
                r0: usize,
                y: *mut f32,
            ) {
                let (nb, cols) = (acts.nb(), acts.cols);
                let mut out = [[0.0f32; T]; R];
                let mut t = 0;
                while t + T <= acts.n {
                    // SAFETY: r0..r0+R are decoded in `sc`; t..t+T are tokens of `acts`; the
                    // caller owns rows r0..r0+R of every token in `y`.
                    unsafe {
                        micro::<R, T, SIGNED>(
                            sc.q.as_ptr(),
                            sc.sv.as_ptr(),
                            nb,
                            acts.qs.as_ptr().add(t * cols),
                            acts.d.as_ptr().add(t * nb),
                            cols,
                            &mut out,
                        );
                        for r in 0..R {
                            for tt in 0..T {
                                let off = if SIGNED {
                                    0.0
                                } else {
                                    dotf(
                                        sc.off.as_ptr().add(r * 2 * nb),
                                        acts.s.as_ptr().add((t + tt) * 2 * nb),
                                        2 * nb,
                                    )
                                };
                                *y.add((t + tt) * w.rows + r0 + r) = out[r][tt] + off;
                            }
                        }
                    }
                    t += T;
                }
                if t < acts.n && T > 1 {
                    // SAFETY: as above, for the remaining tokens one at a time.
                    unsafe { tile_tail::<R, SIGNED>(w, acts, sc, r0, t, y) };
                }
            }

            #[target_feature(enable = $feat)]
            unsafe fn tile_tail<const R: usize, const SIGNED: bool>(
                w: &QMatrix,
                acts: &QActs,
                sc: &Scratch,
                r0: usize,
                t0: usize,
                y: *mut f32,
            ) {
                let (nb, cols) = (acts.nb(), acts.cols);
                let mut out = [[0.0f32; 1]; R];
                for t in t0..acts.n {
                    // SAFETY: see `tile_run`.
                    unsafe {
                        micro::<R, 1, SIGNED>(
                            sc.q.as_ptr(),
                            sc.sv.as_ptr(),
                            nb,
                            acts.qs.as_ptr().add(t * cols),
                            acts.d.as_ptr().add(t * nb),
                            cols,
                            &mut out,
                        );
                        for r in 0..R {
                            let off = if SIGNED {
                                0.0
                            } else {
                                dotf(sc.off.as_ptr().add(r * 2 * nb), acts.s.as_ptr().add(t * 2 * nb), 2 * nb)
                            };
                            *y.add(t * w.rows + r0 + r) = out[r][0] + off;
                        }
                    }
                }
            }

            /// Decoded weights of one row tile.
            #[derive(Default)]
            struct Scratch {
                q: Vec<u8>,
                sv: Vec<f32>,
                off: Vec<f32>,
            }

            thread_local! {
                static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
            }

            #[target_feature(enable = $feat)]
            unsafe fn decode_tile<const F: u8>(w: &QMatrix, r0: usize, rr: usize, sc: &mut Scratch) {
                let nb = w.cols / QK;
                let rb = w.row_bytes();
                for r in 0..rr {
                    // SAFETY: r0 + r < rows; the scratch holds TILE_R rows of nb blocks.
                    unsafe {
                        let row = w.data.as_ptr().add((r0 + r) * rb);
                        for k in 0..nb {
                            let dec = decode::<F>(row, k);
                            _mm256_storeu_si256(sc.q.as_mut_ptr().add(r * w.cols + k * QK) as *mut __m256i, dec.q);
                            _mm256_storeu_ps(sc.sv.as_mut_ptr().add((r * nb + k) * 8), dec.sv);
                            *sc.off.get_unchecked_mut(r * 2 * nb + 2 * k) = dec.off0;
                            *sc.off.get_unchecked_mut(r * 2 * nb + 2 * k + 1) = dec.off1;
                        }
                    }
                }
            }

            #[target_feature(enable = $feat)]
            unsafe fn matmul_rows_f<const F: u8>(
                w: &QMatrix,
                acts: &QActs,
                r0: usize,
                r1: usize,
                y: *mut f32,
                sc: &mut Scratch,
            ) {
                let nb = w.cols / QK;
                sc.q.resize(TILE_R * w.cols, 0);
                sc.sv.resize(TILE_R * nb * 8, 0.0);
                sc.off.resize(TILE_R * nb * 2, 0.0);
                let signed = F == Q8_0;
                let mut r = r0;
                while r < r1 {
                    let rr = TILE_R.min(r1 - r);
                    // SAFETY: rows r..r+rr are in range and owned by the caller.
                    unsafe {
                        decode_tile::<F>(w, r, rr, sc);
                        if rr == TILE_R {
                            if signed {
                                tile_run::<TILE_R, TILE_T, true>(w, acts, sc, r, y);
                            } else {
                                tile_run::<TILE_R, TILE_T, false>(w, acts, sc, r, y);
                            }
                        } else {
                            // Fewer rows than a tile: one row at a time from the same scratch.
                            for i in 0..rr {
                                let sub = SubTile { sc, row: i, nb, cols: w.cols };
                                sub.run(w, acts, r + i, y, signed);
                            }
                        }
                    }
                    r += rr;
                }
            }

            /// One decoded row of a partial tile.
            struct SubTile<'s> {
                sc: &'s Scratch,
                row: usize,
                nb: usize,
                cols: usize,
            }

            impl SubTile<'_> {
                #[target_feature(enable = $feat)]
                unsafe fn run(&self, w: &QMatrix, acts: &QActs, r: usize, y: *mut f32, signed: bool) {
                    let (nb, cols) = (self.nb, self.cols);
                    let mut out = [[0.0f32; 1]; 1];
                    for t in 0..acts.n {
                        // SAFETY: see `tile_run`; the row lives at index `self.row` of the scratch.
                        unsafe {
                            let wq = self.sc.q.as_ptr().add(self.row * cols);
                            let wsv = self.sc.sv.as_ptr().add(self.row * nb * 8);
                            let aq = acts.qs.as_ptr().add(t * cols);
                            let ad = acts.d.as_ptr().add(t * nb);
                            if signed {
                                micro::<1, 1, true>(wq, wsv, nb, aq, ad, cols, &mut out);
                            } else {
                                micro::<1, 1, false>(wq, wsv, nb, aq, ad, cols, &mut out);
                            }
                            let off = if signed {
                                0.0
                            } else {
                                dotf(
                                    self.sc.off.as_ptr().add(self.row * 2 * nb),
                                    acts.s.as_ptr().add(t * 2 * nb),
                                    2 * nb,
                                )
                            };
                            *y.add(t * w.rows + r) = out[0][0] + off;
                        }
                    }
                }
            }

            /// 0x10 in byte `i` of lane `j` where bit `4c + i` of lane `j` of `qh` is set: the fifth
            /// bits of chunk `c` of 8 interleaved Q5 rows.
            #[inline]
            #[target_feature(enable = $feat)]
            fn high_bits8(qh: __m256i, c: usize) -> __m256i {
                // Byte c/2 of each 32-bit lane, four times; then bits 4(c%2)..4(c%2)+3 of it.
                let byte = (c / 2) as i8;
                let pick = _mm256_setr_epi8(
                    byte, byte, byte, byte, 4 + byte, 4 + byte, 4 + byte, 4 + byte,
                    8 + byte, 8 + byte, 8 + byte, 8 + byte, 12 + byte, 12 + byte, 12 + byte, 12 + byte,
                    byte, byte, byte, byte, 4 + byte, 4 + byte, 4 + byte, 4 + byte,
                    8 + byte, 8 + byte, 8 + byte, 8 + byte, 12 + byte, 12 + byte, 12 + byte, 12 + byte,
                );
                let shift = 4 * (c % 2) as u32;
                let bits = i32::from_le_bytes([1u8 << shift, 2 << shift, 4 << shift, 8 << shift]);
                let mask = _mm256_set1_epi32(bits);
                let b = _mm256_and_si256(_mm256_shuffle_epi8(qh, pick), mask);
                _mm256_and_si256(_mm256_cmpeq_epi8(b, mask), _mm256_set1_epi8(0x10))
            }

            /// Activation block `k` of tokens `t0..t0 + T`, as the interleaved kernels read it.
            struct TokenBlocks<const T: usize> {
                /// Token `t0`'s 32 int8 values; the next token's are `cols` further.
                qs: *const i8,
                cols: usize,
                /// Token `t0`'s block scale; the next token's is `nb` further.
                d: *const f32,
                nb: usize,
                t0: usize,
            }

            impl<const T: usize> TokenBlocks<T> {
                /// # Safety
                /// Tokens `t0..t0 + T` and block `k` must be inside `acts`.
                #[inline]
                unsafe fn new(acts: &QActs, t0: usize, k: usize) -> Self {
                    let (nb, cols) = (acts.nb(), acts.cols);
                    // SAFETY: passed on from the caller.
                    unsafe {
                        Self {
                            qs: acts.qs.as_ptr().add(t0 * cols + k * QK),
                            cols,
                            d: acts.d.as_ptr().add(t0 * nb + k),
                            nb,
                            t0,
                        }
                    }
                }

                /// Token `t`'s 4 values of chunk `c` (< 8) in every 32-bit lane.
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn chunk(&self, t: usize, c: usize) -> __m256i {
                    // SAFETY: a block holds 32 bytes; c < 8.
                    _mm256_set1_epi32(unsafe { std::ptr::read_unaligned(self.qs.add(t * self.cols + 4 * c) as *const i32) })
                }

                /// `acc[t] += isum[t] · scale · d[t]`, then `+ off · sums[t]` where `offset` is
                /// `(off, token t0's sum, the stride between tokens' sums)`.
                ///
                /// # Safety
                /// The sums pointer must reach every token of the block.
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn fold(
                    &self,
                    acc: &mut [__m256; T],
                    isum: &[__m256i; T],
                    scale: __m256,
                    offset: Option<(__m256, *const f32, usize)>,
                ) {
                    for t in 0..T {
                        // SAFETY: t < T tokens of the block (see `new`).
                        let da = unsafe { *self.d.add(t * self.nb) };
                        let df = _mm256_mul_ps(scale, _mm256_set1_ps(da));
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), df, acc[t]);
                        if let Some((off, sums, stride)) = offset {
                            // SAFETY: passed on from the caller.
                            let sum = unsafe { *sums.add((self.t0 + t) * stride) };
                            acc[t] = _mm256_fmadd_ps(off, _mm256_set1_ps(sum), acc[t]);
                        }
                    }
                }
            }

            /// One weight block of 32 columns of a group of 8 interleaved rows, unpacked: chunk `c`
            /// holds in lane `j` row `j`'s 4 values that meet activation bytes `4c..4c + 4`
            /// (unsigned, except Q8_0's), with the scales and offsets its sums are folded with
            /// (index 0 for the whole block; Q6_K folds each half of 16 with its own).
            #[derive(Clone, Copy)]
            struct Unpacked {
                q: [__m256i; 8],
                scale: [__m256; 2],
                off: [__m256; 2],
            }

            /// Calls `f(k, block)` for every activation block `k` of the group of 8 rows at
            /// `row0`, in order: the one place the interleaved formats are decoded.
            ///
            /// # Safety
            /// `row0` must start a whole group inside `w`.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn unpack_group<const F: u8>(w: &QMatrix, row0: usize, mut f: impl FnMut(usize, &Unpacked)) {
                let gb = GROUP * w.ty.block_bytes();
                let blocks = w.cols / w.ty.block_elems();
                let low = _mm256_set1_epi8(0x0F);
                let zero = _mm256_setzero_ps();
                // SAFETY: the caller passes a whole group inside `w`; every pointer below stays
                // inside one group block.
                unsafe {
                    let group = w.data.as_ptr().add(row0 / GROUP * blocks * gb);
                    for u in 0..blocks {
                        let b = group.add(u * gb);
                        if F >= Q4K {
                            // A K-quant super-block: the 8 rows' scales of every sub-block are
                            // unpacked once into float vectors, then each activation block of 32
                            // is a sub-block (Q6_K: two halves of 16 with their own scales).
                            // Q4_K/Q5_K: scale and offset (minus the minimum) of each sub-block of
                            // 32; Q6_K: the scale of each 16 (its offset is -32 times it).
                            let mut scale = [zero; 16];
                            let mut off = [zero; 8];
                            if F == Q6K {
                                let d = _mm256_cvtph_ps(_mm_loadu_si128(b.add(1664) as *const __m128i));
                                for c in 0..4 {
                                    let v = _mm256_loadu_si256(b.add(1536 + 32 * c) as *const __m256i);
                                    for i in 0..4 {
                                        let up = _mm256_sllv_epi32(v, _mm256_set1_epi32(24 - 8 * i as i32));
                                        let sc = _mm256_cvtepi32_ps(_mm256_srai_epi32(up, 24));
                                        scale[4 * c + i] = _mm256_mul_ps(d, sc);
                                    }
                                }
                            } else {
                                // Bytes 0-3: scales 0-3 (6 bits) and the top bits of scales 4-7;
                                // 4-7: the same for the minimums; 8-11: low 4 bits of 4-7 of both.
                                let d = _mm256_cvtph_ps(_mm_loadu_si128(b as *const __m128i));
                                let dmin = _mm256_cvtph_ps(_mm_loadu_si128(b.add(16) as *const __m128i));
                                let nmin = _mm256_mul_ps(dmin, _mm256_set1_ps(-1.0));
                                let c0 = _mm256_loadu_si256(b.add(32) as *const __m256i);
                                let c1 = _mm256_loadu_si256(b.add(64) as *const __m256i);
                                let c2 = _mm256_loadu_si256(b.add(96) as *const __m256i);
                                let six = _mm256_set1_epi8(0x3F);
                                let top = _mm256_set1_epi8(0x03);
                                let s03 = _mm256_and_si256(c0, six);
                                let m03 = _mm256_and_si256(c1, six);
                                let hi = |c: __m256i| _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(c, 6), top), 4);
                                let s47 = _mm256_or_si256(_mm256_and_si256(c2, low), hi(c0));
                                let m47 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(c2, 4), low), hi(c1));
                                let byte = _mm256_set1_epi32(0xFF);
                                for i in 0..4 {
                                    let sh = _mm256_set1_epi32(8 * i as i32);
                                    let at = |v: __m256i| _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, sh), byte));
                                    scale[i] = _mm256_mul_ps(d, at(s03));
                                    scale[i + 4] = _mm256_mul_ps(d, at(s47));
                                    off[i] = _mm256_mul_ps(nmin, at(m03));
                                    off[i + 4] = _mm256_mul_ps(nmin, at(m47));
                                }
                            }
                            for j in 0..8 {
                                let mut blk = Unpacked { q: [_mm256_setzero_si256(); 8], scale: [zero; 2], off: [zero; 2] };
                                if F == Q6K {
                                    let (half, jj) = (j / 4, j % 4);
                                    let ql = b.add(32 * (16 * half + 8 * (jj % 2)));
                                    let qh = b.add(1024 + 32 * 8 * half);
                                    // Shift counts, not branches, so the loop keeps its registers:
                                    // the nibble (low for jj < 2) and bits 2jj, 2jj+1 of the pair byte.
                                    let nib = _mm_cvtsi32_si128(4 * (jj / 2) as i32);
                                    let pair = _mm_cvtsi32_si128(2 * jj as i32);
                                    let three = _mm256_set1_epi8(0x03);
                                    for c in 0..8 {
                                        let p = _mm256_loadu_si256(ql.add(32 * c) as *const __m256i);
                                        let lo = _mm256_and_si256(_mm256_srl_epi16(p, nib), low);
                                        let h = _mm256_loadu_si256(qh.add(32 * c) as *const __m256i);
                                        let h = _mm256_and_si256(_mm256_srl_epi16(h, pair), three);
                                        blk.q[c] = _mm256_or_si256(lo, _mm256_slli_epi16(h, 4));
                                    }
                                    for e in 0..2 {
                                        blk.scale[e] = scale[2 * j + e];
                                        blk.off[e] = _mm256_mul_ps(blk.scale[e], _mm256_set1_ps(-32.0));
                                    }
                                } else {
                                    let qs_at = if F == Q4K { 128 } else { 384 };
                                    let qs = b.add(qs_at + 32 * 8 * (j / 2));
                                    let bit = _mm256_set1_epi8((1u8 << j) as i8);
                                    for c in 0..8 {
                                        let p = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                                        let p = if j % 2 == 0 { p } else { _mm256_srli_epi16(p, 4) };
                                        let v = _mm256_and_si256(p, low);
                                        blk.q[c] = if F == Q5K {
                                            let h = _mm256_loadu_si256(b.add(128 + 32 * c) as *const __m256i);
                                            let set = _mm256_cmpeq_epi8(_mm256_and_si256(h, bit), bit);
                                            _mm256_or_si256(v, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
                                        } else {
                                            v
                                        };
                                    }
                                    blk.scale[0] = scale[j];
                                    blk.off[0] = off[j];
                                }
                                f(u * 8 + j, &blk);
                            }
                        } else {
                            let dw = _mm256_cvtph_ps(_mm_loadu_si128(b as *const __m128i));
                            let off = match F {
                                Q4_1 | Q5_1 => _mm256_cvtph_ps(_mm_loadu_si128(b.add(16) as *const __m128i)),
                                Q4_0 => _mm256_mul_ps(dw, _mm256_set1_ps(-8.0)),
                                Q5_0 => _mm256_mul_ps(dw, _mm256_set1_ps(-16.0)),
                                _ => zero,
                            };
                            // Header: scales (16 bytes), minimums (16), high-bit words (32).
                            let (qh_at, qs_at) = match F {
                                Q4_1 => (0, 32),
                                Q5_0 => (16, 48),
                                Q5_1 => (32, 64),
                                _ => (0, 16),
                            };
                            let qs = b.add(qs_at);
                            let mut blk = Unpacked { q: [_mm256_setzero_si256(); 8], scale: [dw, zero], off: [off, zero] };
                            if F == Q8_0 {
                                for c in 0..8 {
                                    blk.q[c] = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                                }
                            } else {
                                let five = F == Q5_0 || F == Q5_1;
                                let qh = _mm256_loadu_si256(b.add(qh_at) as *const __m256i);
                                for c in 0..4 {
                                    let p = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                                    let mut lo = _mm256_and_si256(p, low);
                                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), low);
                                    if five {
                                        lo = _mm256_or_si256(lo, high_bits8(qh, c));
                                        hi = _mm256_or_si256(hi, high_bits8(qh, c + 4));
                                    }
                                    blk.q[c] = lo;
                                    blk.q[c + 4] = hi;
                                }
                            }
                            f(u, &blk);
                        }
                    }
                }
            }

            /// Folds one unpacked block `k` into `acc`, tokens `t0..t0 + T` of `acts`: the
            /// integer dots of its chunks, then per lane and token the same float operations
            /// whatever `T` is (the integer dot is exact), so a row's result does not depend on
            /// how many tokens share the call, nor on whether its block was unpacked ahead.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn fold_block<const F: u8, const T: usize>(
                acts: &QActs,
                t0: usize,
                k: usize,
                blk: &Unpacked,
                acc: &mut [__m256; T],
            ) {
                let nb = acts.nb();
                // SAFETY: the caller passes tokens and a block inside `acts`.
                unsafe {
                    let tb = TokenBlocks::<T>::new(acts, t0, k);
                    if F == Q6K {
                        for e in 0..2 {
                            let mut isum = [_mm256_setzero_si256(); T];
                            for c in 4 * e..4 * e + 4 {
                                for t in 0..T {
                                    isum[t] = dot_acc(isum[t], blk.q[c], tb.chunk(t, c));
                                }
                            }
                            tb.fold(acc, &isum, blk.scale[e], Some((blk.off[e], acts.s.as_ptr().add(2 * k + e), 2 * nb)));
                        }
                        return;
                    }
                    let mut isum = [_mm256_setzero_si256(); T];
                    if F == Q8_0 {
                        for c in 0..8 {
                            let wa = _mm256_abs_epi8(blk.q[c]);
                            for t in 0..T {
                                isum[t] = dot_acc(isum[t], wa, _mm256_sign_epi8(tb.chunk(t, c), blk.q[c]));
                            }
                        }
                    } else if SUM16 && (F == Q4_0 || F == Q4_1 || F == Q4K) {
                        // 8 products of at most 2 × 15 × 127 fit a 16-bit lane.
                        let mut s16 = [_mm256_setzero_si256(); T];
                        for c in 0..8 {
                            for t in 0..T {
                                s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(blk.q[c], tb.chunk(t, c)));
                            }
                        }
                        for t in 0..T {
                            isum[t] = _mm256_madd_epi16(s16[t], _mm256_set1_epi16(1));
                        }
                    } else {
                        // 5- and 6-bit values (their sums overflow 16-bit lanes), or a path with
                        // a 4-byte dot instruction.
                        for c in 0..8 {
                            for t in 0..T {
                                isum[t] = dot_acc(isum[t], blk.q[c], tb.chunk(t, c));
                            }
                        }
                    }
                    let offset = (F != Q8_0).then(|| (blk.off[0], acts.sb.as_ptr().add(k), nb));
                    tb.fold(acc, &isum, blk.scale[0], offset);
                }
            }

            /// One group of 8 interleaved rows times tokens `t0..t0 + T`, decoding as it goes:
            /// lane `j` of each accumulator is row `row0 + j`.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn interleaved_group<const F: u8, const T: usize>(
                w: &QMatrix,
                acts: &QActs,
                row0: usize,
                t0: usize,
                y: *mut f32,
            ) {
                let mut acc = [_mm256_setzero_ps(); T];
                // SAFETY: the caller passes a whole group inside `w`, tokens inside `acts`, and
                // owns these rows of every token in `y`.
                unsafe {
                    unpack_group::<F>(w, row0, |k, blk| fold_block::<F, T>(acts, t0, k, blk, &mut acc));
                    for t in 0..T {
                        _mm256_storeu_ps(y.add((t0 + t) * w.rows + row0), acc[t]);
                    }
                }
            }

            thread_local! {
                /// The unpacked blocks of a call's row groups (see `unpacked_rows`).
                static UNPACKED_GROUPS: RefCell<Vec<Unpacked>> = const { RefCell::new(Vec::new()) };
            }

            /// Tokens `t0..t0 + T` over rows `r0..r1`, whose groups' blocks are unpacked in `buf`.
            ///
            /// # Safety
            /// As `interleaved_group`, for every group of `r0..r1`.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn unpacked_tile<const F: u8, const T: usize>(
                w: &QMatrix,
                acts: &QActs,
                buf: &[Unpacked],
                r0: usize,
                r1: usize,
                t0: usize,
                y: *mut f32,
            ) {
                let blocks = w.cols / QK;
                for (group, row0) in buf.chunks_exact(blocks).zip((r0..r1).step_by(GROUP)) {
                    let mut acc = [_mm256_setzero_ps(); T];
                    for (k, blk) in group.iter().enumerate() {
                        // SAFETY: passed on from the caller.
                        unsafe { fold_block::<F, T>(acts, t0, k, blk, &mut acc) };
                    }
                    for t in 0..T {
                        // SAFETY: the caller owns these rows of every token in `y`.
                        unsafe { _mm256_storeu_ps(y.add((t0 + t) * w.rows + row0), acc[t]) };
                    }
                }
            }

            /// Rows `r0..r1` (whole groups) of an interleaved matrix times every token.
            ///
            /// With a batch of tokens, the rows' blocks are unpacked once and the tokens then run
            /// over them a tile at a time: unpacking (nibbles, high bits, K-quant scales) costs
            /// once per weight rather than once per tile, and a tile's activations stay in L1
            /// while the unpacked rows (about 1.5 bytes per weight) stream from L2. Q8_0 needs no
            /// unpacking.
            #[target_feature(enable = $feat)]
            unsafe fn interleaved_rows<const F: u8>(
                w: &QMatrix,
                acts: &QActs,
                r0: usize,
                r1: usize,
                y: *mut f32,
            ) {
                if F != Q8_0 && acts.n >= UNPACKED_T {
                    UNPACKED_GROUPS.with(|cell| {
                        let mut buf = cell.borrow_mut();
                        buf.clear();
                        // SAFETY: row groups of r0..r1 are inside `w`; tokens inside `acts`; the
                        // caller owns these rows of every token in `y`.
                        unsafe {
                            for row0 in (r0..r1).step_by(GROUP) {
                                unpack_group::<F>(w, row0, |_, blk| buf.push(*blk));
                            }
                            let mut t0 = 0;
                            while t0 + UNPACKED_T <= acts.n {
                                unpacked_tile::<F, UNPACKED_T>(w, acts, &buf, r0, r1, t0, y);
                                t0 += UNPACKED_T;
                            }
                            while t0 + 4 <= acts.n {
                                unpacked_tile::<F, 4>(w, acts, &buf, r0, r1, t0, y);
                                t0 += 4;
                            }
                            while t0 < acts.n {
                                unpacked_tile::<F, 1>(w, acts, &buf, r0, r1, t0, y);
                                t0 += 1;
                            }
                        }
                    });
                    return;
                }
                let mut row0 = r0;
                while row0 < r1 {
                    let mut t = 0;
                    // SAFETY: row0 starts a group inside `w`; t..t+T are tokens of `acts`; the
                    // caller owns these rows of every token in `y`.
                    unsafe {
                        while t + INTERLEAVED_T <= acts.n {
                            interleaved_group::<F, INTERLEAVED_T>(w, acts, row0, t, y);
                            t += INTERLEAVED_T;
                        }
                        while t < acts.n {
                            interleaved_group::<F, 1>(w, acts, row0, t, y);
                            t += 1;
                        }
                    }
                    row0 += GROUP;
                }
            }

            /// Rows `r0..r1` (whole groups) of an interleaved matrix (see
            /// [`crate::qdot::Kernels::rows`], which only passes the formats of
            /// [`crate::pack::FORMATS`]).
            ///
            /// # Safety
            /// As [`crate::qdot::MatmulRowsFn`].
            pub(crate) unsafe fn interleaved(w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: *mut f32) {
                debug_assert!(r0 % GROUP == 0 && r1 % GROUP == 0);
                // SAFETY: this table entry is only handed out when the CPU has `$feat`; the
                // caller upholds the output contract.
                unsafe {
                    match w.ty {
                        QuantType::Q4_0 => interleaved_rows::<Q4_0>(w, acts, r0, r1, y),
                        QuantType::Q4_1 => interleaved_rows::<Q4_1>(w, acts, r0, r1, y),
                        QuantType::Q5_0 => interleaved_rows::<Q5_0>(w, acts, r0, r1, y),
                        QuantType::Q5_1 => interleaved_rows::<Q5_1>(w, acts, r0, r1, y),
                        QuantType::Q8_0 => interleaved_rows::<Q8_0>(w, acts, r0, r1, y),
                        QuantType::Q4K => interleaved_rows::<Q4K>(w, acts, r0, r1, y),
                        QuantType::Q5K => interleaved_rows::<Q5K>(w, acts, r0, r1, y),
                        QuantType::Q6K => interleaved_rows::<Q6K>(w, acts, r0, r1, y),
                        QuantType::F32 | QuantType::F16 => {}
                    }
                }
            }

            /// Matvec over rows `r0..r1` (see [`crate::qdot::MatvecRowsFn`]).
            pub(crate) fn matvec_rows(w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: &mut [f32]) {
                debug_assert!(crate::cpu::Path::available().contains(&crate::cpu::selected()));
                // SAFETY: this table entry is only handed out when the CPU has `$feat`.
                unsafe {
                    match w.ty {
                        QuantType::Q4_0 => matvec_rows_f::<Q4_0>(w, acts, r0, r1, y),
                        QuantType::Q4_1 => matvec_rows_f::<Q4_1>(w, acts, r0, r1, y),
                        QuantType::Q5_0 => matvec_rows_f::<Q5_0>(w, acts, r0, r1, y),
                        QuantType::Q5_1 => matvec_rows_f::<Q5_1>(w, acts, r0, r1, y),
                        QuantType::Q8_0 => matvec_rows_f::<Q8_0>(w, acts, r0, r1, y),
                        QuantType::Q4K => matvec_rows_f::<Q4K>(w, acts, r0, r1, y),
                        QuantType::Q5K => matvec_rows_f::<Q5K>(w, acts, r0, r1, y),
                        QuantType::Q6K => matvec_rows_f::<Q6K>(w, acts, r0, r1, y),
                        QuantType::F32 | QuantType::F16 => {
                            crate::qdot::scalar::matvec_rows(w, acts, r0, r1, y)
                        }
                    }
                }
            }

            /// Matmul over rows `r0..r1` (see [`crate::qdot::MatmulRowsFn`]).
            ///
            /// # Safety
            /// As [`crate::qdot::MatmulRowsFn`].
            pub(crate) unsafe fn matmul_rows(w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: *mut f32) {
                SCRATCH.with(|cell| {
                    let mut guard = cell.borrow_mut();
                    let sc = &mut *guard;
                    // SAFETY: this table entry is only handed out when the CPU has `$feat`; the
                    // caller upholds the output contract.
                    unsafe {
                        match w.ty {
                            QuantType::Q4_0 => matmul_rows_f::<Q4_0>(w, acts, r0, r1, y, sc),
                            QuantType::Q4_1 => matmul_rows_f::<Q4_1>(w, acts, r0, r1, y, sc),
                            QuantType::Q5_0 => matmul_rows_f::<Q5_0>(w, acts, r0, r1, y, sc),
                            QuantType::Q5_1 => matmul_rows_f::<Q5_1>(w, acts, r0, r1, y, sc),
                            QuantType::Q8_0 => matmul_rows_f::<Q8_0>(w, acts, r0, r1, y, sc),
                            QuantType::Q4K => matmul_rows_f::<Q4K>(w, acts, r0, r1, y, sc),
                            QuantType::Q5K => matmul_rows_f::<Q5K>(w, acts, r0, r1, y, sc),
                            QuantType::Q6K => matmul_rows_f::<Q6K>(w, acts, r0, r1, y, sc),
                            QuantType::F32 | QuantType::F16 => {
                                crate::qdot::scalar::matmul_rows(w, acts, r0, r1, y)
                            }
                        }
                    }
                })
            }
        }
    };
}

x86_path!(
    avx2,
    "avx2,fma,f16c",
    tile = (4, 2),
    interleaved_tokens = 4,
    unpacked_tokens = 4,
    dot = |acc, w, a| {
        _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)),
        )
    },
    sum16 = true
);
x86_path!(
    avxvnni,
    "avx2,fma,f16c,avxvnni",
    tile = (4, 2),
    interleaved_tokens = 4,
    unpacked_tokens = 4,
    dot = |acc, w, a| { _mm256_dpbusd_avx_epi32(acc, w, a) },
    sum16 = false
);
x86_path!(
    avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl",
    tile = (4, 4),
    interleaved_tokens = 8,
    unpacked_tokens = 12,
    dot = |acc, w, a| {
        _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)),
        )
    },
    sum16 = true
);
x86_path!(
    avx512vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    tile = (4, 4),
    interleaved_tokens = 8,
    unpacked_tokens = 12,
    dot = |acc, w, a| { _mm256_dpbusd_epi32(acc, w, a) },
    sum16 = false
);
