//! The `[observability]` section: the cost and overhead headers, the energy estimate, how many
//! recent requests the dashboard keeps, and the OpenTelemetry trace export (off unless an
//! endpoint is named).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// `[observability]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObservability {
    /// Send `x-tandem-cost` (paid, reference, saved) on whole answers.
    pub cost_header: Option<bool>,
    /// Send `x-tandem-overhead-ms` (time not spent waiting for a backend).
    pub overhead_header: Option<bool>,
    /// Watts one busy core draws, for the energy estimate where RAPL cannot be read.
    pub watts_per_core: Option<f64>,
    /// Read the RAPL energy counters under /sys/class/powercap where readable.
    pub rapl: Option<bool>,
    /// Finished requests the dashboard keeps in memory (its windows and recent decisions).
    pub recent_requests: Option<u64>,
    /// `[observability.otlp]`.
    pub otlp: Option<RawOtlp>,
}

/// `[observability.otlp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The collector's OTLP/HTTP traces URL (`http://collector:4318/v1/traces`).
    pub endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: Option<String>,
    /// Headers sent with every export (a collector's API key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Put prompt and answer text on spans (off: they never leave the process).
    pub capture_content: Option<bool>,
    /// Spans per export request.
    pub batch_size: Option<u64>,
    /// Longest wait before a partial batch is sent.
    pub flush_interval_ms: Option<u64>,
    /// Spans waiting for export at most; past it new spans are dropped and counted.
    pub queue: Option<u64>,
}

/// The validated `[observability]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservabilityConfig {
    /// Send `x-tandem-cost` on whole answers.
    pub cost_header: bool,
    /// Send `x-tandem-overhead-ms`.
    pub overhead_header: bool,
    /// Watts per busy core for the energy estimate.
    pub watts_per_core: f64,
    /// Try RAPL first.
    pub rapl: bool,
    /// Finished requests kept for the dashboard.
    pub recent_requests: usize,
    /// Trace export, when on.
    pub otlp: Option<OtlpConfig>,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            cost_header: false,
            overhead_header: true,
            // About a server core's share of package power under load.
            watts_per_core: 10.0,
            rapl: true,
            recent_requests: 10_000,
            otlp: None,
        }
    }
}

/// The validated `[observability.otlp]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Traces URL.
    pub endpoint: String,
    /// `service.name`.
    pub service_name: String,
    /// Extra headers on each export.
    pub headers: Vec<(String, String)>,
    /// Prompt and answer text on spans.
    pub capture_content: bool,
    /// Spans per export.
    pub batch_size: usize,
    /// Longest wait for a partial batch.
    pub flush_interval: Duration,
    /// Spans waiting at most.
    pub queue: usize,
}

/// Validates `[observability]`.
pub fn validate_observability(raw: RawObservability) -> Result<ObservabilityConfig, ConfigError> {
    let defaults = ObservabilityConfig::default();
    let watts_per_core = raw.watts_per_core.unwrap_or(defaults.watts_per_core);
    if !watts_per_core.is_finite() || watts_per_core < 0.0 {
        return Err(invalid(
            "observability.watts_per_core",
            "must be a number of watts, 0 or more",
        ));
    }
    let recent_requests = match raw.recent_requests {
        Some(0) => {
            return Err(invalid(
                "observability.recent_requests",
                "must be greater than 0",
            ));
        }
        Some(n) => n as usize,
        None => defaults.recent_requests,
    };
    let otlp = raw.otlp.map(validate_otlp).transpose()?;
    Ok(ObservabilityConfig {
        cost_header: raw.cost_header.unwrap_or(defaults.cost_header),
        overhead_header: raw.overhead_header.unwrap_or(defaults.overhead_header),
        watts_per_core,
        rapl: raw.rapl.unwrap_or(defaults.rapl),
        recent_requests,
        otlp,
    })
}

fn validate_otlp(raw: RawOtlp) -> Result<OtlpConfig, ConfigError> {
    let endpoint = raw.endpoint.trim().to_owned();
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        invalid(
            "observability.otlp.endpoint",
            format!("`{endpoint}` is not a URL ({e})"),
        )
    })?;
    if uri.scheme_str() != Some("http") && uri.scheme_str() != Some("https") {
        return Err(invalid(
            "observability.otlp.endpoint",
            format!("`{endpoint}` must be an http:// or https:// URL (OTLP/HTTP)"),
        ));
    }
    for name in raw.headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(
                format!("observability.otlp.headers.{name}"),
                "is not a valid header name",
            ));
        }
    }
    let positive = |v: Option<u64>, key: &str, default: u64| match v {
        Some(0) => Err(invalid(
            format!("observability.otlp.{key}"),
            "must be greater than 0",
        )),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    Ok(OtlpConfig {
        endpoint,
        service_name: raw.service_name.unwrap_or_else(|| "tandem".into()),
        headers: raw.headers.into_iter().collect(),
        capture_content: raw.capture_content.unwrap_or(false),
        batch_size: positive(raw.batch_size, "batch_size", 512)? as usize,
        flush_interval: Duration::from_millis(positive(
            raw.flush_interval_ms,
            "flush_interval_ms",
            1000,
        )?),
        queue: positive(raw.queue, "queue", 8192)? as usize,
    })
}
