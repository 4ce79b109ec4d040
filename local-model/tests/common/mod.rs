//! Shared helpers for tests that run the real models from the artifact cache.

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use tandem_artifacts::{ProcessEnv, default_cache_root, locate};
use tandem_local_model::{Engine, EngineConfig};

/// The model file of a cached artifact, or `None` (with a message) when it is not fetched.
pub fn model_path(artifact: &str) -> Option<PathBuf> {
    let root = default_cache_root(&ProcessEnv);
    match locate(&root, artifact) {
        Some(p) => Some(p.primary().to_path_buf()),
        None => {
            eprintln!(
                "SKIPPED: {artifact} is not in the cache at {}; run `tandem models fetch {artifact}`",
                root.display()
            );
            None
        }
    }
}

/// One shared SmolLM2 engine per test binary (loading is cheap, but threads are scarce).
pub fn smollm() -> Option<Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let path = model_path("smollm2-135m")?;
            Some(Engine::start(EngineConfig::new(path).threads(2)).expect("engine starts"))
        })
        .clone()
}

/// A fresh engine on a model with a custom config.
pub fn engine_with(artifact: &str, f: impl FnOnce(EngineConfig) -> EngineConfig) -> Option<Engine> {
    let path = model_path(artifact)?;
    Some(Engine::start(f(EngineConfig::new(path).threads(2))).expect("engine starts"))
}
