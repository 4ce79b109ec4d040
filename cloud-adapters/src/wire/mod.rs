//! The wire formats: OpenAI's and Anthropic's, each in both directions (client ingress and egress,
//! upstream request and parse), and what they share: SSE framing, JSON decoding helpers, the
//! grammar walk, and the reading of an upstream's error response.

pub mod anthropic;
pub(crate) mod error;
pub(crate) mod json;
pub mod openai;
pub(crate) mod scan;
pub mod sse;
