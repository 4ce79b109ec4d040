//! Hot CPU kernels: quantized dot products and matmuls, norms, softmax, top-k and speculative
//! acceptance, each with a scalar reference and runtime SIMD dispatch.
//!
//! # Using the kernels
//! - Weights stay in their GGUF bytes: wrap a tensor as [`QMatrix`] (`rows` = output features).
//!   Supported: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
//! - Where [`prefers_interleaved8`] says so, hold a matrix as [`pack::interleave8`] bytes
//!   ([`Layout::Interleaved8`]: the same bytes with 8 rows interleaved) for much faster products;
//!   every path reads both layouts.
//! - Create one [`KernelPool`] per engine with an explicit thread count (the engine thread is one
//!   of them) and call [`KernelPool::matvec_many`] for q/k/v and gate/up so the input is
//!   quantized once; [`KernelPool::matmul`] for prefill and batched verification.
//!   [`KernelPool::for_each`] runs other parallel work (attention heads) on the same workers.
//! - The SIMD path is chosen at run time ([`selected_path`]); a plain release build runs the
//!   best one. `TANDEM_KERNELS_PATH=avx2` (any name from [`available_paths`]) forces a slower one.
//! - [`RopeTable`] precomputes RoPE angles; [`dot_f32_f16`]/[`axpy_f16`] serve an f16 KV cache.

mod error;

pub mod cpu;
pub mod matmul;
pub mod ops;
pub mod pack;
pub mod pool;
pub(crate) mod qdot;
pub mod quant;
pub mod rng;
pub mod spec;

pub use cpu::{CpuFeatures, available_paths, cpu_features, selected_path};
pub use error::{Error, Result};
pub use matmul::{matmul, matvec, prefers_interleaved8};
pub use ops::{
    RopeTable, argmax, axpy_f16, axpy_f32, dot_f32, dot_f32_f16, gelu_tanh_mul_inplace,
    log_softmax_inplace, rms_norm, rms_norm_inplace, rope_angles, rope_apply, rope_inplace,
    silu_mul_inplace, softmax_inplace, top_k, top_p,
};
pub use pool::KernelPool;
pub use quant::{Layout, QMatrix, QuantType, dequantize_row, quantize_row};
pub use rng::SplitMix64;
