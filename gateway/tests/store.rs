//! The shared state store's contract, the same on both backends: values with a time to live,
//! listing by prefix, atomic counters and GCRA checks shared by several handles (replicas), and
//! Redis failing fast while down and coming back. The Redis half needs `TANDEM_TEST_REDIS_URL`
//! (the test script starts Redis on loopback).

// A test skipped for want of a server says so on stderr; helpers outside `#[test]` functions
// panic on failure like the tests themselves.
#![allow(clippy::print_stderr, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem_gateway::metrics::Metrics;
use tandem_gateway::store::embedded::EmbeddedStore;
use tandem_gateway::store::redis::{RedisHandle, RedisStore, StoreMetrics};
use tandem_gateway::store::{RateCheck, SharedStore, Store, counter_value};

fn redis_url() -> Option<String> {
    match std::env::var("TANDEM_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("skipped: TANDEM_TEST_REDIS_URL is not set (scripts/test.sh starts Redis)");
            None
        }
    }
}

async fn redis_store(url: &str, prefix: &str, timeout_ms: u64) -> Arc<RedisHandle> {
    let metrics = Metrics::new();
    let store = RedisStore::open(
        url,
        prefix,
        Duration::from_millis(timeout_ms),
        StoreMetrics {
            up: metrics.store_up.clone(),
            errors: metrics.store_errors.clone(),
        },
    )
    .unwrap();
    let handle = Arc::new(RedisHandle(store));
    for _ in 0..100 {
        if handle.is_up() {
            return handle;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis at {url} never came up");
}

/// Everything the contract says, on `a` and `b`: two handles on the same state (two replicas).
async fn contract(a: SharedStore, b: SharedStore) {
    a.set("keys:one", Bytes::from("1"), None).await.unwrap();
    a.set("keys:two", Bytes::from("2"), None).await.unwrap();
    a.set("other", Bytes::from("x"), None).await.unwrap();
    a.set("brief", Bytes::from("t"), Some(Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(b.get("keys:one").await.unwrap(), Some(Bytes::from("1")));
    assert_eq!(
        b.list("keys:").await.unwrap(),
        vec![
            ("keys:one".to_owned(), Bytes::from("1")),
            ("keys:two".to_owned(), Bytes::from("2"))
        ]
    );
    assert_eq!(
        b.get_many(&["keys:two".into(), "nothing".into()])
            .await
            .unwrap(),
        vec![Some(Bytes::from("2")), None]
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(b.get("brief").await.unwrap(), None);
    assert!(b.delete("keys:two").await.unwrap());
    assert!(!a.delete("keys:two").await.unwrap());
    assert!(a.set_if_absent("nx", Bytes::from("first")).await.unwrap());
    assert!(!b.set_if_absent("nx", Bytes::from("second")).await.unwrap());
    assert_eq!(a.get("nx").await.unwrap(), Some(Bytes::from("first")));

    // Counters add up across handles, exactly.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.incr_many(&[("spend:x".into(), 0.125), ("spend:y".into(), 1.0)], None)
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = a
        .get_many(&["spend:x".into(), "spend:y".into()])
        .await
        .unwrap();
    assert_eq!(counter_value(v[0].as_ref()), 5.0);
    assert_eq!(counter_value(v[1].as_ref()), 40.0);

    // A limit of 10 a minute admits exactly 10 of 30 concurrent checks over both handles.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.rate(
                &[RateCheck {
                    key: "rl:test".into(),
                    per_minute: 10,
                    cost: 1.0,
                }],
                false,
            )
            .await
            .unwrap()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        let outcome = t.await.unwrap();
        if outcome.allowed {
            admitted += 1;
        } else {
            assert!(outcome.states[0].retry_after_ms > 0);
        }
    }
    assert_eq!(admitted, 10);
    // A refund makes room again.
    let refund = [RateCheck {
        key: "rl:test".into(),
        per_minute: 10,
        cost: -2.0,
    }];
    let o = b.rate(&refund, true).await.unwrap();
    assert_eq!(o.states[0].remaining, 2);
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = EmbeddedStore::open(&dir.path().join("store.log")).unwrap();
    contract(store.clone(), store).await;
}

#[tokio::test]
async fn the_redis_store_keeps_the_contract_across_replicas() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("tandem-test:{}", uuid::Uuid::new_v4());
    let a = redis_store(&url, &prefix, 50).await;
    let b = redis_store(&url, &prefix, 50).await;
    contract(a, b).await;
}

#[tokio::test]
async fn an_unreachable_redis_fails_fast_and_is_found_again() {
    // Nothing listens on this port: every operation fails at once, never waits.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let metrics = Metrics::new();
    let store = RedisHandle(
        RedisStore::open(
            &format!("redis://127.0.0.1:{port}"),
            "t",
            Duration::from_millis(5),
            StoreMetrics {
                up: metrics.store_up.clone(),
                errors: metrics.store_errors.clone(),
            },
        )
        .unwrap(),
    );
    let started = std::time::Instant::now();
    for _ in 0..100 {
        assert!(store.get("k").await.is_err());
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(!store.is_up());
    assert_eq!(metrics.store_up.get(), 0);

    // A server on that port: the probe finds it and the watchers hear of it.
    let Ok(_) = std::process::Command::new("redis-server")
        .args(["--version"])
        .output()
    else {
        eprintln!("skipped the recovery half: redis-server is not installed");
        return;
    };
    let mut up = store.watch_up();
    let mut server = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let came_back = tokio::time::timeout(Duration::from_secs(5), up.wait_for(|u| *u)).await;
    let worked = store.set("k", Bytes::from("v"), None).await;
    let _ = server.kill();
    let _ = server.wait();
    assert!(came_back.is_ok(), "the probe never found redis");
    worked.unwrap();
    assert_eq!(metrics.store_up.get(), 1);
}
