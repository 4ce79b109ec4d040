//! The crate's one error type.

/// Everything that can go wrong while resolving, checking or fetching an artifact.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument was outside what the operation accepts (an empty name, a path that is not a
    /// `.gguf` file, an artifact that is not a language model).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A name that is neither a known artifact nor a path to a GGUF file.
    #[error("unknown model or artifact `{name}` (known: {known})")]
    UnknownArtifact {
        /// The name as given.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// An artifact is not in the cache and could not be fetched (or fetching was not allowed).
    #[error(
        "{artifact} is not available: missing {missing} in {dir}; {tried}; run `tandem models fetch {artifact}`"
    )]
    ArtifactMissing {
        /// The artifact's canonical name.
        artifact: String,
        /// The files that are missing, comma separated.
        missing: String,
        /// The artifact's cache folder.
        dir: std::path::PathBuf,
        /// Each source tried and why it failed.
        tried: String,
    },
    /// A file did not have the sha256 it should have (a freshly downloaded one is removed).
    #[error("sha256 mismatch for {path}: expected {expected}, got {actual}")]
    Sha256Mismatch {
        /// The file that was checked.
        path: std::path::PathBuf,
        /// The hash it should have.
        expected: String,
        /// The hash it has.
        actual: String,
    },
    /// A server could not be reached at all (name lookup, connection refused, connect timeout).
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL that was requested.
        url: String,
        /// Why the connection failed.
        reason: String,
    },
    /// A download, index lookup or wheel extraction failed.
    #[error("fetch failed: {0}")]
    Fetch(String),
    /// A file system operation in the artifact cache failed.
    #[error("{context}: {source}")]
    CacheIo {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The artifact has no build for this operating system or CPU.
    #[error("{artifact} has no build for {platform}; only linux x86_64 and aarch64 are supported")]
    UnsupportedPlatform {
        /// The artifact's canonical name.
        artifact: String,
        /// The platform this runs on.
        platform: String,
    },
}

/// Result with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
