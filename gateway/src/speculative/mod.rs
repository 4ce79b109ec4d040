//! Edge-cloud speculative decoding: the local model drafts, a remote target verifies, and the
//! output is exactly the target's own (greedy) or follows the target's distribution (sampling).
//! Everything speculative lives here; `tandem_kernels::spec` keeps only the acceptance
//! arithmetic.
//!
//! - [`draft`]: the drafters (the local engine, n-gram prompt lookup, a model with another
//!   tokenizer), all proposing the target's token ids;
//! - [`verify`]: the verify protocols' client side: the [`Verifier`] and [`PlainStreamer`]
//!   traits, and one [`RemoteVerifier`] over [`VerifyProtocol`] whose bodies and answers live in
//!   one file per protocol (`vllm`, `sglang`, `tandem`, which also holds [`TandemStreamer`]);
//! - [`decoder::run`]: the round loop (draft, verify, accept, stream), with drafting ahead while
//!   a verification is in flight and a fallback to plain streaming;
//! - [`policy::DraftPolicy`]: the adaptive draft length from measured acceptance and timings;
//! - [`service`]: the target side of the Tandem verify protocol (`/v1/tandem/verify`,
//!   `/v1/tandem/generate`) over an engine, and the in-process verifier and streamer;
//! - [`executor::SpeculativeExecutor`]: the executor of `kind = "speculative"` backends;
//! - [`delay::DelayLayer`]: emulated network round trip and large-model step time for the test
//!   bed (the bench, `tandem bench speculative`, lives in `tandem-lab`).

pub mod decoder;
pub mod delay;
pub mod draft;
pub mod executor;
pub mod policy;
pub mod service;
pub mod verify;

pub use decoder::{SpecFinish, SpecOptions, SpecReport, run};
pub use delay::{DelayConfig, DelayLayer};
pub use draft::{CrossTokenizerDrafter, Drafter, EngineDrafter, NgramDrafter};
pub use executor::SpeculativeExecutor;
pub use policy::{DraftPolicy, PolicyConfig};
pub use service::{InProcessStreamer, InProcessVerifier, ScoringMode, VerifyState, router};
pub use verify::tandem::TandemStreamer;
pub use verify::{
    PlainStreamer, RemoteVerifier, Verifier, VerifyProtocol, VerifyRequest, VerifyResponse,
};
