//! The speculative decoding loop: draft, verify remotely, accept, stream, adapt.
//!
//! Each round the policy picks a draft length `k`; the drafter proposes up to `k` tokens after
//! the committed sequence; the verifier scores them in one call; `tandem_kernels::spec` decides
//! how many survive and which token the target adds. While a verification is in flight the
//! drafter already drafts the block after the current draft, assuming it is accepted; that block
//! is used when the target's bonus token equals its first token and discarded otherwise. The
//! first call carries no draft, so the target's prompt prefill and the drafter's overlap. When
//! the policy finds that plain streaming from the target is faster (high round trip, low
//! acceptance), the rest of the answer is streamed plainly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tandem_cloud_adapters::ProviderError;
use tandem_kernels::spec::{self, Exactness, SparseDist, TargetSampling};

use super::draft::Drafter;
use super::policy::DraftPolicy;
use super::verify::{PlainStreamer, Verifier, VerifyRequest};
use crate::error::{Error, Result};

/// Per-request settings.
#[derive(Debug, Clone)]
pub struct SpecOptions {
    /// The target model's name.
    pub model: String,
    /// Session id for session-aware targets.
    pub session: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Tokens that end the answer (included in the output, as the target emits them).
    pub eos: Vec<u32>,
    /// Alternatives per position asked of the target.
    pub top_k: u32,
    /// Draft the next block while a verification is in flight.
    pub pipeline: bool,
    /// The target's sampling settings (greedy by default).
    pub sampling: TargetSampling,
    /// Seed of the acceptance sampler.
    pub seed: u64,
    /// Accept distributions truncated to the returned top-k (not lossless) instead of failing.
    pub allow_truncated: bool,
    /// Set when the client went away: the loop stops after the current round.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl SpecOptions {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

impl SpecOptions {
    /// Greedy decoding of `max_tokens` tokens with `model`.
    pub fn greedy(model: impl Into<String>, max_tokens: usize) -> Self {
        Self {
            model: model.into(),
            session: None,
            max_tokens,
            eos: Vec::new(),
            top_k: 1,
            pipeline: true,
            sampling: TargetSampling::GREEDY,
            seed: 0,
            allow_truncated: false,
            cancel: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFinish {
    /// An end token.
    Stop,
    /// `max_tokens`.
    Length,
}

/// What one request did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecReport {
    /// The generated tokens.
    pub tokens: Vec<u32>,
    /// Why it ended (`None` only for an empty request).
    pub finish: Option<SpecFinish>,
    /// Verify rounds.
    pub rounds: u64,
    /// Draft tokens sent for verification.
    pub drafted: u64,
    /// Draft tokens accepted.
    pub accepted: u64,
    /// Blocks drafted while a verification was in flight and then used.
    pub pipelined_hits: u64,
    /// Tokens streamed plainly after falling back.
    pub plain_tokens: u64,
    /// Target input tokens billed (cached ones included).
    pub target_input_tokens: u64,
    /// Target input tokens served from its cache.
    pub target_cached_input_tokens: u64,
    /// Target output tokens billed.
    pub target_output_tokens: u64,
    /// Whether the policy switched to plain streaming.
    pub fell_back: bool,
    /// Wall time.
    pub elapsed: Duration,
}

impl SpecReport {
    /// Accepted over drafted.
    pub fn acceptance_rate(&self) -> f64 {
        ratio(self.accepted, self.drafted)
    }

    /// Draft tokens accepted per round.
    pub fn mean_accepted(&self) -> f64 {
        ratio(self.accepted, self.rounds)
    }

    /// Draft tokens sent per round (the chosen draft length).
    pub fn mean_draft_len(&self) -> f64 {
        ratio(self.drafted, self.rounds)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// A stream of uniforms for the acceptance sampler.
struct Uniforms(tandem_kernels::SplitMix64);

impl Uniforms {
    fn new(seed: u64) -> Self {
        Self(tandem_kernels::SplitMix64::new(seed))
    }

    fn next(&mut self) -> f64 {
        self.0.next_f64()
    }
}

/// Maps a verifier or streamer failure to the gateway's error.
pub fn upstream(e: ProviderError) -> Error {
    let backend = e.provider.clone();
    crate::executor::upstream_error(&backend, e)
}

/// Runs speculative decoding for one request; `on_tokens` sees each confirmed block. `report` is
/// filled as rounds complete, so a run that fails part-way still says what it did (the rounds
/// and the target tokens billed before the failure).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    drafter: &mut dyn Drafter,
    verifier: &dyn Verifier,
    plain: Option<&dyn PlainStreamer>,
    policy: &mut DraftPolicy,
    prompt: &[u32],
    opts: &SpecOptions,
    on_tokens: &mut (dyn FnMut(&[u32]) + Send),
    report: &mut SpecReport,
) -> Result<()> {
    let start = Instant::now();
    if prompt.is_empty() {
        return Err(Error::invalid("prompt is empty", Some("prompt")));
    }
    let mut context = prompt.to_vec();
    let mut uniforms = Uniforms::new(opts.seed ^ 0x5EED);
    // Each round is a span (drafted, accepted) when the request is traced.
    let scope = crate::observe::current().filter(|s| s.meter.tracing());
    let mut ready_draft: Option<Vec<u32>> = None;
    policy.set_pipelined(opts.pipeline);
    while report.tokens.len() < opts.max_tokens && report.finish.is_none() && !opts.cancelled() {
        let remaining = opts.max_tokens - report.tokens.len();
        let mut k = policy.choose(remaining);
        if k == 0 {
            if let Some(plain) = plain {
                report.fell_back = true;
                stream_plainly(plain, policy, &mut context, opts, report, on_tokens).await?;
                break;
            }
            k = 1;
        }
        let round_start = Instant::now();
        let mut round_span = scope
            .as_ref()
            .and_then(|s| s.span("speculative.round", crate::observe::SpanKind::Internal));
        let pipelined_hit = ready_draft.is_some();
        let draft = match ready_draft.take() {
            Some(mut d) => {
                d.truncate(k);
                d
            }
            // The first call sends no draft: the target prefills the prompt and gives the first
            // token while the drafter prefills and drafts the block after it, so the two
            // prefills overlap instead of adding up.
            None if report.rounds == 0 && opts.pipeline => Vec::new(),
            None => {
                let t = Instant::now();
                let d = drafter.draft(&context, k).await?;
                policy.observe_draft(d.len(), t.elapsed());
                d
            }
        };
        let drafted_in = round_start.elapsed();
        let request = VerifyRequest {
            model: &opts.model,
            session: opts.session.as_deref(),
            prefix: &context,
            draft: &draft,
            top_k: opts.top_k.max(1),
            greedy: opts.sampling.is_greedy(),
        };
        let verify_start = Instant::now();
        let mut extended = Vec::new();
        let (verified, next) = if opts.pipeline && draft.len() < remaining {
            extended.extend_from_slice(&context);
            extended.extend_from_slice(&draft);
            let next_k = k + 1;
            let ahead = async {
                let t = Instant::now();
                let r = drafter.draft(&extended, next_k).await;
                (r, t.elapsed())
            };
            let verify = async {
                let v = verifier.verify(&request).await;
                (v, verify_start.elapsed())
            };
            let ((v, vt), (d, dt)) = tokio::join!(verify, ahead);
            // The first round's times hold both prefills, which later rounds do not pay.
            if report.rounds > 0 {
                if let Ok(d) = &d {
                    policy.observe_draft(d.len(), dt);
                }
                policy.observe_verify(vt);
            }
            (v, d.ok())
        } else {
            let v = verifier.verify(&request).await;
            policy.observe_verify(verify_start.elapsed());
            (v, None)
        };
        let verified = verified.map_err(upstream)?;
        let acceptance = if opts.sampling.is_greedy() {
            // A target may stop at the first mismatch: score the draft up to it.
            let argmax = verified.argmax();
            spec::accept_greedy(&draft[..argmax.len() - 1], &argmax)
        } else {
            let mut targets = Vec::with_capacity(verified.positions.len());
            for top in &verified.positions {
                let (dist, exactness) =
                    spec::target_dist(top, &opts.sampling, opts.top_k as usize)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                if exactness == Exactness::Truncated && !opts.allow_truncated {
                    return Err(Error::invalid(
                        "speculative sampling is lossless only with top_k at most the verifier's returned top-k; set top_k or use greedy decoding",
                        Some("top_k"),
                    ));
                }
                targets.push(dist);
            }
            let proposals: Vec<SparseDist> = draft.iter().map(|&t| SparseDist::point(t)).collect();
            spec::accept_sampled(&draft, &proposals, &targets, &mut || uniforms.next())
        }
        .map_err(|e| Error::Internal(e.to_string()))?;
        tracing::trace!(
            round = report.rounds,
            k,
            drafted = draft.len(),
            accepted = acceptance.accepted,
            pipelined_hit,
            draft_ms = drafted_in.as_secs_f64() * 1e3,
            verify_ms = verify_start.elapsed().as_secs_f64() * 1e3,
            round_ms = round_start.elapsed().as_secs_f64() * 1e3,
            "speculative round"
        );
        if let Some(span) = &mut round_span {
            span.set("tandem.speculative.round", report.rounds);
            span.set("tandem.speculative.drafted", draft.len() as u64);
            span.set("tandem.speculative.accepted", acceptance.accepted as u64);
            span.set("tandem.speculative.pipelined", pipelined_hit);
        }
        drop(round_span);
        report.rounds += 1;
        let tested = verified.positions.len().min(draft.len() + 1) - 1;
        report.drafted += draft.len() as u64;
        report.accepted += acceptance.accepted as u64;
        report.target_input_tokens += verified.usage.prompt_tokens;
        report.target_cached_input_tokens += verified.usage.cached_prompt_tokens;
        report.target_output_tokens += verified.usage.completion_tokens;
        policy.observe_round(draft.len(), acceptance.accepted);

        let mut block: Vec<u32> = draft[..acceptance.accepted].to_vec();
        block.push(acceptance.next_token);
        let all_accepted = tested == draft.len() && acceptance.all_accepted(draft.len());
        commit(&mut block, &mut context, opts, report, on_tokens);
        // The block drafted ahead is valid only if the target's bonus is its first token.
        if all_accepted
            && report.finish.is_none()
            && let Some(ahead) = next
            && ahead.first() == Some(&acceptance.next_token)
            && ahead.len() > 1
        {
            report.pipelined_hits += 1;
            ready_draft = Some(ahead[1..].to_vec());
        }
    }
    drafter.close().await;
    if let Some(session) = &opts.session {
        verifier.end_session(session).await;
    }
    report.elapsed = start.elapsed();
    Ok(())
}

/// Appends a confirmed block, stopping at an end token or the length limit.
fn commit(
    block: &mut Vec<u32>,
    context: &mut Vec<u32>,
    opts: &SpecOptions,
    report: &mut SpecReport,
    on_tokens: &mut (dyn FnMut(&[u32]) + Send),
) {
    let remaining = opts.max_tokens - report.tokens.len();
    if let Some(pos) = block.iter().position(|t| opts.eos.contains(t))
        && pos < remaining
    {
        block.truncate(pos + 1);
        report.finish = Some(SpecFinish::Stop);
    }
    if block.len() >= remaining {
        block.truncate(remaining);
        report.finish.get_or_insert(SpecFinish::Length);
    }
    context.extend_from_slice(block);
    report.tokens.extend_from_slice(block);
    on_tokens(block);
}

async fn stream_plainly(
    plain: &dyn PlainStreamer,
    policy: &mut DraftPolicy,
    context: &mut Vec<u32>,
    opts: &SpecOptions,
    report: &mut SpecReport,
    on_tokens: &mut (dyn FnMut(&[u32]) + Send),
) -> Result<()> {
    let remaining = opts.max_tokens - report.tokens.len();
    let mut stream = plain
        .stream(context, remaining, opts.session.as_deref())
        .await
        .map_err(upstream)?;
    report.target_input_tokens += context.len() as u64;
    let mut last = Instant::now();
    while let Some(token) = stream.next().await {
        let token = token.map_err(upstream)?;
        policy.observe_plain(last.elapsed());
        last = Instant::now();
        report.plain_tokens += 1;
        report.target_output_tokens += 1;
        let mut block = vec![token];
        commit(&mut block, context, opts, report, on_tokens);
        if report.finish.is_some() || opts.cancelled() {
            break;
        }
    }
    if report.finish.is_none() {
        report.finish = Some(if report.tokens.len() >= opts.max_tokens {
            SpecFinish::Length
        } else {
            SpecFinish::Stop
        });
    }
    Ok(())
}
