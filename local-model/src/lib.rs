//! The in-process local model: GGUF weights, tokenizer, chat template, sampling and the engine
//! thread with its prefix cache.

mod error;

pub mod draft;
pub mod fetch;

pub use error::{Error, Result};
