//! `bench_local`: prefill and decode throughput, time to first token and memory of the engine.
