//! The dashboard across replicas: with Redis, every replica writes a snapshot of its ledger (its
//! totals and latest reports) to the shared store every few seconds, expiring soon after, and
//! the dashboard merges the snapshots it finds with its own. With the embedded store (one
//! process) the dashboard reads the process's ledger alone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::Observer;
use super::ledger::{Query, Snapshot, summarize};
use crate::store::SharedStore;

/// Where the snapshots live in the store.
pub const PREFIX: &str = "ui:replica:";

/// How often a replica writes its snapshot.
const INTERVAL: Duration = Duration::from_secs(2);

/// How long a snapshot outlives its replica's last write.
const TTL: Duration = Duration::from_secs(15);

/// Reports each replica shares at most (the dashboard's windows and recent decisions).
const SHARED_REPORTS: usize = 2_000;

/// Starts writing this replica's snapshot, when the store is shared (Redis).
pub fn spawn_publisher(observer: Arc<Observer>, store: SharedStore) {
    if store.backend() != "redis" {
        return;
    }
    let key = format!("{PREFIX}{}", observer.replica);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snapshot = observer.ledger.snapshot(SHARED_REPORTS);
            let Ok(bytes) = serde_json::to_vec(&snapshot) else {
                continue;
            };
            if let Err(e) = store.set(&key, Bytes::from(bytes), Some(TTL)).await {
                tracing::debug!(error = %e, "the dashboard snapshot was not shared");
            }
        }
    });
}

/// The dashboard's data: this replica's ledger, merged with every other replica's latest
/// snapshot when the store is shared. `replicas` says how many were merged.
pub async fn summary(
    observer: &Observer,
    store: &SharedStore,
    query: &Query,
    now_ms: u64,
) -> Value {
    let mut merged = observer.ledger.snapshot(usize::MAX);
    let mut replicas = 1;
    let mut note = None;
    if store.backend() == "redis" {
        let own = format!("{PREFIX}{}", observer.replica);
        match store.list(PREFIX).await {
            Ok(entries) => {
                for (key, bytes) in entries {
                    if key.ends_with(&own) {
                        continue;
                    }
                    match serde_json::from_slice::<Snapshot>(&bytes) {
                        Ok(snapshot) => {
                            merged.merge(snapshot);
                            replicas += 1;
                        }
                        Err(e) => tracing::debug!(key = %key, error = %e, "unreadable snapshot"),
                    }
                }
            }
            Err(e) => note = Some(format!("other replicas unavailable: {e}")),
        }
    }
    let mut body = summarize(&merged, query, now_ms);
    body["replicas"] = replicas.into();
    if let Some(note) = note {
        body["note"] = note.into();
    }
    body
}
