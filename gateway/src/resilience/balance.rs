//! Load per backend for balancing and hedging: a peak-EWMA latency (it jumps to a slower sample
//! at once and decays towards faster ones, as tower's balance does), the requests in flight, and
//! the recent latencies whose p95 sets a hedge's delay. Power-of-two-choices over these picks a
//! route's first deployment.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tandem_kernels::rng::SplitMix64;
use tokio::time::Instant;

/// How fast the estimate forgets a slow sample.
const DECAY: Duration = Duration::from_secs(10);
/// The estimate of a backend never measured: moderate, so a new deployment gets tried.
const DEFAULT_RTT: Duration = Duration::from_millis(100);
/// Latencies kept for the p95.
const RECENT: usize = 128;
/// Latencies needed before the p95 is trusted.
const MIN_SAMPLES: usize = 20;

#[derive(Debug)]
struct Estimate {
    rtt_ns: f64,
    at: Instant,
    recent: VecDeque<Duration>,
}

/// One backend's load.
#[derive(Debug)]
pub struct Load {
    estimate: Mutex<Estimate>,
    pending: AtomicU32,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            estimate: Mutex::new(Estimate {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                at: Instant::now(),
                recent: VecDeque::with_capacity(RECENT),
            }),
            pending: AtomicU32::new(0),
        }
    }
}

/// A request in flight on a backend; counted until dropped.
#[derive(Debug)]
pub struct Pending(Arc<Load>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Load {
    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> Pending {
        self.pending.fetch_add(1, Ordering::Relaxed);
        Pending(self.clone())
    }

    /// Records a latency: a slower one replaces the estimate, a faster one pulls it down as
    /// time since the last sample passes.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let mut e = self.estimate.lock();
        let sample = rtt.as_nanos() as f64;
        if sample > e.rtt_ns {
            e.rtt_ns = sample;
        } else {
            let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
            let keep = (-elapsed / DECAY.as_secs_f64()).exp();
            e.rtt_ns = e.rtt_ns * keep + sample * (1.0 - keep);
        }
        e.at = now;
        if e.recent.len() == RECENT {
            e.recent.pop_front();
        }
        e.recent.push_back(rtt);
    }

    /// The load: the latency estimate times the requests in flight plus one.
    pub fn cost(&self) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed);
        self.estimate.lock().rtt_ns * f64::from(pending + 1)
    }

    /// The p95 of the recent latencies, once there are enough of them.
    pub fn p95(&self) -> Option<Duration> {
        let e = self.estimate.lock();
        if e.recent.len() < MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<Duration> = e.recent.iter().copied().collect();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64) * 0.95).ceil() as usize;
        sorted.get(index.saturating_sub(1)).copied()
    }
}

/// Power-of-two-choices: two distinct candidates drawn with probability in proportion to their
/// weights; the index of the one with the lower cost.
pub fn pick_of_two(costs: &[f64], weights: &[f64], rng: &Mutex<SplitMix64>) -> usize {
    let n = costs.len().min(weights.len());
    if n < 2 {
        return 0;
    }
    let mut rng = rng.lock();
    let mut draw = |skip: Option<usize>| {
        let total: f64 = (0..n)
            .filter(|i| Some(*i) != skip)
            .map(|i| weights[i])
            .sum();
        let mut x = rng.next_f64() * total;
        let mut last = 0;
        for i in (0..n).filter(|i| Some(*i) != skip) {
            last = i;
            if x < weights[i] {
                return i;
            }
            x -= weights[i];
        }
        last
    };
    let a = draw(None);
    let b = draw(Some(a));
    // A weight also scales how much load a deployment takes: its cost counts per unit of weight.
    if costs[b] / weights[b] < costs[a] / weights[a] {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_jumps_to_a_peak_and_decays_towards_faster_samples() {
        let load = Load::default();
        let t = Instant::now();
        load.observe(Duration::from_millis(500), t);
        assert!((load.cost() - 500e6).abs() < 1.0);
        load.observe(Duration::from_millis(10), t + Duration::from_secs(1));
        let after_1s = load.cost();
        assert!(after_1s < 500e6 && after_1s > 400e6, "{after_1s}");
        load.observe(Duration::from_millis(10), t + Duration::from_secs(60));
        assert!(load.cost() < 20e6, "{}", load.cost());
    }

    #[test]
    fn requests_in_flight_raise_the_cost() {
        let load = Arc::new(Load::default());
        let base = load.cost();
        let a = load.start();
        let _b = load.start();
        assert!((load.cost() - 3.0 * base).abs() < 1.0);
        drop(a);
        assert!((load.cost() - 2.0 * base).abs() < 1.0);
    }

    #[test]
    fn p95_needs_enough_samples() {
        let load = Load::default();
        let t = Instant::now();
        for ms in 1..=19 {
            load.observe(Duration::from_millis(ms), t);
        }
        assert_eq!(load.p95(), None);
        load.observe(Duration::from_millis(20), t);
        assert_eq!(load.p95(), Some(Duration::from_millis(19)));
    }

    #[test]
    fn two_choices_prefer_the_lighter_and_follow_the_weights() {
        let rng = Mutex::new(SplitMix64::new(3));
        // Two deployments: the lighter one always wins the comparison.
        for _ in 0..20 {
            assert_eq!(pick_of_two(&[5.0, 1.0], &[1.0, 1.0], &rng), 1);
        }
        // Three equal-cost deployments: the heavier weight is drawn (and kept) more often.
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[pick_of_two(&[1.0, 1.0, 1.0], &[1.0, 1.0, 4.0], &rng)] += 1;
        }
        assert!(
            counts[2] > counts[0] * 2 && counts[2] > counts[1] * 2,
            "{counts:?}"
        );
    }
}
