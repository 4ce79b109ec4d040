//! Normalized chat types, provider wire formats (OpenAI, Anthropic) in both directions, and the
//! provider trait.
//!
//! - [`types`]: `ChatRequest`, `ChatEvent`, `ChatResponse`, `Usage` and the stream folder.
//! - [`wire`]: the formats. [`openai`] and [`anthropic`] (re-exported here) each hold ingress
//!   decoding, egress encoding (JSON and SSE), upstream request structs, response/stream parsing
//!   and their error shape, one file each; [`sse`] is the incremental SSE parser and encoder.
//! - [`provider`]: the `Provider` trait and what a backend can honour (`Capabilities`);
//!   `ProviderError` (with retryability) lives in the leaf `error` module.
//! - [`providers`]: the generic HTTP provider over a wire format's codec; OpenAI-compatible and
//!   Anthropic as its configurations, Azure's per-deployment pick, and the dummy for tests.
//! - [`client`]: the pooled upstream HTTP client (hyper over rustls).
//! - [`tls`]: PEM certificates, keys and CA bundles, and an upstream's client certificate and
//!   extra CAs.
//! - [`http`]: what the HTTP provider does on top of it, and the SSE-to-event plumbing.

#![forbid(unsafe_code)]

mod error;

pub mod client;
pub mod http;
pub mod provider;
pub mod providers;
pub mod tls;
pub mod types;
pub mod wire;

// The formats keep their short paths (`tandem_cloud_adapters::openai::ChunkEncoder`).
pub use wire::{anthropic, openai, sse};

pub use error::{Error, ProviderError, ProviderErrorKind, Result, WireError};
pub use provider::{Api, ByteStream, Capabilities, EventStream, Provider};
pub use types::*;
