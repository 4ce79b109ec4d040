//! The decision and its explanation: a compact one-line form for the `x-tandem-route` header and a
//! serde form for the JSONL decision log.

use serde::{Deserialize, Serialize};

use crate::backend::{BackendCandidate, Site};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Choice {
    /// The local model answers.
    Local {
        /// Local backend name.
        backend: String,
    },
    /// A cloud backend answers.
    Cloud {
        /// Cloud backend name.
        backend: String,
    },
    /// Start locally; escalate to `cloud` when first-token confidence is below `threshold`.
    Cascade {
        /// Local backend name.
        local: String,
        /// Escalation target.
        cloud: String,
        /// Confidence threshold (see [`crate::cascade::CascadePolicy`]).
        threshold: f32,
    },
    /// The local model drafts, the cloud target verifies.
    Speculative {
        /// Drafting backend.
        drafter: String,
        /// Verifying backend.
        target: String,
    },
    /// No backend may serve this request under its rules (the gateway answers 503 or 403).
    Reject,
}

impl Choice {
    /// The choice that sends the request to `backend` alone: local or cloud by its kind.
    pub fn serve(backend: &BackendCandidate) -> Self {
        let name = backend.name().to_string();
        match backend.profile.kind {
            Site::Local => Self::Local { backend: name },
            Site::Cloud => Self::Cloud { backend: name },
        }
    }

    /// Compact form: `local:smollm`, `cloud:openai`, `cascade:smollm>openai@0.42`,
    /// `speculative:smollm>vllm`, `reject`.
    pub fn compact(&self) -> String {
        match self {
            Self::Local { backend } => format!("local:{backend}"),
            Self::Cloud { backend } => format!("cloud:{backend}"),
            Self::Cascade {
                local,
                cloud,
                threshold,
            } => format!("cascade:{local}>{cloud}@{threshold:.2}"),
            Self::Speculative { drafter, target } => format!("speculative:{drafter}>{target}"),
            Self::Reject => "reject".into(),
        }
    }

    /// The backend whose answer the client gets first (None for reject).
    pub fn first_backend(&self) -> Option<&str> {
        match self {
            Self::Local { backend } | Self::Cloud { backend } => Some(backend),
            Self::Cascade { local, .. } => Some(local),
            Self::Speculative { target, .. } => Some(target),
            Self::Reject => None,
        }
    }
}

/// Why the policy chose what it chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The choice in compact form.
    pub choice: String,
    /// The predictor's P(strong model answers better).
    pub p_strong: f32,
    /// Predicted quality of the chosen backend (0..1, bandit-adjusted).
    pub predicted_quality: f32,
    /// Predicted cost in US dollars.
    pub cost_usd: f64,
    /// Predicted end-to-end latency, ms.
    pub latency_ms: f64,
    /// Short reason: `rule:local-only`, `utility`, `share-threshold`, `slo`, `cascade-band`, ...
    pub reason: String,
    /// Backends excluded by hard rules, with why.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub excluded: Vec<String>,
    /// The quality model's name, or the policy's for a policy without one.
    pub model: String,
}

impl Explanation {
    /// One line for the `x-tandem-route` header (ASCII, no commas inside values).
    pub fn header_value(&self) -> String {
        format!(
            "{}; p={:.3}; q={:.3}; cost=${:.6}; lat={:.0}ms; reason={}",
            self.choice,
            self.p_strong,
            self.predicted_quality,
            self.cost_usd,
            self.latency_ms,
            self.reason
        )
    }
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Where to send the request.
    pub choice: Choice,
    /// Why.
    pub explanation: Explanation,
    /// The bandit context, kept so feedback can be applied later.
    #[serde(skip)]
    pub(crate) context: Vec<f32>,
}

impl Decision {
    /// A decision with no bandit context (policies that do not learn from feedback).
    pub fn new(choice: Choice, explanation: Explanation) -> Self {
        Self {
            choice,
            explanation,
            context: Vec::new(),
        }
    }

    /// The JSONL decision-log line (without the trailing newline).
    pub fn log_line(&self, request_id: &str) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            request_id: &'a str,
            choice: &'a Choice,
            explanation: &'a Explanation,
        }
        serde_json::to_string(&Line {
            request_id,
            choice: &self.choice,
            explanation: &self.explanation,
        })
        .unwrap_or_default()
    }
}
