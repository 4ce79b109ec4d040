//! Environment access behind a trait, so tests choose the cache root without touching process env.

use std::collections::HashMap;
use std::path::PathBuf;

/// Where configuration values from the environment come from.
pub trait EnvSource: Send + Sync {
    /// The value of `key`, or `None` when it is unset or not valid Unicode.
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// A fixed set of variables, for tests and embedding.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(HashMap<String, String>);

impl MapEnv {
    /// An environment with no variables set.
    pub fn new() -> Self {
        Self::default()
    }

    /// This environment with `key` set to `value`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(key.into(), value.into());
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
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// A variable that is set and not blank.
pub(crate) fn non_empty(env: &dyn EnvSource, key: &str) -> Option<String> {
    env.var(key).filter(|v| !v.trim().is_empty())
}

/// The artifact cache root: `$TANDEM_CACHE_DIR`, else `$XDG_CACHE_HOME/tandem`, else
/// `$HOME/.cache/tandem`, else `.cache/tandem` under the working directory.
pub fn default_cache_root(env: &dyn EnvSource) -> PathBuf {
    if let Some(dir) = non_empty(env, "TANDEM_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = non_empty(env, "XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("tandem");
    }
    if let Some(home) = non_empty(env, "HOME") {
        return PathBuf::from(home).join(".cache").join("tandem");
    }
    PathBuf::from(".cache").join("tandem")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tandem_cache_dir_wins() {
        let env = MapEnv::new()
            .with("TANDEM_CACHE_DIR", "/srv/tandem")
            .with("XDG_CACHE_HOME", "/x")
            .with("HOME", "/home/u");
        assert_eq!(default_cache_root(&env), PathBuf::from("/srv/tandem"));
    }

    #[test]
    fn xdg_then_home() {
        let env = MapEnv::new()
            .with("XDG_CACHE_HOME", "/x")
            .with("HOME", "/home/u");
        assert_eq!(default_cache_root(&env), PathBuf::from("/x/tandem"));
        let env = MapEnv::new()
            .with("HOME", "/home/u")
            .with("XDG_CACHE_HOME", "");
        assert_eq!(
            default_cache_root(&env),
            PathBuf::from("/home/u/.cache/tandem")
        );
    }

    #[test]
    fn nothing_set_falls_back_to_relative() {
        assert_eq!(
            default_cache_root(&MapEnv::new()),
            PathBuf::from(".cache/tandem")
        );
    }
}
