//! `tandem bench speculative`: end-to-end tokens per second of speculative decoding against
//! target-only streaming, both through a Tandem target on loopback behind the delay layer, for a
//! grid of round-trip times and target step times; plus acceptance, chosen draft length and the
//! target's billed input and output tokens, and whether every output was identical.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tandem_artifacts::{FetchOptions, ProcessEnv, resolve_model};
use tandem_cloud_adapters::client::{HttpClient, HttpConfig};
use tandem_local_model::{ChatMessage, Engine, EngineConfig, WeightFormat};

use tandem_gateway::error::{Error, Result};
use tandem_gateway::server::no_delay;
use tandem_gateway::speculative::decoder::{SpecOptions, SpecReport, run, upstream};
use tandem_gateway::speculative::delay::{DelayConfig, DelayLayer};
use tandem_gateway::speculative::draft::{CrossTokenizerDrafter, Drafter, EngineDrafter};
use tandem_gateway::speculative::policy::{DraftPolicy, PolicyConfig};
use tandem_gateway::speculative::service::{VerifyState, router};
use tandem_gateway::speculative::verify::tandem::TandemStreamer;
use tandem_gateway::speculative::verify::{PlainStreamer, RemoteVerifier, VerifyProtocol};

impl BenchArgs {
    /// Prompts per cell by default.
    pub const DEFAULT_PROMPTS: usize = 6;
    /// Tokens per prompt by default: a typical chat answer (short answers mostly measure the
    /// one-off prompt prefill that both sides pay).
    pub const DEFAULT_MAX_TOKENS: usize = 128;
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// The drafting model (name in the cache or a `.gguf` path).
    pub drafter: String,
    /// The target model; a different tokenizer selects the cross-tokenizer drafter.
    pub target: String,
    /// Emulated round-trip times, ms.
    pub rtts_ms: Vec<u64>,
    /// Emulated target step times, ms.
    pub steps_ms: Vec<u64>,
    /// Prompts per cell.
    pub prompts: usize,
    /// Tokens generated per prompt.
    pub max_tokens: usize,
    /// Kernel threads of the drafter's engine (the target's engine has one).
    pub drafter_threads: usize,
    /// Longest draft the policy may choose.
    pub max_draft: usize,
    /// How the target holds its weights (Q8_0 by default: the same file as the Q4_1 drafter at
    /// higher precision, so the drafter is not the target itself).
    pub target_format: WeightFormat,
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            drafter: "smollm2-135m".into(),
            target: "smollm2-135m".into(),
            rtts_ms: vec![5, 20, 50, 100],
            steps_ms: vec![15, 30],
            prompts: Self::DEFAULT_PROMPTS,
            max_tokens: Self::DEFAULT_MAX_TOKENS,
            drafter_threads: 1,
            max_draft: 12,
            target_format: WeightFormat::Q8_0,
        }
    }
}

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// Round trip, ms.
    pub rtt_ms: u64,
    /// Target step, ms.
    pub step_ms: u64,
    /// Target-only streaming, tokens per second.
    pub baseline_tps: f64,
    /// Speculative, tokens per second.
    pub speculative_tps: f64,
    /// Draft tokens accepted over drafted.
    pub acceptance: f64,
    /// Draft tokens accepted per round.
    pub mean_accepted: f64,
    /// Draft tokens sent per round.
    pub mean_draft_len: f64,
    /// Target input tokens billed: speculative, target-only.
    pub input_tokens: (u64, u64),
    /// Of the speculative input tokens, those served from the target's KV/session.
    pub cached_input_tokens: u64,
    /// Target output tokens billed: speculative, target-only.
    pub output_tokens: (u64, u64),
    /// Requests that switched to plain streaming.
    pub fell_back: usize,
    /// Requests whose output equalled target-only output.
    pub identical: usize,
    /// Requests.
    pub requests: usize,
}

impl BenchRow {
    /// Speculative over target-only throughput.
    pub fn speedup(&self) -> f64 {
        self.speculative_tps / self.baseline_tps.max(1e-9)
    }

    /// Share of target-only output tokens that speculation replaced.
    pub fn output_replaced(&self) -> f64 {
        1.0 - self.output_tokens.0 as f64 / (self.output_tokens.1 as f64).max(1.0)
    }
}

/// The whole grid.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Drafter and target, and which drafter path.
    pub setup: String,
    /// One row per (rtt, step).
    pub rows: Vec<BenchRow>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "speculative decoding: {}", self.setup)?;
        writeln!(
            f,
            "{:>5} {:>5} | {:>9} {:>9} {:>6} | {:>5} {:>6} {:>5} | {:>13} {:>11} {:>8} | {:>5} {:>9}",
            "rtt",
            "step",
            "target",
            "spec",
            "ratio",
            "acc",
            "mean",
            "k",
            "cloud in",
            "cloud out",
            "out repl",
            "fback",
            "identical"
        )?;
        writeln!(
            f,
            "{:>5} {:>5} | {:>9} {:>9} {:>6} | {:>5} {:>6} {:>5} | {:>13} {:>11} {:>8} | {:>5} {:>9}",
            "ms",
            "ms",
            "tok/s",
            "tok/s",
            "",
            "rate",
            "acc",
            "",
            "spec/target",
            "spec/target",
            "",
            "",
            ""
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:>5} {:>5} | {:>9.1} {:>9.1} {:>5.2}x | {:>5.2} {:>6.2} {:>5.1} | {:>13} {:>11} {:>7.0}% | {:>5} {:>9}",
                r.rtt_ms,
                r.step_ms,
                r.baseline_tps,
                r.speculative_tps,
                r.speedup(),
                r.acceptance,
                r.mean_accepted,
                r.mean_draft_len,
                format!("{}/{}", r.input_tokens.0, r.input_tokens.1),
                format!("{}/{}", r.output_tokens.0, r.output_tokens.1),
                100.0 * r.output_replaced(),
                r.fell_back,
                format!("{}/{}", r.identical, r.requests),
            )?;
        }
        Ok(())
    }
}

const PROMPTS: [&str; 12] = [
    "Write a Python function that checks whether a number is prime.",
    "Explain what a hash map is in two sentences.",
    "Write a Python function that reverses a list.",
    "What is the capital of France, and what is it known for?",
    "Write a JavaScript function that returns the sum of an array.",
    "List three benefits of regular exercise.",
    "Write a Python function that counts the vowels in a string.",
    "Describe how a bicycle works.",
    "Write a SQL query that counts the rows in a table named orders.",
    "What is the difference between a list and a tuple in Python?",
    "Write a Rust function that returns the larger of two numbers.",
    "Give me a short recipe for pancakes.",
];

fn load(name: &str, threads: usize, format: WeightFormat) -> Result<Engine> {
    let path = resolve_model(&FetchOptions::from_env(&ProcessEnv), name)
        .map_err(|e| Error::LocalModel(e.to_string()))?;
    Engine::start(
        EngineConfig::new(path)
            .threads(threads)
            .weight_format(format),
    )
    .map_err(|e| Error::LocalModel(e.to_string()))
}

/// Runs the grid and returns the table.
pub async fn bench_speculative(args: BenchArgs) -> Result<BenchReport> {
    if args.prompts == 0 || args.max_tokens == 0 {
        return Err(Error::invalid(
            "prompts and max_tokens must be at least 1",
            None,
        ));
    }
    tandem_cloud_adapters::client::install_crypto_provider();
    let drafter_engine = load(&args.drafter, args.drafter_threads, WeightFormat::AsStored)?;
    let target = load(&args.target, 1, args.target_format)?;
    let same_vocab = drafter_engine.info().vocab_hash == target.info().vocab_hash;
    let setup = format!(
        "drafter {} ({}), target {} ({}, weights {}), {} drafter, {} prompts x {} tokens",
        drafter_engine.info().id,
        drafter_engine.info().arch,
        target.info().id,
        target.info().arch,
        args.target_format.as_str(),
        if same_vocab {
            "same-tokenizer"
        } else {
            "cross-tokenizer"
        },
        args.prompts,
        args.max_tokens
    );
    let client =
        HttpClient::new(&HttpConfig::default()).map_err(|e| Error::Internal(e.to_string()))?;
    let mut rows = Vec::new();
    for &step_ms in &args.steps_ms {
        for &rtt_ms in &args.rtts_ms {
            let state = Arc::new(VerifyState::new(target.clone(), 16));
            let app = router(state).layer(DelayLayer::new(DelayConfig {
                rtt: Duration::from_millis(rtt_ms),
                step: Duration::from_millis(step_ms),
            }));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| Error::Internal(format!("bind loopback: {e}")))?;
            let base = format!(
                "http://{}",
                listener
                    .local_addr()
                    .map_err(|e| Error::Internal(e.to_string()))?
            );
            let server = tokio::spawn(async move { axum::serve(no_delay(listener), app).await });
            let verifier = RemoteVerifier::new(
                VerifyProtocol::Tandem,
                "cloud",
                base.clone(),
                None,
                client.clone(),
            )?;
            let streamer = TandemStreamer::new("cloud", base, client.clone());
            let mut row = BenchRow {
                rtt_ms,
                step_ms,
                baseline_tps: 0.0,
                speculative_tps: 0.0,
                acceptance: 0.0,
                mean_accepted: 0.0,
                mean_draft_len: 0.0,
                input_tokens: (0, 0),
                cached_input_tokens: 0,
                output_tokens: (0, 0),
                fell_back: 0,
                identical: 0,
                requests: 0,
            };
            let (mut base_time, mut base_tokens) = (Duration::ZERO, 0usize);
            let (mut spec_time, mut spec_tokens) = (Duration::ZERO, 0usize);
            let (mut drafted, mut accepted, mut rounds) = (0u64, 0u64, 0u64);
            let mut plain_itl: Option<Duration> = None;
            for (i, text) in PROMPTS.iter().cycle().take(args.prompts).enumerate() {
                let messages = [ChatMessage::user(*text)];
                let prompt = target
                    .chat_prompt(&messages, true)
                    .map_err(|e| Error::LocalModel(e.to_string()))?;
                let eos = target.info().eos_token_ids.clone();
                // Target-only streaming through the same server.
                clear(&target).await?;
                let t = Instant::now();
                let mut stream = streamer
                    .stream(&prompt, args.max_tokens, None)
                    .await
                    .map_err(upstream)?;
                let mut expected = Vec::new();
                let mut first_token_at = None;
                while let Some(tok) = stream.next().await {
                    let tok = tok.map_err(upstream)?;
                    first_token_at.get_or_insert_with(Instant::now);
                    expected.push(tok);
                    if eos.contains(&tok) || expected.len() >= args.max_tokens {
                        break;
                    }
                }
                drop(stream);
                // The target's inter-token time as the gateway's live backend state measures it.
                if let (Some(first), n @ 2..) = (first_token_at, expected.len()) {
                    let itl = first.elapsed() / (n as u32 - 1);
                    plain_itl = Some(match plain_itl {
                        Some(prev) => (prev + itl) / 2,
                        None => itl,
                    });
                }
                base_time += t.elapsed();
                base_tokens += expected.len();
                row.input_tokens.1 += prompt.len() as u64;
                row.output_tokens.1 += expected.len() as u64;

                // Speculative.
                clear(&target).await?;
                let mut drafter: Box<dyn Drafter> = if same_vocab {
                    Box::new(EngineDrafter::new(
                        drafter_engine.clone(),
                        &target.info().vocab_hash,
                    )?)
                } else {
                    let draft_prompt = drafter_engine
                        .chat_prompt(&messages, true)
                        .map_err(|e| Error::LocalModel(e.to_string()))?;
                    Box::new(CrossTokenizerDrafter::new(
                        drafter_engine.clone(),
                        target.tokenizer().clone(),
                        draft_prompt,
                        prompt.len(),
                    ))
                };
                let mut policy = DraftPolicy::new(PolicyConfig {
                    max_draft: args.max_draft,
                    // What the gateway knows of this backend's streaming speed: its measured
                    // inter-token time (the emulated step is only a floor under it).
                    plain_token_time: plain_itl.unwrap_or(Duration::from_millis(step_ms)),
                    prior_verify_time: Duration::from_millis(rtt_ms + step_ms),
                    ..PolicyConfig::default()
                });
                let mut opts = SpecOptions::greedy(target.info().id.clone(), args.max_tokens);
                opts.eos = eos;
                opts.session = Some(format!("bench-{rtt_ms}-{step_ms}-{i}"));
                let t = Instant::now();
                let mut report = SpecReport::default();
                run(
                    drafter.as_mut(),
                    &verifier,
                    Some(&streamer),
                    &mut policy,
                    &prompt,
                    &opts,
                    &mut |_| {},
                    &mut report,
                )
                .await?;
                spec_time += t.elapsed();
                tracing::debug!(
                    rtt_ms,
                    step_ms,
                    policy = ?policy.snapshot(),
                    rounds = report.rounds,
                    plain_tokens = report.plain_tokens,
                    elapsed_ms = t.elapsed().as_millis() as u64,
                    "speculative request measured"
                );
                spec_tokens += report.tokens.len();
                drafted += report.drafted;
                accepted += report.accepted;
                rounds += report.rounds;
                row.input_tokens.0 += report.target_input_tokens;
                row.cached_input_tokens += report.target_cached_input_tokens;
                row.output_tokens.0 += report.target_output_tokens;
                row.fell_back += usize::from(report.fell_back);
                row.identical += usize::from(report.tokens == expected);
                row.requests += 1;
            }
            server.abort();
            row.baseline_tps = base_tokens as f64 / base_time.as_secs_f64().max(1e-9);
            row.speculative_tps = spec_tokens as f64 / spec_time.as_secs_f64().max(1e-9);
            row.acceptance = accepted as f64 / (drafted as f64).max(1.0);
            row.mean_accepted = accepted as f64 / (rounds as f64).max(1.0);
            row.mean_draft_len = drafted as f64 / (rounds as f64).max(1.0);
            tracing::info!(rtt_ms, step_ms, speedup = row.speedup(), "bench cell done");
            rows.push(row);
        }
    }
    Ok(BenchReport { setup, rows })
}

/// Starts each measured request from a cold prefix cache (see the test notes in the module).
async fn clear(engine: &Engine) -> Result<()> {
    engine
        .clear_cache()
        .await
        .map_err(|e| Error::LocalModel(e.to_string()))
}
