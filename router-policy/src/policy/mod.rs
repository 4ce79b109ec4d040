//! Routing policies behind one trait, [`Policy`]: each takes a request's features and the
//! snapshots of its backends, after the hard rules ([`crate::rules::RouteRules::screen`]), and
//! returns a [`crate::Decision`] with its explanation. [`decide`] is the one entry point (the
//! router's `decide` calls it), so no policy can skip the hard rules.
//!
//! - [`learned`]: the predictor of P(strong model answers better), blended with the online
//!   bandit, then `quality − λ·cost − μ·latency`, the held-out share threshold, the cascade band
//!   and speculative decoding (the default);
//! - [`fixed`]: the first backend that passes the rules, in route order.
//!
//! Adding a policy is the recipe on [`Policy`]: its own file here, and a variant (with its arm in
//! [`PolicyKind::build`]) in this file.

mod api;
pub mod fixed;
pub mod learned;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use api::{Policy, PolicyInput, decide};

/// Which policy a router runs (the `policy` setting of [`crate::RouterConfig`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// [`learned::Learned`]: predictor, bandit and utility.
    #[default]
    Learned,
    /// [`fixed::FixedOrder`]: the first allowed backend in route order.
    Fixed,
}

impl PolicyKind {
    /// The policy of this kind; None for [`PolicyKind::Learned`], which the router owns itself
    /// because its model and bandit are also the router's state (feedback, persistence).
    pub fn build(self) -> Option<Arc<dyn Policy>> {
        match self {
            Self::Learned => None,
            Self::Fixed => Some(Arc::new(fixed::FixedOrder)),
        }
    }
}
