//! The detector: which kinds to look for, the configured patterns and terms, and the scan that
//! merges their findings into one ordered, non-overlapping list.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

use crate::Error;
use crate::kind::{Finding, Kind};
use crate::scan;

/// What a [`Detector`] looks for.
#[derive(Debug, Clone, Default)]
pub struct DetectorConfig {
    /// Built-in kinds by name ([`Kind::BUILTIN_NAMES`]); all of them when `None`.
    pub kinds: Option<Vec<String>>,
    /// Named regular expressions (`regex` crate syntax); the name labels the placeholder.
    pub patterns: Vec<(String, String)>,
    /// Words or phrases matched whole and case-insensitively (project code names, clients).
    pub terms: Vec<String>,
}

/// Finds sensitive data in text. Built once, shared by every request.
#[derive(Debug)]
pub struct Detector {
    /// Bit per built-in kind that is on.
    kinds: u16,
    patterns: Vec<(String, Regex)>,
    terms: Option<AhoCorasick>,
}

impl Detector {
    /// Builds a detector; a bad pattern or kind name is an error naming it.
    pub fn new(config: &DetectorConfig) -> Result<Self, Error> {
        let mut kinds = 0u16;
        match &config.kinds {
            None => kinds = u16::MAX,
            Some(names) => {
                for name in names {
                    let kind = Kind::parse(name).ok_or_else(|| Error::UnknownKind(name.clone()))?;
                    kinds |= kind.bit();
                }
            }
        }
        let mut patterns = Vec::with_capacity(config.patterns.len());
        for (name, source) in &config.patterns {
            let good_name = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !good_name {
                return Err(Error::PatternName(name.clone()));
            }
            let regex = Regex::new(source).map_err(|e| Error::Pattern {
                name: name.clone(),
                message: e.to_string(),
            })?;
            patterns.push((name.to_ascii_uppercase(), regex));
        }
        if let Some(i) = config.terms.iter().position(|t| t.trim().is_empty()) {
            return Err(Error::EmptyTerm(i));
        }
        let terms = if config.terms.is_empty() {
            None
        } else {
            let ac = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(config.terms.iter().map(|t| t.trim()))
                .map_err(|e| Error::Pattern {
                    name: "terms".into(),
                    message: e.to_string(),
                })?;
            Some(ac)
        };
        Ok(Self {
            kinds,
            patterns,
            terms,
        })
    }

    /// A detector with every built-in kind and nothing configured.
    pub fn builtin() -> Self {
        Self {
            kinds: u16::MAX,
            patterns: Vec::new(),
            terms: None,
        }
    }

    /// Whether a built-in kind is on.
    pub fn enabled(&self, kind: Kind) -> bool {
        self.kinds & kind.bit() != 0
    }

    /// The name of a kind as headers and logs spell it (`email`, `pattern:EMPLOYEE_ID`, `term`).
    pub fn kind_name(&self, kind: Kind) -> String {
        match kind {
            Kind::Pattern(i) => format!(
                "pattern:{}",
                self.patterns
                    .get(usize::from(i))
                    .map_or("?", |(n, _)| n.as_str())
            ),
            Kind::Term => "term".into(),
            k => Kind::BUILTIN_NAMES[k.bit().trailing_zeros() as usize].into(),
        }
    }

    /// The label a placeholder of this kind carries (`EMAIL`, a pattern's name).
    pub fn label(&self, kind: Kind) -> &str {
        match kind {
            Kind::Pattern(i) => self
                .patterns
                .get(usize::from(i))
                .map_or("PATTERN", |(n, _)| n.as_str()),
            k => k.label(),
        }
    }

    /// Every finding in `text`, ordered by position, none overlapping (where two overlap, the
    /// one that starts first, then the longer, wins).
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut found = Vec::new();
        scan::builtin(text.as_bytes(), self.kinds, &mut found);
        for (i, (_, regex)) in self.patterns.iter().enumerate() {
            let kind = Kind::Pattern(i as u16);
            found.extend(
                regex
                    .find_iter(text)
                    .filter(|m| !m.is_empty())
                    .map(|m| Finding {
                        kind,
                        start: m.start(),
                        end: m.end(),
                    }),
            );
        }
        if let Some(terms) = &self.terms {
            let bytes = text.as_bytes();
            for m in terms.find_iter(text) {
                let word = |i: usize| bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric());
                let before = m.start() > 0 && word(m.start() - 1);
                if !before && !word(m.end()) {
                    found.push(Finding {
                        kind: Kind::Term,
                        start: m.start(),
                        end: m.end(),
                    });
                }
            }
        }
        if found.len() > 1 {
            found.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
            let mut end = 0;
            found.retain(|f| {
                let keep = f.start >= end;
                if keep {
                    end = f.end;
                }
                keep
            });
        }
        found
    }

    /// Whether `text` holds anything this detector finds (cheaper than [`Detector::scan`] when
    /// nothing is).
    pub fn any(&self, text: &str) -> bool {
        !self.scan(text).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(d: &Detector, text: &str) -> Vec<String> {
        d.scan(text).iter().map(|f| d.kind_name(f.kind)).collect()
    }

    #[test]
    fn patterns_and_terms_are_found_and_named() {
        let d = Detector::new(&DetectorConfig {
            kinds: Some(vec!["email".into()]),
            patterns: vec![("employee_id".into(), r"EMP-\d{6}".into())],
            terms: vec!["Project Falcon".into()],
        })
        .unwrap();
        assert_eq!(
            kinds(&d, "EMP-123456 on project falcon wrote to a@b.io"),
            ["pattern:EMPLOYEE_ID", "term", "email"]
        );
        // Whole words only, and kinds that are off stay off.
        assert!(kinds(&d, "projectfalcons call +44 20 7946 0958").is_empty());
    }

    #[test]
    fn bad_config_is_named() {
        let bad = |c: DetectorConfig| Detector::new(&c).unwrap_err().to_string();
        let e = bad(DetectorConfig {
            kinds: Some(vec!["mail".into()]),
            ..DetectorConfig::default()
        });
        assert!(e.contains("unknown detector `mail`"), "{e}");
        let e = bad(DetectorConfig {
            patterns: vec![("x".into(), "(".into())],
            ..DetectorConfig::default()
        });
        assert!(e.starts_with("pattern `x`"), "{e}");
        let e = bad(DetectorConfig {
            patterns: vec![("a b".into(), "x".into())],
            ..DetectorConfig::default()
        });
        assert!(e.contains("`a b`"), "{e}");
    }
}
