//! Normalized chat types, provider wire formats (OpenAI, Anthropic) in both directions, and the
//! provider and verifier traits.

mod error;
mod json;

pub mod anthropic;
pub mod http;
#[cfg(feature = "mock-server")]
pub mod mock;
pub mod openai;
pub mod provider;
pub mod providers;
pub mod sse;
pub mod types;
pub mod verify;

pub use error::{Error, Result, WireError};
pub use provider::{EventStream, Provider, ProviderError, ProviderErrorKind};
pub use types::*;
