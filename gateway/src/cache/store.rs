//! Where cached answers live: the [`CacheStore`] interface and its two backends, the embedded
//! store in the cache directory (the default: survives a restart, one process) and Redis (shared
//! by every replica). Every call is bounded by the caller's timeout; a store that fails or is slow
//! makes the cache step a bypass, never an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::Error;

/// A cached value and when it expires (Unix milliseconds).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The entry as the cache wrote it.
    pub value: Bytes,
    /// When it stops answering.
    pub expires_ms: u64,
}

/// A key-value store with expiry, plus the list of entries that carry a prompt embedding (the
/// semantic index is rebuilt from it at start).
#[async_trait]
pub trait CacheStore: Send + Sync + std::fmt::Debug {
    /// The value under `key`, None when absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error>;
    /// Stores `value` under `key` until `expires_ms`; `indexed` adds the key to the semantic set.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expires_ms: u64,
        indexed: bool,
    ) -> Result<(), Error>;
    /// Up to `limit` live entries of the semantic set, newest first.
    async fn indexed(&self, limit: usize) -> Result<Vec<(String, Bytes)>, Error>;
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The embedded store: entries in memory, written through to one file each under a directory
/// (the cache directory's `response-cache/`), read back at start. Bounded: past `capacity`,
/// expired entries go first, then the ones closest to expiry.
#[derive(Debug)]
pub struct EmbeddedStore {
    dir: PathBuf,
    capacity: usize,
    entries: Mutex<HashMap<String, (Stored, bool)>>,
}

/// The file suffix of an entry.
const ENTRY_SUFFIX: &str = ".entry";

impl EmbeddedStore {
    /// Opens the store in `dir`, loading the entries that have not expired (blocking IO; once at
    /// start). A directory that cannot be read starts empty (and is logged).
    pub fn open(dir: PathBuf, capacity: usize) -> Self {
        let mut entries = HashMap::new();
        let now = now_ms();
        match std::fs::read_dir(&dir) {
            Ok(list) => {
                for file in list.flatten() {
                    let path = file.path();
                    let Some(key) = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(ENTRY_SUFFIX))
                        .map(str::to_owned)
                    else {
                        continue;
                    };
                    match std::fs::read(&path).ok().and_then(|b| decode_file(&b)) {
                        Some((stored, indexed)) if stored.expires_ms > now => {
                            entries.insert(key, (stored, indexed));
                        }
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the response cache; starting empty")
            }
        }
        let store = Self {
            dir,
            capacity: capacity.max(1),
            entries: Mutex::new(entries),
        };
        store.evict();
        store
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}{ENTRY_SUFFIX}"))
    }

    /// Drops entries past the capacity (expired ones first, then the soonest to expire), with
    /// their files.
    fn evict(&self) {
        let mut entries = self.entries.lock();
        if entries.len() <= self.capacity {
            return;
        }
        let now = now_ms();
        let mut gone: Vec<String> = entries
            .iter()
            .filter(|(_, (s, _))| s.expires_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            entries.remove(k);
        }
        if entries.len() > self.capacity {
            let mut by_expiry: Vec<(u64, String)> = entries
                .iter()
                .map(|(k, (s, _))| (s.expires_ms, k.clone()))
                .collect();
            by_expiry.sort_unstable();
            let over = entries.len() - self.capacity;
            for (_, k) in by_expiry.into_iter().take(over) {
                entries.remove(&k);
                gone.push(k);
            }
        }
        drop(entries);
        let paths: Vec<PathBuf> = gone.iter().map(|k| self.path(k)).collect();
        remove_files(paths);
    }
}

/// Removes files off the async workers when a runtime is there.
fn remove_files(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let work = move || {
        for p in paths {
            let _ = std::fs::remove_file(p);
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(work)),
        Err(_) => work(),
    }
}

/// An entry file: `<expires_ms> <indexed 0|1>\n` then the value.
fn encode_file(stored: &Stored, indexed: bool) -> Vec<u8> {
    let mut out = format!("{} {}\n", stored.expires_ms, u8::from(indexed)).into_bytes();
    out.extend_from_slice(&stored.value);
    out
}

fn decode_file(bytes: &[u8]) -> Option<(Stored, bool)> {
    let newline = bytes.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..newline]).ok()?;
    let (expires, indexed) = head.split_once(' ')?;
    Some((
        Stored {
            value: Bytes::copy_from_slice(&bytes[newline + 1..]),
            expires_ms: expires.parse().ok()?,
        },
        indexed == "1",
    ))
}

fn write_entry(dir: &Path, path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[async_trait]
impl CacheStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let now = now_ms();
        let mut entries = self.entries.lock();
        match entries.get(key) {
            Some((s, _)) if s.expires_ms > now => Ok(Some(s.value.clone())),
            Some(_) => {
                entries.remove(key);
                drop(entries);
                remove_files(vec![self.path(key)]);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expires_ms: u64,
        indexed: bool,
    ) -> Result<(), Error> {
        let stored = Stored { value, expires_ms };
        let contents = encode_file(&stored, indexed);
        self.entries
            .lock()
            .insert(key.to_owned(), (stored, indexed));
        self.evict();
        let (dir, path) = (self.dir.clone(), self.path(key));
        tokio::task::spawn_blocking(move || write_entry(&dir, &path, &contents))
            .await
            .map_err(|e| Error::Internal(format!("cache write task: {e}")))?
            .map_err(|e| Error::Internal(format!("cache write in {}: {e}", self.dir.display())))
    }

    async fn indexed(&self, limit: usize) -> Result<Vec<(String, Bytes)>, Error> {
        let now = now_ms();
        let entries = self.entries.lock();
        let mut live: Vec<(u64, String, Bytes)> = entries
            .iter()
            .filter(|(_, (s, indexed))| *indexed && s.expires_ms > now)
            .map(|(k, (s, _))| (s.expires_ms, k.clone(), s.value.clone()))
            .collect();
        live.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        Ok(live
            .into_iter()
            .take(limit)
            .map(|(_, k, v)| (k, v))
            .collect())
    }
}

/// How long a replica waits after a failed connection before trying again: a Redis that is down
/// costs a request nothing but the check.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How long opening a connection may take; it runs off the request path (a request waits for it
/// no longer than its command timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis: `SET key value PXAT expires` per entry, and a sorted set of the semantic entries'
/// keys scored by expiry. One multiplexed connection, opened in the background at start and
/// again after a failure (at most once per [`RECONNECT_AFTER`]).
pub struct RedisStore {
    prefix: String,
    timeout: Duration,
    link: Arc<Link>,
}

/// The connection and its background opener.
struct Link {
    client: redis::Client,
    conn: Mutex<Option<redis::aio::ConnectionManager>>,
    /// Whether an opener runs, and when the last one failed.
    opening: Mutex<(bool, Option<Instant>)>,
    opened: tokio::sync::Notify,
}

impl Link {
    /// Starts an opener unless one runs or the last one failed too recently.
    fn open_in_background(self: &Arc<Self>) {
        {
            let mut opening = self.opening.lock();
            let (running, failed_at) = *opening;
            if running || failed_at.is_some_and(|t| t.elapsed() < RECONNECT_AFTER) {
                return;
            }
            opening.0 = true;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.opening.lock().0 = false;
            return;
        };
        let link = self.clone();
        rt.spawn(async move {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_number_of_retries(1);
            let open = redis::aio::ConnectionManager::new_with_config(link.client.clone(), config);
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, open).await;
            let ok = matches!(opened, Ok(Ok(_)));
            if let Ok(Ok(conn)) = opened {
                *link.conn.lock() = Some(conn);
            }
            *link.opening.lock() = (false, (!ok).then(Instant::now));
            link.opened.notify_waiters();
        });
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `url` with keys under `<prefix>:cache:`; every command is bounded by `timeout`.
    /// The connection opens in the background.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Internal(format!("redis url for the cache: {e}")))?;
        let link = Arc::new(Link {
            client,
            conn: Mutex::new(None),
            opening: Mutex::new((false, None)),
            opened: tokio::sync::Notify::new(),
        });
        link.open_in_background();
        Ok(Self {
            prefix: format!("{prefix}:cache"),
            timeout,
            link,
        })
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}:semantic", self.prefix)
    }

    /// The connection; without one, an opener starts and the request waits for it no longer
    /// than the command timeout.
    async fn connection(&self) -> Result<redis::aio::ConnectionManager, Error> {
        let opened = self.link.opened.notified();
        if let Some(c) = self.link.conn.lock().clone() {
            return Ok(c);
        }
        self.link.open_in_background();
        if self.link.opening.lock().0 {
            let _ = tokio::time::timeout(self.timeout, opened).await;
        }
        self.link
            .conn
            .lock()
            .clone()
            .ok_or_else(|| Error::Internal("redis is unreachable".into()))
    }

    /// Runs one command or pipeline within the timeout (the connection manager reconnects by
    /// itself after a failure).
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce(redis::aio::ConnectionManager) -> Fut + Send,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
    {
        let conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(r) => r.map_err(redis_error),
            Err(_) => Err(Error::Internal("redis command timed out".into())),
        }
    }
}

fn redis_error(e: redis::RedisError) -> Error {
    Error::Internal(format!("redis: {e}"))
}

#[async_trait]
impl CacheStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let key = self.entry_key(key);
        let value: Option<Vec<u8>> = self
            .run(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expires_ms: u64,
        indexed: bool,
    ) -> Result<(), Error> {
        let entry = self.entry_key(key);
        let index = self.index_key();
        let member = key.to_owned();
        self.run(|mut c| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&entry)
                .arg(value.as_ref())
                .arg("PXAT")
                .arg(expires_ms)
                .ignore();
            if indexed {
                pipe.cmd("ZADD")
                    .arg(&index)
                    .arg(expires_ms)
                    .arg(&member)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&index)
                    .arg("-inf")
                    .arg(now_ms())
                    .ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    async fn indexed(&self, limit: usize) -> Result<Vec<(String, Bytes)>, Error> {
        let index = self.index_key();
        let keys: Vec<String> = self
            .run(|mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg("+inf")
                    .arg(now_ms())
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<String> = keys.iter().map(|k| self.entry_key(k)).collect();
        let values: Vec<Option<Vec<u8>>> = self
            .run(|mut c| async move { redis::cmd("MGET").arg(&entries).query_async(&mut c).await })
            .await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k, Bytes::from(v?))))
            .collect())
    }
}

/// The store the cache uses: Redis when configured, else the embedded one.
pub fn open(
    redis_url: Option<&str>,
    prefix: &str,
    dir: PathBuf,
    capacity: usize,
    timeout: Duration,
) -> Result<Arc<dyn CacheStore>, Error> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisStore::new(url, prefix, timeout)?),
        None => Arc::new(EmbeddedStore::open(dir, capacity)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_embedded_store_survives_a_reopen_and_forgets_expired_entries() {
        let dir = tempfile::tempdir().unwrap();
        let later = now_ms() + 60_000;
        {
            let store = EmbeddedStore::open(dir.path().to_path_buf(), 10);
            store
                .put("a", Bytes::from_static(b"one"), later, true)
                .await
                .unwrap();
            store
                .put("b", Bytes::from_static(b"two"), now_ms() + 1, false)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let store = EmbeddedStore::open(dir.path().to_path_buf(), 10);
        assert_eq!(store.get("a").await.unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.get("b").await.unwrap(), None);
        let indexed = store.indexed(10).await.unwrap();
        assert_eq!(indexed.len(), 1);
        assert_eq!(indexed[0].0, "a");
    }

    #[tokio::test]
    async fn the_embedded_store_keeps_its_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().to_path_buf(), 2);
        let base = now_ms() + 60_000;
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            store
                .put(k, Bytes::from_static(b"x"), base + i as u64, false)
                .await
                .unwrap();
        }
        assert_eq!(
            store.get("a").await.unwrap(),
            None,
            "the soonest to expire goes"
        );
        assert!(store.get("c").await.unwrap().is_some());
    }
}
