//! Routing policy: prompt features, learned quality predictors, cost and latency model, and
//! offline training and evaluation.

mod error;

pub use error::{Error, Result};
