//! The embedded store: the shared state of one process, kept in memory and made durable by an
//! append-only log in the cache directory (`state/store.log`). The log is replayed and compacted
//! at start, written through a buffer and flushed every 100 ms and at drop, and rewritten by the
//! flush thread (off the request path) when it grows past twice the live data. Rate limiters live in memory only: like a Redis restarted
//! empty, a restart starts them afresh. One process owns a log at a time (an advisory lock on
//! `store.lock` beside it); [`EmbeddedStore::open`] fails with [`Error::StoreUnavailable`] when
//! another holds it, and [`EmbeddedStore::in_memory`] is the fallback that keeps nothing.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::api::{RateCheck, RateOutcome, Store, gcra_step, now_ms};
use crate::error::Error;

/// How often buffered log lines reach the file.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Log lines allowed beyond the live entries before the log is rewritten.
const COMPACT_SLACK: usize = 10_000;

/// One log line: a set (value hex, expiry in Unix ms) or a delete.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum LogLine {
    Set {
        k: String,
        v: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        e: Option<u64>,
    },
    Delete {
        d: String,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    /// Unix ms after which the entry is gone.
    expires: Option<u64>,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

#[derive(Debug)]
struct Inner {
    map: HashMap<String, Entry>,
    /// GCRA theoretical arrival times, ms (volatile).
    rates: HashMap<String, f64>,
    /// None for a store in memory only.
    log: Option<BufWriter<File>>,
    lines: usize,
    dirty: bool,
    /// The last write failure, logged once until writes work again.
    failing: bool,
}

/// The in-process store (see the module docs).
#[derive(Debug)]
pub struct EmbeddedStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    up: tokio::sync::watch::Sender<bool>,
    /// The lock file, held until the store closes.
    lock: Mutex<Option<File>>,
}

fn now_u64() -> u64 {
    now_ms() as u64
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::StoreUnavailable(format!("embedded store {}: {e}", path.display()))
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, replaying and compacting its log; a thread
    /// flushes it every 100 ms while the store lives.
    pub fn open(path: &Path) -> Result<Arc<Self>, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_error(path, e))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, e))?;
        // A predecessor in this process may be closing: wait for it a moment.
        let mut tries = 0;
        while lock.try_lock().is_err() {
            tries += 1;
            if tries > 25 {
                return Err(Error::StoreUnavailable(format!(
                    "embedded store {} is in use by another process",
                    path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let map = replay(path)?;
        write_snapshot(path, &map)?;
        let log = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        let lines = map.len();
        let store = Arc::new(Self {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                map,
                rates: HashMap::new(),
                log: Some(BufWriter::new(log)),
                lines,
                dirty: false,
                failing: false,
            }),
            up: tokio::sync::watch::channel(true).0,
            lock: Mutex::new(Some(lock)),
        });
        spawn_flusher(Arc::downgrade(&store));
        Ok(store)
    }

    /// A store that keeps its state in memory only (lost at exit).
    pub fn in_memory() -> Arc<Self> {
        Arc::new(Self {
            path: PathBuf::from("(memory)"),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                rates: HashMap::new(),
                log: None,
                lines: 0,
                dirty: false,
                failing: false,
            }),
            up: tokio::sync::watch::channel(true).0,
            lock: Mutex::new(None),
        })
    }

    /// Writes buffered log lines to the file now.
    pub fn flush_log(&self) {
        let mut inner = self.inner.lock();
        if inner.dirty {
            if let Some(log) = inner.log.as_mut() {
                let r = log.flush();
                self.note(&mut inner, r);
            }
            inner.dirty = false;
        }
    }

    /// Logs a failed write once, and its recovery.
    fn note(&self, inner: &mut Inner, r: std::io::Result<()>) {
        match r {
            Err(e) if !inner.failing => {
                inner.failing = true;
                tracing::error!(path = %self.path.display(), error = %e, "embedded store: writing the log failed");
            }
            Ok(()) if inner.failing => {
                inner.failing = false;
                tracing::info!(path = %self.path.display(), "embedded store: writing the log works again");
            }
            _ => {}
        }
    }

    fn append(&self, inner: &mut Inner, line: &LogLine) {
        let Some(log) = inner.log.as_mut() else {
            return;
        };
        let mut text = serde_json::to_string(line).unwrap_or_default();
        text.push('\n');
        let r = log.write_all(text.as_bytes());
        self.note(inner, r);
        inner.lines += 1;
        inner.dirty = true;
    }

    /// Rewrites the log as the live entries alone once it has grown past twice them (on the
    /// flush thread). The snapshot is written and synced without the lock, so requests never
    /// wait on the disk; the lines logged meanwhile are carried over before it takes the
    /// log's place.
    fn compact_if_grown(&self) {
        let (snapshot, mark) = {
            let mut inner = self.inner.lock();
            if inner.lines <= 2 * inner.map.len() + COMPACT_SLACK {
                return;
            }
            let now = now_u64();
            inner.map.retain(|_, e| e.live(now));
            let Some(log) = inner.log.as_mut() else {
                return;
            };
            let mark = log
                .flush()
                .and_then(|()| log.get_ref().metadata())
                .map(|m| m.len());
            let Ok(mark) = mark else {
                return;
            };
            (inner.map.clone(), mark)
        };
        let tmp = self.path.with_extension("log.tmp");
        if let Err(e) = write_log(&tmp, &snapshot) {
            tracing::error!(error = %e, "embedded store: compaction failed");
            return;
        }
        let mut inner = self.inner.lock();
        let r = (|| -> std::io::Result<(File, usize)> {
            if let Some(log) = inner.log.as_mut() {
                log.flush()?;
            }
            // The lines logged since the snapshot, carried over.
            let mut since = File::open(&self.path)?;
            std::io::Seek::seek(&mut since, std::io::SeekFrom::Start(mark))?;
            let mut tail = Vec::new();
            std::io::Read::read_to_end(&mut since, &mut tail)?;
            let mut out = OpenOptions::new().append(true).open(&tmp)?;
            out.write_all(&tail)?;
            std::fs::rename(&tmp, &self.path)?;
            let carried = tail.iter().filter(|b| **b == b'\n').count();
            Ok((OpenOptions::new().append(true).open(&self.path)?, carried))
        })();
        match r {
            Ok((file, carried)) => {
                inner.log = Some(BufWriter::new(file));
                inner.lines = snapshot.len() + carried;
            }
            Err(e) => {
                let e = io_error(&self.path, e);
                tracing::error!(error = %e, "embedded store: compaction failed");
            }
        }
    }

    fn set_locked(&self, inner: &mut Inner, key: &str, value: Bytes, expires: Option<u64>) {
        self.append(
            inner,
            &LogLine::Set {
                k: key.to_owned(),
                v: hex::encode(&value),
                e: expires,
            },
        );
        inner.map.insert(key.to_owned(), Entry { value, expires });
    }

    fn live_value(inner: &Inner, key: &str, now: u64) -> Option<Bytes> {
        inner
            .map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Some(log) = self.inner.get_mut().log.as_mut() {
            let _ = log.flush();
        }
    }
}

fn spawn_flusher(store: Weak<EmbeddedStore>) {
    let spawned = std::thread::Builder::new()
        .name("tandem-store-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                match store.upgrade() {
                    Some(s) => {
                        s.flush_log();
                        s.compact_if_grown();
                    }
                    None => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "embedded store: no flush thread; the log is written on drop only");
    }
}

/// The live entries the log at `path` describes (empty when there is no log).
fn replay(path: &Path) -> Result<HashMap<String, Entry>, Error> {
    let mut map = HashMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(e) => return Err(io_error(path, e)),
    };
    let now = now_u64();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io_error(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        // A torn last line (a crash mid-write) is skipped; anything else unreadable is reported.
        match serde_json::from_str::<LogLine>(&line) {
            Ok(LogLine::Set { k, v, e }) => {
                let Ok(value) = hex::decode(&v) else {
                    tracing::warn!(path = %path.display(), line = n + 1, "embedded store: skipped a line");
                    continue;
                };
                let entry = Entry {
                    value: Bytes::from(value),
                    expires: e,
                };
                if entry.live(now) {
                    map.insert(k, entry);
                } else {
                    map.remove(&k);
                }
            }
            Ok(LogLine::Delete { d }) => {
                map.remove(&d);
            }
            Err(_) => {
                tracing::warn!(path = %path.display(), line = n + 1, "embedded store: skipped a line");
            }
        }
    }
    Ok(map)
}

/// Writes `map` as a fresh log next to `path` and moves it into place.
fn write_snapshot(path: &Path, map: &HashMap<String, Entry>) -> Result<(), Error> {
    let tmp = path.with_extension("log.tmp");
    write_log(&tmp, map)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| io_error(path, e))
}

/// Writes `map` as a log at `path`, synced to the disk.
fn write_log(path: &Path, map: &HashMap<String, Entry>) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for (k, e) in map {
        let line = LogLine::Set {
            k: k.clone(),
            v: hex::encode(&e.value),
            e: e.expires,
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn is_up(&self) -> bool {
        true
    }

    fn flush(&self) {
        self.flush_log();
    }

    fn close(&self) {
        let mut inner = self.inner.lock();
        if let Some(mut log) = inner.log.take() {
            let _ = log.flush();
        }
        // Writes from here on are kept in memory only; the next process may open the file.
        self.lock.lock().take();
    }

    fn watch_up(&self) -> tokio::sync::watch::Receiver<bool> {
        self.up.subscribe()
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        Ok(Self::live_value(&self.inner.lock(), key, now_u64()))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, Error> {
        let inner = self.inner.lock();
        let now = now_u64();
        Ok(keys
            .iter()
            .map(|k| Self::live_value(&inner, k, now))
            .collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error> {
        let expires = ttl.map(|t| now_u64() + t.as_millis() as u64);
        let mut inner = self.inner.lock();
        self.set_locked(&mut inner, key, value, expires);
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: Bytes) -> Result<bool, Error> {
        let mut inner = self.inner.lock();
        if Self::live_value(&inner, key, now_u64()).is_some() {
            return Ok(false);
        }
        self.set_locked(&mut inner, key, value, None);
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let mut inner = self.inner.lock();
        let was = Self::live_value(&inner, key, now_u64()).is_some();
        if inner.map.remove(key).is_some() {
            self.append(&mut inner, &LogLine::Delete { d: key.to_owned() });
        }
        Ok(was)
    }

    fn list_now(&self, prefix: &str) -> Option<Vec<(String, Bytes)>> {
        let inner = self.inner.lock();
        let now = now_u64();
        let mut out: Vec<(String, Bytes)> = inner
            .map
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && e.live(now))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Some(out)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, Error> {
        Ok(self.list_now(prefix).unwrap_or_default())
    }

    async fn incr_many(
        &self,
        deltas: &[(String, f64)],
        ttl: Option<Duration>,
    ) -> Result<Vec<f64>, Error> {
        let now = now_u64();
        let expires = ttl.map(|t| now + t.as_millis() as u64);
        let mut inner = self.inner.lock();
        let mut out = Vec::with_capacity(deltas.len());
        for (key, delta) in deltas {
            let old = super::api::counter_value(Self::live_value(&inner, key, now).as_ref());
            let new = old + delta;
            self.set_locked(&mut inner, key, Bytes::from(new.to_string()), expires);
            out.push(new);
        }
        Ok(out)
    }

    async fn rate(&self, checks: &[RateCheck], force: bool) -> Result<RateOutcome, Error> {
        let now = now_ms();
        let mut inner = self.inner.lock();
        let mut steps = Vec::with_capacity(checks.len());
        for check in checks {
            let tat = inner.rates.get(&check.key).copied();
            steps.push(gcra_step(tat, now, check, force));
        }
        let allowed = force || steps.iter().all(|(_, s)| s.retry_after_ms == 0);
        if allowed {
            for (check, (tat, _)) in checks.iter().zip(&steps) {
                inner.rates.insert(check.key.clone(), *tat);
            }
        }
        // Limiters idle for over a minute are full again: forget them.
        if inner.rates.len() > 100_000 {
            inner.rates.retain(|_, tat| *tat > now);
        }
        let states = if allowed {
            steps.into_iter().map(|(_, s)| s).collect()
        } else {
            // Report what was left, not what the refused request would have left.
            checks
                .iter()
                .zip(steps)
                .map(|(c, (_, s))| {
                    let tat = inner.rates.get(&c.key).copied();
                    let (_, left) = gcra_step(
                        tat,
                        now,
                        &RateCheck {
                            cost: 0.0,
                            ..c.clone()
                        },
                        true,
                    );
                    super::api::RateState {
                        retry_after_ms: s.retry_after_ms,
                        ..left
                    }
                })
                .collect()
        };
        Ok(RateOutcome { allowed, states })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_counters_and_deletes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/store.log");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.set("keys:a", Bytes::from("A"), None).await.unwrap();
            store.set("keys:b", Bytes::from("B"), None).await.unwrap();
            store
                .set("tmp", Bytes::from("x"), Some(Duration::from_millis(1)))
                .await
                .unwrap();
            assert!(store.delete("keys:b").await.unwrap());
            let v = store
                .incr_many(&[("spend".into(), 0.25), ("spend".into(), 0.5)], None)
                .await
                .unwrap();
            assert_eq!(v, vec![0.25, 0.75]);
            assert!(
                !store
                    .set_if_absent("keys:a", Bytes::from("Z"))
                    .await
                    .unwrap()
            );
            store.close();
        }
        std::thread::sleep(Duration::from_millis(5));
        let store = EmbeddedStore::open(&path).unwrap();
        let listed = store.list("keys:").await.unwrap();
        assert_eq!(listed, vec![("keys:a".to_owned(), Bytes::from("A"))]);
        assert_eq!(store.get("tmp").await.unwrap(), None);
        let spend = store.get("spend").await.unwrap();
        assert_eq!(super::super::api::counter_value(spend.as_ref()), 0.75);
    }

    #[tokio::test]
    async fn a_grown_log_is_rewritten_off_the_request_path_and_keeps_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            for _ in 0..(COMPACT_SLACK + 10) {
                store.incr_many(&[("n".into(), 1.0)], None).await.unwrap();
            }
            // The flush thread may have got there first; either way it is done once.
            store.compact_if_grown();
            // Writes after the rewrite land in the new log.
            store.incr_many(&[("n".into(), 1.0)], None).await.unwrap();
            store.flush_log();
            let after = std::fs::read_to_string(&path).unwrap().lines().count();
            assert!(after <= 3, "{after} lines");
            store.close();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let n = store.get("n").await.unwrap();
        assert_eq!(
            super::super::api::counter_value(n.as_ref()),
            (COMPACT_SLACK + 11) as f64
        );
    }

    #[tokio::test]
    async fn a_second_opener_of_the_same_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let first = EmbeddedStore::open(&path).unwrap();
        assert!(matches!(
            EmbeddedStore::open(&path),
            Err(Error::StoreUnavailable(_))
        ));
        first.close();
        EmbeddedStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        std::fs::write(&path, "{\"k\":\"a\",\"v\":\"41\"}\n{\"k\":\"b\",\"v\":").unwrap();
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.get("a").await.unwrap(), Some(Bytes::from("A")));
        assert_eq!(store.get("b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_refused_rate_check_charges_no_limiter() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.log")).unwrap();
        let checks = |cost| {
            vec![
                RateCheck {
                    key: "a".into(),
                    per_minute: 100,
                    cost,
                },
                RateCheck {
                    key: "b".into(),
                    per_minute: 2,
                    cost: 1.0,
                },
            ]
        };
        assert!(store.rate(&checks(10.0), false).await.unwrap().allowed);
        assert!(store.rate(&checks(10.0), false).await.unwrap().allowed);
        let refused = store.rate(&checks(10.0), false).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.states[0].remaining, 80);
        assert_eq!(refused.states[1].remaining, 0);
        assert!(refused.states[1].retry_after_ms > 0);
    }
}
