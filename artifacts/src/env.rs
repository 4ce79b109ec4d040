//! Environment access behind a trait, so tests pass their own variables instead of setting
//! process env. The one definition for Tandem: the fetcher's options and the gateway's config
//! overrides read through it.

use std::collections::BTreeMap;

/// A source of environment variables.
pub trait EnvSource: Send + Sync {
    /// The value of one variable, or `None` when it is unset or not valid Unicode.
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable whose name starts with `prefix`, sorted by name.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut vars: Vec<_> = std::env::vars()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        vars.sort();
        vars
    }
}

/// A fixed set of variables (tests, embedding).
#[derive(Debug, Default, Clone)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl MapEnv {
    /// An environment with no variables set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A map from `(name, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        pairs.into_iter().collect()
    }

    /// This environment with `name` set to `value`.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for MapEnv {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl EnvSource for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    // The map is sorted, so the filtered pairs come out sorted by name.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// A variable that is set and not blank.
pub(crate) fn non_empty(env: &dyn EnvSource, key: &str) -> Option<String> {
    env.var(key).filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_listing_is_sorted_and_filtered() {
        let env = MapEnv::from_pairs([("TANDEM__B", "2"), ("OTHER", "x"), ("TANDEM__A", "1")]);
        assert_eq!(
            env.vars_with_prefix("TANDEM__"),
            vec![
                ("TANDEM__A".to_string(), "1".to_string()),
                ("TANDEM__B".to_string(), "2".to_string())
            ]
        );
        assert_eq!(env.var("OTHER").as_deref(), Some("x"));
        assert_eq!(env.var("MISSING"), None);
    }
}
