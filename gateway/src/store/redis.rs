//! The Redis store: one multiplexed `ConnectionManager`, every request-path operation bounded by
//! a timeout of a few milliseconds. After a failure the store answers "unavailable" at once
//! (never waits on a down Redis) while a probe pings every 200 ms; a metric and one log line
//! mark each change, and watchers of [`Store::watch_up`] re-sync when Redis is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::ConnectionManager;

use super::api::{Admission, BudgetCheck, RateCheck, RateOutcome, RateState, Store};
use crate::error::Error;

/// How often the probe pings while Redis is down.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// The bound on listing (admin and background work, never the request path).
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// One script for both ends of a request, so each costs one round trip and replicas never
/// interleave: settling answers (adding to spend counters) and admitting a request (its
/// budgets, then the GCRA check over every limiter). KEYS are the counters to add to, the budget
/// counters, then the limiters. ARGV[1] is `1` to charge the limiters whatever their state,
/// ARGV[2] the number of counters to add to, ARGV[3] their time to live in ms (0: none),
/// ARGV[4] the number of budget counters; then each added counter's delta, each budget's
/// limit, and per limiter its per-minute limit and cost. Answers `2, index, micro-dollars
/// spent` when a budget is spent (no limiter charged; never when charging whatever the
/// state), else `allowed`, then per limiter `remaining`, `reset_ms`, `retry_after_ms`, then
/// each budget's micro-dollars spent. The arithmetic is `api::gcra_step`'s, on Redis's
/// clock so replicas agree.
const STEP_SCRIPT: &str = r"
local force = ARGV[1] == '1'
local nc = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local nb = tonumber(ARGV[4])
for c = 1, nc do
  redis.call('INCRBYFLOAT', KEYS[c], ARGV[4 + c])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[c], ttl) end
end
local spent = {}
for b = 1, nb do
  local s = tonumber(redis.call('GET', KEYS[nc + b]) or '0') or 0
  if s >= tonumber(ARGV[4 + nc + b]) and not force then
    return {2, b - 1, math.floor(s * 1000000)}
  end
  spent[b] = math.floor(s * 1000000)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tolerance = 60000
local base = 4 + nc + nb
local tats, news, retries, intervals = {}, {}, {}, {}
local allowed = true
local n = #KEYS - nc - nb
for i = 1, n do
  local key = KEYS[nc + nb + i]
  local limit = math.max(tonumber(ARGV[base + 2 * i - 1]), 1)
  local interval = 60000 / limit
  local cost = math.min(tonumber(ARGV[base + 2 * i]), limit)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new = math.max(tat + cost * interval, now)
  tats[i], news[i], intervals[i] = tat, new, interval
  if new - now > tolerance + 1e-6 then
    retries[i] = new - tolerance - now
    allowed = false
  else
    retries[i] = 0
  end
end
if force then allowed = true end
local out = {allowed and 1 or 0}
for i = 1, n do
  local key = KEYS[nc + nb + i]
  local kept = tats[i]
  if allowed then
    kept = news[i]
    local ttl = math.ceil(kept - now) + 1000
    redis.call('SET', key, tostring(kept), 'PX', ttl)
  end
  local used = kept - now
  local remaining = math.floor((tolerance - used) / intervals[i])
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.max(math.ceil(used), 0)
  out[#out + 1] = allowed and 0 or math.ceil(retries[i])
end
for b = 1, nb do
  out[#out + 1] = spent[b]
end
return out
";

/// The store's metric handles.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// 1 while the store answers.
    pub up: Gauge,
    /// Operations that failed or timed out.
    pub errors: Counter,
}

/// The Redis backend (see the module docs).
pub struct RedisStore {
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    up_tx: tokio::sync::watch::Sender<bool>,
    probing: AtomicBool,
    script: redis::Script,
    metrics: StoreMetrics,
}

impl RedisStore {
    /// A store at `url` whose keys start with `prefix:`; operations give up after `timeout`.
    /// Connects in the background: until then the store reports itself down.
    pub fn open(
        url: &str,
        prefix: &str,
        timeout: Duration,
        metrics: StoreMetrics,
    ) -> Result<Arc<Self>, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::StoreUnavailable(format!("redis_url: {e}")))?;
        metrics.up.set(0);
        let store = Arc::new(Self {
            client,
            conn: RwLock::new(None),
            prefix: format!("{prefix}:"),
            timeout,
            up: AtomicBool::new(false),
            up_tx: tokio::sync::watch::channel(false).0,
            probing: AtomicBool::new(false),
            script: redis::Script::new(STEP_SCRIPT),
            metrics,
        });
        store.clone().start_probe();
        Ok(store)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Pings until Redis answers, then marks it up (one probe at a time).
    fn start_probe(self: Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            loop {
                if self.probe_once().await {
                    self.probing.store(false, Ordering::Release);
                    self.set_up(true, None);
                    return;
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
    }

    async fn probe_once(&self) -> bool {
        let existing = self.conn.read().clone();
        let mut conn = match existing {
            Some(c) => c,
            None => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(PROBE_EVERY)
                    .set_response_timeout(self.timeout.max(Duration::from_millis(50)))
                    .set_number_of_retries(1);
                let made = tokio::time::timeout(
                    PROBE_EVERY * 2,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await;
                match made {
                    Ok(Ok(c)) => {
                        *self.conn.write() = Some(c.clone());
                        c
                    }
                    _ => return false,
                }
            }
        };
        let ping = tokio::time::timeout(
            PROBE_EVERY,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        matches!(ping, Ok(Ok(_)))
    }

    fn set_up(&self, up: bool, why: Option<&str>) {
        if self.up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        self.metrics.up.set(i64::from(up));
        if up {
            tracing::info!(store = "redis", "shared store reachable");
        } else {
            tracing::warn!(
                store = "redis",
                error = why.unwrap_or(""),
                "shared store unreachable; limits and budgets follow store.on_unavailable until it returns"
            );
        }
        self.up_tx.send_replace(up);
    }

    /// Runs one command against Redis within `bound`, marking the store down on failure.
    async fn run<T, F, Fut>(&self, bound: Duration, f: F) -> Result<T, Error>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = match (self.up.load(Ordering::Acquire), self.conn.read().clone()) {
            (true, Some(c)) => c,
            _ => return Err(Error::StoreUnavailable("redis is unreachable".into())),
        };
        let failure = match tokio::time::timeout(bound, f(conn)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if e.kind() == redis::ErrorKind::TypeError => {
                // A value of the wrong shape is not an outage.
                return Err(Error::Internal(format!("redis: {e}")));
            }
            Ok(Err(e)) => format!("redis: {e}"),
            Err(_) => format!("redis did not answer within {} ms", bound.as_millis()),
        };
        self.metrics.errors.inc();
        self.set_up(false, Some(&failure));
        Err(Error::StoreUnavailable(failure))
    }

    fn after_failure(self: &Arc<Self>) {
        if !self.up.load(Ordering::Acquire) {
            self.clone().start_probe();
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("up", &self.up)
            .finish_non_exhaustive()
    }
}

/// Escapes glob characters so `SCAN MATCH` reads a prefix literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

/// The handle the trait's methods run on: the store behind an `Arc`, so a failure can start the
/// probe task.
#[derive(Debug, Clone)]
pub struct RedisHandle(pub Arc<RedisStore>);

impl RedisHandle {
    async fn run<T, F, Fut>(&self, bound: Duration, f: F) -> Result<T, Error>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let r = self.0.run(bound, f).await;
        if r.is_err() {
            self.0.after_failure();
        }
        r
    }
}

#[async_trait]
impl Store for RedisHandle {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Acquire)
    }

    fn remote(&self) -> bool {
        true
    }

    fn watch_up(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.up_tx.subscribe()
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let key = self.0.key(key);
        self.run(self.0.timeout, |mut c| async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        })
        .await
        .map(|v| v.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.0.key(k)).collect();
        self.run(self.0.timeout, |mut c| async move {
            redis::cmd("MGET")
                .arg(&keys)
                .query_async::<Vec<Option<Vec<u8>>>>(&mut c)
                .await
        })
        .await
        .map(|v| v.into_iter().map(|o| o.map(Bytes::from)).collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error> {
        let key = self.0.key(key);
        self.run(self.0.timeout, |mut c| async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(value.as_ref());
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
            }
            cmd.query_async::<()>(&mut c).await
        })
        .await
    }

    async fn set_if_absent(&self, key: &str, value: Bytes) -> Result<bool, Error> {
        let key = self.0.key(key);
        self.run(self.0.timeout, |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(value.as_ref())
                .arg("NX")
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
        .map(|r| r.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let key = self.0.key(key);
        self.run(self.0.timeout, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<u64>(&mut c).await
        })
        .await
        .map(|n| n > 0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, Error> {
        let pattern = glob_escape(&self.0.key(prefix));
        let strip = self.0.prefix.len();
        let mut out = self
            .run(LIST_TIMEOUT, |mut c| async move {
                let mut keys: Vec<String> = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    keys.extend(batch);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
                keys.sort();
                keys.dedup();
                let mut out = Vec::with_capacity(keys.len());
                for chunk in keys.chunks(500) {
                    let values: Vec<Option<Vec<u8>>> =
                        redis::cmd("MGET").arg(chunk).query_async(&mut c).await?;
                    for (k, v) in chunk.iter().zip(values) {
                        if let Some(v) = v {
                            out.push((k[strip..].to_owned(), Bytes::from(v)));
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn incr_many(
        &self,
        deltas: &[(String, f64)],
        ttl: Option<Duration>,
    ) -> Result<Vec<f64>, Error> {
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, delta) in deltas {
            let key = self.0.key(key);
            pipe.cmd("INCRBYFLOAT").arg(&key).arg(*delta);
            if let Some(ttl) = ttl {
                pipe.cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl.as_millis() as u64)
                    .ignore();
            }
        }
        self.run(self.0.timeout, |mut c| async move {
            pipe.query_async::<Vec<f64>>(&mut c).await
        })
        .await
    }

    async fn rate(&self, checks: &[RateCheck], force: bool) -> Result<RateOutcome, Error> {
        if checks.is_empty() {
            return Ok(RateOutcome {
                allowed: true,
                states: Vec::new(),
            });
        }
        match self.step(&[], None, &[], checks, force).await? {
            Admission::Rated { outcome, .. } => Ok(outcome),
            Admission::OverBudget { .. } => Err(Error::Internal(
                "redis: a budget answer to a rate check".into(),
            )),
        }
    }

    async fn settle(
        &self,
        deltas: &[(String, f64)],
        ttl: Option<Duration>,
        budgets: &[BudgetCheck],
        charges: &[RateCheck],
    ) -> Result<Admission, Error> {
        self.step(deltas, ttl, budgets, charges, true).await
    }

    async fn admit(
        &self,
        budgets: &[BudgetCheck],
        checks: &[RateCheck],
        force: bool,
    ) -> Result<Admission, Error> {
        self.step(&[], None, budgets, checks, force).await
    }
}

impl RedisHandle {
    /// One run of [`STEP_SCRIPT`].
    async fn step(
        &self,
        deltas: &[(String, f64)],
        ttl: Option<Duration>,
        budgets: &[BudgetCheck],
        checks: &[RateCheck],
        force: bool,
    ) -> Result<Admission, Error> {
        let mut invocation = self.0.script.prepare_invoke();
        invocation
            .arg(if force { "1" } else { "0" })
            .arg(deltas.len())
            .arg(ttl.map_or(0, |t| t.as_millis() as u64))
            .arg(budgets.len());
        for (counter, delta) in deltas {
            invocation.key(self.0.key(counter)).arg(*delta);
        }
        for budget in budgets {
            invocation
                .key(self.0.key(&budget.counter))
                .arg(budget.limit);
        }
        for check in checks {
            invocation
                .key(self.0.key(&check.key))
                .arg(check.per_minute.max(1))
                .arg(check.cost);
        }
        let reply: Vec<i64> = self
            .run(self.0.timeout, |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        if reply.first() == Some(&2) {
            let at = |i: usize| reply.get(i).copied().unwrap_or(0).max(0);
            return Ok(Admission::OverBudget {
                index: at(1) as usize,
                spent: at(2) as f64 / 1e6,
            });
        }
        let allowed = reply.first() == Some(&1);
        let states = checks
            .iter()
            .enumerate()
            .map(|(i, check)| {
                let at = |j: usize| reply.get(1 + 3 * i + j).copied().unwrap_or(0).max(0) as u64;
                RateState {
                    limit: check.per_minute.max(1),
                    remaining: at(0),
                    reset_ms: at(1),
                    retry_after_ms: at(2),
                }
            })
            .collect();
        let spent = (0..budgets.len())
            .map(|b| {
                reply
                    .get(1 + 3 * checks.len() + b)
                    .copied()
                    .unwrap_or(0)
                    .max(0) as f64
                    / 1e6
            })
            .collect();
        Ok(Admission::Rated {
            outcome: RateOutcome { allowed, states },
            spent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_matched_literally() {
        assert_eq!(glob_escape("t:spend:r*[x]"), "t:spend:r\\*\\[x\\]*");
    }
}
