//! The router's bandit state persisted in a real Redis server: round trip, replica sharing and
//! optimistic saves. Needs `TANDEM_TEST_REDIS_URL` (the test script starts Redis on loopback).

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]

use tandem_gateway::redis_store::RedisBanditStore;
use tandem_router_policy::bandit::{LinUcb, context};
use tandem_router_policy::{BanditStore, RequestFeatures};

/// The test server's URL, or None (with a message) when no Redis was started for this run.
fn redis_url() -> Option<String> {
    match std::env::var("TANDEM_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("skipped: TANDEM_TEST_REDIS_URL is not set (scripts/test.sh starts Redis)");
            None
        }
    }
}

/// A key prefix no other test run shares.
fn unique_prefix(name: &str) -> String {
    format!("tandem-test:{name}:{}", uuid::Uuid::new_v4())
}

/// A bandit that has learned that `arm` answers well for a prompt.
fn trained_bandit(arm: &str, rounds: usize) -> LinUcb {
    let bandit = LinUcb::new(0.5);
    let features = RequestFeatures::from_prompt("What is the capital of France?", None);
    let x = context(&features, 0.3);
    for _ in 0..rounds {
        if let Err(e) = bandit.update(arm, &x, 1.0) {
            panic!("bandit update failed: {e}");
        }
    }
    bandit
}

#[test]
fn state_round_trips_through_redis() {
    let Some(url) = redis_url() else { return };
    let store = RedisBanditStore::new(&url, &unique_prefix("round-trip")).unwrap();
    assert!(
        store.load().unwrap().is_none(),
        "a fresh prefix holds no state"
    );

    let state = trained_bandit("local", 5).state();
    store.save(&state).unwrap();
    assert_eq!(store.load().unwrap(), Some(state.clone()));
    assert_eq!(store.version().unwrap(), 1);

    // A resumed bandit carries what was learned.
    let resumed = LinUcb::from_state(store.load().unwrap().unwrap(), 0.5).unwrap();
    assert_eq!(resumed.state().arms["local"].n, 5);
}

#[test]
fn a_second_replica_sees_the_first_ones_saves() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("replicas");
    let a = RedisBanditStore::new(&url, &prefix).unwrap();
    let b = RedisBanditStore::new(&url, &prefix).unwrap();
    assert!(b.load().unwrap().is_none());

    a.save(&trained_bandit("cloud", 3).state()).unwrap();
    let seen = b.load_if_newer().unwrap().expect("b sees a's save");
    assert_eq!(seen.arms["cloud"].n, 3);
    assert!(
        b.load_if_newer().unwrap().is_none(),
        "nothing newer until someone saves again"
    );

    b.save(&trained_bandit("cloud", 4).state()).unwrap();
    assert_eq!(a.load_if_newer().unwrap().unwrap().arms["cloud"].n, 4);
    assert_eq!(a.version().unwrap(), 2);
}

#[test]
fn concurrent_saves_never_tear_the_document() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("concurrent");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            let prefix = prefix.clone();
            std::thread::spawn(move || {
                let store = RedisBanditStore::new(&url, &prefix).unwrap();
                for _ in 0..10 {
                    store
                        .save(&trained_bandit(&format!("arm{i}"), 2).state())
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let store = RedisBanditStore::new(&url, &prefix).unwrap();
    assert_eq!(
        store.version().unwrap(),
        40,
        "every save landed exactly once"
    );
    let state = store.load().unwrap().unwrap();
    assert_eq!(
        state.arms.len(),
        1,
        "the document is one replica's whole state"
    );
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 1 on loopback refuses connections at once.
    let store = RedisBanditStore::new("redis://127.0.0.1:1/", "tandem-test").unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(err.contains("redis"), "{err}");
}
