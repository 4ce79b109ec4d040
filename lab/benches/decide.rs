//! Criterion benchmarks of the routing decision: cheap features only, with a cached embedding,
//! and with a fresh embedding (when the encoder files are in the cache).
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_lab::bench::router::sample_candidates;
use tandem_router_policy::encoder::{Encoder, EncoderConfig, default_cache_root};
use tandem_router_policy::{RequestFeatures, RouteRules, Router, RouterConfig};

const PROMPT: &str =
    "Explain the difference between TCP congestion control algorithms Reno and CUBIC.";

fn decide(c: &mut Criterion) {
    let Ok(router) = Router::load_default(RouterConfig::default()) else {
        return;
    };
    let candidates = sample_candidates();
    let rules = RouteRules::default();
    let mut group = c.benchmark_group("router_decide");
    group.bench_function("features+decide (no embedding)", |b| {
        b.iter(|| {
            let f = RequestFeatures::from_prompt(black_box(PROMPT), None);
            black_box(router.decide(&f, &candidates, &rules))
        })
    });
    let root = default_cache_root();
    for max_tokens in [128usize, 32] {
        let config = EncoderConfig {
            pool_size: 1,
            max_tokens,
            ..EncoderConfig::from_cache_root(&root)
        };
        let Ok(encoder) = Encoder::with_config(config) else {
            continue;
        };
        if max_tokens == 128 {
            group.bench_function("embed (cache hit)+features+decide", |b| {
                b.iter(|| {
                    let e = encoder.embed(black_box(PROMPT)).ok();
                    let f = RequestFeatures::from_prompt(PROMPT, e);
                    black_box(router.decide(&f, &candidates, &rules))
                })
            });
        }
        let n = AtomicUsize::new(0);
        group.sample_size(30);
        group.bench_function(
            format!("embed (miss, <= {max_tokens} tok)+features+decide"),
            |b| {
                b.iter(|| {
                    let text = format!("{PROMPT} {}", n.fetch_add(1, Ordering::Relaxed));
                    let e = encoder.embed(&text).ok();
                    let f = RequestFeatures::from_prompt(&text, e);
                    black_box(router.decide(&f, &candidates, &rules))
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = decide
}
criterion_main!(benches);
