//! The in-process local model: GGUF weights, tokenizer, chat template, sampling and the engine
//! thread with its prefix cache.
//!
//! # Using the engine
//! ```no_run
//! # async fn demo() -> tandem_local_model::Result<()> {
//! use tandem_local_model::{ChatMessage, Engine, EngineConfig, GenerateEvent, GenerateRequest, SamplingParams};
//! let engine = Engine::start(EngineConfig::new("/path/model.gguf").threads(2))?;
//! let prompt = engine.chat_prompt(&[ChatMessage::user("Hi")], true)?;
//! let mut rx = engine.generate(GenerateRequest { prompt, params: SamplingParams::greedy(32) })?;
//! while let Some(ev) = rx.recv().await {
//!     if let GenerateEvent::Token { text, .. } = ev { print!("{text}"); }
//! }
//! # Ok(()) }
//! ```
//!
//! - [`Engine`] is `Clone + Send + Sync`; the model runs on its own OS thread (plus kernel
//!   workers), never on tokio workers. Dropping a generation's receiver cancels it within one step.
//! - [`Engine::generate`] streams [`GenerateEvent`]s: `Token { id, text, logprob }` with stop-safe
//!   text deltas, then `Finished { reason, prompt_tokens, completion_tokens, cached_prompt_tokens, cpu_seconds }`
//!   or `Error`. With `params.logprobs = Some(n)` each token carries [`TokenLogprob`]: logprob,
//!   bytes, the top `n` alternatives and the distribution's `entropy` (the confidence signal).
//! - [`Engine::score`] scores `tokens` after `prefix` in one pass (prefix KV from the cache):
//!   per-token logprob, entropy and top-k, plus the distribution after the last token.
//! - Sessions for speculative decoding: [`Engine::open_session`], [`Engine::draft`] (k proposals
//!   with probabilities), [`Engine::append`] (feed tokens, get their scores), [`Engine::rollback`],
//!   [`Engine::close_session`].
//! - [`ModelInfo::vocab_hash`] identifies the tokenizer, to check a drafter matches a target.
//! - [`FimTemplate`] is the fill-in-the-middle layout a vocabulary's tokens spell
//!   ([`Tokenizer::fim_template`]); `params.stop_token_ids` end a completion like EOS.
//! - [`TargetTokenizer`] reads only a model's text side (tokenizer, chat template, end tokens)
//!   from its GGUF file, for a speculative target whose weights live elsewhere.
//! - [`EngineConfig::weight_format`] converts the matrices at load ([`WeightFormat`]: Q8_0, f16
//!   or f32), e.g. a higher-precision target from a 4-bit file; the default keeps them as stored.
//! - The forward pass is batch invariant: a token's logits and keys/values are bit-identical
//!   whether it runs alone, in a verification block or inside a prefill chunk, so scoring a
//!   draft block in one pass equals scoring it token by token.

mod error;

pub mod chat;
pub mod engine;
pub mod fim;
pub mod gguf;
pub mod model;
pub mod sampling;
mod spell;
pub mod target;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use engine::{
    CacheStats, DraftToken, Engine, EngineConfig, GenerateEvent, GenerateRequest, ModelInfo,
    PositionScores, Scores, SessionId, StopReason,
};
pub use error::{Error, Result};
pub use fim::{ExtraFile, FimFamily, FimInput, FimPrompt, FimTemplate};
pub use model::WeightFormat;
pub use sampling::{SamplingParams, TokenLogprob, TopLogprob};
pub use target::TargetTokenizer;
pub use tokenizer::Tokenizer;
