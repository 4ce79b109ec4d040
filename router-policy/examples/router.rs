//! Runs the router's offline commands without the gateway binary:
//! `router eval --data DIR [--out DIR] [--no-embed] [--embedding minilm|static] [--max-tokens N]
//! [--folds K] [--bootstrap B] [--models a,b]`,
//! `router train --data DIR --out FILE [--model logistic|mlp|mf] [--no-embed]`,
//! `router bench [--iters N]`.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::{Context, bail};
use tandem_router_policy::model::ModelSpec;
use tandem_router_policy::{EmbeddingKind, EvalArgs, TrainArgs};

fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        bail!("usage: router eval|train|bench [flags]")
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let has = |name: &str| args.iter().any(|a| a == name);
    let spec_named =
        |name: &str| ModelSpec::by_name(name).with_context(|| format!("unknown model {name}"));
    match cmd.as_str() {
        "eval" => {
            let mut a = EvalArgs {
                data: PathBuf::from(flag("--data").context("--data")?),
                out: flag("--out").map(PathBuf::from),
                weak: flag("--weak"),
                strong: flag("--strong"),
                use_embeddings: !has("--no-embed"),
                ..EvalArgs::default()
            };
            if let Some(e) = flag("--embedding") {
                a.embedding = embedding_named(&e, flag("--max-tokens"))?;
            }
            if let Some(k) = flag("--folds") {
                a.folds = k.parse()?;
            }
            if let Some(b) = flag("--bootstrap") {
                a.bootstrap = b.parse()?;
            }
            if let Some(m) = flag("--models") {
                a.models = m
                    .split(',')
                    .map(spec_named)
                    .collect::<anyhow::Result<_>>()?;
            }
            let report = tandem_router_policy::eval(&a)?;
            println!("{report}");
        }
        "train" => {
            let mut a = TrainArgs {
                data: PathBuf::from(flag("--data").context("--data")?),
                use_embeddings: !has("--no-embed"),
                ..TrainArgs::default()
            };
            if let Some(e) = flag("--embedding") {
                a.embedding = embedding_named(&e, flag("--max-tokens"))?;
            }
            if let Some(o) = flag("--out") {
                a.out = PathBuf::from(o);
            }
            if let Some(m) = flag("--model") {
                a.spec = spec_named(&m)?;
            }
            println!("{}", tandem_router_policy::train(&a)?);
        }
        "bench" => {
            let iters = flag("--iters")
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(2000);
            let report = tandem_router_policy::bench::bench_decide(
                &tandem_router_policy::bench::BenchArgs {
                    iterations: iters,
                    ..Default::default()
                },
            )?;
            println!("{report}");
        }
        other => bail!("unknown command {other}"),
    }
    Ok(())
}

fn tracing_subscriber_init() {}

fn embedding_named(name: &str, max_tokens: Option<String>) -> anyhow::Result<EmbeddingKind> {
    Ok(match name {
        "static" => EmbeddingKind::Static,
        "minilm" => EmbeddingKind::MiniLm {
            max_tokens: max_tokens.map_or(Ok(128), |m| m.parse())?,
        },
        other => bail!("unknown embedding {other} (minilm or static)"),
    })
}
