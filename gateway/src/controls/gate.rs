//! [`Controls`]: the virtual keys, the limits and the spend accounting of one gateway, built
//! from its config over its store.

use std::sync::Arc;

use super::keys::{KeyRegistry, spawn_refresh};
use crate::config::{Config, ControlsConfig, EnvSource};
use crate::store::SharedStore;

/// Everything the controls need at run time.
#[derive(Debug)]
pub struct Controls {
    /// The store.
    pub store: SharedStore,
    /// Virtual keys.
    pub keys: Arc<KeyRegistry>,
    /// The settings.
    pub config: ControlsConfig,
    refresh: parking_lot::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Controls {
    /// The controls of `config` over `store`; starts re-reading the keys in the background.
    pub fn start(config: &Config, store: SharedStore, env: &dyn EnvSource) -> Arc<Self> {
        // With Redis, this replica's copy of the key records sits beside the embedded store's
        // place; the embedded store is durable itself.
        let mirror = config
            .controls
            .store
            .redis_url
            .as_ref()
            .map(|_| crate::store::embedded_path(config, env).with_file_name("keys.json"));
        let keys = Arc::new(KeyRegistry::new(store.clone(), mirror));
        let refresh = spawn_refresh(keys.clone());
        Arc::new(Self {
            store,
            keys,
            config: config.controls.clone(),
            refresh: parking_lot::Mutex::new(Some(refresh)),
        })
    }

    /// Stops the background work (at shutdown).
    pub fn stop(&self) {
        if let Some(task) = self.refresh.lock().take() {
            task.abort();
        }
    }
}
