//! Where artifacts are cached and fetched from, set in code or read from the environment.

use std::path::PathBuf;

use crate::env::{EnvSource, non_empty};

/// The Hugging Face Hub.
pub const DEFAULT_HUB_BASE: &str = "https://huggingface.co";
/// The Python package index's simple API.
pub const DEFAULT_INDEX_BASE: &str = "https://pypi.org/simple";

/// Where artifacts are cached and fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// The cache root; each artifact is a folder under it.
    pub cache_root: PathBuf,
    /// Base URL of the Hugging Face Hub (or a mirror of it).
    pub hub_base: String,
    /// Base URL of a PEP 503 simple index, such as `https://pypi.org/simple` or a company mirror.
    pub index_base: String,
    /// Never use the network: only look in the cache.
    pub offline: bool,
    /// No progress output.
    pub quiet: bool,
}

impl FetchOptions {
    /// Defaults for `cache_root`: the public Hub and index, online, with progress.
    pub fn new(cache_root: impl Into<PathBuf>) -> Self {
        Self {
            cache_root: cache_root.into(),
            hub_base: DEFAULT_HUB_BASE.to_string(),
            index_base: DEFAULT_INDEX_BASE.to_string(),
            offline: false,
            quiet: false,
        }
    }

    /// Options from the environment:
    /// - the cache root from [`default_cache_root`];
    /// - `TANDEM_HUB_URL`, else `HF_ENDPOINT`, else the public Hub;
    /// - `TANDEM_INDEX_URL`, else `PIP_INDEX_URL`, else the public index;
    /// - `TANDEM_OFFLINE` (`1`, `true`, `yes`, `on`) forbids network use.
    pub fn from_env(env: &dyn EnvSource) -> Self {
        let first = |keys: &[&str], default: &str| {
            keys.iter()
                .find_map(|k| non_empty(env, k))
                .map_or_else(|| default.to_string(), |v| v.trim().to_string())
        };
        let offline = non_empty(env, "TANDEM_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Self {
            cache_root: default_cache_root(env),
            hub_base: first(&["TANDEM_HUB_URL", "HF_ENDPOINT"], DEFAULT_HUB_BASE),
            index_base: first(&["TANDEM_INDEX_URL", "PIP_INDEX_URL"], DEFAULT_INDEX_BASE),
            offline,
            quiet: false,
        }
    }
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
    use crate::env::MapEnv;

    #[test]
    fn options_from_env() {
        let env = MapEnv::new()
            .with("TANDEM_CACHE_DIR", "/c")
            .with("PIP_INDEX_URL", "https://mirror.corp/simple")
            .with("TANDEM_OFFLINE", "yes");
        let opts = FetchOptions::from_env(&env);
        assert_eq!(opts.cache_root, PathBuf::from("/c"));
        assert_eq!(opts.index_base, "https://mirror.corp/simple");
        assert_eq!(opts.hub_base, DEFAULT_HUB_BASE);
        assert!(opts.offline);
        let opts =
            FetchOptions::from_env(&MapEnv::new().with("HOME", "/h").with("TANDEM_OFFLINE", "0"));
        assert!(!opts.offline);
        assert_eq!(opts.index_base, DEFAULT_INDEX_BASE);
    }

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
