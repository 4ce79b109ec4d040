//! Shared helpers for the kernel tests: a small deterministic RNG and random GGUF blocks.
#![allow(dead_code, missing_docs)]

use tandem_kernels::quant::{QuantType, f32_to_f16};

/// xorshift64* — deterministic and dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn usize(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

pub const QUANTIZED: [QuantType; 8] = [
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q8_0,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

/// Byte offsets of the f16 scale fields of one block.
fn f16_fields(ty: QuantType) -> &'static [usize] {
    match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
        QuantType::Q6K => &[208],
        _ => &[],
    }
}

/// Random bytes for `rows × cols` of `ty`, with every f16 scale set to `scale * U(-1,1)`
/// (random bits would make NaN/inf scales).
pub fn random_matrix(
    rng: &mut Rng,
    ty: QuantType,
    rows: usize,
    cols: usize,
    scale: f32,
) -> Vec<u8> {
    let nblocks = rows * cols / ty.block_elems();
    let bb = ty.block_bytes();
    let mut data: Vec<u8> = (0..nblocks * bb).map(|_| rng.next_u64() as u8).collect();
    for b in data.chunks_exact_mut(bb) {
        for &at in f16_fields(ty) {
            let h = f32_to_f16(rng.f() * scale).to_le_bytes();
            b[at] = h[0];
            b[at + 1] = h[1];
        }
    }
    data
}

/// Zeroes every f16 scale field of every other block (all-zero blocks).
pub fn zero_some_blocks(ty: QuantType, data: &mut [u8]) {
    for b in data.chunks_exact_mut(ty.block_bytes()).step_by(2) {
        b.iter_mut().for_each(|v| *v = 0);
    }
}
