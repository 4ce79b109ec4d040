//! Tandem's tooling, kept out of the serving binary: benchmarks that run a peer side by side
//! (`bench`), the router's offline training and evaluation (`router`), and the mock upstream
//! that end-to-end tests and the overhead bench put behind Tandem (`mock`), a small OTLP/HTTP
//! trace collector (`otlp`) and a `redis-server` of one's own (`redis`). The `tandem-lab` binary runs them;
//! `tandem bench ...` and `tandem router ...` hand their arguments to it.
//!
//! A tooling crate: its library exists for its binary and the tests, so its errors are `anyhow`.

pub mod bench;
pub mod mock;
pub mod otlp;
pub mod redis;
pub mod router;
