//! Every SIMD path against the scalar reference, and the reference against f32 math.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::{QUANTIZED, Rng, random_matrix, zero_some_blocks};
use tandem_kernels::matmul::{matmul_on_path, matvec_on_path};
use tandem_kernels::pack::interleave8;
use tandem_kernels::quant::{Layout, QMatrix, QuantType, dequantize_row, quantize_row};
use tandem_kernels::{KernelPool, available_paths, matmul, matvec, selected_path};

fn dequant(w: &QMatrix) -> Vec<f32> {
    let mut out = vec![0.0; w.rows * w.cols];
    for r in 0..w.rows {
        dequantize_row(w.ty, w.row(r), &mut out[r * w.cols..(r + 1) * w.cols]).unwrap();
    }
    out
}

/// Σ|w||x| per output: the scale every error bound is relative to.
fn magnitude(wf: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
    let mut m = vec![0.0; n * rows];
    for t in 0..n {
        for r in 0..rows {
            m[t * rows + r] = (0..cols)
                .map(|c| (wf[r * cols + c] * x[t * cols + c]).abs())
                .sum();
        }
    }
    m
}

fn reference_f32(wf: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0.0; n * rows];
    for t in 0..n {
        for r in 0..rows {
            y[t * rows + r] = (0..cols)
                .map(|c| wf[r * cols + c] as f64 * x[t * cols + c] as f64)
                .sum::<f64>() as f32;
        }
    }
    y
}

/// SIMD paths must match the scalar path up to float reassociation: 1e-5 of Σ|w||x|.
const PATH_TOL: f32 = 1e-5;
/// Int8 activations cost about 1/127 relative per block; 2% of Σ|w||x| is a safe bound.
const QUANT_TOL: f32 = 0.02;

fn check_close(what: &str, got: &[f32], want: &[f32], mag: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        let bound = tol * mag[i] + 1e-30;
        assert!(
            err <= bound || (got[i].is_nan() && want[i].is_nan()),
            "{what}: index {i}: got {} want {} (err {err}, bound {bound}, magnitude {})",
            got[i],
            want[i],
            mag[i]
        );
    }
}

fn run_all_paths(
    ty: QuantType,
    rows: usize,
    cols: usize,
    n: usize,
    data: &[u8],
    x: &[f32],
    label: &str,
) {
    let w = QMatrix::new(ty, rows, cols, data).unwrap();
    let wf = dequant(&w);
    let mag = magnitude(&wf, x, rows, cols, n);
    let mut want = vec![0.0; n * rows];
    matmul_on_path("scalar", &w, x, n, &mut want).unwrap();
    check_close(
        &format!("{label} {ty:?} scalar vs f32"),
        &want,
        &reference_f32(&wf, x, rows, cols, n),
        &mag,
        QUANT_TOL,
    );
    for path in available_paths() {
        let mut got = vec![0.0; n * rows];
        matmul_on_path(path, &w, x, n, &mut got).unwrap();
        let what = format!("{label} {ty:?} {path} matmul n={n}");
        check_close(&what, &got, &want, &mag, PATH_TOL);
        assert_rows_match_matvec(path, &w, x, n, &got, &what);
        if n == 1 {
            let mut got = vec![0.0; rows];
            matvec_on_path(path, &w, x, &mut got).unwrap();
            check_close(
                &format!("{label} {ty:?} {path} matvec"),
                &got,
                &want,
                &mag,
                PATH_TOL,
            );
        }
    }
}

/// Batch invariance: every row of a multi-token product is bit-identical to a matvec of that
/// row alone on the same path.
fn assert_rows_match_matvec(path: &str, w: &QMatrix, x: &[f32], n: usize, got: &[f32], what: &str) {
    for t in 0..n {
        let mut one = vec![0.0; w.rows];
        matvec_on_path(path, w, &x[t * w.cols..(t + 1) * w.cols], &mut one).unwrap();
        let row = &got[t * w.rows..(t + 1) * w.rows];
        for r in 0..w.rows {
            assert!(
                row[r].to_bits() == one[r].to_bits(),
                "{what}: token {t} row {r}: batched {} vs alone {}",
                row[r],
                one[r]
            );
        }
    }
}

#[test]
fn matmul_rows_equal_matvec_bit_exact_every_path() {
    let mut rng = Rng(0xB17E);
    let pool = KernelPool::new(2).unwrap();
    for ty in QUANTIZED {
        let be = ty.block_elems();
        // Model-like widths: 18 blocks of 32 (576, not a multiple of 4 blocks), 1536, and the
        // smallest width of each format.
        for cols in [576usize, 1536, be] {
            if !cols.is_multiple_of(be) {
                continue;
            }
            let rows = 37;
            let data = random_matrix(&mut rng, ty, rows, cols, 0.2);
            let w = QMatrix::new(ty, rows, cols, &data).unwrap();
            let nmax = 33;
            let x = rng.vec(nmax * cols, 1.5);
            for path in available_paths() {
                for n in [2usize, 3, 4, 5, 8, 16, 17, 33] {
                    let mut got = vec![0.0; n * rows];
                    matmul_on_path(path, &w, &x[..n * cols], n, &mut got).unwrap();
                    let what = format!("{ty:?} {path} cols={cols} n={n}");
                    assert_rows_match_matvec(path, &w, &x[..n * cols], n, &got, &what);
                }
            }
            // The pool (any row split, one or many tokens) agrees with the single-thread call.
            for n in [1usize, 4, 33] {
                let mut a = vec![0.0; n * rows];
                pool.matmul(&w, &x[..n * cols], n, &mut a).unwrap();
                let mut b = vec![0.0; n * rows];
                matmul(&w, &x[..n * cols], n, &mut b).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{ty:?} pool n={n}");
            }
        }
    }
}

#[test]
fn paths_present_and_skipped() {
    let all = ["avx512+vnni", "avx512", "avx2+avxvnni", "avx2", "neon"];
    let here = available_paths();
    for p in all {
        if !here.contains(&p) {
            println!("kernel path {p} not available on this cpu: skipped");
        }
    }
    println!("selected kernel path: {}", selected_path());
    assert_eq!(*here.last().unwrap(), "scalar");
}

#[test]
fn random_blocks_all_formats_all_paths() {
    let mut rng = Rng(0x1234_5678);
    for ty in QUANTIZED {
        let be = ty.block_elems();
        for &(rows, cols, n) in &[
            (1, be, 1),
            (7, 2 * be, 1),
            (13, 3 * be, 5),
            (9, 2 * be, 4),
            (6, be, 17),
        ] {
            let cols = cols.max(be);
            let data = random_matrix(&mut rng, ty, rows, cols, 0.1);
            let x = rng.vec(n * cols, 2.0);
            run_all_paths(ty, rows, cols, n, &data, &x, "random");
        }
    }
}

#[test]
fn adversarial_blocks() {
    let mut rng = Rng(99);
    for ty in QUANTIZED {
        let cols = 2 * ty.block_elems().max(64);
        let rows = 10;
        // All-zero blocks interleaved with random ones.
        let mut data = random_matrix(&mut rng, ty, rows, cols, 1.0);
        zero_some_blocks(ty, &mut data);
        let x = rng.vec(3 * cols, 1.0);
        run_all_paths(ty, rows, cols, 3, &data, &x, "zero blocks");
        let x = rng.vec(21 * cols, 1.0);
        run_all_paths(ty, rows, cols, 21, &data, &x, "zero blocks");
        // Extreme scales: the largest f16 and subnormal ones.
        for scale in [65504.0f32, 1e-7] {
            let data = random_matrix(&mut rng, ty, rows, cols, scale);
            for n in [2, 16] {
                let x = rng.vec(n * cols, 1.0);
                run_all_paths(ty, rows, cols, n, &data, &x, "extreme scale");
            }
        }
        // All-zero and one-hot activations, huge activations.
        let data = random_matrix(&mut rng, ty, rows, cols, 1.0);
        run_all_paths(ty, rows, cols, 1, &data, &vec![0.0; cols], "zero x");
        let mut x = vec![0.0; cols];
        x[cols - 1] = -3.0;
        run_all_paths(ty, rows, cols, 1, &data, &x, "one-hot x");
        let x = rng.vec(cols, 1e6);
        run_all_paths(ty, rows, cols, 1, &data, &x, "huge x");
        // Q8_0 weights of -128 (never written by ggml but valid bytes).
        if ty == QuantType::Q8_0 {
            let mut data = data.clone();
            for b in data.chunks_exact_mut(34) {
                b[2..].iter_mut().for_each(|v| *v = 0x80);
            }
            run_all_paths(ty, rows, cols, 4, &data, &rng.vec(4 * cols, 1.0), "q8 -128");
        }
    }
}

#[test]
fn quantize_round_trips() {
    let mut rng = Rng(7);
    for ty in [
        QuantType::F32,
        QuantType::F16,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
    ] {
        let x = rng.vec(256, 3.0);
        let mut bytes = Vec::new();
        quantize_row(ty, &x, &mut bytes).unwrap();
        assert_eq!(bytes.len(), ty.row_bytes(256).unwrap());
        let mut back = vec![0.0; 256];
        dequantize_row(ty, &bytes, &mut back).unwrap();
        // Step size of each format over a range of 6: 4-bit 0.4, 5-bit 0.2, 8-bit 0.024.
        let tol = match ty {
            QuantType::F32 => 0.0,
            QuantType::F16 => 2e-3,
            QuantType::Q4_0 | QuantType::Q4_1 => 0.41,
            QuantType::Q5_0 | QuantType::Q5_1 => 0.21,
            _ => 0.025,
        };
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= tol, "{ty:?}: {a} -> {b}");
        }
    }
}

#[test]
fn float_matrices() {
    let mut rng = Rng(3);
    let (rows, cols) = (5, 37);
    let wf = rng.vec(rows * cols, 1.0);
    for ty in [QuantType::F32, QuantType::F16] {
        let mut bytes = Vec::new();
        quantize_row(ty, &wf, &mut bytes).unwrap();
        let w = QMatrix::new(ty, rows, cols, &bytes).unwrap();
        let x = rng.vec(2 * cols, 1.0);
        let mut y = vec![0.0; 2 * rows];
        matmul(&w, &x, 2, &mut y).unwrap();
        let want = reference_f32(&dequant(&w), &x, rows, cols, 2);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{ty:?}: {a} vs {b}");
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let data = vec![0u8; 20 * 2];
    assert!(QMatrix::new(QuantType::Q4_1, 2, 33, &data).is_err());
    assert!(QMatrix::new(QuantType::Q4_1, 3, 32, &data).is_err());
    let w = QMatrix::new(QuantType::Q4_1, 2, 32, &data).unwrap();
    let mut y = vec![0.0; 2];
    assert!(matvec(&w, &[0.0; 31], &mut y).is_err());
    assert!(matvec(&w, &[0.0; 32], &mut [0.0; 3]).is_err());
    assert!(matmul(&w, &[0.0; 64], 0, &mut y).is_err());
    let pool = KernelPool::new(2).unwrap();
    assert!(pool.matvec_many(&[&w], &[0.0; 32], &mut []).is_err());
    assert!(KernelPool::new(0).is_err());
    assert_eq!(QuantType::from_ggml_type_id(9), None);
    assert_eq!(QuantType::from_ggml_type_id(3), Some(QuantType::Q4_1));
}

/// Interleaved matrices give the row-major results within float reassociation on every path,
/// stay batch invariant, and the pool's row split (groups of 8) does not change a bit.
#[test]
fn interleaved_matrices_match_rows_on_every_path() {
    let mut rng = Rng(0x1A7E);
    let pool = KernelPool::new(2).unwrap();
    for ty in tandem_kernels::pack::FORMATS {
        // Model widths: 576 (18 blocks of 32), 1536, and for the K-quants 4864 (Qwen2.5's
        // ffn_down, 19 super-blocks); the smallest width of each format.
        let widths = [ty.block_elems(), 576, 1536, 4864];
        for cols in widths
            .into_iter()
            .filter(|c| c.is_multiple_of(ty.block_elems()))
        {
            // One group, and 5 so the pool splits an odd number of groups.
            for rows in [8usize, 40] {
                let mut data = random_matrix(&mut rng, ty, rows, cols, 0.2);
                zero_some_blocks(ty, &mut data);
                let w = QMatrix::new(ty, rows, cols, &data).unwrap();
                let packed = interleave8(&w).unwrap();
                let p =
                    QMatrix::with_layout(ty, rows, cols, &packed, Layout::Interleaved8).unwrap();
                let x = rng.vec(17 * cols, 1.5);
                let wf = dequant(&w);
                for n in [1usize, 2, 3, 4, 5, 8, 9, 17] {
                    let x = &x[..n * cols];
                    let mag = magnitude(&wf, x, rows, cols, n);
                    let mut want = vec![0.0; n * rows];
                    matmul_on_path("scalar", &w, x, n, &mut want).unwrap();
                    for path in available_paths() {
                        let mut got = vec![0.0; n * rows];
                        matmul_on_path(path, &p, x, n, &mut got).unwrap();
                        let what = format!("interleaved {ty:?} {path} {rows}x{cols} n={n}");
                        check_close(&what, &got, &want, &mag, PATH_TOL);
                        assert_rows_match_matvec(path, &p, x, n, &got, &what);
                    }
                    let mut a = vec![0.0; n * rows];
                    pool.matmul(&p, x, n, &mut a).unwrap();
                    let mut b = vec![0.0; n * rows];
                    matmul(&p, x, n, &mut b).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a), bits(&b), "interleaved {ty:?} pool n={n}");
                }
            }
        }
    }
}

#[test]
fn pool_matches_single_thread() {
    let mut rng = Rng(42);
    let pool = KernelPool::new(3).unwrap();
    assert_eq!(pool.threads(), 3);
    for ty in QUANTIZED {
        let cols = 2 * ty.block_elems().max(64);
        let (ra, rb) = (67, 130);
        let da = random_matrix(&mut rng, ty, ra, cols, 0.5);
        let db = random_matrix(&mut rng, ty, rb, cols, 0.5);
        let wa = QMatrix::new(ty, ra, cols, &da).unwrap();
        let wb = QMatrix::new(ty, rb, cols, &db).unwrap();
        for n in [1, 3, 8] {
            let x = rng.vec(n * cols, 1.0);
            let (mut ya, mut yb) = (vec![0.0; n * ra], vec![0.0; n * rb]);
            pool.matmul_many(&[&wa, &wb], &x, n, &mut [&mut ya, &mut yb])
                .unwrap();
            let (mut ea, mut eb) = (vec![0.0; n * ra], vec![0.0; n * rb]);
            matmul(&wa, &x, n, &mut ea).unwrap();
            matmul(&wb, &x, n, &mut eb).unwrap();
            assert_eq!(ya, ea, "{ty:?} n={n}");
            assert_eq!(yb, eb, "{ty:?} n={n}");
        }
    }
    // The pool is shared across threads and serves concurrent callers.
    let data = random_matrix(&mut rng, QuantType::Q4_1, 64, 64, 0.5);
    let w = QMatrix::new(QuantType::Q4_1, 64, 64, &data).unwrap();
    let x = rng.vec(64, 1.0);
    let mut want = vec![0.0; 64];
    matvec(&w, &x, &mut want).unwrap();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..200 {
                    let mut y = vec![0.0; 64];
                    pool.matvec(&w, &x, &mut y).unwrap();
                    assert_eq!(y, want);
                }
            });
        }
    });
}

mod shapes {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_shape_matches_reference(fmt in 0usize..8, rows in 1usize..40, blocks in 1usize..5, n in 1usize..11, seed in any::<u64>()) {
            let ty = QUANTIZED[fmt];
            let cols = blocks * ty.block_elems();
            let mut rng = Rng(seed | 1);
            let data = random_matrix(&mut rng, ty, rows, cols, 0.3);
            let x = rng.vec(n * cols, 1.5);
            run_all_paths(ty, rows, cols, n, &data, &x, "proptest");
            let pool = KernelPool::new(2).unwrap();
            let w = QMatrix::new(ty, rows, cols, &data).unwrap();
            let mut got = vec![0.0; n * rows];
            pool.matmul(&w, &x, n, &mut got).unwrap();
            let mut want = vec![0.0; n * rows];
            matmul(&w, &x, n, &mut want).unwrap();
            prop_assert_eq!(got, want);
        }
    }
}
