//! Quantized dot-product machinery shared by every path: activations quantized to int8 blocks of
//! 32, one uniform per-block view of every weight format, and the per-path kernel table.
//!
//! Every weight block of 32 elements is seen as unsigned (or, for Q8_0, signed) 8-bit values `q`,
//! a scale for each 16-element half and an offset for each half, so that
//! `w[i] = scale[h] * q[i] + offset[h]`. With activations `x[i] ≈ d * a[i]` the block dot is
//! `d * (scale[0]·Σlo q·a + scale[1]·Σhi q·a) + offset[0]·s[0] + offset[1]·s[1]` where `s[h]` is
//! `d·Σ a` over that half. One integer dot per block, whatever the format.

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use crate::cpu::Path;
use crate::pack::{FORMATS, GROUP, rows_of_interleaved8};
use crate::quant::{Layout, QMatrix};

/// Elements per activation block.
pub(crate) const QK: usize = 32;

/// Activations of `n` rows of `cols` elements, quantized to int8 in blocks of 32.
#[derive(Default)]
pub(crate) struct QActs {
    pub(crate) n: usize,
    pub(crate) cols: usize,
    /// `n * cols` int8 values in [-127, 127].
    pub(crate) qs: Vec<i8>,
    /// `n * cols/32` block scales.
    pub(crate) d: Vec<f32>,
    /// `n * cols/32 * 2` half sums, `d * Σ a` over each 16-element half.
    pub(crate) s: Vec<f32>,
    /// `n * cols/32` block sums, the two half sums added (for one offset per block).
    pub(crate) sb: Vec<f32>,
}

impl QActs {
    pub(crate) fn nb(&self) -> usize {
        self.cols / QK
    }

    /// Quantizes `x` (`n` rows of `cols`, `cols % 32 == 0`) with `path`'s quantizer.
    pub(crate) fn quantize(&mut self, path: Path, x: &[f32], n: usize, cols: usize) {
        let nb = cols / QK;
        self.n = n;
        self.cols = cols;
        self.qs.resize(n * cols, 0);
        self.d.resize(n * nb, 0.0);
        self.s.resize(n * nb * 2, 0.0);
        for t in 0..n {
            let xs = &x[t * cols..(t + 1) * cols];
            let qs = &mut self.qs[t * cols..(t + 1) * cols];
            let d = &mut self.d[t * nb..(t + 1) * nb];
            let s = &mut self.s[t * nb * 2..(t + 1) * nb * 2];
            match path {
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 | Path::AvxVnni | Path::Avx512 | Path::Avx512Vnni => {
                    // SAFETY: these paths are only selected when AVX2 is detected.
                    unsafe { x86::quantize_acts_avx2(xs, qs, d, s) }
                }
                _ => scalar::quantize_acts(xs, qs, d, s),
            }
        }
        self.sb.clear();
        self.sb.extend(self.s.chunks_exact(2).map(|h| h[0] + h[1]));
    }
}

/// One weight block of 32 elements in the uniform view.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block32 {
    /// Values: unsigned unless `signed`.
    pub(crate) q: [u8; 32],
    /// Only Q8_0 has signed values.
    pub(crate) signed: bool,
    /// Scale of each 16-element half.
    pub(crate) scale: [f32; 2],
    /// Offset of each half.
    pub(crate) off: [f32; 2],
}

/// Matrix–vector products over rows `r0..r1` with already-quantized activations; `y[i]` receives
/// row `r0 + i`.
pub(crate) type MatvecRowsFn = fn(w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: &mut [f32]);

/// Matrix–matrix products over a row range: writes `y[t * w.rows + r]` for all tokens.
///
/// # Safety
/// `y` must point to `acts.n * w.rows` writable floats; rows `r0..r1` of every token must not be
/// written concurrently by anyone else.
pub(crate) type MatmulRowsFn =
    unsafe fn(w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: *mut f32);

/// The kernels of one path.
pub(crate) struct Kernels {
    pub(crate) path: Path,
    pub(crate) matvec_rows: MatvecRowsFn,
    pub(crate) matmul_rows: MatmulRowsFn,
    /// Rows of a [`Layout::Interleaved8`] matrix in whole groups (the kernel signature of
    /// [`MatmulRowsFn`] for any number of tokens); `None` where the path has no such kernels.
    pub(crate) interleaved_rows: Option<MatmulRowsFn>,
}

impl Kernels {
    /// Rows `r0..r1` of `w` times every token of `acts`, into `y[t * w.rows + r]`: the one entry
    /// that picks matvec or matmul, and unpacks interleaved rows for kernels without them.
    ///
    /// # Safety
    /// `y` must point to `acts.n * w.rows` writable floats; rows `r0..r1` of every token must not
    /// be written concurrently by anyone else.
    pub(crate) unsafe fn rows(&self, w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: *mut f32) {
        if w.layout == Layout::Interleaved8 {
            let whole_groups = r0.is_multiple_of(GROUP) && r1.is_multiple_of(GROUP);
            match self.interleaved_rows {
                Some(f) if whole_groups && FORMATS.contains(&w.ty) => {
                    // SAFETY: passed on from the caller.
                    unsafe { f(w, acts, r0, r1, y) }
                }
                // SAFETY: passed on from the caller.
                _ => unsafe { self.unpacked_rows(w, acts, r0, r1, y) },
            }
        } else if acts.n == 1 {
            // SAFETY: the caller owns rows r0..r1 of the single token's output.
            let y = unsafe { std::slice::from_raw_parts_mut(y.add(r0), r1 - r0) };
            (self.matvec_rows)(w, acts, r0, r1, y);
        } else {
            // SAFETY: passed on from the caller.
            unsafe { (self.matmul_rows)(w, acts, r0, r1, y) };
        }
    }

    /// [`Kernels::rows`] for interleaved rows this path cannot read: they are copied back to
    /// ggml rows first (tests and forced paths; the engine only interleaves for paths that read it).
    unsafe fn unpacked_rows(&self, w: &QMatrix, acts: &QActs, r0: usize, r1: usize, y: *mut f32) {
        UNPACKED.with(|cell| {
            let (bytes, out) = &mut *cell.borrow_mut();
            rows_of_interleaved8(w, r0, r1, bytes);
            let m = QMatrix {
                rows: r1 - r0,
                data: bytes,
                layout: Layout::Rows,
                ..*w
            };
            out.clear();
            out.resize(acts.n * m.rows, 0.0);
            // SAFETY: `out` holds n × m.rows floats and is local to this thread.
            unsafe { self.rows(&m, acts, 0, m.rows, out.as_mut_ptr()) };
            for t in 0..acts.n {
                for i in 0..m.rows {
                    // SAFETY: the caller owns rows r0..r1 of every token in `y`.
                    unsafe { *y.add(t * w.rows + r0 + i) = out[t * m.rows + i] };
                }
            }
        });
    }
}

thread_local! {
    /// Unpacked rows and their outputs for [`Kernels::unpacked_rows`].
    static UNPACKED: std::cell::RefCell<(Vec<u8>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// The kernel table for `path`.
pub(crate) fn kernels(path: Path) -> Kernels {
    match path {
        Path::Scalar => Kernels {
            path,
            matvec_rows: scalar::matvec_rows,
            matmul_rows: scalar::matmul_rows,
            interleaved_rows: None,
        },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => Kernels {
            path,
            matvec_rows: x86::avx2::matvec_rows,
            matmul_rows: x86::avx2::matmul_rows,
            interleaved_rows: Some(x86::avx2::interleaved),
        },
        #[cfg(target_arch = "x86_64")]
        Path::AvxVnni => Kernels {
            path,
            matvec_rows: x86::avxvnni::matvec_rows,
            matmul_rows: x86::avxvnni::matmul_rows,
            interleaved_rows: Some(x86::avxvnni::interleaved),
        },
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => Kernels {
            path,
            matvec_rows: x86::avx512::matvec_rows,
            matmul_rows: x86::avx512::matmul_rows,
            interleaved_rows: Some(x86::avx512::interleaved),
        },
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Vnni => Kernels {
            path,
            matvec_rows: x86::avx512vnni::matvec_rows,
            matmul_rows: x86::avx512vnni::matmul_rows,
            interleaved_rows: Some(x86::avx512vnni::interleaved),
        },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => Kernels {
            path,
            matvec_rows: neon::matvec_rows,
            matmul_rows: neon::matmul_rows,
            interleaved_rows: None,
        },
    }
}
