//! Prints `bench_local` figures for a model file: `cargo run --release -p tandem-local-model
//! --example bench_local -- [MODEL.gguf] [THREADS]`.

use std::path::PathBuf;

use tandem_artifacts::{ProcessEnv, default_cache_root, locate};
use tandem_local_model::bench::bench_local;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = match args.next() {
        Some(p) => PathBuf::from(p),
        None => locate(&default_cache_root(&ProcessEnv), "smollm2-135m")
            .map(|p| p.primary().to_path_buf())
            .ok_or_else(|| {
                anyhow::anyhow!("smollm2-135m not cached; run `tandem models fetch smollm2-135m`")
            })?,
    };
    let threads = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    let report = bench_local(&path, threads)?;
    #[allow(clippy::print_stdout)]
    {
        print!("{}", report.table());
    }
    Ok(())
}
