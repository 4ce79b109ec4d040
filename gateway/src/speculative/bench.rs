//! `tandem bench speculative` (filled below).

/// Arguments.
#[derive(Debug, Clone, Default)]
pub struct BenchArgs {}
/// Report.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {}
/// Runs the bench.
pub async fn bench_speculative(_args: BenchArgs) -> crate::Result<BenchReport> {
    Ok(BenchReport {})
}
