//! Routing policy: prompt features, learned quality predictors, the cost and latency model, and
//! the policies that decide.
//!
//! # What the gateway calls
//!
//! Start-up (one line each):
//! - `let encoder = Arc::new(Encoder::from_cache_root(&cache_root, 2)?);` MiniLM-L6-v2 int8 on
//!   ONNX Runtime, a pool of 2 sessions with one intra-op thread each and an LRU of 4096 prompts.
//!   A missing file is [`Error::MissingArtifact`], whose message names `tandem models fetch`.
//! - `let router = Arc::new(Router::load(&path, config)?);` or [`Router::load_default`] for the
//!   model shipped in `router-policy/models/default.json`; then
//!   `router.restore_bandit(&FileBanditStore::new(path))?` (or the gateway's Redis store, an
//!   implementation of [`BanditStore`]).
//! - One [`BackendState`] per backend (`BackendState::new(profile, 0.2)`).
//!
//! Per request (model compute blocks: call `embed` from `spawn_blocking` or the gateway's worker):
//! - `let e = encoder.embed(&last_user_text)?;` (an LRU hit costs microseconds, no model run);
//! - `let mut f = RequestFeatures::from_prompt(&last_user_text, Some(e));` then set
//!   `f.cheap = f.cheap.with_request(turns, max_tokens, tools_present)`,
//!   `f.expected_output_tokens`, `f.input_tokens`, and `f.local_confidence` when known;
//! - `let d = router.decide(&f, &snapshots, &rules);` where `snapshots` are
//!   [`BackendState::snapshot`]s and `rules` is a [`RouteRules`] merged from route, API key and
//!   header ([`Placement::parse`] reads `local-only` / `cloud-only`);
//! - header `x-tandem-route: d.explanation.header_value()`, log line `d.log_line(&request_id)`;
//! - `router.remember(&request_id, &d);` so feedback can find it;
//! - weights come from [`RouterConfig::weights`], per route or key from [`RouteRules::weights`],
//!   from a cloud share ([`RouterConfig::target_cloud_share`], held-out thresholds in the model
//!   file) or from a budget ([`Router::lambda_for_budget`] over recent requests);
//! - [`Choice::Reject`] means no backend may serve the request under its rules (403/503).
//! - The router decides through one [`Policy`]: the learned one ([`policy::learned::Learned`])
//!   unless [`RouterConfig::policy`] names another ([`PolicyKind`]) or [`Router::with_policy`]
//!   registers one; [`RouteRules::screen`] applies the hard rules before any policy chooses. A
//!   new policy is one file under `src/policy/` and one [`PolicyKind`] variant (see [`Policy`]).
//! - Cascade: [`CascadePolicy::decide`] on the local model's first-token [`LocalConfidence`];
//!   [`calibrate_cascade`] sets the threshold from labelled samples. Or, on the whole local
//!   answer: [`AnswerCheck::shipped`] once at start, then `check.score(&prompt, &answer)` against
//!   `check.threshold_for_share(escalate_share)`.
//! - After each call: `state.record_success(ttft_ms, Some(itl_ms))` or `state.record_error()`;
//!   `let _guard = state.enter();` counts queue depth while a request runs.
//!
//! `POST /v1/feedback`: `apply_feedback(&router, body_bytes)` returns a [`FeedbackOutcome`] or an
//! error whose [`Error::is_client_error`] is true for an unknown request id
//! ([`Error::UnknownRequest`], 404) or bad values ([`Error::InvalidFeedback`], 400).
//!
//! Offline tooling (training, evaluation, plots and the decision bench) lives in `tandem-lab`
//! (`tandem router train|train-answer-check|eval`, `tandem bench router`), so this crate holds
//! only what serving needs.

#![forbid(unsafe_code)]

mod error;

pub mod answer;
pub mod backend;
pub mod bandit;
pub mod calibration;
pub mod cascade;
pub mod config;
pub mod decision;
pub mod embedding;
pub mod encoder;
pub mod features;
pub mod model;
pub mod model_file;
pub mod policy;
pub mod recent;
pub mod router;
pub mod rules;
pub mod static_embed;

pub use answer::{ANSWER_FEATURES, AnswerCheck, answer_features};
pub use backend::{BackendCandidate, BackendProfile, BackendState, Price, Site};
pub use bandit::{BanditState, BanditStore, FileBanditStore, MemoryBanditStore};
pub use cascade::{CascadeAction, CascadePolicy, CascadeSample, CascadeTarget, calibrate_cascade};
pub use config::RouterConfig;
pub use decision::{Choice, Decision, Explanation};
pub use embedding::EmbeddingSource;
pub use encoder::{Encoder, EncoderConfig};
pub use error::{Error, Result};
pub use features::{CheapFeatures, LocalConfidence, RequestFeatures};
pub use model_file::ModelFile;
pub use policy::{Policy, PolicyInput, PolicyKind};
pub use router::{Feedback, FeedbackOutcome, Router, apply_feedback};
pub use rules::{Placement, RouteRules, Screen, Weights};

/// Writes `value` as compact JSON to `path`, creating its directory.
pub fn write_json<T: serde::Serialize>(value: &T, path: &std::path::Path) -> Result<()> {
    let json = serde_json::to_string(value).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(path, json).map_err(|e| Error::io(path, e))
}
