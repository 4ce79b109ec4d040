//! The router's offline tooling: data sets, training (`tandem router train`,
//! `train-answer-check`), evaluation against RouteLLM's routers with plots (`tandem router eval`),
//! the curves and tables they report, and the embedding store they share.

pub mod dataset;
pub mod embed_store;
pub mod eval;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod train;

pub use eval::{EmbeddingKind, EvalArgs, EvalReport, eval};
pub use train::{TrainArgs, TrainReport, train, train_answer_check};
