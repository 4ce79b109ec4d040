//! Edge-cloud speculative decoding: the local model drafts, a remote target verifies, and the
//! output is exactly the target's own (greedy) or follows the target's distribution (sampling).
//!
//! - [`decoder::run`]: the round loop (draft, verify, accept, stream), with drafting ahead while
//!   a verification is in flight and a fallback to plain streaming;
//! - [`policy::DraftPolicy`]: the adaptive draft length from measured acceptance and timings;
//! - [`service`]: the target side of the Tandem verify protocol (`/v1/tandem/verify`,
//!   `/v1/tandem/generate`) over an engine, and the plain-stream client;
//! - [`delay::DelayLayer`]: emulated network round trip and large-model step time for the test
//!   bed (the bench, `tandem bench speculative`, lives in `tandem-lab`).

pub mod decoder;
pub mod delay;
pub mod policy;
pub mod service;

pub use decoder::{PlainStreamer, SpecFinish, SpecOptions, SpecReport, run};
pub use delay::{DelayConfig, DelayLayer};
pub use policy::{DraftPolicy, PolicyConfig};
pub use service::{
    InProcessStreamer, InProcessVerifier, ScoringMode, TandemStreamer, VerifyState, router,
};
