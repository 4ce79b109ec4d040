//! Shared helpers for the end-to-end tests: starting Tandem, mock upstreams and Redis.
