//! The shared state store: what replicas share (virtual keys, rate limiters, spend) behind one
//! [`Store`] trait, in Redis when `redis_url` is set, else in the embedded store in the cache
//! directory (durable across restarts, one process). See `api` for the contract.

pub mod api;
pub mod embedded;
pub mod redis;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use api::{Admission, BudgetCheck, RateCheck, RateOutcome, RateState, Store, counter_value};

use crate::config::{Config, EnvSource};
use crate::error::Error;
use crate::metrics::Metrics;

/// The store every part of the gateway shares.
pub type SharedStore = Arc<dyn Store>;

/// The embedded store's file for `config`: `store.path`, else `<cache_dir>/state/store.log`.
pub fn embedded_path(config: &Config, env: &dyn EnvSource) -> PathBuf {
    config.controls.store.path.clone().unwrap_or_else(|| {
        config
            .cache_dir
            .clone()
            .unwrap_or_else(|| tandem_artifacts::default_cache_root(env))
            .join("state")
            .join("store.log")
    })
}

/// Opens the store `config` names: Redis at `redis_url` (connecting in the background), else
/// the embedded store.
pub fn open(config: &Config, metrics: &Metrics, env: &dyn EnvSource) -> Result<SharedStore, Error> {
    let settings = &config.controls.store;
    match &settings.redis_url {
        Some(url) => {
            let store = redis::RedisStore::open(
                url,
                &settings.prefix,
                settings.timeout,
                redis::StoreMetrics {
                    up: metrics.store_up.clone(),
                    errors: metrics.store_errors.clone(),
                },
            )?;
            Ok(Arc::new(redis::RedisHandle(store)))
        }
        None => {
            metrics.store_up.set(1);
            let path = embedded_path(config, env);
            match embedded::EmbeddedStore::open(&path) {
                Ok(store) => Ok(store),
                // Another process on this machine owns the file: serve, but say that this one's
                // keys, limits and spend are its own and will not survive it.
                Err(Error::StoreUnavailable(why)) => {
                    tracing::warn!(error = %why, "keeping shared state in memory only; give each process its own store.path or cache_dir, or share Redis");
                    Ok(embedded::EmbeddedStore::in_memory())
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits up to `limit` for a store that is (re)connecting: for admin work, which can wait, unlike
/// the request path.
pub async fn wait_up(store: &dyn Store, limit: std::time::Duration) {
    let mut up = store.watch_up();
    let _ = tokio::time::timeout(limit, up.wait_for(|u| *u)).await;
}

/// Reads the JSON value at `key`; a value that does not parse is reported as an internal error.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<T>, Error> {
    match store.get(key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Internal(format!("store key {key}: {e}"))),
    }
}

/// Writes `value` as JSON at `key`, with no expiry.
pub async fn set_json<T: Serialize>(store: &dyn Store, key: &str, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
    store.set(key, Bytes::from(bytes), None).await
}
