//! Hard rules, checked before anything learned: forced placement (data residency or cloud-only)
//! from a route, an API key or a header, an allow-list of backends, and a latency SLO.

use serde::{Deserialize, Serialize};

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
