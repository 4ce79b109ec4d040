//! Single-threaded quantized matrix–vector and matrix–matrix products with runtime dispatch.
//! Activations are quantized to int8 blocks of 32 on the fly; F32/F16 matrices use float dots.

use crate::cpu::{self, Path};
use crate::error::{Error, Result};
use crate::ops;
use crate::qdot::{self, Kernels, QActs};
use crate::quant::{QMatrix, QuantType, f16_to_f32};
use std::cell::RefCell;
use std::sync::OnceLock;

thread_local! {
    static ACTS: RefCell<QActs> = RefCell::new(QActs::default());
}

/// The kernel table of the selected path.
pub(crate) fn active() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| qdot::kernels(cpu::selected()))
}

pub(crate) fn check_shapes(w: &QMatrix, x_len: usize, n: usize, y_len: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidShape(
            "matmul needs at least one input row".into(),
        ));
    }
    if x_len != n * w.cols {
        return Err(Error::InvalidShape(format!(
            "input has {x_len} values, expected {n}x{} = {}",
            w.cols,
            n * w.cols
        )));
    }
    if y_len != n * w.rows {
        return Err(Error::InvalidShape(format!(
            "output has {y_len} values, expected {n}x{} = {}",
            w.rows,
            n * w.rows
        )));
    }
    Ok(())
}

/// `y[r] = w[r,:]·x` for every row.
pub fn matvec(w: &QMatrix, x: &[f32], y: &mut [f32]) -> Result<()> {
    matvec_with(active(), w, x, y)
}

/// `y[t, r] = w[r,:]·x[t,:]` for `n` input rows (`x` is `n × cols`, `y` is `n × rows`, row-major).
pub fn matmul(w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
    matmul_with(active(), w, x, n, y)
}

pub(crate) fn matvec_with(k: &Kernels, w: &QMatrix, x: &[f32], y: &mut [f32]) -> Result<()> {
    check_shapes(w, x.len(), 1, y.len())?;
    if !w.ty.is_quantized() {
        float_rows(w, x, 1, 0, w.rows, y.as_mut_ptr());
        return Ok(());
    }
    ACTS.with(|cell| {
        let mut acts = cell.borrow_mut();
        acts.quantize(k.path, x, 1, w.cols);
        // SAFETY: `y` holds rows floats (checked) and is exclusively borrowed here.
        unsafe { k.rows(w, &acts, 0, w.rows, y.as_mut_ptr()) };
    });
    Ok(())
}

pub(crate) fn matmul_with(
    k: &Kernels,
    w: &QMatrix,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    check_shapes(w, x.len(), n, y.len())?;
    if n == 1 {
        return matvec_with(k, w, x, y);
    }
    if !w.ty.is_quantized() {
        float_rows(w, x, n, 0, w.rows, y.as_mut_ptr());
        return Ok(());
    }
    ACTS.with(|cell| {
        let mut acts = cell.borrow_mut();
        acts.quantize(k.path, x, n, w.cols);
        // SAFETY: `y` holds n × rows floats (checked) and is exclusively borrowed here.
        unsafe { k.rows(w, &acts, 0, w.rows, y.as_mut_ptr()) };
    });
    Ok(())
}

/// Float rows `r0..r1` of an F32/F16 matrix times `n` inputs, into `y[t * rows + r]`.
pub(crate) fn float_rows(w: &QMatrix, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32) {
    let mut buf = vec![0.0f32; w.cols];
    for r in r0..r1 {
        let row = w.row(r);
        let wr: &[f32] = match w.ty {
            QuantType::F32 => {
                // SAFETY: every bit pattern is a valid f32; align_to only yields aligned middles.
                let (pre, mid, _) = unsafe { row.align_to::<f32>() };
                if pre.is_empty() && mid.len() == w.cols && cfg!(target_endian = "little") {
                    mid
                } else {
                    for (d, c) in buf.iter_mut().zip(row.chunks_exact(4)) {
                        *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                    &buf
                }
            }
            _ => {
                for (d, c) in buf.iter_mut().zip(row.chunks_exact(2)) {
                    *d = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
                &buf
            }
        };
        for t in 0..n {
            let v = ops::dot_f32(wr, &x[t * w.cols..(t + 1) * w.cols]);
            // SAFETY: the caller passes `y` with n × rows floats and owns rows r0..r1.
            unsafe { *y.add(t * w.rows + r) = v };
        }
    }
}

/// Whether a `ty` matrix of `rows` rows is best held as [`crate::Layout::Interleaved8`] on the
/// selected path (its kernels read that layout; see [`crate::pack::interleave8`]).
pub fn prefers_interleaved8(ty: QuantType, rows: usize) -> bool {
    active().interleaved_rows.is_some() && crate::pack::can_interleave8(ty, rows)
}

/// Runs `matvec` on a named path (`"scalar"`, `"avx2"`, ...) for testing and benchmarking;
/// errors when this machine cannot run it.
pub fn matvec_on_path(path: &str, w: &QMatrix, x: &[f32], y: &mut [f32]) -> Result<()> {
    matvec_with(&kernels_named(path)?, w, x, y)
}

/// Runs `matmul` on a named path; errors when this machine cannot run it.
pub fn matmul_on_path(path: &str, w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
    matmul_with(&kernels_named(path)?, w, x, n, y)
}

fn kernels_named(path: &str) -> Result<Kernels> {
    Path::available()
        .into_iter()
        .find(|p| p.name() == path)
        .map(qdot::kernels)
        .ok_or_else(|| Error::Unsupported(format!("kernel path {path} on this cpu")))
}
