//! Hot CPU kernels: quantized dot products and matmuls, norms, softmax, top-k and speculative
//! acceptance, each with a scalar reference and runtime SIMD dispatch.

mod error;

pub mod spec;

pub use error::{Error, Result};
