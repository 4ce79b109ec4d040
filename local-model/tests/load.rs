//! Loading: malformed and truncated files give clear errors, and both cached models load and
//! answer sensibly.

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use tandem_local_model::{
    ChatMessage, Engine, EngineConfig, Error, GenerateEvent, GenerateRequest, SamplingParams,
};

fn start(path: &std::path::Path) -> Result<Engine, Error> {
    Engine::start(EngineConfig::new(path).threads(1))
}

#[test]
fn missing_file_is_an_io_error() {
    let err = start(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn garbage_is_rejected_by_magic() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"definitely not a gguf file at all").unwrap();
    let err = start(f.path()).unwrap_err();
    assert!(err.to_string().contains("not a gguf file"), "{err}");
}

#[test]
fn header_with_absurd_counts_is_rejected() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    f.write_all(&b).unwrap();
    let err = start(f.path()).unwrap_err();
    assert!(err.to_string().contains("implausible"), "{err}");
}

#[test]
fn truncated_model_is_a_clear_error() {
    let Some(path) = common::model_path("smollm2-135m") else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    for cut in [10, 4096, 3_000_000, bytes.len() - 1000] {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes[..cut]).unwrap();
        let err = start(f.path()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "cut at {cut}: {err}");
    }
}

async fn answer(engine: &Engine, q: &str, n: usize) -> String {
    let prompt = engine.chat_prompt(&[ChatMessage::user(q)], true).unwrap();
    let mut rx = engine
        .generate(GenerateRequest {
            prompt,
            params: SamplingParams::greedy(n),
        })
        .unwrap();
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenerateEvent::Token { text: t, .. } => text.push_str(&t),
            GenerateEvent::Finished { .. } => break,
            GenerateEvent::Error(e) => panic!("{e}"),
        }
    }
    text
}

#[tokio::test]
async fn gemma3_loads_and_answers() {
    let Some(engine) = common::engine_with("gemma3-270m", |c| c) else {
        return;
    };
    let info = engine.info();
    assert_eq!(info.arch, "gemma3");
    assert_eq!(info.vocab_size, 262_144);
    let end_of_turn = engine.tokenizer().token_id("<end_of_turn>").unwrap();
    assert!(info.eos_token_ids.contains(&end_of_turn));
    let rendered = engine
        .render_chat(&[ChatMessage::user("Hi")], true)
        .unwrap();
    assert_eq!(
        rendered,
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
    let prompt = engine
        .chat_prompt(&[ChatMessage::user("Hi")], true)
        .unwrap();
    assert_eq!(
        prompt
            .iter()
            .filter(|&&t| Some(t) == info.bos_token_id)
            .count(),
        1
    );
    // This checkpoint is the pretrained (not instruction-tuned) model: plain completion,
    // checked against an independent float32 reference (tests/fixtures/README.md).
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3_greedy.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompt = engine
        .tokenizer()
        .encode(fx["text"].as_str().unwrap(), true);
    assert_eq!(prompt, ids(&fx["prompt_ids"]));
    let want = ids(&fx["completion_ids"]);
    let mut rx = engine
        .generate(GenerateRequest {
            prompt,
            params: SamplingParams::greedy(want.len()),
        })
        .unwrap();
    let (mut got, mut text) = (Vec::new(), String::new());
    while let Some(GenerateEvent::Token { id, text: t, .. }) = rx.recv().await {
        got.push(id);
        text.push_str(&t);
    }
    assert_eq!(got, want, "{text:?}");
    assert_eq!(text, fx["completion_text"].as_str().unwrap());
}

#[tokio::test]
async fn smollm2_loads_and_answers() {
    let Some(engine) = common::smollm() else {
        return;
    };
    let info = engine.info();
    assert_eq!(info.arch, "llama");
    assert_eq!(info.vocab_size, 49_152);
    assert_eq!(info.n_layers, 30);
    let text = answer(&engine, "What is the capital of Germany?", 16).await;
    eprintln!("smollm2: {text:?}");
    assert!(text.contains("Berlin"), "{text}");
}
