//! The router's online-learning state shared across replicas through Redis, by addition: every
//! replica adds what it learned since its last sync to one set of sums and reads back the sums
//! of all of them, so concurrent replicas add up and none overwrites another's counts.
//!
//! The sums are one hash, `<prefix>:bandit:sums`, with one field per arm and statistic
//! (`<arm>/n/0`, `<arm>/b/<i>`, `<arm>/a/<i>`: the update count, Σ reward·x and Σ x·xᵀ row-major)
//! and a marker field. A sync is one `MULTI`/`EXEC`: `HINCRBYFLOAT` per statistic that moved,
//! then `HGETALL`. The caller rebases its bandit on the sums ([`tandem_router_policy::Router::
//! rebase_bandit`]). A hash without the marker (new, or Redis restarted empty) gets this
//! replica's whole state, not a difference from sums it no longer holds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::Mutex;
use tandem_router_policy::bandit::{ArmState, CONTEXT_DIM};
use tandem_router_policy::{BanditState, Error, Result};

/// How long a connection attempt may take before the store reports Redis as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The marker field: present once any replica has synced into the hash.
const MARKER: &str = "_tandem";

/// The bandit's shared sums in Redis.
#[derive(Debug)]
pub struct RedisBanditStore {
    client: redis::Client,
    key: String,
    /// The sums as last read: what this replica's bandit was rebased on, so the next sync adds
    /// only what it learned since.
    synced: Mutex<Option<BanditState>>,
}

impl RedisBanditStore {
    /// A store at `url` (`redis://host:port/db`) whose key starts with `prefix`.
    pub fn new(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(store_error)?;
        Ok(Self {
            client,
            key: format!("{prefix}:bandit:sums"),
            synced: Mutex::new(None),
        })
    }

    fn connection(&self) -> Result<redis::Connection> {
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

    /// The sums of every replica (None when no replica synced yet). Blocking IO.
    pub fn load(&self) -> Result<Option<BanditState>> {
        let mut conn = self.connection()?;
        let fields: HashMap<String, f64> = redis::cmd("HGETALL")
            .arg(&self.key)
            .query(&mut conn)
            .map_err(store_error)?;
        if !fields.contains_key(MARKER) {
            return Ok(None);
        }
        parse(&fields).map(Some)
    }

    /// Adds what `local` learned since the last sync to the shared sums, atomically, and returns
    /// the sums of every replica; the caller rebases its bandit on them with `local` as the
    /// base. Blocking IO.
    pub fn sync(&self, local: &BanditState) -> Result<BanditState> {
        let mut conn = self.connection()?;
        let kept: bool = redis::cmd("HEXISTS")
            .arg(&self.key)
            .arg(MARKER)
            .query(&mut conn)
            .map_err(store_error)?;
        let since = if kept {
            self.synced.lock().clone()
        } else {
            None
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (field, delta) in deltas(local, since.as_ref()) {
            pipe.cmd("HINCRBYFLOAT")
                .arg(&self.key)
                .arg(field)
                .arg(delta)
                .ignore();
        }
        pipe.cmd("HSET").arg(&self.key).arg(MARKER).arg(1).ignore();
        pipe.cmd("HGETALL").arg(&self.key);
        let (fields,): (HashMap<String, f64>,) = pipe.query(&mut conn).map_err(store_error)?;
        let merged = parse(&fields)?;
        *self.synced.lock() = Some(merged.clone());
        Ok(merged)
    }
}

/// The statistics of `local` that moved since `since` (everything when None), as hash fields
/// and the amounts to add. Arms whose update count did not move are left out.
fn deltas(local: &BanditState, since: Option<&BanditState>) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (arm, now) in &local.arms {
        let before = since.and_then(|s| s.arms.get(arm));
        if before.is_some_and(|b| b.n == now.n) {
            continue;
        }
        let n0 = before.map_or(0, |b| b.n);
        out.push((format!("{arm}/n/0"), now.n.saturating_sub(n0) as f64));
        for (i, v) in now.b.iter().enumerate() {
            let d = f64::from(*v) - before.map_or(0.0, |b| f64::from(b.b[i]));
            if d != 0.0 {
                out.push((format!("{arm}/b/{i}"), d));
            }
        }
        for (i, v) in now.design.iter().enumerate() {
            let d = f64::from(*v) - before.map_or(0.0, |b| f64::from(b.design[i]));
            if d != 0.0 {
                out.push((format!("{arm}/a/{i}"), d));
            }
        }
    }
    out
}

/// The bandit state the hash's sums describe.
fn parse(fields: &HashMap<String, f64>) -> Result<BanditState> {
    let d = CONTEXT_DIM;
    let mut sums: BTreeMap<String, (Vec<f32>, Vec<f32>, u64)> = BTreeMap::new();
    for (field, value) in fields {
        if field == MARKER {
            continue;
        }
        let mut parts = field.rsplitn(3, '/');
        let (index, stat, arm) = match (parts.next(), parts.next(), parts.next()) {
            (Some(i), Some(stat), Some(arm)) => match i.parse::<usize>() {
                Ok(i) => (i, stat, arm),
                Err(_) => return Err(bad_field(field)),
            },
            _ => return Err(bad_field(field)),
        };
        let entry = sums
            .entry(arm.to_owned())
            .or_insert_with(|| (vec![0.0; d * d], vec![0.0; d], 0));
        match stat {
            "n" if index == 0 => entry.2 = value.round().max(0.0) as u64,
            "b" if index < d => entry.1[index] = *value as f32,
            "a" if index < d * d => entry.0[index] = *value as f32,
            _ => return Err(bad_field(field)),
        }
    }
    let mut state = BanditState::default();
    for (arm, (design, b, n)) in sums {
        state.arms.insert(arm, ArmState::from_sums(design, b, n)?);
    }
    Ok(state)
}

fn bad_field(field: &str) -> Error {
    Error::Store(format!("redis bandit sums: unexpected field `{field}`"))
}

fn store_error(e: redis::RedisError) -> Error {
    Error::Store(format!("redis: {e}"))
}

#[cfg(test)]
mod tests {
    use tandem_router_policy::bandit::LinUcb;

    use super::*;

    #[test]
    fn only_what_moved_since_the_last_sync_is_added() {
        let bandit = LinUcb::new(0.5);
        let x: Vec<f32> = (0..CONTEXT_DIM).map(|i| i as f32 / 10.0).collect();
        bandit.update("cloud", &x, 1.0).unwrap();
        let first = bandit.state();
        let all = deltas(&first, None);
        assert!(all.contains(&("cloud/n/0".into(), 1.0)));
        assert!(deltas(&first, Some(&first)).is_empty());
        bandit.update("cloud", &x, 0.0).unwrap();
        let moved = deltas(&bandit.state(), Some(&first));
        assert!(moved.contains(&("cloud/n/0".into(), 1.0)));
        // A reward of 0 moves the design, not b.
        assert!(moved.iter().all(|(f, _)| !f.starts_with("cloud/b/")));
        let fields: HashMap<String, f64> = all.into_iter().collect();
        let parsed = parse(&fields).unwrap();
        assert_eq!(parsed.arms["cloud"].n, 1);
    }
}
