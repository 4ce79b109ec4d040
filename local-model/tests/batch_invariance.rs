//! Batch invariance of the real models: a token's logits and the keys/values it leaves behind do
//! not depend on how many tokens share its forward pass (one block, one at a time, uneven chunks,
//! or next to another sequence).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use tandem_kernels::KernelPool;
use tandem_local_model::gguf::GgufFile;
use tandem_local_model::model::{BatchItem, Model, Scratch, SeqKv};

fn load(artifact: &str) -> Option<Model> {
    let path = common::model_path(artifact)?;
    let gguf = Arc::new(GgufFile::open(&path).unwrap());
    Some(Model::load(gguf).unwrap())
}

/// A deterministic prompt of `len` ordinary token ids.
fn prompt(model: &Model, len: usize) -> Vec<u32> {
    let vocab = model.cfg.vocab as u64;
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (200 + s % (vocab.min(40_000) - 200)) as u32
        })
        .collect()
}

/// Logits of every prompt position (as bits), feeding the prompt in the given chunk sizes.
fn logits_in_chunks(
    model: &Model,
    pool: &KernelPool,
    tokens: &[u32],
    chunks: &[usize],
) -> Vec<u32> {
    let mut kv = SeqKv::new(&model.cfg);
    let mut scratch = Scratch::new(&model.cfg, 64, tokens.len());
    let mut all = Vec::new();
    let mut logits = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < tokens.len() {
        let n = chunks[i % chunks.len()].min(tokens.len() - at);
        let mut items = [BatchItem {
            kv: &mut kv,
            tokens: &tokens[at..at + n],
            logits_from: 0,
        }];
        model
            .forward(pool, &mut items, &mut scratch, &mut logits)
            .unwrap();
        all.extend(logits.iter().map(|v| v.to_bits()));
        at += n;
        i += 1;
    }
    all
}

fn first_difference(a: &[u32], b: &[u32], vocab: usize) -> Option<(usize, usize)> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| (i / vocab, i % vocab))
}

fn check_model(artifact: &str, len: usize) {
    let Some(model) = load(artifact) else {
        return;
    };
    let vocab = model.cfg.vocab;
    let tokens = prompt(&model, len);
    for threads in [1, 2] {
        let pool = KernelPool::new(threads).unwrap();
        let block = logits_in_chunks(&model, &pool, &tokens, &[len]);
        assert_eq!(block.len(), len * vocab);
        for chunks in [&[1usize][..], &[5, 1, 13, 2, 7], &[4], &[16, 3]] {
            let got = logits_in_chunks(&model, &pool, &tokens, chunks);
            assert!(
                got == block,
                "{artifact} threads={threads} chunks {chunks:?}: first differing (position, vocab id) {:?}",
                first_difference(&got, &block, vocab)
            );
        }
    }
}

#[test]
fn smollm_logits_do_not_depend_on_chunking() {
    check_model("smollm2-135m", 40);
}

#[test]
fn gemma_logits_do_not_depend_on_chunking() {
    check_model("gemma3-270m", 24);
}

/// Two sequences in one forward pass give the same logits as each one alone.
#[test]
fn sequences_batched_together_match_alone() {
    let Some(model) = load("smollm2-135m") else {
        return;
    };
    let pool = KernelPool::new(2).unwrap();
    let a = prompt(&model, 19);
    let b: Vec<u32> = prompt(&model, 30)[11..].to_vec();
    let alone_a = logits_in_chunks(&model, &pool, &a, &[a.len()]);
    let alone_b = logits_in_chunks(&model, &pool, &b, &[b.len()]);
    let (mut ka, mut kb) = (SeqKv::new(&model.cfg), SeqKv::new(&model.cfg));
    let mut scratch = Scratch::new(&model.cfg, 64, 64);
    let mut logits = Vec::new();
    let mut items = [
        BatchItem {
            kv: &mut ka,
            tokens: &a,
            logits_from: 0,
        },
        BatchItem {
            kv: &mut kb,
            tokens: &b,
            logits_from: 0,
        },
    ];
    model
        .forward(&pool, &mut items, &mut scratch, &mut logits)
        .unwrap();
    let bits: Vec<u32> = logits.iter().map(|v| v.to_bits()).collect();
    let vocab = model.cfg.vocab;
    assert!(bits[..a.len() * vocab] == alone_a[..]);
    assert!(bits[a.len() * vocab..] == alone_b[..]);
}
