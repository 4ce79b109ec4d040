//! The ONNX encoder against reference vectors made by the Python ONNX Runtime from the same model

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! and tokenizer (see `tests/fixtures/make_reference_embeddings.py`).

use std::path::PathBuf;

use tandem_router_policy::encoder::{Encoder, EncoderConfig, default_cache_root};

#[allow(clippy::print_stderr)]
fn encoder(pool: usize) -> Option<Encoder> {
    let root = default_cache_root();
    let config = EncoderConfig {
        pool_size: pool,
        ..EncoderConfig::from_cache_root(&root)
    };
    if let Err(e) = config.check_files() {
        eprintln!("skipping encoder test: {e}");
        return None;
    }
    Some(Encoder::with_config(config).unwrap())
}

fn reference() -> serde_json::Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference_embeddings.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn matches_the_reference_vectors() {
    let Some(enc) = encoder(2) else { return };
    let reference = reference();
    let items = reference["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    // One at a time (no padding) and as one padded batch must agree with the reference.
    let batch = enc.embed_uncached(&texts).unwrap();
    for (item, batched) in items.iter().zip(&batch) {
        let want: Vec<f32> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let single = enc.embed(item["text"].as_str().unwrap()).unwrap();
        for got in [&single[..], &batched[..]] {
            assert_eq!(got.len(), 384);
            let cos: f32 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
            let max_diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                cos > 0.9999 && max_diff < 2e-3,
                "{:?}: cos {cos} max diff {max_diff}",
                item["text"]
            );
            let norm: f32 = got.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
        }
    }
}

#[test]
fn cache_answers_repeats_and_threads_share_the_pool() {
    let Some(enc) = encoder(2) else { return };
    let a = enc.embed("route me").unwrap();
    assert!(enc.cached("route me").is_some());
    let b = enc.embed("route me").unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let enc = &enc;
                s.spawn(move || enc.embed(&format!("prompt number {i}")).unwrap())
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().len(), 384);
        }
    });
}

#[test]
fn missing_files_name_the_fetch_command() {
    let config = EncoderConfig::from_cache_root(std::path::Path::new("/nonexistent-cache"));
    let err = Encoder::with_config(config).unwrap_err().to_string();
    assert!(err.contains("tandem models fetch"), "{err}");
}

#[test]
fn empty_and_odd_prompts_embed() {
    let Some(enc) = encoder(1) else { return };
    for text in ["", " ", "\u{0}", "🙂🙂🙂", &"long ".repeat(2000)] {
        let e = enc.embed(text).unwrap();
        assert_eq!(e.len(), 384);
        assert!(e.iter().all(|v| v.is_finite()));
    }
}
