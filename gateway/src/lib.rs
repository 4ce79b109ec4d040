//! Tandem gateway library: config, HTTP server, middleware and request orchestration.
