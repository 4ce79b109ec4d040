//! The float kernels against plain f64 math, on random, odd-sized and adversarial inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::Rng;
use tandem_kernels::ops::{self, RopeTable, dot_f32_scalar};

/// Odd lengths exercise every SIMD tail.
const LENS: [usize; 9] = [0, 1, 7, 8, 9, 31, 33, 576, 1000];

#[test]
fn dot_and_axpy_match_f64() {
    let mut rng = Rng(11);
    for n in LENS {
        let a = rng.vec(n, 3.0);
        let b = rng.vec(n, 3.0);
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let mag: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        // f32 accumulation: a few ulps of Σ|ab| per element in the worst case.
        let tol = 1e-6 * mag * (n as f64).sqrt().max(1.0) + 1e-12;
        assert!(
            (ops::dot_f32(&a, &b) as f64 - exact).abs() <= tol,
            "dot n={n}"
        );
        assert!(
            (dot_f32_scalar(&a, &b) as f64 - exact).abs() <= tol,
            "scalar dot n={n}"
        );
        let h: Vec<u16> = b
            .iter()
            .map(|v| tandem_kernels::quant::f32_to_f16(*v))
            .collect();
        let hf: Vec<f32> = h
            .iter()
            .map(|v| tandem_kernels::quant::f16_to_f32(*v))
            .collect();
        let exact_h: f64 = a.iter().zip(&hf).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!(
            (ops::dot_f32_f16(&a, &h) as f64 - exact_h).abs() <= tol,
            "dot f16 n={n}"
        );
        let mut y = b.clone();
        ops::axpy_f32(0.5, &a, &mut y);
        for i in 0..n {
            assert!((y[i] - (b[i] + 0.5 * a[i])).abs() <= 1e-6 * (b[i].abs() + a[i].abs()) + 1e-7);
        }
        let mut y2 = a.clone();
        ops::axpy_f16(2.0, &h, &mut y2);
        for i in 0..n {
            assert!((y2[i] - (a[i] + 2.0 * hf[i])).abs() <= 1e-5);
        }
    }
}

#[test]
fn rms_norm_matches_definition() {
    let mut rng = Rng(5);
    for n in LENS {
        let x = rng.vec(n, 10.0);
        let w = rng.vec(n, 1.0);
        let mut out = vec![0.0; n];
        ops::rms_norm(&x, &w, 1e-5, &mut out);
        let ms: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n.max(1) as f64;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        for i in 0..n {
            let want = x[i] as f64 * inv * w[i] as f64;
            assert!(
                (out[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                "n={n} i={i}"
            );
        }
        let mut y = x.clone();
        ops::rms_norm_inplace(&mut y, &w, 1e-5);
        assert_eq!(y, out);
    }
    // All zeros stay finite thanks to eps.
    let mut z = vec![0.0f32; 64];
    ops::rms_norm_inplace(&mut z, &[1.0; 64], 1e-6);
    assert!(z.iter().all(|v| *v == 0.0));
}

fn rope_ref(x: &mut [f32], n_heads: usize, hd: usize, pos: usize, theta: f32, neox: bool) {
    for h in 0..n_heads {
        for i in 0..hd / 2 {
            let f = (theta as f64).powf(-2.0 * i as f64 / hd as f64) * pos as f64;
            let (a, b) = if neox {
                (i, i + hd / 2)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (x[h * hd + a] as f64, x[h * hd + b] as f64);
            x[h * hd + a] = (x0 * f.cos() - x1 * f.sin()) as f32;
            x[h * hd + b] = (x0 * f.sin() + x1 * f.cos()) as f32;
        }
    }
}

#[test]
fn rope_both_layouts() {
    let mut rng = Rng(8);
    for neox in [false, true] {
        let table = RopeTable::new(64, 10000.0, 2048, neox, 1.0);
        for pos in [0usize, 1, 17, 2047] {
            let x = rng.vec(9 * 64, 1.0);
            let mut want = x.clone();
            rope_ref(&mut want, 9, 64, pos, 10000.0, neox);
            let mut got = x.clone();
            ops::rope_inplace(&mut got, 9, 64, pos, 10000.0, neox);
            let mut got_t = x.clone();
            assert!(table.apply(&mut got_t, 9, pos));
            for i in 0..x.len() {
                assert!(
                    (got[i] - want[i]).abs() < 1e-5,
                    "neox={neox} pos={pos} i={i}"
                );
                assert!(
                    (got_t[i] - want[i]).abs() < 1e-5,
                    "table neox={neox} pos={pos} i={i}"
                );
            }
        }
        let mut x = vec![1.0; 64];
        assert!(
            !table.apply(&mut x, 1, 2048),
            "out-of-table position is refused"
        );
    }
    // Position 0 is the identity; the two layouts differ elsewhere.
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let mut a = x.clone();
    ops::rope_inplace(&mut a, 1, 64, 0, 10000.0, false);
    assert_eq!(a, x);
    let mut b = x.clone();
    let mut c = x.clone();
    ops::rope_inplace(&mut b, 1, 64, 5, 10000.0, false);
    ops::rope_inplace(&mut c, 1, 64, 5, 10000.0, true);
    assert_ne!(b, c);
}

#[test]
fn a_rotation_by_a_delta_moves_an_embedded_key_to_another_position() {
    let mut rng = Rng(21);
    for neox in [false, true] {
        for (from, delta) in [(3usize, 5i64), (700, -690), (40, 0), (10, -10)] {
            let x = rng.vec(2 * 64, 1.0);
            let mut moved = x.clone();
            ops::rope_inplace(&mut moved, 2, 64, from, 1_000_000.0, neox);
            let cs = ops::rope_angles(64, delta as f64, 1_000_000.0);
            ops::rope_apply(&mut moved, 2, 64, &cs, neox);
            let mut want = x.clone();
            rope_ref(
                &mut want,
                2,
                64,
                (from as i64 + delta) as usize,
                1_000_000.0,
                neox,
            );
            for i in 0..x.len() {
                assert!(
                    (moved[i] - want[i]).abs() < 1e-4,
                    "neox={neox} from={from} delta={delta} i={i}: {} vs {}",
                    moved[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn softmax_and_log_softmax() {
    let mut rng = Rng(21);
    for n in [1usize, 7, 8, 33, 49152] {
        let x = rng.vec(n, 20.0);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = x.iter().map(|v| (*v as f64 - max).exp()).sum();
        let mut p = x.clone();
        ops::softmax_inplace(&mut p);
        let mut lp = x.clone();
        ops::log_softmax_inplace(&mut lp);
        for i in 0..n {
            let want = (x[i] as f64 - max).exp() / sum;
            assert!(
                (p[i] as f64 - want).abs() <= 1e-6 * want + 1e-9,
                "softmax n={n} i={i}"
            );
            let lwant = x[i] as f64 - max - sum.ln();
            assert!(
                (lp[i] as f64 - lwant).abs() <= 1e-4 * lwant.abs().max(1.0),
                "log_softmax n={n} i={i}"
            );
        }
    }
    // Adversarial: huge logits, -inf entries, one dominant value.
    let mut x = vec![
        1e30f32,
        f32::NEG_INFINITY,
        -1e30,
        0.0,
        88.0,
        89.0,
        -200.0,
        1e30,
        5.0,
    ];
    ops::softmax_inplace(&mut x);
    assert!((x[0] - 0.5).abs() < 1e-6 && (x[7] - 0.5).abs() < 1e-6);
    assert!(x.iter().all(|v| v.is_finite() && *v >= 0.0));
    let mut e: Vec<f32> = vec![];
    ops::softmax_inplace(&mut e);
}

#[test]
fn argmax_top_k_top_p() {
    let mut rng = Rng(77);
    for n in [1usize, 5, 8, 9, 49152, 262_144] {
        let x = rng.vec(n, 10.0);
        let best = (0..n).fold(0, |b, i| if x[i] > x[b] { i } else { b });
        assert_eq!(ops::argmax(&x), best, "n={n}");
        for k in [1usize, 5, 40] {
            let got = ops::top_k(&x, k);
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|a, b| x[*b].total_cmp(&x[*a]).then(a.cmp(b)));
            let want: Vec<(u32, f32)> = idx.iter().take(k).map(|&i| (i as u32, x[i])).collect();
            assert_eq!(got, want, "n={n} k={k}");
        }
    }
    // Ties resolve to the lowest index; NaN never wins.
    let x = [1.0, 3.0, f32::NAN, 3.0, 2.0, 3.0, 0.0, -1.0, 3.0];
    assert_eq!(ops::argmax(&x), 1);
    assert_eq!(ops::top_k(&x, 2), vec![(1, 3.0), (3, 3.0)]);
    assert_eq!(ops::top_k(&x, 0), vec![]);
    assert_eq!(ops::top_k(&[], 3), vec![]);
    assert_eq!(ops::argmax(&[]), 0);

    let mut probs = vec![0.0f32; 1000];
    probs[10] = 0.5;
    probs[20] = 0.3;
    probs[30] = 0.15;
    probs[40] = 0.05;
    let sel = ops::top_p(&probs, 0.9);
    assert_eq!(
        sel.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![10, 20, 30]
    );
    assert_eq!(ops::top_p(&probs, 0.1).len(), 1);
    // Flat distribution: nucleus grows beyond the first candidate batch.
    let flat = vec![1.0 / 5000.0; 5000];
    assert_eq!(ops::top_p(&flat, 0.5).len(), 2500);
}

#[test]
fn activations() {
    let mut rng = Rng(4);
    let g = rng.vec(1001, 12.0);
    let u = rng.vec(1001, 2.0);
    let mut s = g.clone();
    ops::silu_mul_inplace(&mut s, &u);
    let mut e = g.clone();
    ops::gelu_tanh_mul_inplace(&mut e, &u);
    for i in 0..g.len() {
        let x = g[i] as f64;
        let silu = x / (1.0 + (-x).exp()) * u[i] as f64;
        assert!(
            (s[i] as f64 - silu).abs() <= 1e-5 * silu.abs().max(1.0),
            "silu {x}"
        );
        let gelu =
            0.5 * x * (1.0 + (0.797_884_560_8 * (x + 0.044_715 * x * x * x)).tanh()) * u[i] as f64;
        assert!(
            (e[i] as f64 - gelu).abs() <= 1e-5 * gelu.abs().max(1.0),
            "gelu {x}"
        );
    }
    let mut big = vec![-100.0f32, 100.0, 0.0];
    ops::silu_mul_inplace(&mut big, &[1.0, 1.0, 1.0]);
    assert!(big[0].abs() < 1e-30 && (big[1] - 100.0).abs() < 1e-4 && big[2] == 0.0);
}
