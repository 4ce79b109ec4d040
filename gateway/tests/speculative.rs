//! Speculative decoding end to end with the real models: greedy output is token for token the
//! target's own, on the same-tokenizer path (SmolLM2 Q4_1 drafts for the same model at Q8_0) and
//! the cross-tokenizer path (SmolLM2 drafts for Gemma 3 270M), in process and over loopback HTTP
//! with the delay layer.

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]
// Helpers outside `#[test]` functions panic on failure like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;
use tandem_cloud_adapters::client::{HttpClient, HttpConfig};

use tandem_artifacts::{ProcessEnv, default_cache_root, locate};
use tandem_gateway::speculative::{
    CrossTokenizerDrafter, DelayConfig, DelayLayer, DraftPolicy, Drafter, EngineDrafter,
    InProcessStreamer, InProcessVerifier, NgramDrafter, PolicyConfig, RemoteVerifier, SpecOptions,
    SpecReport, TandemStreamer, VerifyProtocol, VerifyState, router, run,
};
use tandem_local_model::{
    ChatMessage, Engine, EngineConfig, GenerateEvent, GenerateRequest, SamplingParams, WeightFormat,
};

const MAX_TOKENS: usize = 16;

fn engine(artifact: &str) -> Engine {
    engine_as(artifact, WeightFormat::AsStored)
}

/// The engine of a cached artifact holding its weights in `format`.
fn engine_as(artifact: &str, format: WeightFormat) -> Engine {
    let root = default_cache_root(&ProcessEnv);
    let path = locate(&root, artifact)
        .unwrap_or_else(|| {
            panic!(
                "{artifact} is not in the cache at {}; run `tandem models fetch {artifact}`",
                root.display()
            )
        })
        .primary()
        .to_path_buf();
    Engine::start(EngineConfig::new(path).threads(1).weight_format(format)).expect("engine starts")
}

/// The same-tokenizer pair: SmolLM2 Q4_1 as drafter, and the same file held at Q8_0 as target,
/// so the drafter's proposals are checked against different logits than its own.
fn smol_and_q8_target() -> (Engine, Engine) {
    (
        engine("smollm2-135m"),
        engine_as("smollm2-135m", WeightFormat::Q8_0),
    )
}

/// 26 chat prompts.
fn chat_prompts() -> Vec<String> {
    [
        "What is the capital of France?",
        "Give me three tips for better sleep.",
        "Explain photosynthesis in one sentence.",
        "What is 12 times 7?",
        "Write a haiku about the sea.",
        "Who wrote Romeo and Juliet?",
        "What does a CPU do?",
        "Name the planets of the solar system.",
        "How do I boil an egg?",
        "What is the boiling point of water?",
        "Translate 'good morning' into Spanish.",
        "Why is the sky blue?",
        "Suggest a name for a pet cat.",
        "What is machine learning?",
        "List three primary colors.",
        "How many days are in a leap year?",
        "What is the largest ocean on Earth?",
        "Describe a rainbow to a child.",
        "What is the speed of light?",
        "Give an example of a mammal that can fly.",
        "What language is spoken in Brazil?",
        "Summarize the story of Cinderella.",
        "What is an atom?",
        "How do vaccines work?",
        "What is the tallest mountain in the world?",
        "Recommend a good habit for students.",
    ]
    .map(String::from)
    .to_vec()
}

/// 26 code prompts.
fn code_prompts() -> Vec<String> {
    [
        "Write a Python function that reverses a string.",
        "Write a Python function to compute the factorial of n.",
        "Write a JavaScript function that adds two numbers.",
        "Write a SQL query that selects all rows from a table named users.",
        "Write a Python loop that prints the numbers 1 to 10.",
        "Write a C function that returns the maximum of two integers.",
        "Write a Python function that checks whether a number is prime.",
        "Write a Rust function that squares an i32.",
        "Write a bash command that counts the lines in a file.",
        "Write a Python list comprehension for the squares of 0 to 9.",
        "Fix this Python code: def add(a, b) return a + b",
        "Write a Python class named Point with x and y attributes.",
        "Write a JavaScript arrow function that doubles a number.",
        "Write a Python function that sums a list of numbers.",
        "Write a regular expression that matches an email address.",
        "Write a Python function that returns the Fibonacci numbers up to n.",
        "Write HTML for a button that says Click me.",
        "Write a Python function that reads a file and returns its lines.",
        "Write a Go function that returns hello world.",
        "Write a Python dictionary mapping three fruits to their colors.",
        "Write a Python function that removes duplicates from a list.",
        "Write a Java method that returns the length of a string.",
        "Write a Python function that converts Celsius to Fahrenheit.",
        "Write a JSON object describing a book with a title and an author.",
        "Write a Python function that sorts a list of tuples by the second item.",
        "Write a shell command that lists all files in the current directory.",
    ]
    .map(String::from)
    .to_vec()
}

/// Every prompt: chat, then code.
fn prompts() -> Vec<String> {
    let mut all = chat_prompts();
    all.extend(code_prompts());
    all
}

/// The target alone, greedy. The prefix cache is emptied first: this engine's logits depend on
/// how a sequence was split into forward passes (a cached prompt recomputes its last token
/// alone), so both runs start from the same cold state.
async fn target_only(target: &Engine, prompt: &[u32]) -> Vec<u32> {
    target.clear_cache().await.unwrap();
    let mut rx = target
        .generate(GenerateRequest {
            prompt: prompt.to_vec(),
            params: SamplingParams::greedy(MAX_TOKENS),
        })
        .unwrap();
    let mut out = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenerateEvent::Token { id, .. } => out.push(id),
            GenerateEvent::Finished { .. } => break,
            GenerateEvent::Error(e) => panic!("target failed: {e}"),
        }
    }
    out
}

fn options(target: &Engine, session: &str) -> SpecOptions {
    let mut opts = SpecOptions::greedy("target", MAX_TOKENS);
    opts.eos = target.info().eos_token_ids.clone();
    opts.session = Some(session.to_owned());
    opts
}

/// A policy that never falls back, so every token goes through verification.
fn always_speculate() -> DraftPolicy {
    DraftPolicy::new(PolicyConfig {
        plain_token_time: Duration::from_secs(10),
        max_draft: 6,
        ..PolicyConfig::default()
    })
}

// Each path checks chat and code prompts in separate tests so the runner can verify them side by
// side; together they are all the prompts.
#[test]
fn the_greedy_checks_cover_fifty_prompts() {
    assert!(prompts().len() >= 50);
    assert_eq!(chat_prompts().len() + code_prompts().len(), prompts().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_is_the_targets_same_tokenizer_chat() {
    same_tokenizer(&chat_prompts(), "same-tokenizer chat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_is_the_targets_same_tokenizer_code() {
    same_tokenizer(&code_prompts(), "same-tokenizer code").await;
}

async fn same_tokenizer(prompts: &[String], path: &str) {
    let (smol, target) = smol_and_q8_target();
    greedy_output_is_the_targets(&smol, &target, path, prompts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_is_the_targets_cross_tokenizer_chat() {
    cross_tokenizer(&chat_prompts(), "cross-tokenizer chat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_is_the_targets_cross_tokenizer_code() {
    cross_tokenizer(&code_prompts(), "cross-tokenizer code").await;
}

async fn cross_tokenizer(prompts: &[String], path: &str) {
    let smol = engine("smollm2-135m");
    let gemma = engine("gemma3-270m");
    greedy_output_is_the_targets(&smol, &gemma, path, prompts).await;
    assert!(EngineDrafter::new(smol.clone(), &gemma.info().vocab_hash).is_err());
}

/// Every prompt's speculative greedy output equals the target's own greedy output.
async fn greedy_output_is_the_targets(
    smol: &Engine,
    target: &Engine,
    path: &str,
    prompts: &[String],
) {
    let state = Arc::new(VerifyState::new(target.clone(), 8));
    let verifier = InProcessVerifier::new(state.clone());
    let (mut drafted, mut accepted, mut rounds, mut tokens) = (0, 0, 0, 0);
    for (i, text) in prompts.iter().enumerate() {
        let messages = [ChatMessage::user(text.as_str())];
        let prompt = target.chat_prompt(&messages, true).unwrap();
        let expected = target_only(target, &prompt).await;
        target.clear_cache().await.unwrap();
        let mut drafter: Box<dyn Drafter> = if path.starts_with("same-tokenizer") {
            Box::new(EngineDrafter::new(smol.clone(), &target.info().vocab_hash).unwrap())
        } else {
            let draft_prompt = smol.chat_prompt(&messages, true).unwrap();
            Box::new(CrossTokenizerDrafter::new(
                smol.clone(),
                target.tokenizer().clone(),
                draft_prompt,
                prompt.len(),
            ))
        };
        let mut policy = always_speculate();
        let mut report = SpecReport::default();
        run(
            drafter.as_mut(),
            &verifier,
            None,
            &mut policy,
            &prompt,
            &options(target, &format!("{path}-{i}")),
            &mut |_| {},
            &mut report,
        )
        .await
        .unwrap();
        assert_eq!(
            report.tokens, expected,
            "{path}: prompt {i} ({text:?}) differs from the target's own greedy output"
        );
        drafted += report.drafted;
        accepted += report.accepted;
        rounds += report.rounds;
        tokens += report.tokens.len();
    }
    eprintln!(
        "{path}: {} prompts, {tokens} tokens in {rounds} rounds, acceptance {:.2}",
        prompts.len(),
        accepted as f64 / drafted.max(1) as f64
    );
    assert_eq!(state.session_count(), 0, "sessions are closed at the end");
    // Fewer target rounds than tokens: speculation did something.
    assert!(
        rounds < tokens as u64,
        "{path}: {rounds} rounds for {tokens} tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_target_with_delay_layer_and_fallback_keeps_output() {
    let (smol, target) = smol_and_q8_target();
    let state = Arc::new(VerifyState::new(target.clone(), 8));
    let app = router(state.clone()).layer(DelayLayer::new(DelayConfig {
        rtt: Duration::from_millis(10),
        step: Duration::from_millis(5),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let verifier = RemoteVerifier::new(
        VerifyProtocol::Tandem,
        "cloud",
        base.clone(),
        None,
        client.clone(),
    )
    .unwrap();
    let streamer = TandemStreamer::new("cloud", base, client);

    for (i, text) in prompts().iter().take(4).enumerate() {
        let prompt = target
            .chat_prompt(&[ChatMessage::user(text.as_str())], true)
            .unwrap();
        let expected = target_only(&target, &prompt).await;
        target.clear_cache().await.unwrap();
        // Speculative over HTTP.
        let mut drafter = EngineDrafter::new(smol.clone(), &target.info().vocab_hash).unwrap();
        let mut policy = always_speculate();
        let mut streamed = Vec::new();
        let mut report = SpecReport::default();
        run(
            &mut drafter,
            &verifier,
            Some(&streamer),
            &mut policy,
            &prompt,
            &options(&target, &format!("http-{i}")),
            &mut |block| streamed.extend_from_slice(block),
            &mut report,
        )
        .await
        .unwrap();
        assert_eq!(report.tokens, expected, "prompt {i} over http");
        assert_eq!(streamed, expected, "streamed blocks add up to the answer");
        assert!(!report.fell_back);
        assert!(
            report.target_cached_input_tokens > 0,
            "the session kept the target's KV"
        );

        // A policy that finds plain streaming faster falls back after its exploration rounds,
        // continuing the target's session, with the same output.
        target.clear_cache().await.unwrap();
        let mut ngram = NgramDrafter::default();
        let mut slow = DraftPolicy::new(PolicyConfig {
            plain_token_time: Duration::from_micros(1),
            ..PolicyConfig::default()
        });
        let mut fallback = SpecReport::default();
        run(
            &mut ngram,
            &verifier,
            Some(&streamer),
            &mut slow,
            &prompt,
            &options(&target, &format!("plain-{i}")),
            &mut |_| {},
            &mut fallback,
        )
        .await
        .unwrap();
        assert!(fallback.fell_back);
        assert_eq!(fallback.tokens, expected, "prompt {i} streamed plainly");
    }

    // The in-process streamer gives the same plain stream.
    let prompt = target
        .chat_prompt(&[ChatMessage::user("Hi")], true)
        .unwrap();
    let mut ngram = NgramDrafter::default();
    let mut slow = DraftPolicy::new(PolicyConfig {
        plain_token_time: Duration::from_micros(1),
        ..PolicyConfig::default()
    });
    let expected = target_only(&target, &prompt).await;
    target.clear_cache().await.unwrap();
    let mut local = SpecReport::default();
    run(
        &mut ngram,
        &InProcessVerifier::new(state),
        Some(&InProcessStreamer::new(target.clone())),
        &mut slow,
        &prompt,
        &options(&target, "local-plain"),
        &mut |_| {},
        &mut local,
    )
    .await
    .unwrap();
    assert_eq!(local.tokens, expected);
}
