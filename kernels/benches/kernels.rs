//! Kernel benchmarks (filled in below).
#![allow(missing_docs)]
use criterion::{Criterion, criterion_group, criterion_main};
fn noop(_c: &mut Criterion) {}
criterion_group!(benches, noop);
criterion_main!(benches);
