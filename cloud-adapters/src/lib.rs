//! Normalized chat types, provider wire formats (OpenAI, Anthropic) in both directions, and the
//! provider and verifier traits.
//!
//! - [`types`]: `ChatRequest`, `ChatEvent`, `ChatResponse`, `Usage` and the stream folder.
//! - [`openai`], [`anthropic`]: ingress decoding, egress encoding (JSON and SSE), upstream
//!   request structs and response/stream parsing; one translation serves both directions.
//! - [`sse`]: the incremental SSE parser and encoder.
//! - [`provider`]: the `Provider` trait and `ProviderError` (with retryability).
//! - [`providers`]: OpenAI-compatible (and Azure), Anthropic, and the dummy for tests.
//! - [`client`]: the pooled upstream HTTP client (hyper over rustls).
//! - [`http`]: what every provider shares on top of it, and the SSE-to-event plumbing.
//! - `mock` (feature `mock-server`): a loopback upstream replaying recorded fixtures.

mod error;
mod json;
mod scan;

pub mod anthropic;
pub mod client;
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
