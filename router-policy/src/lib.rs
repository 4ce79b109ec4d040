//! Routing policy: prompt features, learned quality predictors, cost and latency model, and
//! offline training and evaluation.

mod error;

pub mod backend;
pub mod bandit;
pub mod bench;
pub mod calibration;
pub mod cascade;
pub mod dataset;
pub mod decision;
pub mod embed_store;
pub mod encoder;
pub mod eval;
pub mod features;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod router;
pub mod rules;
pub mod train;

pub use backend::{BackendCandidate, BackendKind, BackendProfile, BackendState, Price};
pub use bandit::{BanditState, BanditStore, FileBanditStore, MemoryBanditStore};
pub use cascade::{CascadeAction, CascadePolicy, calibrate_cascade};
pub use decision::{Choice, Decision, Explanation};
pub use encoder::{Encoder, EncoderConfig};
pub use error::{Error, Result};
pub use eval::{EvalArgs, EvalReport, eval};
pub use features::{CheapFeatures, LocalConfidence, RequestFeatures};
pub use router::{Feedback, FeedbackOutcome, ModelFile, Router, RouterConfig, apply_feedback};
pub use rules::{Placement, RouteRules, Weights};
pub use train::{TrainArgs, TrainReport, train};
