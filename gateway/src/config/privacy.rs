//! The `[privacy]` section (which detectors run, custom patterns and dictionary terms, the action
//! for routes that name none), the `privacy` field of routes and API keys, and the `[audit]`
//! section (the tamper-evident request log).

use std::path::PathBuf;
use std::sync::Arc;

use tandem_privacy::{Detector, DetectorConfig};

use super::raw::{RawAudit, RawPrivacy};
use super::{ConfigError, invalid};

/// What happens to a request in which the detectors found sensitive data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum PrivacyAction {
    /// Nothing: the detectors do not run.
    #[default]
    Off,
    /// Cloud backends get placeholders; the answer gets the values back.
    Redact,
    /// Served by the local model only.
    ForceLocal,
    /// Refused with a 400 naming the kinds found.
    Block,
}

impl PrivacyAction {
    /// The name used in the config file, headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Redact => "redact",
            Self::ForceLocal => "force-local",
            Self::Block => "block",
        }
    }

    /// Parses a config value; the error names `path`.
    pub fn parse(value: &str, path: &str) -> Result<Self, ConfigError> {
        match value {
            "off" => Ok(Self::Off),
            "redact" => Ok(Self::Redact),
            "force-local" => Ok(Self::ForceLocal),
            "block" => Ok(Self::Block),
            other => Err(invalid(
                path,
                format!(
                    "`{other}` is not a privacy action (expected off, redact, force-local or block)"
                ),
            )),
        }
    }
}

/// Validated `[privacy]`.
#[derive(Debug, Clone)]
pub struct PrivacySettings {
    /// The action of routes that name none.
    pub default: PrivacyAction,
    /// The detector every screened request runs through.
    pub detector: Arc<Detector>,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            default: PrivacyAction::Off,
            detector: Arc::new(Detector::builtin()),
        }
    }
}

/// Validates `[privacy]`; a pattern that does not compile names its path.
pub fn validate_privacy(raw: RawPrivacy) -> Result<PrivacySettings, ConfigError> {
    let default = match raw.default.as_deref() {
        Some(v) => PrivacyAction::parse(v, "privacy.default")?,
        None => PrivacyAction::Off,
    };
    let config = DetectorConfig {
        kinds: raw.detectors,
        patterns: raw.patterns.into_iter().collect(),
        terms: raw.terms,
    };
    let detector = Detector::new(&config).map_err(|e| {
        let path = match &e {
            tandem_privacy::Error::Pattern { name, .. }
            | tandem_privacy::Error::PatternName(name) => {
                format!("privacy.patterns.{name}")
            }
            tandem_privacy::Error::UnknownKind(_) => "privacy.detectors".into(),
            tandem_privacy::Error::EmptyTerm(i) => format!("privacy.terms[{i}]"),
        };
        invalid(path, e.to_string())
    })?;
    Ok(PrivacySettings {
        default,
        detector: Arc::new(detector),
    })
}

/// Validated `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// The active JSONL file; no audit log when None.
    pub path: Option<PathBuf>,
    /// Size at which the active file is rotated (renamed after its first record's number).
    pub max_bytes: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Validates `[audit]`.
pub fn validate_audit(raw: RawAudit) -> Result<AuditSettings, ConfigError> {
    let d = AuditSettings::default();
    let max_bytes = match raw.max_bytes {
        Some(n) if n < 1024 => return Err(invalid("audit.max_bytes", "must be at least 1024")),
        Some(n) => n,
        None => d.max_bytes,
    };
    if raw.path.as_deref().is_some_and(str::is_empty) {
        return Err(invalid("audit.path", "must not be empty"));
    }
    Ok(AuditSettings {
        path: raw.path.map(PathBuf::from),
        max_bytes,
    })
}
