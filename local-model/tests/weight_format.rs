//! Weights converted at load (`WeightFormat`): the real SmolLM2 Q4_1 file run as Q8_0, f16 and
//! f32 agrees with the stored weights on the likely tokens, stays batch invariant, and the
//! engine option reaches the model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use tandem_kernels::KernelPool;
use tandem_local_model::gguf::GgufFile;
use tandem_local_model::model::{BatchItem, Model, Scratch, SeqKv};
use tandem_local_model::{SamplingParams, WeightFormat};

const PROMPT: [u32; 12] = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308,
];

/// Logits of every position, feeding the prompt in chunks of `chunk`.
fn logits(model: &Model, pool: &KernelPool, chunk: usize) -> Vec<f32> {
    let mut kv = SeqKv::new(&model.cfg);
    let mut scratch = Scratch::new(&model.cfg, 16, 64);
    let (mut out, mut l) = (Vec::new(), Vec::new());
    for part in PROMPT.chunks(chunk) {
        let mut items = [BatchItem {
            kv: &mut kv,
            tokens: part,
            logits_from: 0,
        }];
        model
            .forward(pool, &mut items, &mut scratch, &mut l)
            .unwrap();
        out.extend_from_slice(&l);
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn converted_weights_agree_with_stored_and_stay_batch_invariant() {
    let Some(path) = common::model_path("smollm2-135m") else {
        return;
    };
    let gguf = Arc::new(GgufFile::open(&path).unwrap());
    let pool = KernelPool::new(2).unwrap();
    let stored = Model::load(gguf.clone()).unwrap();
    assert_eq!(stored.converted_bytes(), 0);
    let base = logits(&stored, &pool, PROMPT.len());
    let vocab = stored.cfg.vocab;
    drop(stored);
    for format in [WeightFormat::Q8_0, WeightFormat::F16, WeightFormat::F32] {
        let model = Model::load_with(gguf.clone(), format).unwrap();
        assert_eq!(model.weight_format(), format);
        // Layers: 30 × (576² · 2 + 576 · 192 · 2 + 576 · 1536 · 3) weights.
        let weights = 30 * (576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3);
        let per_weight = model.converted_bytes() as f64 / weights as f64;
        let want = match format {
            WeightFormat::Q8_0 => 34.0 / 32.0,
            WeightFormat::F16 => 2.0,
            _ => 4.0,
        };
        // The tied Q8_0 output head is converted too for the float formats.
        assert!(
            per_weight >= want && per_weight < want * 1.45,
            "{format:?}: {per_weight} bytes per weight"
        );
        let got = logits(&model, &pool, PROMPT.len());
        let mut agree = 0;
        for p in 0..PROMPT.len() {
            let (a, b) = (
                &base[p * vocab..(p + 1) * vocab],
                &got[p * vocab..(p + 1) * vocab],
            );
            agree += usize::from(argmax(a) == argmax(b));
            let spread = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff < 0.25 * spread,
                "{format:?} position {p}: {diff} of {spread}"
            );
        }
        assert!(
            agree >= PROMPT.len() - 2,
            "{format:?}: top-1 agrees at {agree}"
        );
        // Token by token equals one block, bit for bit.
        let steps = logits(&model, &pool, 1);
        assert!(
            steps
                .iter()
                .map(|v| v.to_bits())
                .eq(got.iter().map(|v| v.to_bits())),
            "{format:?} is not batch invariant"
        );
    }
}

#[test]
fn format_names_parse_and_bad_ones_are_errors() {
    for name in WeightFormat::NAMES {
        assert_eq!(WeightFormat::parse(name).unwrap().as_str(), name);
    }
    assert_eq!(WeightFormat::parse("Q8_0").unwrap(), WeightFormat::Q8_0);
    let err = WeightFormat::parse("q3_k").unwrap_err().to_string();
    assert!(err.contains("q3_k") && err.contains("q8_0"), "{err}");
    assert_eq!(WeightFormat::default(), WeightFormat::AsStored);
}

#[tokio::test]
async fn engine_runs_a_q8_0_target_from_the_q4_1_file() {
    let Some(engine) = common::engine_with("smollm2-135m", |c| c.weight_format(WeightFormat::Q8_0))
    else {
        return;
    };
    let prompt = PROMPT.to_vec();
    let mut rx = engine
        .generate(tandem_local_model::GenerateRequest {
            prompt,
            params: SamplingParams::greedy(8),
        })
        .unwrap();
    let mut tokens = 0;
    while let Some(ev) = rx.recv().await {
        match ev {
            tandem_local_model::GenerateEvent::Token { .. } => tokens += 1,
            tandem_local_model::GenerateEvent::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    assert!(tokens > 0);
}
