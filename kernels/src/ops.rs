//! Element-wise and reduction kernels around the matmuls: RMSNorm, RoPE, softmax, sampling
//! helpers (argmax, top-k, top-p) and the float dot/axpy that attention needs. Hot loops have an
//! AVX2 version chosen at run time; everything else is plain Rust the compiler vectorizes.

use crate::cpu::{self, Path};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[inline]
fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cpu::selected() != Path::Scalar
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = cpu::selected;
        let _ = Path::Scalar;
        false
    }
}

/// `Σ a[i]·b[i]` over the common length.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: non-scalar x86 paths are selected only with AVX2 and FMA.
        return unsafe { x86::dot(&a[..n], &b[..n]) };
    }
    dot_f32_scalar(&a[..n], &b[..n])
}

/// Portable reference for [`dot_f32`] (8 partial sums, like the SIMD version).
pub fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Scores of a query against consecutive cached keys: `out[i] = dot_f32(q, row i) · scale`, row
/// `i` being `rows[i * stride..][..q.len()]`. Each is computed exactly as [`dot_f32`] computes
/// it, so a score does not depend on how keys or queries are grouped; only the calls are saved.
pub fn dot_rows_f32(q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let n = q.len();
    let Some(last) = out.len().checked_sub(1) else {
        return;
    };
    let rows = &rows[..last * stride + n];
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: non-scalar x86 paths are selected only with AVX2 and FMA; every row is in
        // bounds (checked by the slice above).
        return unsafe { x86::dot_rows(q, rows, stride, scale, out) };
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_f32_scalar(q, &rows[i * stride..i * stride + n]) * scale;
    }
}

/// `y += Σ weights[i] · row i` in row order, row `i` being `rows[i * stride..][..y.len()]`: a
/// query's attention output from its weights and the cached values. Each element sums exactly
/// as repeated [`axpy_f32`] calls would, with `y` held in registers between rows.
pub fn axpy_rows_f32(weights: &[f32], rows: &[f32], stride: usize, y: &mut [f32]) {
    let n = y.len();
    let Some(last) = weights.len().checked_sub(1) else {
        return;
    };
    let rows = &rows[..last * stride + n];
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: as in `dot_rows_f32`; every row is in bounds (checked by the slice above).
        return unsafe { x86::axpy_rows(weights, rows, stride, y) };
    }
    for (i, &w) in weights.iter().enumerate() {
        for (yi, xi) in y.iter_mut().zip(&rows[i * stride..i * stride + n]) {
            *yi += w * xi;
        }
    }
}

/// `Σ a[i]·b[i]` with `b` in IEEE half bits (an f16 KV cache).
pub fn dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if simd() && cpu::cpu_features().f16c {
        // SAFETY: AVX2 + FMA are implied by a non-scalar path; F16C was just checked.
        return unsafe { x86::dot_f16(&a[..n], &b[..n]) };
    }
    a[..n]
        .iter()
        .zip(&b[..n])
        .map(|(x, h)| x * crate::quant::f16_to_f32(*h))
        .sum()
}

/// `y += alpha * x` over the common length.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 + FMA are present on non-scalar x86 paths.
        return unsafe { x86::axpy(alpha, &x[..n], &mut y[..n]) };
    }
    for (yi, xi) in y[..n].iter_mut().zip(&x[..n]) {
        *yi += alpha * xi;
    }
}

/// `y += alpha * x` with `x` in IEEE half bits (an f16 V cache).
pub fn axpy_f16(alpha: f32, x: &[u16], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * crate::quant::f16_to_f32(*xi);
    }
}

/// `out = x / rms(x) * weight` with `rms = sqrt(mean(x²) + eps)`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len().min(weight.len()).min(out.len());
    if n == 0 {
        return;
    }
    let ss = dot_f32(&x[..n], &x[..n]);
    let scale = 1.0 / (ss / n as f32 + eps).sqrt();
    for ((o, xi), wi) in out[..n].iter_mut().zip(&x[..n]).zip(&weight[..n]) {
        *o = xi * scale * wi;
    }
}

/// [`rms_norm`] in place.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let n = x.len().min(weight.len());
    if n == 0 {
        return;
    }
    let ss = dot_f32(&x[..n], &x[..n]);
    let scale = 1.0 / (ss / n as f32 + eps).sqrt();
    for (xi, wi) in x[..n].iter_mut().zip(&weight[..n]) {
        *xi = *xi * scale * wi;
    }
}

/// Rotary position embedding of `n_heads` heads of `head_dim` at position `pos`. `neox = false`
/// rotates adjacent pairs `(2i, 2i+1)` (the GGUF llama layout); `neox = true` rotates
/// `(i, i + head_dim/2)`. Frequency of pair `i` is `theta^(-2i/head_dim)`.
pub fn rope_inplace(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    pos: usize,
    theta: f32,
    neox: bool,
) {
    let cs = rope_angles(head_dim, pos as f64, theta);
    rope_apply(x, n_heads, head_dim, &cs, neox);
}

/// The (cos, sin) of each rotary pair at position `pos` (negative: a rotation back), for
/// [`rope_apply`].
pub fn rope_angles(head_dim: usize, pos: f64, theta: f32) -> Vec<(f32, f32)> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
            let a = pos * freq;
            (a.cos() as f32, a.sin() as f32)
        })
        .collect()
}

/// Rotates `n_heads` heads of `x` by the angles of [`rope_angles`]. Rotations compose, so a key
/// already embedded at position `p` rotated by the angles of `d` is the key embedded at `p + d`.
pub fn rope_apply(x: &mut [f32], n_heads: usize, head_dim: usize, cs: &[(f32, f32)], neox: bool) {
    let half = head_dim / 2;
    for h in x.chunks_exact_mut(head_dim).take(n_heads) {
        for (i, &(c, s)) in cs.iter().enumerate().take(half) {
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (h[a], h[b]);
            h[a] = x0 * c - x1 * s;
            h[b] = x0 * s + x1 * c;
        }
    }
}

/// Precomputed RoPE cos/sin for positions `0..max_pos`, so decode does no `powf`/`sin` per call.
#[derive(Clone, Debug)]
pub struct RopeTable {
    head_dim: usize,
    neox: bool,
    max_pos: usize,
    /// `max_pos × head_dim/2` (cos, sin) pairs.
    cs: Vec<(f32, f32)>,
}

impl RopeTable {
    /// Builds the table; `freq_scale` divides positions (1.0 for none).
    pub fn new(head_dim: usize, theta: f32, max_pos: usize, neox: bool, freq_scale: f32) -> Self {
        let half = head_dim / 2;
        let mut cs = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for i in 0..half {
                let freq = (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
                let a = p as f64 * freq / freq_scale as f64;
                cs.push((a.cos() as f32, a.sin() as f32));
            }
        }
        Self {
            head_dim,
            neox,
            max_pos,
            cs,
        }
    }

    /// Largest position + 1 the table covers.
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    /// Rotates `n_heads` heads at `pos`; returns false (leaving `x` untouched) if `pos` is out
    /// of the table.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, pos: usize) -> bool {
        if pos >= self.max_pos {
            return false;
        }
        let half = self.head_dim / 2;
        rope_apply(
            x,
            n_heads,
            self.head_dim,
            &self.cs[pos * half..(pos + 1) * half],
            self.neox,
        );
        true
    }
}

/// Softmax in place (max-subtracted); an empty slice is left alone.
pub fn softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = max_f32(x);
    let sum = exp_sub_sum(x, max);
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Log-softmax in place.
pub fn log_softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = max_f32(x);
    let sum: f64 = x.iter().map(|v| f64::from(exp_approx(v - max))).sum();
    let lse = max + (sum as f32).ln();
    for v in x.iter_mut() {
        *v -= lse;
    }
}

fn max_f32(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut c = x.chunks_exact(8);
    for ch in &mut c {
        for i in 0..8 {
            m[i] = m[i].max(ch[i]);
        }
    }
    let tail = c
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    m.iter().copied().fold(tail, f32::max)
}

/// `x[i] = exp(x[i] - max)`, returning the sum.
fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 + FMA are present on non-scalar x86 paths.
        return unsafe { x86::exp_sub_sum(x, max) };
    }
    // f64 accumulation: a long f32 running sum (a 49k-262k vocabulary) drifts by far more
    // than the SIMD path's eight partial sums do.
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = exp_approx(*v - max);
        sum += f64::from(*v);
    }
    sum as f32
}

/// `exp(x)` for `x ≤ 0` to about 2 ulp, with the same polynomial as the SIMD version.
#[inline]
pub(crate) fn exp_approx(x: f32) -> f32 {
    if x < -87.0 {
        return 0.0;
    }
    // exp(x) = 2^n · exp(r), r = x - n·ln2 in [-ln2/2, ln2/2].
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-0.693_145_75, x);
    let r = n.mul_add(-1.428_606_8e-6, r);
    let p = poly_exp(r);
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

#[inline]
fn poly_exp(r: f32) -> f32 {
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_66);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p.mul_add(r, 1.0)
}

/// Index of the largest value (the first one on ties; NaN never wins). 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    // Blocks of 8 let the compiler vectorize the max; the index is found in the winning block.
    let mut c = x.chunks_exact(8);
    let mut bi = usize::MAX;
    for (i, ch) in (&mut c).enumerate() {
        let m = ch.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if m > bv {
            bv = m;
            bi = i;
        }
    }
    if bi != usize::MAX {
        best = bi * 8
            + x[bi * 8..bi * 8 + 8]
                .iter()
                .position(|&v| v == bv)
                .unwrap_or(0);
    }
    let base = x.len() / 8 * 8;
    for (i, &v) in c.remainder().iter().enumerate() {
        if v > bv {
            bv = v;
            best = base + i;
        }
    }
    best
}

#[derive(PartialEq)]
struct MinItem(f32, u32);
impl Eq for MinItem {}
impl PartialOrd for MinItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MinItem {
    // Reversed so BinaryHeap's top is the smallest value (ties: larger index is "smaller").
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// The `k` largest values with their indices, sorted descending (ties by lower index first).
/// NaNs are skipped; returns fewer than `k` items when the slice is shorter.
pub fn top_k(x: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<MinItem> = BinaryHeap::with_capacity(k + 1);
    let mut thresh = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() || (heap.len() == k && v <= thresh) {
            continue;
        }
        heap.push(MinItem(v, i as u32));
        if heap.len() > k {
            heap.pop();
        }
        if heap.len() == k {
            thresh = heap.peek().map_or(f32::NEG_INFINITY, |m| m.0);
        }
    }
    let mut out: Vec<(u32, f32)> = heap.into_iter().map(|m| (m.1, m.0)).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Nucleus selection over probabilities: the smallest prefix of tokens, by descending
/// probability, whose mass reaches `p` (at least one token), sorted descending.
pub fn top_p(probs: &[f32], p: f32) -> Vec<(u32, f32)> {
    let mut k = 64.min(probs.len());
    loop {
        let cand = top_k(probs, k);
        let mut acc = 0.0f32;
        for (i, c) in cand.iter().enumerate() {
            acc += c.1;
            if acc >= p {
                return cand[..=i].to_vec();
            }
        }
        if k >= probs.len() {
            return cand;
        }
        k = (k * 4).min(probs.len());
    }
}

/// `gate = silu(gate) * up`.
pub fn silu_mul_inplace(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + exp_neg(x)) * u;
    }
}

#[inline]
fn exp_neg(x: f32) -> f32 {
    // exp(-x) for any x via the ≤0 approximation.
    if x >= 0.0 {
        exp_approx(-x)
    } else {
        1.0 / exp_approx(x)
    }
}

/// `gate = gelu_tanh(gate) * up` (Gemma's MLP).
pub fn gelu_tanh_mul_inplace(gate: &mut [f32], up: &[f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let t = (C * (x + 0.044_715 * x * x * x)).tanh();
        *g = 0.5 * x * (1.0 + t) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// [`dot_parts`] for 64 floats (a head of 64) with `a` already in registers: the same
    /// operations in the same order, without reloading the query for every key.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_parts64(a: &[__m256; 8], pb: *const f32) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 4];
        // SAFETY: the caller passes 64 floats behind `pb`.
        unsafe {
            for half in 0..2 {
                for (j, s) in acc.iter_mut().enumerate() {
                    let o = 32 * half + 8 * j;
                    *s = _mm256_fmadd_ps(a[4 * half + j], _mm256_loadu_ps(pb.add(o)), *s);
                }
            }
        }
        _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))
    }

    /// `dot`'s four partial sums over `n` (a multiple of 32) floats, combined as `dot` combines
    /// them before its horizontal sum.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_parts(pa: *const f32, pb: *const f32, n: usize) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: the caller passes n floats behind each pointer.
        unsafe {
            while i + 32 <= n {
                for (j, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * j;
                    *a =
                        _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *a);
                }
                i += 32;
            }
        }
        _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: indices stay below n = a.len() = b.len().
        unsafe {
            while i + 32 <= n {
                for j in 0..4 {
                    let o = i + 8 * j;
                    acc[j] = _mm256_fmadd_ps(
                        _mm256_loadu_ps(pa.add(o)),
                        _mm256_loadu_ps(pb.add(o)),
                        acc[j],
                    );
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                    acc[0],
                );
                i += 8;
            }
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
        let n = a.len();
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: indices stay below n = a.len() = b.len().
        unsafe {
            while i + 8 <= n {
                let h = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i));
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), h, acc);
                i += 8;
            }
        }
        let mut s = hsum(acc);
        while i < n {
            s += a[i] * crate::quant::f16_to_f32(b[i]);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let av = _mm256_set1_ps(alpha);
        let mut i = 0;
        // SAFETY: indices stay below n = x.len() = y.len().
        unsafe {
            while i + 8 <= n {
                let p = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    p,
                    _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)),
                );
                i += 8;
            }
        }
        while i < n {
            y[i] += alpha * x[i];
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(
        q: &[f32],
        rows: &[f32],
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let n = q.len();
        let mut first = 0;
        if n > 0 && n.is_multiple_of(32) {
            // Eight keys at a time: each key's sums are `dot`'s, added in `dot`'s order, with
            // the eight final reductions done together across registers.
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let sv = _mm256_set1_ps(scale);
            // A head of 64 (the common size) keeps the query in registers across keys.
            let mut q64 = [_mm256_setzero_ps(); 8];
            if n == 64 {
                for (i, r) in q64.iter_mut().enumerate() {
                    // SAFETY: q holds 64 floats.
                    *r = unsafe { _mm256_loadu_ps(q.as_ptr().add(8 * i)) };
                }
            }
            while first + 8 <= out.len() {
                let mut v = [_mm256_setzero_ps(); 8];
                for (k, vk) in v.iter_mut().enumerate() {
                    let row = rows.as_ptr().wrapping_add((first + k) * stride);
                    // SAFETY: row first + k is within `rows` (checked by the caller).
                    *vk = unsafe {
                        if n == 64 {
                            dot_parts64(&q64, row)
                        } else {
                            dot_parts(q.as_ptr(), row, n)
                        }
                    };
                }
                // `hsum`'s three steps for eight vectors: low + high half (two keys a
                // register), then lanes 0 + 2 and 1 + 3, then those two.
                let halves = |a: __m256, b: __m256| {
                    _mm256_add_ps(
                        _mm256_permute2f128_ps(a, b, 0x20),
                        _mm256_permute2f128_ps(a, b, 0x31),
                    )
                };
                let pairs = |a: __m256, b: __m256| {
                    let (a, b) = (_mm256_castps_pd(a), _mm256_castps_pd(b));
                    _mm256_add_ps(
                        _mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
                        _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)),
                    )
                };
                let x = pairs(halves(v[0], v[1]), halves(v[2], v[3]));
                let y = pairs(halves(v[4], v[5]), halves(v[6], v[7]));
                let sums = _mm256_add_ps(
                    _mm256_shuffle_ps(x, y, 0b10_00_10_00),
                    _mm256_shuffle_ps(x, y, 0b11_01_11_01),
                );
                // Lanes hold keys 0 2 4 6 | 1 3 5 7.
                let scores = _mm256_permutevar8x32_ps(_mm256_mul_ps(sums, sv), order);
                // SAFETY: first + 8 <= out.len().
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(first), scores) };
                first += 8;
            }
        }
        for (i, o) in out.iter_mut().enumerate().skip(first) {
            // SAFETY: the caller checked that every row is within `rows`; AVX2 + FMA as here.
            *o = unsafe { dot(q, &rows[i * stride..i * stride + n]) } * scale;
        }
    }

    /// Columns held in registers at once: 8 vectors of 8.
    const SLAB: usize = 64;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_rows(weights: &[f32], rows: &[f32], stride: usize, y: &mut [f32]) {
        let n = y.len();
        let vec_n = n / 8 * 8;
        let mut c = 0;
        // SAFETY: column c + 8k < vec_n <= n, and every row i holds n columns from i * stride
        // (checked by the caller).
        unsafe {
            while c < vec_n {
                let w = (vec_n - c).min(SLAB) / 8;
                let mut acc = [_mm256_setzero_ps(); SLAB / 8];
                for (k, a) in acc.iter_mut().enumerate().take(w) {
                    *a = _mm256_loadu_ps(y.as_ptr().add(c + 8 * k));
                }
                for (i, &wt) in weights.iter().enumerate() {
                    let av = _mm256_set1_ps(wt);
                    let row = rows.as_ptr().add(i * stride + c);
                    for (k, a) in acc.iter_mut().enumerate().take(w) {
                        *a = _mm256_fmadd_ps(av, _mm256_loadu_ps(row.add(8 * k)), *a);
                    }
                }
                for (k, a) in acc.iter().enumerate().take(w) {
                    _mm256_storeu_ps(y.as_mut_ptr().add(c + 8 * k), *a);
                }
                c += 8 * w;
            }
        }
        // The columns past the last full vector, as `axpy`'s tail.
        for (i, &wt) in weights.iter().enumerate() {
            for j in vec_n..n {
                y[j] += wt * rows[i * stride + j];
            }
        }
    }

    /// Vector form of [`super::exp_approx`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0), _CMP_LT_OQ);
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693_145_75), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166_666_66));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        // Clamp the exponent so masked-out lanes cannot form garbage bit patterns.
        let ni = _mm256_cvtps_epi32(_mm256_max_ps(n, _mm256_set1_ps(-126.0)));
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(ni, _mm256_set1_epi32(127)),
            23,
        ));
        _mm256_andnot_ps(lo, _mm256_mul_ps(pow2, p))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
        let n = x.len();
        let mv = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: indices stay below n.
        unsafe {
            while i + 8 <= n {
                let p = x.as_mut_ptr().add(i);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
                _mm256_storeu_ps(p, e);
                acc = _mm256_add_ps(acc, e);
                i += 8;
            }
        }
        let mut s = hsum(acc);
        while i < n {
            x[i] = super::exp_approx(x[i] - max);
            s += x[i];
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn row_kernels_equal_their_one_row_calls_bit_for_bit() {
        for (n, stride, count) in [
            (64, 128, 37),
            (70, 80, 9),
            (5, 5, 3),
            (136, 140, 4),
            (128, 128, 17),
            (32, 40, 8),
        ] {
            let q = values(n, 1);
            let rows = values((count - 1) * stride + n, 2);
            let w = values(count, 3);
            let mut scores = vec![0.0; count];
            dot_rows_f32(&q, &rows, stride, 0.125, &mut scores);
            let mut y = values(n, 4);
            let mut want = y.clone();
            axpy_rows_f32(&w, &rows, stride, &mut y);
            for i in 0..count {
                let row = &rows[i * stride..i * stride + n];
                assert_eq!(scores[i].to_bits(), (dot_f32(&q, row) * 0.125).to_bits());
                axpy_f32(w[i], row, &mut want);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&want), "n {n}");
        }
        // No rows: nothing to do.
        dot_rows_f32(&[1.0], &[], 1, 1.0, &mut []);
        axpy_rows_f32(&[], &[], 1, &mut [0.0]);
    }
}
