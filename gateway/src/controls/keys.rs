//! Virtual keys: API keys made and revoked at run time through the admin API, each with its own
//! allowed models, rate limits, budgets, placement and metadata. A key's record lives in the
//! shared store under `keys:<id>` with the sha256 digest of the key, never the key itself.
//! Every replica holds all records in memory (auth reads them without a store round trip) and
//! re-reads them every 250 ms, so a revocation reaches every replica within a second. Revoked
//! keys stay as records (tombstones), so no replica can bring one back.
//!
//! Durability with Redis: each replica also keeps the records it last saw in
//! `<cache_dir>/state/keys.json`. When Redis comes back empty (its marker `meta:keys` gone), the
//! replica writes the records it knows back (only where absent), so keys survive a Redis that
//! lost its data; Redis persistence (AOF) keeps them too.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_router_policy::Placement;

use crate::error::Error;
use crate::store::{SharedStore, get_json, set_json};

/// How often each replica re-reads the key records.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// Where the records live in the store.
const KEY_PREFIX: &str = "keys:";
/// Present while the store holds the key records; gone after Redis restarted empty.
const MARKER: &str = "meta:keys";

/// One virtual key, as stored (the key itself is never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualKey {
    /// Its public id (`vk_...`), what the admin API and spend reports name it by.
    pub id: String,
    /// sha256 hex digest of the key.
    pub hash: String,
    /// The key's first characters, to recognise it by.
    pub prefix: String,
    /// The limits and rules.
    #[serde(flatten)]
    pub spec: KeySpec,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

impl VirtualKey {
    /// Whether requests may use it.
    pub fn is_live(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// Whether the key may call `model` (every model when its list is empty).
    pub fn allows_model(&self, model: &str) -> bool {
        self.spec.models.is_empty() || self.spec.models.iter().any(|m| m == model)
    }
}

/// What a key may do: everything the admin API sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Models (routes) it may call; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt and completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// US dollars per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_daily_usd: Option<f64>,
    /// US dollars per UTC month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_monthly_usd: Option<f64>,
    /// `local-only` or `cloud-only` for every request made with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Free-form labels (`team`, `user`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl KeySpec {
    /// Refuses values no key can have, naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, v) in [
            ("requests_per_minute", self.requests_per_minute),
            ("tokens_per_minute", self.tokens_per_minute),
        ] {
            if v == Some(0) {
                return Err(Error::invalid(
                    format!("{name} must be at least 1 (leave it out for no limit)"),
                    Some(name),
                ));
            }
        }
        for (name, v) in [
            ("budget_daily_usd", self.budget_daily_usd),
            ("budget_monthly_usd", self.budget_monthly_usd),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(Error::invalid(
                    format!("{name} must be a number of dollars, 0 or more"),
                    Some(name),
                ));
            }
        }
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err(Error::invalid("models has an empty name", Some("models")));
        }
        Ok(())
    }
}

/// A change to a key: each field given replaces the key's (`null` clears it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    /// See [`KeySpec`].
    #[serde(default, deserialize_with = "some")]
    pub name: Option<Option<String>>,
    /// See [`KeySpec`].
    pub models: Option<Vec<String>>,
    /// See [`KeySpec`].
    #[serde(default, deserialize_with = "some")]
    pub requests_per_minute: Option<Option<u64>>,
    /// See [`KeySpec`].
    #[serde(default, deserialize_with = "some")]
    pub tokens_per_minute: Option<Option<u64>>,
    /// See [`KeySpec`].
    #[serde(default, deserialize_with = "some")]
    pub budget_daily_usd: Option<Option<f64>>,
    /// See [`KeySpec`].
    #[serde(default, deserialize_with = "some")]
    pub budget_monthly_usd: Option<Option<f64>>,
    /// See [`KeySpec`].
    #[serde(default, deserialize_with = "some")]
    pub placement: Option<Option<Placement>>,
    /// See [`KeySpec`].
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A present field (even `null`) as `Some`, so a patch can clear a value.
fn some<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl KeyPatch {
    fn apply(self, spec: &mut KeySpec) {
        if let Some(v) = self.name {
            spec.name = v;
        }
        if let Some(v) = self.models {
            spec.models = v;
        }
        if let Some(v) = self.requests_per_minute {
            spec.requests_per_minute = v;
        }
        if let Some(v) = self.tokens_per_minute {
            spec.tokens_per_minute = v;
        }
        if let Some(v) = self.budget_daily_usd {
            spec.budget_daily_usd = v;
        }
        if let Some(v) = self.budget_monthly_usd {
            spec.budget_monthly_usd = v;
        }
        if let Some(v) = self.placement {
            spec.placement = v;
        }
        if let Some(v) = self.metadata {
            spec.metadata = v;
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh key (`sk-tandem-` and 48 random hex digits) and its id.
fn new_key() -> (String, String) {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    let key = format!("sk-tandem-{}{}", &a, &b[..16]);
    let id = format!("vk_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    (key, id)
}

/// Every virtual key, in memory, kept in step with the store.
#[derive(Debug)]
pub struct KeyRegistry {
    store: SharedStore,
    by_hash: RwLock<HashMap<[u8; 32], Arc<VirtualKey>>>,
    /// Set once any key was ever made: from then on requests need a key.
    any: AtomicBool,
    /// The replica's copy of the records (with Redis), for a Redis that lost them.
    mirror: Option<PathBuf>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// Logs a failed refresh once until one works.
    failing: Mutex<bool>,
}

impl KeyRegistry {
    /// A registry over `store`; `mirror` is the replica's copy of the records (with Redis).
    pub fn new(store: SharedStore, mirror: Option<PathBuf>) -> Self {
        let registry = Self {
            store,
            by_hash: RwLock::new(HashMap::new()),
            any: AtomicBool::new(false),
            mirror,
            refreshing: tokio::sync::Mutex::new(()),
            failing: Mutex::new(false),
        };
        // Until the store answers, the mirror's records are what this replica knows.
        if let Some(records) = registry.read_mirror() {
            registry.replace(records);
        }
        registry
    }

    /// The record of the key whose digest is `digest`, revoked or not.
    pub fn lookup(&self, digest: &[u8; 32]) -> Option<Arc<VirtualKey>> {
        self.by_hash.read().get(digest).cloned()
    }

    /// Whether requests need a key because virtual keys exist.
    pub fn enforced(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    fn replace(&self, records: Vec<VirtualKey>) {
        let mut map = HashMap::with_capacity(records.len());
        for record in records {
            if let Some(digest) = hex::decode(&record.hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            {
                map.insert(digest, Arc::new(record));
            }
        }
        if !map.is_empty() {
            self.any.store(true, Ordering::Release);
        }
        *self.by_hash.write() = map;
    }

    fn known(&self) -> Vec<VirtualKey> {
        let mut v: Vec<VirtualKey> = self
            .by_hash
            .read()
            .values()
            .map(|k| (**k).clone())
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    fn read_mirror(&self) -> Option<Vec<VirtualKey>> {
        let path = self.mirror.as_ref()?;
        let text = std::fs::read(path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(records) => Some(records),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the key mirror does not parse; ignored");
                None
            }
        }
    }

    fn write_mirror(&self, records: &[VirtualKey]) {
        let Some(path) = &self.mirror else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(records).unwrap_or_default())?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "writing the key mirror failed");
        }
    }

    /// Re-reads every record from the store; puts back what this replica knows when the store
    /// lost them.
    pub async fn refresh(&self) -> Result<(), Error> {
        let _one = self.refreshing.lock().await;
        let marker = self.store.get(MARKER).await?;
        if marker.is_none() {
            let known = self.known();
            for record in &known {
                let bytes =
                    serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
                self.store
                    .set_if_absent(&format!("{KEY_PREFIX}{}", record.id), Bytes::from(bytes))
                    .await?;
            }
            if !known.is_empty() {
                tracing::info!(
                    keys = known.len(),
                    "the store had no key records; restored the ones this replica knew"
                );
            }
            self.store
                .set(MARKER, Bytes::from_static(b"1"), None)
                .await?;
        }
        let listed = self.store.list(KEY_PREFIX).await?;
        let mut records = Vec::with_capacity(listed.len());
        for (key, value) in listed {
            match serde_json::from_slice::<VirtualKey>(&value) {
                Ok(r) => records.push(r),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "a key record does not parse; skipped")
                }
            }
        }
        records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let changed = records != self.known();
        if changed {
            self.write_mirror(&records);
        }
        self.replace(records);
        Ok(())
    }

    /// Makes a key; the key itself is in the answer and nowhere else.
    pub async fn create(&self, spec: KeySpec) -> Result<(VirtualKey, String), Error> {
        spec.validate()?;
        let (key, id) = new_key();
        let record = VirtualKey {
            id: id.clone(),
            hash: hex::encode(Sha256::digest(key.as_bytes())),
            prefix: key[..14].to_owned(),
            spec,
            created_at: unix_now(),
            revoked_at: None,
        };
        set_json(&*self.store, &format!("{KEY_PREFIX}{id}"), &record).await?;
        self.refresh_after_write().await;
        Ok((record, key))
    }

    /// Every record, oldest first.
    pub async fn list(&self) -> Result<Vec<VirtualKey>, Error> {
        self.refresh().await?;
        Ok(self.known())
    }

    /// One record.
    pub async fn get(&self, id: &str) -> Result<VirtualKey, Error> {
        get_json::<VirtualKey>(&*self.store, &format!("{KEY_PREFIX}{id}"))
            .await?
            .ok_or_else(|| Error::UnknownKey(id.to_owned()))
    }

    /// Changes a key's rules.
    pub async fn update(&self, id: &str, patch: KeyPatch) -> Result<VirtualKey, Error> {
        let mut record = self.get(id).await?;
        patch.apply(&mut record.spec);
        record.spec.validate()?;
        set_json(&*self.store, &format!("{KEY_PREFIX}{id}"), &record).await?;
        self.refresh_after_write().await;
        Ok(record)
    }

    /// Revokes a key for good (its record stays, marked).
    pub async fn revoke(&self, id: &str) -> Result<VirtualKey, Error> {
        let mut record = self.get(id).await?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(unix_now());
            set_json(&*self.store, &format!("{KEY_PREFIX}{id}"), &record).await?;
        }
        self.refresh_after_write().await;
        Ok(record)
    }

    async fn refresh_after_write(&self) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "re-reading the keys after a change failed");
        }
    }

    async fn refresh_logged(&self) {
        let r = self.refresh().await;
        let mut failing = self.failing.lock();
        match r {
            Err(e) if !*failing => {
                *failing = true;
                tracing::warn!(error = %e, "reading the virtual keys failed; using the last ones read");
            }
            Ok(()) if *failing => {
                *failing = false;
                tracing::info!("reading the virtual keys works again");
            }
            _ => {}
        }
    }
}

/// Re-reads the keys every [`REFRESH_EVERY`], and at once when the store comes back.
pub fn spawn_refresh(registry: Arc<KeyRegistry>) -> tokio::task::AbortHandle {
    let mut up = registry.store.watch_up();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = up.changed() => {
                    if changed.is_err() {
                        // The store is gone: keep ticking.
                        up = registry.store.watch_up();
                    }
                }
            }
            registry.refresh_logged().await;
        }
    })
    .abort_handle()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    fn registry(dir: &std::path::Path) -> KeyRegistry {
        let store: SharedStore = EmbeddedStore::open(&dir.join("s.log")).unwrap();
        KeyRegistry::new(store, Some(dir.join("keys.json")))
    }

    #[tokio::test]
    async fn a_key_is_stored_hashed_found_by_digest_and_revoked_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path());
        assert!(!reg.enforced());
        let (record, key) = reg
            .create(KeySpec {
                models: vec!["gpt-4o-mini".into()],
                requests_per_minute: Some(5),
                ..KeySpec::default()
            })
            .await
            .unwrap();
        assert!(key.starts_with("sk-tandem-") && key.len() == 58, "{key}");
        assert!(reg.enforced());
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let found = reg.lookup(&digest).unwrap();
        assert!(found.is_live() && found.allows_model("gpt-4o-mini") && !found.allows_model("x"));
        let stored = reg.store.get(&format!("keys:{}", record.id)).await.unwrap();
        assert!(!String::from_utf8_lossy(&stored.unwrap()).contains(&key));
        reg.revoke(&record.id).await.unwrap();
        assert!(!reg.lookup(&digest).unwrap().is_live());
        assert!(matches!(
            reg.revoke("vk_none").await,
            Err(Error::UnknownKey(_))
        ));
    }

    #[tokio::test]
    async fn a_patch_changes_only_what_it_names_and_null_clears() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path());
        let (record, _) = reg
            .create(KeySpec {
                name: Some("a".into()),
                tokens_per_minute: Some(100),
                ..KeySpec::default()
            })
            .await
            .unwrap();
        let patch: KeyPatch =
            serde_json::from_str(r#"{"tokens_per_minute": null, "budget_daily_usd": 2.5}"#)
                .unwrap();
        let updated = reg.update(&record.id, patch).await.unwrap();
        assert_eq!(updated.spec.name.as_deref(), Some("a"));
        assert_eq!(updated.spec.tokens_per_minute, None);
        assert_eq!(updated.spec.budget_daily_usd, Some(2.5));
        let bad: KeyPatch = serde_json::from_str(r#"{"requests_per_minute": 0}"#).unwrap();
        assert!(reg.update(&record.id, bad).await.is_err());
    }

    #[tokio::test]
    async fn an_emptied_store_gets_the_keys_back_from_a_replica_that_knew_them() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path());
        let (record, _) = reg.create(KeySpec::default()).await.unwrap();
        // The store loses everything (a Redis restarted empty).
        for (k, _) in reg.store.list("").await.unwrap() {
            reg.store.delete(&k).await.unwrap();
        }
        reg.refresh().await.unwrap();
        assert_eq!(reg.get(&record.id).await.unwrap(), record);
        // A fresh replica with only the mirror file knows them too.
        let store: SharedStore = EmbeddedStore::open(&dir.path().join("other.log")).unwrap();
        let fresh = KeyRegistry::new(store, Some(dir.path().join("keys.json")));
        fresh.refresh().await.unwrap();
        assert_eq!(fresh.get(&record.id).await.unwrap(), record);
    }
}
