//! The on-disk cache: one folder per artifact, presence and hash checks, the fetch lock.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::progress::ProgressMode;
use crate::registry::{ArtifactSpec, FileSpec, find_artifact, known_names};
use crate::{Error, Result};

/// Where an artifact's files are on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactPaths {
    /// The artifact's cache folder.
    pub dir: PathBuf,
    /// Its files, in the order of the artifact's spec (primary first).
    pub files: Vec<PathBuf>,
}

impl ArtifactPaths {
    /// The main file: the model, the ONNX graph, the library.
    pub fn primary(&self) -> &Path {
        self.files
            .first()
            .map_or(self.dir.as_path(), PathBuf::as_path)
    }

    /// The file named `name` in this artifact, if it has one.
    pub fn file(&self, name: &str) -> Option<&Path> {
        self.files
            .iter()
            .find(|p| p.file_name().is_some_and(|f| f == name))
            .map(PathBuf::as_path)
    }

    pub(crate) fn of(cache_root: &Path, spec: &ArtifactSpec) -> Self {
        let dir = cache_root.join(spec.name);
        let files = spec.files.iter().map(|f| dir.join(f.name)).collect();
        Self { dir, files }
    }
}

/// The artifact called `name`, or an error listing the known names.
pub(crate) fn spec_or_err(name: &str) -> Result<&'static ArtifactSpec> {
    find_artifact(name).ok_or_else(|| Error::UnknownArtifact {
        name: name.to_string(),
        known: known_names(),
    })
}

/// The artifact's paths if every file is present with the right size (no hashing; see [`verify`]).
pub fn locate(cache_root: &Path, name: &str) -> Option<ArtifactPaths> {
    locate_spec(cache_root, find_artifact(name)?)
}

/// [`locate`] for an artifact described by the caller.
pub fn locate_spec(cache_root: &Path, spec: &ArtifactSpec) -> Option<ArtifactPaths> {
    let paths = ArtifactPaths::of(cache_root, spec);
    spec.files
        .iter()
        .zip(&paths.files)
        .all(|(f, p)| size_ok(f, p))
        .then_some(paths)
}

/// Whether the file exists with the spec's size (or is non-empty when no size is pinned).
pub(crate) fn size_ok(spec: &FileSpec, path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => match spec.size {
            Some(size) => meta.len() == size,
            None => meta.len() > 0,
        },
        _ => false,
    }
}

/// Check every file of the artifact by size and sha256; the paths on success.
///
/// Files without a pinned hash (the runtime library off x86-64) are checked against the hash
/// recorded beside them at install time (`<file>.sha256`).
pub fn verify(cache_root: &Path, name: &str) -> Result<ArtifactPaths> {
    verify_spec(cache_root, spec_or_err(name)?)
}

/// [`verify`] for an artifact described by the caller.
pub fn verify_spec(cache_root: &Path, spec: &ArtifactSpec) -> Result<ArtifactPaths> {
    let paths = ArtifactPaths::of(cache_root, spec);
    let mut missing = Vec::new();
    for (file, path) in spec.files.iter().zip(&paths.files) {
        if !size_ok(file, path) {
            missing.push(file.name);
            continue;
        }
        let expected = expected_sha256(file, path)?;
        let actual = sha256_file(path)?;
        if actual != expected {
            return Err(Error::Sha256Mismatch {
                path: path.clone(),
                expected,
                actual,
            });
        }
    }
    if missing.is_empty() {
        Ok(paths)
    } else {
        Err(Error::ArtifactMissing {
            artifact: spec.name.to_string(),
            missing: missing.join(", "),
            dir: paths.dir,
            tried: "not fetched yet (cache checked only)".to_string(),
        })
    }
}

/// The hash a cached file must have: the pinned one, or the one recorded at install time.
fn expected_sha256(file: &FileSpec, path: &Path) -> Result<String> {
    if let Some(pinned) = file.sha256 {
        return Ok(pinned.to_string());
    }
    let sidecar = sidecar_path(path);
    match std::fs::read_to_string(&sidecar) {
        Ok(text) => Ok(text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()),
        Err(source) => Err(Error::CacheIo {
            context: format!(
                "reading the recorded hash {} (fetch the artifact again)",
                sidecar.display()
            ),
            source,
        }),
    }
}

/// `<file>.sha256`: the hash recorded for a file that has no pinned one.
pub(crate) fn sidecar_path(path: &Path) -> PathBuf {
    with_suffix(path, ".sha256")
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// The sha256 of a file, lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        File::open(path).map_err(|e| io_err(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| io_err(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A cache I/O error with what was being done.
pub(crate) fn io_err(context: String, source: std::io::Error) -> Error {
    Error::CacheIo { context, source }
}

/// Create a folder and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))
}

/// Rename into place (atomic within one file system).
pub(crate) fn install(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .map_err(|e| io_err(format!("moving {} to {}", from.display(), to.display()), e))
}

/// Remove a file, ignoring "not found".
pub(crate) fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove file");
    }
}

/// An exclusive lock on one artifact's folder, held while fetching it; released on drop.
#[derive(Debug)]
pub(crate) struct FetchLock {
    _file: File,
}

impl FetchLock {
    /// Take the lock in `dir`, waiting while another process holds it.
    pub(crate) async fn acquire(dir: &Path, artifact: &str, mode: ProgressMode) -> Result<Self> {
        let path = dir.join(".fetch.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(format!("opening lock file {}", path.display()), e))?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !told {
                        mode.note(&format!(
                            "waiting for another process that is fetching {artifact} ({})",
                            path.display()
                        ));
                    }
                    told = true;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(io_err(format!("locking {}", path.display()), e));
                }
            }
        }
    }
}
