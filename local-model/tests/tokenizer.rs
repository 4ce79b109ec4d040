//! Tokenization of both cached models against ids from an independent implementation
//! (llama.cpp's tokenizer; see `tests/fixtures/README.md`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use tandem_local_model::Tokenizer;
use tandem_local_model::gguf::GgufFile;

fn check(artifact: &str, fixture: &str) {
    let Some(path) = common::model_path(artifact) else {
        return;
    };
    let gguf = GgufFile::open(&path).expect("gguf opens");
    let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer builds");
    let fixture_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_path).expect("fixture"))
            .expect("json");
    let mut failures = Vec::new();
    for (name, case) in cases.as_object().expect("object") {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let add_special = case
            .get("add_special")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let got = tok.encode(text, add_special);
        if got != want {
            failures.push(format!("{name}: {text:?}\n  want {want:?}\n  got  {got:?}"));
        }
        // Decoding gives the text back (BOS aside).
        let body: Vec<u32> = got
            .iter()
            .copied()
            .filter(|&t| Some(t) != tok.bos_id() || !add_special)
            .collect();
        assert_eq!(tok.decode(&body), text, "{name} round trip");
    }
    assert!(failures.is_empty(), "{artifact}:\n{}", failures.join("\n"));
}

#[test]
fn smollm2_matches_reference_ids() {
    check("smollm2-135m", "tokenizer_smollm2.json");
}

#[test]
fn gemma3_matches_reference_ids() {
    check("gemma3-270m", "tokenizer_gemma3.json");
}

#[test]
fn vocab_hash_tells_tokenizers_apart() {
    let (Some(a), Some(b)) = (
        common::model_path("smollm2-135m"),
        common::model_path("gemma3-270m"),
    ) else {
        return;
    };
    let ta = Tokenizer::from_gguf(&GgufFile::open(&a).unwrap()).unwrap();
    let tb = Tokenizer::from_gguf(&GgufFile::open(&b).unwrap()).unwrap();
    assert_eq!(ta.vocab_hash().len(), 64);
    assert_ne!(ta.vocab_hash(), tb.vocab_hash());
    assert_eq!(ta.vocab_size(), 49152);
    assert_eq!(tb.vocab_size(), 262144);
}
