//! The router's bandit statistics shared through a real Redis server: replicas add up their
//! counts (concurrently too), and a Redis restarted empty gets a replica's whole state back. Needs `TANDEM_TEST_REDIS_URL` (the test script starts Redis on loopback).

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]

use tandem_gateway::redis_store::RedisBanditStore;
use tandem_router_policy::RequestFeatures;
use tandem_router_policy::bandit::{LinUcb, context};

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

/// The value, or a panic naming the error (a failed step fails the test).
fn ok<T>(r: tandem_router_policy::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// One replica: its bandit (the router's) and its store, synced as the gateway syncs them.
struct Replica {
    bandit: LinUcb,
    store: RedisBanditStore,
}

impl Replica {
    fn new(url: &str, prefix: &str) -> Self {
        Self {
            bandit: LinUcb::new(0.5),
            store: ok(RedisBanditStore::new(url, prefix)),
        }
    }

    fn learn(&self, arm: &str, rounds: usize) {
        let x = context(
            &RequestFeatures::from_prompt("What is the capital of France?", None),
            0.3,
        );
        for _ in 0..rounds {
            ok(self.bandit.update(arm, &x, 1.0));
        }
    }

    fn sync(&self) {
        let local = self.bandit.state();
        let merged = ok(self.store.sync(&local));
        ok(self.bandit.rebase(&local, &merged));
    }

    fn n(&self, arm: &str) -> u64 {
        self.bandit.state().arms.get(arm).map_or(0, |a| a.n)
    }
}

#[test]
fn replicas_add_up_their_counts_and_none_overwrites_another() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("merge");
    let (a, b) = (Replica::new(&url, &prefix), Replica::new(&url, &prefix));
    assert!(
        a.store.load().unwrap().is_none(),
        "a fresh prefix holds no sums"
    );
    a.learn("cloud", 3);
    b.learn("cloud", 4);
    b.learn("local", 2);
    a.sync();
    b.sync();
    a.sync();
    for r in [&a, &b] {
        assert_eq!(r.n("cloud"), 7);
        assert_eq!(r.n("local"), 2);
    }
    // Both learn more at once: both lessons land.
    a.learn("cloud", 1);
    b.learn("cloud", 2);
    a.sync();
    b.sync();
    a.sync();
    assert_eq!(a.n("cloud"), 10);
    assert_eq!(b.n("cloud"), 10);
    // The merged bandit is the one that saw everything: same estimate as a single bandit.
    let single = LinUcb::new(0.5);
    let x = context(
        &RequestFeatures::from_prompt("What is the capital of France?", None),
        0.3,
    );
    for _ in 0..10 {
        single.update("cloud", &x, 1.0).unwrap();
    }
    let (m, s) = (
        a.bandit.estimate("cloud", &x).unwrap(),
        single.estimate("cloud", &x).unwrap(),
    );
    assert!(
        (m.mean - s.mean).abs() < 1e-3 && (m.bonus - s.bonus).abs() < 1e-3,
        "{m:?} {s:?}"
    );
    assert_eq!(a.store.load().unwrap().unwrap().arms["cloud"].n, 10);
}

#[test]
fn concurrent_syncs_lose_no_count() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("concurrent");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, prefix) = (url.clone(), prefix.clone());
            std::thread::spawn(move || {
                let replica = Replica::new(&url, &prefix);
                for _ in 0..10 {
                    replica.learn("shared", 2);
                    replica.sync();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let sums = RedisBanditStore::new(&url, &prefix)
        .unwrap()
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(
        sums.arms["shared"].n, 80,
        "4 replicas x 10 rounds x 2 updates"
    );
}

#[test]
fn redis_restarted_empty_gets_a_replicas_whole_state_back() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("restart");
    let a = Replica::new(&url, &prefix);
    a.learn("local", 3);
    a.sync();
    // Redis loses everything.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("DEL")
        .arg(format!("{prefix}:bandit:sums"))
        .query::<()>(&mut conn)
        .unwrap();
    a.learn("local", 1);
    a.sync();
    assert_eq!(a.n("local"), 4, "nothing learned is lost");
    assert_eq!(a.store.load().unwrap().unwrap().arms["local"].n, 4);
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 1 on loopback refuses connections at once.
    let store = RedisBanditStore::new("redis://127.0.0.1:1/", "tandem-test").unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(err.contains("redis"), "{err}");
}
