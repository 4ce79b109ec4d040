//! Normalized chat types, provider wire formats (OpenAI, Anthropic) in both directions, and the
//! provider and verifier traits.

mod error;

pub mod verify;

pub use error::{Error, Result};
