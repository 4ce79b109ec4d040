//! Redis-backed persistence for the router's online-learning state, so replicas share what
//! feedback taught them.
//!
//! The state is one JSON document under `<prefix>:bandit:state` with a version counter under
//! `<prefix>:bandit:version`. A save is an optimistic transaction (`WATCH` the version, write both
//! in `MULTI`/`EXEC`, retry on conflict), so two replicas saving at once never interleave a torn
//! document. Each replica reloads when the version moves ([`RedisBanditStore::load_if_newer`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tandem_router_policy::{BanditState, BanditStore};

/// How long a connection attempt may take before the store reports Redis as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a save retries when another replica wrote between its `WATCH` and `EXEC`.
const MAX_SAVE_ATTEMPTS: usize = 64;

/// A [`BanditStore`] in Redis.
#[derive(Debug)]
pub struct RedisBanditStore {
    client: redis::Client,
    state_key: String,
    version_key: String,
    /// The version this replica last loaded or saved.
    seen_version: AtomicU64,
}

impl RedisBanditStore {
    /// A store at `url` (`redis://host:port/db`) whose keys start with `prefix`.
    pub fn new(url: &str, prefix: &str) -> tandem_router_policy::Result<Self> {
        let client = redis::Client::open(url).map_err(store_error)?;
        Ok(Self {
            client,
            state_key: format!("{prefix}:bandit:state"),
            version_key: format!("{prefix}:bandit:version"),
            seen_version: AtomicU64::new(0),
        })
    }

    fn connection(&self) -> tandem_router_policy::Result<redis::Connection> {
        let conn = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(store_error)?;
        conn.set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(store_error)?;
        conn.set_write_timeout(Some(CONNECT_TIMEOUT))
            .map_err(store_error)?;
        Ok(conn)
    }

    /// The version of the state now in Redis (0 when nothing was saved).
    pub fn version(&self) -> tandem_router_policy::Result<u64> {
        let mut conn = self.connection()?;
        let v: Option<u64> = redis::cmd("GET")
            .arg(&self.version_key)
            .query(&mut conn)
            .map_err(store_error)?;
        Ok(v.unwrap_or(0))
    }

    /// The state in Redis when another replica saved since this one last loaded or saved.
    pub fn load_if_newer(&self) -> tandem_router_policy::Result<Option<BanditState>> {
        let (version, state) = self.read()?;
        if version > self.seen_version.load(Ordering::Acquire) {
            self.seen_version.store(version, Ordering::Release);
            Ok(state)
        } else {
            Ok(None)
        }
    }

    fn read(&self) -> tandem_router_policy::Result<(u64, Option<BanditState>)> {
        let mut conn = self.connection()?;
        let (version, text): (Option<u64>, Option<String>) = redis::pipe()
            .atomic()
            .get(&self.version_key)
            .get(&self.state_key)
            .query(&mut conn)
            .map_err(store_error)?;
        let state = text
            .map(|t| serde_json::from_str::<BanditState>(&t))
            .transpose()
            .map_err(|e| {
                tandem_router_policy::Error::Store(format!(
                    "redis key {} does not hold bandit state: {e}",
                    self.state_key
                ))
            })?;
        Ok((version.unwrap_or(0), state))
    }
}

impl BanditStore for RedisBanditStore {
    fn load(&self) -> tandem_router_policy::Result<Option<BanditState>> {
        let (version, state) = self.read()?;
        self.seen_version.store(version, Ordering::Release);
        Ok(state)
    }

    fn save(&self, state: &BanditState) -> tandem_router_policy::Result<()> {
        let json = serde_json::to_string(state)
            .map_err(|e| tandem_router_policy::Error::Store(e.to_string()))?;
        let mut conn = self.connection()?;
        for _ in 0..MAX_SAVE_ATTEMPTS {
            redis::cmd("WATCH")
                .arg(&self.version_key)
                .query::<()>(&mut conn)
                .map_err(store_error)?;
            // `EXEC` answers nil when the watched version moved: another replica saved first.
            let done: Option<(u64,)> = redis::pipe()
                .atomic()
                .set(&self.state_key, &json)
                .ignore()
                .incr(&self.version_key, 1u64)
                .query(&mut conn)
                .map_err(store_error)?;
            if let Some((version,)) = done {
                self.seen_version.store(version, Ordering::Release);
                return Ok(());
            }
        }
        Err(tandem_router_policy::Error::Store(format!(
            "redis save of {} lost {MAX_SAVE_ATTEMPTS} races with other replicas",
            self.state_key
        )))
    }
}

fn store_error(e: redis::RedisError) -> tandem_router_policy::Error {
    tandem_router_policy::Error::Store(format!("redis: {e}"))
}
