//! Tandem gateway library: config, the HTTP server and its middleware, ingress/egress through the
//! cloud adapters' wire formats, executors (local model, cloud providers) and metrics; TLS on the
//! listener.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod cache;
pub mod config;
pub mod context;
pub mod controls;
pub mod dispatch;
pub mod error;
pub mod executor;
pub mod handlers;
pub mod log_fields;
pub mod metrics;
pub mod middleware;
pub mod observe;
pub mod privacy;
pub mod providers;
pub mod redis_store;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod speculative;
pub mod state;
pub mod store;
pub mod stored_responses;
pub mod tls;

pub use error::{Error, Result};

pub use server::{Gateway, GatewayOptions, LocalLoad};
