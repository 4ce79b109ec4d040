//! Hard rules, checked before any policy chooses: forced placement (data residency or
//! cloud-only) from a route, an API key or a header, an allow-list of backends, and a latency SLO.
//! [`RouteRules::screen`] applies them to the backends of one request; every policy chooses only
//! among the backends that pass.

use serde::{Deserialize, Serialize};

use crate::backend::{BackendCandidate, Site};
use crate::{Error, Result};

/// A forced placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Never leave the machine (data residency).
    LocalOnly,
    /// Never use the local model.
    CloudOnly,
}

impl Placement {
    /// Parses a header or config value: `local-only` or `cloud-only` (case-insensitive).
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "local-only" | "local_only" | "local" => Ok(Self::LocalOnly),
            "cloud-only" | "cloud_only" | "cloud" => Ok(Self::CloudOnly),
            other => Err(Error::InvalidArgument(format!(
                "placement {other:?}: expected local-only or cloud-only"
            ))),
        }
    }

    /// The kebab-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::LocalOnly => "local-only",
            Self::CloudOnly => "cloud-only",
        }
    }
}

/// Cost and latency weights of the decision rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// Quality units given up per US dollar.
    pub lambda_per_usd: f64,
    /// Quality units given up per second of predicted latency.
    pub mu_per_s: f64,
}

/// The rules for one request, merged by the gateway from route, API key and header config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRules {
    /// Forced placement, if any. Where sources disagree, local-only wins (it is the safe one).
    #[serde(default)]
    pub placement: Option<Placement>,
    /// Where the placement came from (e.g. `header`, `route:/v1/chat`, `key:team-a`).
    #[serde(default)]
    pub placement_source: Option<String>,
    /// Only these backends may serve the request (empty: any).
    #[serde(default)]
    pub allowed_backends: Vec<String>,
    /// Backends predicted to exceed this end-to-end latency are excluded, ms.
    #[serde(default)]
    pub latency_slo_ms: Option<f64>,
    /// Per-route or per-key weights replacing the router's defaults.
    #[serde(default)]
    pub weights: Option<Weights>,
    /// Per-route or per-key target share of cloud calls replacing the router's default.
    #[serde(default)]
    pub target_cloud_share: Option<f32>,
}

impl RouteRules {
    /// Adds a placement from another source; local-only wins over cloud-only.
    pub fn with_placement(mut self, placement: Placement, source: impl Into<String>) -> Self {
        if self.placement != Some(Placement::LocalOnly) {
            self.placement = Some(placement);
            self.placement_source = Some(source.into());
        }
        self
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if let Some(slo) = self.latency_slo_ms
            && !(slo.is_finite() && slo > 0.0)
        {
            return Err(Error::InvalidArgument(
                "latency_slo_ms must be positive".into(),
            ));
        }
        if let Some(w) = self.weights
            && !(w.lambda_per_usd.is_finite()
                && w.lambda_per_usd >= 0.0
                && w.mu_per_s.is_finite()
                && w.mu_per_s >= 0.0)
        {
            return Err(Error::InvalidArgument(
                "weights must be finite and non-negative".into(),
            ));
        }
        if let Some(s) = self.target_cloud_share
            && !(0.0..=1.0).contains(&s)
        {
            return Err(Error::InvalidArgument(
                "target_cloud_share must be within 0..=1".into(),
            ));
        }
        Ok(())
    }
}

impl RouteRules {
    /// Applies the rules to `candidates` for a request expecting `output_tokens`: unhealthy,
    /// not-allowed and wrongly placed backends are excluded, then those predicted to miss the
    /// latency SLO (when none meets it, the fastest stays rather than failing the request).
    pub fn screen<'a>(&self, candidates: &'a [BackendCandidate], output_tokens: u32) -> Screen<'a> {
        let mut excluded = Vec::new();
        let mut reason = None;
        let mut allowed: Vec<&BackendCandidate> = Vec::new();
        for c in candidates {
            let why = if !c.healthy {
                Some("unhealthy")
            } else if !self.allowed_backends.is_empty()
                && !self.allowed_backends.iter().any(|b| b == c.name())
            {
                Some("not allowed")
            } else {
                match (self.placement, c.profile.kind) {
                    (Some(Placement::LocalOnly), Site::Cloud) => Some("local-only"),
                    (Some(Placement::CloudOnly), Site::Local) => Some("cloud-only"),
                    _ => None,
                }
            };
            match why {
                Some(w) => excluded.push(format!("{}:{w}", c.name())),
                None => allowed.push(c),
            }
        }
        if let Some(p) = self.placement {
            let src = self.placement_source.as_deref().unwrap_or("rule");
            reason = Some(format!("rule:{}({src})", p.as_str()));
        }
        if let Some(slo) = self.latency_slo_ms {
            let within: Vec<&BackendCandidate> = allowed
                .iter()
                .copied()
                .filter(|c| c.predicted_latency_ms(output_tokens) <= slo)
                .collect();
            for c in allowed
                .iter()
                .filter(|c| c.predicted_latency_ms(output_tokens) > slo)
            {
                excluded.push(format!("{}:slo", c.name()));
            }
            if within.is_empty() && !allowed.is_empty() {
                // Nobody meets the SLO: serve from the fastest rather than fail.
                let fastest = allowed.iter().copied().min_by(|a, b| {
                    a.predicted_latency_ms(output_tokens)
                        .total_cmp(&b.predicted_latency_ms(output_tokens))
                });
                allowed = fastest.into_iter().collect();
                reason = Some("slo:none-meets-fastest".into());
            } else {
                allowed = within;
            }
        }
        Screen {
            allowed,
            excluded,
            reason,
        }
    }
}

/// The backends of one request after the hard rules.
#[derive(Debug, Clone)]
pub struct Screen<'a> {
    /// Backends a policy may choose, in the order given.
    pub allowed: Vec<&'a BackendCandidate>,
    /// Backends left out, each as `name:why` (`unhealthy`, `not allowed`, `local-only`,
    /// `cloud-only`, `slo`).
    pub excluded: Vec<String>,
    /// The rule that shaped the choice (`rule:local-only(header)`, `slo:none-meets-fastest`),
    /// reported as the decision's reason in place of the policy's own.
    pub reason: Option<String>,
}

impl Screen<'_> {
    /// The reason of a rejection: the rule that left nothing, else `no-backend`.
    pub fn reject_reason(&self) -> String {
        self.reason.clone().unwrap_or_else(|| "no-backend".into())
    }
}
