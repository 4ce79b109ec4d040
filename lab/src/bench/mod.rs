//! `tandem-lab bench ...` (and `tandem bench ...`): benchmarks that print a table with their peer
//! and the ratio. Not tests.

mod controls;
mod cpu;
mod embeddings;
pub mod engine;
mod http1;
mod ide;
mod local;
mod nginx;
mod overhead;
mod privacy;
pub mod router;
mod speculative;

pub use controls::{ControlsArgs, run_controls};
pub use embeddings::run_embeddings;
pub use ide::{IdeArgs, run_ide};
pub use local::run_local;
pub use overhead::{OverheadArgs, Proxy, run_overhead};
pub use speculative::{BenchArgs, BenchReport, bench_speculative};
