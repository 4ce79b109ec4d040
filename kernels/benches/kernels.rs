//! Kernel benchmarks: quantized matvec per format at the SmolLM2 shapes, matmul for n = 1..256,
//! row-major against interleaved layouts, pooled (2-thread) variants and the float ops, plus a
//! measurement of this machine's DRAM bandwidth and FMA peak so the summary table shows each
//! kernel as a share of the limit.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tandem_kernels::matmul::matmul_on_path;
use tandem_kernels::pack::interleave8;
use tandem_kernels::quant::{Layout, QMatrix, QuantType, f32_to_f16};
use tandem_kernels::{
    KernelPool, available_paths, matmul, matvec, ops, prefers_interleaved8, selected_path,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn random_matrix(ty: QuantType, rows: usize, cols: usize) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let bb = ty.block_bytes();
    let mut data: Vec<u8> = (0..rows * cols / ty.block_elems() * bb)
        .map(|_| rng.next() as u8)
        .collect();
    let fields: &[usize] = match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q6K => &[208],
        _ => &[0, 2],
    };
    for b in data.chunks_exact_mut(bb) {
        for &at in fields {
            b[at..at + 2].copy_from_slice(&f32_to_f16(rng.f() * 0.01).to_le_bytes());
        }
    }
    data
}

/// The layouts a `ty` matrix of `rows` rows can be held in on this machine's path.
fn layouts(ty: QuantType, rows: usize) -> Vec<Layout> {
    let mut v = vec![Layout::Rows];
    if prefers_interleaved8(ty, rows) {
        v.push(Layout::Interleaved8);
    }
    v
}

/// `data` rearranged into `layout`.
fn in_layout(ty: QuantType, rows: usize, cols: usize, data: &[u8], layout: Layout) -> Vec<u8> {
    match layout {
        Layout::Rows => data.to_vec(),
        Layout::Interleaved8 => interleave8(&QMatrix::new(ty, rows, cols, data).unwrap()).unwrap(),
    }
}

/// The layout the engine holds a `ty` matrix of `rows` rows in (interleaved where the path reads it).
fn engine_layout(ty: QuantType, rows: usize) -> Layout {
    *layouts(ty, rows).last().unwrap()
}

fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Rows => "rows",
        Layout::Interleaved8 => "i8",
    }
}

/// (label, rows, cols): SmolLM2-135M's matrices (rows = outputs).
const SHAPES: [(&str, usize, usize); 4] = [
    ("576x576", 576, 576),
    ("576x1536", 1536, 576),
    ("1536x576", 576, 1536),
    ("49152x576", 49152, 576),
];
const FORMATS: [QuantType; 7] = [
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q8_0,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

/// Machine limits measured in-process.
struct Limits {
    bw_gbs: f64,
    peak_gflops: f64,
}

fn measure_bandwidth(pool: &KernelPool) -> f64 {
    // 512 MiB, far beyond any cache; every page touched first.
    let n = 128 << 20;
    let buf = vec![1.0f32; n];
    let parts = pool.threads();
    let chunk = n / parts;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        pool.for_each(parts, &|p| {
            let s = &buf[p * chunk..(p + 1) * chunk];
            black_box(ops::dot_f32(s, s));
        })
        .unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 4) as f64 / best / 1e9
}

#[cfg(target_arch = "x86_64")]
fn measure_peak_1thread() -> f64 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f")]
    fn fma512(iters: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); 12];
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }
    #[target_feature(enable = "avx2,fma")]
    fn fma256(iters: usize) -> f32 {
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        for v in acc {
            // SAFETY: out has 8 floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        }
        out.iter().sum()
    }
    let iters = 20_000_000;
    if is_x86_feature_detected!("avx512f") {
        let t = Instant::now();
        // SAFETY: avx512f detected.
        black_box(unsafe { fma512(iters) });
        (iters * 12 * 32) as f64 / t.elapsed().as_secs_f64() / 1e9
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        let t = Instant::now();
        // SAFETY: avx2 and fma detected.
        black_box(unsafe { fma256(iters) });
        (iters * 12 * 16) as f64 / t.elapsed().as_secs_f64() / 1e9
    } else {
        1.0
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_peak_1thread() -> f64 {
    1.0
}

fn time_it(mut f: impl FnMut(), budget: Duration) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut iters = 0u32;
    let t = Instant::now();
    let mut best = f64::MAX;
    while t.elapsed() < budget || iters < 5 {
        let s = Instant::now();
        f();
        best = best.min(s.elapsed().as_secs_f64());
        iters += 1;
    }
    best
}

fn summary(limits: &Limits, pool1: &KernelPool, pool2: &KernelPool) {
    println!();
    println!(
        "kernel path {}; DRAM read {:.1} GB/s (2 threads), FMA peak {:.0} GFLOP/s (1 thread, fp32)",
        selected_path(),
        limits.bw_gbs,
        limits.peak_gflops
    );
    let sections =
        std::env::var("KERNELS_SUMMARY").unwrap_or_else(|_| "matvec,matmul,layout,model".into());
    if sections.contains("matvec") {
        println!("matvec (best of runs; weights streamed once per call)");
        println!(
            "{:<6} {:<6} {:<10} {:>4} {:>9} {:>8} {:>7} {:>9} {:>7}",
            "format", "layout", "shape", "thr", "µs", "GB/s", "%bw", "GFLOP/s", "%peak"
        );
        for ty in FORMATS {
            for (label, rows, cols) in SHAPES {
                if cols % ty.block_elems() != 0 {
                    continue;
                }
                let rowwise = random_matrix(ty, rows, cols);
                for layout in layouts(ty, rows) {
                    let data = in_layout(ty, rows, cols, &rowwise, layout);
                    let w = QMatrix::with_layout(ty, rows, cols, &data, layout).unwrap();
                    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
                    let mut y = vec![0.0; rows];
                    for (thr, pool) in [(1, pool1), (2, pool2)] {
                        let s = time_it(
                            || pool.matvec(&w, &x, &mut y).unwrap(),
                            Duration::from_millis(300),
                        );
                        let gbs = data.len() as f64 / s / 1e9;
                        let gf = 2.0 * (rows * cols) as f64 / s / 1e9;
                        println!(
                            "{:<6} {:<6} {:<10} {:>4} {:>9.1} {:>8.2} {:>6.0}% {:>9.1} {:>6.1}%",
                            format!("{ty:?}"),
                            layout_name(layout),
                            label,
                            thr,
                            s * 1e6,
                            gbs,
                            100.0 * gbs / limits.bw_gbs,
                            gf,
                            100.0 * gf / limits.peak_gflops
                        );
                    }
                }
            }
        }
    }
    if sections.contains("matmul") {
        matmul_table(limits, pool2);
    }
    if sections.contains("layout") {
        layout_table(pool1);
    }
    if sections.contains("model") {
        model_step_table(limits, pool1, pool2);
    }
}

/// All weight matmuls of one SmolLM2-135M forward step (30 layers of Q4_1 q/k/v/o/gate/up/down
/// and the Q8_0 49152×576 head: 98 MB, so weights stream from DRAM) for `n` tokens, fused the
/// way an engine calls them. Shows what batched verification costs next to one decode step.
fn model_step_table(limits: &Limits, pool1: &KernelPool, pool2: &KernelPool) {
    let layer_shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let held = |ty: QuantType, r: usize, c: usize| {
        in_layout(ty, r, c, &random_matrix(ty, r, c), engine_layout(ty, r))
    };
    let layers: Vec<Vec<Vec<u8>>> = (0..30)
        .map(|_| {
            layer_shapes
                .iter()
                .map(|&(r, c)| held(QuantType::Q4_1, r, c))
                .collect()
        })
        .collect();
    let head = held(QuantType::Q8_0, 49152, 576);
    let bytes: usize = layers.iter().flatten().map(Vec::len).sum::<usize>() + head.len();
    let flops_per_token =
        2.0 * (bytes as f64 - head.len() as f64) / 20.0 * 32.0 + 2.0 * 49152.0 * 576.0;
    println!(
        "one forward step of SmolLM2-135M's weight matmuls ({:.1} MB, {:.0} MFLOP/token, layout {}), best of runs",
        bytes as f64 / 1e6,
        flops_per_token / 1e6,
        layout_name(engine_layout(QuantType::Q4_1, 576))
    );
    println!(
        "{:>4} {:>4} {:>10} {:>8} {:>10} {:>9} {:>7} {:>8}",
        "thr", "n", "ms", "× n=1", "tok/s", "GFLOP/s", "%peak", "GB/s"
    );
    for (thr, pool) in [(1, pool1), (2, pool2)] {
        let mut base = 0.0;
        for n in [1usize, 2, 4, 8, 16, 64, 256] {
            let x: Vec<f32> = (0..n * 1536).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut q = vec![0.0; n * 576];
            let mut k = vec![0.0; n * 192];
            let mut v = vec![0.0; n * 192];
            let mut o = vec![0.0; n * 576];
            let mut g = vec![0.0; n * 1536];
            let mut u = vec![0.0; n * 1536];
            let mut logits = vec![0.0; n.min(16) * 49152];
            let mut step = || {
                for l in &layers {
                    let m: Vec<QMatrix> = l
                        .iter()
                        .zip(layer_shapes)
                        .map(|(d, (r, c))| {
                            let layout = engine_layout(QuantType::Q4_1, r);
                            QMatrix::with_layout(QuantType::Q4_1, r, c, d, layout).unwrap()
                        })
                        .collect();
                    let x576 = &x[..n * 576];
                    pool.matmul_many(
                        &[&m[0], &m[1], &m[2]],
                        x576,
                        n,
                        &mut [&mut q, &mut k, &mut v],
                    )
                    .unwrap();
                    pool.matmul(&m[3], x576, n, &mut o).unwrap();
                    pool.matmul_many(&[&m[4], &m[5]], x576, n, &mut [&mut g, &mut u])
                        .unwrap();
                    pool.matmul(&m[6], &x[..n * 1536], n, &mut o).unwrap();
                }
                // Prefill needs logits of the last token only; verification needs all.
                let layout = engine_layout(QuantType::Q8_0, 49152);
                let h = QMatrix::with_layout(QuantType::Q8_0, 49152, 576, &head, layout).unwrap();
                let nh = if n > 16 { 1 } else { n };
                pool.matmul(&h, &x[..nh * 576], nh, &mut logits[..nh * 49152])
                    .unwrap();
            };
            let s = time_it(
                &mut step,
                Duration::from_millis(if n >= 64 { 2000 } else { 800 }),
            );
            if n == 1 {
                base = s;
            }
            let gf = flops_per_token * n as f64 / s / 1e9;
            println!(
                "{:>4} {:>4} {:>10.2} {:>8.2} {:>10.1} {:>9.1} {:>6.1}% {:>8.2}",
                thr,
                n,
                s * 1e3,
                s / base,
                n as f64 / s,
                gf,
                100.0 * gf / limits.peak_gflops,
                bytes as f64 / s / 1e9
            );
        }
    }
    println!();
}

/// Row-major against interleaved on Qwen2.5-0.5B's ffn_down (896 × 4864, its Q4_K and Q6_K
/// matrices) and a Q5_0 matrix of the same shape for scale: 1-thread µs per call for n tokens.
fn layout_table(pool1: &KernelPool) {
    let (rows, cols) = (896, 4864);
    println!();
    println!("layouts on a {rows}x{cols} matrix: 1-thread µs per call, rows vs interleaved");
    println!(
        "{:<6} {:>4} {:>10} {:>10} {:>8}",
        "format", "n", "rows", "i8", "speedup"
    );
    for ty in [
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
        QuantType::Q5_0,
    ] {
        if !prefers_interleaved8(ty, rows) {
            continue;
        }
        let rowwise = random_matrix(ty, rows, cols);
        let packed = in_layout(ty, rows, cols, &rowwise, Layout::Interleaved8);
        let wr = QMatrix::new(ty, rows, cols, &rowwise).unwrap();
        let wi = QMatrix::with_layout(ty, rows, cols, &packed, Layout::Interleaved8).unwrap();
        for n in [1usize, 8, 64] {
            let budget = Duration::from_millis(if n >= 64 { 600 } else { 300 });
            let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut y = vec![0.0; n * rows];
            let r = time_it(|| pool1.matmul(&wr, &x, n, &mut y).unwrap(), budget);
            let i = time_it(|| pool1.matmul(&wi, &x, n, &mut y).unwrap(), budget);
            println!(
                "{:<6} {:>4} {:>10.1} {:>10.1} {:>7.2}x",
                format!("{ty:?}"),
                n,
                r * 1e6,
                i * 1e6,
                r / i
            );
        }
    }
    println!();
}

fn matmul_table(limits: &Limits, pool2: &KernelPool) {
    let paths = available_paths();
    println!();
    println!(
        "matmul cost vs n: 1-thread µs per kernel path, then the selected path on the 2-thread pool"
    );
    print!("{:<6} {:>4}", "matrix", "n");
    for p in &paths {
        if *p != "scalar" {
            print!(" {:>17}", p);
        }
    }
    println!(
        " {:>11} {:>8} {:>9} {:>7}",
        "pool(2thr)", "× n=1", "GFLOP/s", "%peak"
    );
    for (name, ty, rows, cols) in [
        ("gate", QuantType::Q4_1, 1536, 576),
        ("down", QuantType::Q4_1, 576, 1536),
        ("head", QuantType::Q8_0, 49152, 576),
    ] {
        let data = random_matrix(ty, rows, cols);
        let w = QMatrix::new(ty, rows, cols, &data).unwrap();
        let mut base = 0.0;
        for n in [1usize, 2, 4, 8, 16, 64, 256] {
            if name == "head" && n > 16 {
                continue;
            }
            let budget = Duration::from_millis(if n >= 64 { 600 } else { 250 });
            let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut y = vec![0.0; n * rows];
            print!("{:<6} {:>4}", name, n);
            for p in &paths {
                if *p != "scalar" {
                    let s = time_it(|| matmul_on_path(p, &w, &x, n, &mut y).unwrap(), budget);
                    print!(" {:>17.1}", s * 1e6);
                }
            }
            let s = time_it(|| pool2.matmul(&w, &x, n, &mut y).unwrap(), budget);
            if n == 1 {
                base = s;
            }
            let gf = 2.0 * (n * rows * cols) as f64 / s / 1e9;
            println!(
                " {:>11.1} {:>8.2} {:>9.1} {:>6.1}%",
                s * 1e6,
                s / base,
                gf,
                100.0 * gf / limits.peak_gflops
            );
        }
    }
    println!();
}

fn benches(c: &mut Criterion) {
    let pool1 = KernelPool::new(1).unwrap();
    let pool2 = KernelPool::new(2).unwrap();
    let limits = Limits {
        bw_gbs: measure_bandwidth(&pool2),
        peak_gflops: measure_peak_1thread(),
    };
    summary(&limits, &pool1, &pool2);

    let mut g = c.benchmark_group("matvec");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for ty in FORMATS {
        for (label, rows, cols) in SHAPES {
            if cols % ty.block_elems() != 0 {
                continue;
            }
            let data = random_matrix(ty, rows, cols);
            let w = QMatrix::new(ty, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut y = vec![0.0; rows];
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_function(BenchmarkId::new(format!("{ty:?}/1thr"), label), |b| {
                b.iter(|| matvec(&w, black_box(&x), &mut y).unwrap())
            });
            g.bench_function(BenchmarkId::new(format!("{ty:?}/2thr"), label), |b| {
                b.iter(|| pool2.matvec(&w, black_box(&x), &mut y).unwrap())
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("matmul");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let (rows, cols) = (1536, 576);
    let data = random_matrix(QuantType::Q4_1, rows, cols);
    let w = QMatrix::new(QuantType::Q4_1, rows, cols, &data).unwrap();
    for n in [1usize, 4, 8, 16, 256] {
        let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = vec![0.0; n * rows];
        g.throughput(Throughput::Elements((2 * n * rows * cols) as u64));
        g.bench_function(BenchmarkId::new("Q4_1/576x1536/1thr", n), |b| {
            b.iter(|| matmul(&w, black_box(&x), n, &mut y).unwrap())
        });
        g.bench_function(BenchmarkId::new("Q4_1/576x1536/2thr", n), |b| {
            b.iter(|| pool2.matmul(&w, black_box(&x), n, &mut y).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ops");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(700));
    for v in [49152usize, 262144] {
        let logits: Vec<f32> = (0..v).map(|i| ((i * 7919) % 1000) as f32 * 0.01).collect();
        g.throughput(Throughput::Bytes((v * 4) as u64));
        g.bench_function(BenchmarkId::new("softmax", v), |b| {
            b.iter(|| {
                let mut l = logits.clone();
                ops::softmax_inplace(&mut l);
                black_box(l)
            })
        });
        g.bench_function(BenchmarkId::new("argmax", v), |b| {
            b.iter(|| ops::argmax(black_box(&logits)))
        });
        g.bench_function(BenchmarkId::new("top_k40", v), |b| {
            b.iter(|| ops::top_k(black_box(&logits), 40))
        });
    }
    let x: Vec<f32> = (0..576).map(|i| i as f32 * 0.01).collect();
    let wgt = vec![1.0f32; 576];
    let mut out = vec![0.0f32; 576];
    g.throughput(Throughput::Bytes(576 * 4));
    g.bench_function("rms_norm/576", |b| {
        b.iter(|| ops::rms_norm(black_box(&x), &wgt, 1e-5, &mut out))
    });
    let mut q = vec![0.5f32; 576];
    let table = ops::RopeTable::new(64, 10000.0, 4096, false, 1.0);
    g.bench_function("rope_table/9x64", |b| {
        b.iter(|| table.apply(black_box(&mut q), 9, 100))
    });
    g.bench_function("rope/9x64", |b| {
        b.iter(|| ops::rope_inplace(black_box(&mut q), 9, 64, 100, 10000.0, false))
    });
    g.finish();
}

criterion_group!(kernel_benches, benches);
criterion_main!(kernel_benches);
