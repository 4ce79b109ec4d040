//! A circuit breaker per backend: it opens after consecutive failures or a high error rate over
//! the recent calls, stays open for a while (longer on each trip in a row), then lets one probe
//! through; the probe's outcome closes it or opens it again.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// What a breaker is tuned with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// Error rate over a full window that opens it.
    pub error_rate: f64,
    /// Calls in the window.
    pub window: u32,
    /// How long it first stays open.
    pub open: Duration,
    /// The longest it stays open.
    pub open_max: Duration,
}

/// Whether a call may go to the backend now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call.
    Allowed,
    /// Half-open: this call is the probe that decides.
    Probe,
    /// Open: skip this backend; it may be tried again after the duration.
    Refused(Duration),
}

/// A state change worth a metric and a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The breaker opened.
    Opened,
    /// A probe succeeded and the breaker closed.
    Closed,
}

/// The breaker's state, for the state gauge: 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// One probe is (or may be) in flight.
    HalfOpen,
}

#[derive(Debug)]
enum Mode {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    /// Trips in a row without a successful probe; the open period doubles with each.
    trips: u32,
    consecutive_failures: u32,
    /// The last `window` outcomes, `true` for a failure.
    recent: VecDeque<bool>,
    failures_in_window: u32,
}

/// See the module docs.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                mode: Mode::Closed,
                trips: 0,
                consecutive_failures: 0,
                recent: VecDeque::with_capacity(config.window as usize),
                failures_in_window: 0,
            }),
        }
    }

    /// Whether a call may go now; a half-open breaker admits one probe at a time.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut inner = self.inner.lock();
        match inner.mode {
            Mode::Closed => Admission::Allowed,
            Mode::Open { until } if now < until => Admission::Refused(until - now),
            Mode::Open { .. } => {
                inner.mode = Mode::HalfOpen { probing: true };
                Admission::Probe
            }
            Mode::HalfOpen { probing: true } => Admission::Refused(Duration::from_millis(100)),
            Mode::HalfOpen { probing: false } => {
                inner.mode = Mode::HalfOpen { probing: true };
                Admission::Probe
            }
        }
    }

    /// Records a call's outcome; `failed` for a failure that says the backend is unwell
    /// (connect, timeout, 5xx, a stall or cut before the first token).
    pub fn record(&self, failed: bool, now: Instant) -> Option<Transition> {
        let mut inner = self.inner.lock();
        let window = self.config.window as usize;
        inner.recent.push_back(failed);
        if failed {
            inner.failures_in_window += 1;
        }
        if inner.recent.len() > window
            && let Some(true) = inner.recent.pop_front()
        {
            inner.failures_in_window -= 1;
        }
        inner.consecutive_failures = if failed {
            inner.consecutive_failures + 1
        } else {
            0
        };
        match (&inner.mode, failed) {
            (Mode::HalfOpen { .. }, false) => {
                inner.mode = Mode::Closed;
                inner.trips = 0;
                inner.recent.clear();
                inner.failures_in_window = 0;
                Some(Transition::Closed)
            }
            (Mode::HalfOpen { .. }, true) => Some(self.trip(&mut inner, now)),
            (Mode::Closed, true) => {
                let full = inner.recent.len() >= window;
                let rate = f64::from(inner.failures_in_window) / inner.recent.len().max(1) as f64;
                if inner.consecutive_failures >= self.config.failures
                    || (full && rate >= self.config.error_rate)
                {
                    Some(self.trip(&mut inner, now))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// A call that ended without saying anything about the backend's health (the client left,
    /// the request was refused as invalid): a half-open breaker may probe again.
    pub fn release_probe(&self) {
        let mut inner = self.inner.lock();
        if let Mode::HalfOpen { probing: true } = inner.mode {
            inner.mode = Mode::HalfOpen { probing: false };
        }
    }

    /// How long until a call may go (zero when one may now).
    pub fn wait(&self, now: Instant) -> Duration {
        match self.inner.lock().mode {
            Mode::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// The state now, for the gauge.
    pub fn state(&self) -> BreakerState {
        match self.inner.lock().mode {
            Mode::Closed => BreakerState::Closed,
            Mode::Open { .. } => BreakerState::Open,
            Mode::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn trip(&self, inner: &mut Inner, now: Instant) -> Transition {
        let doublings = inner.trips.min(16);
        let open = self
            .config
            .open
            .saturating_mul(1u32 << doublings)
            .min(self.config.open_max);
        inner.trips += 1;
        inner.mode = Mode::Open { until: now + open };
        inner.consecutive_failures = 0;
        Transition::Opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failures: 3,
            error_rate: 0.5,
            window: 10,
            open: Duration::from_secs(1),
            open_max: Duration::from_secs(3),
        })
    }

    #[test]
    fn consecutive_failures_open_it_and_a_probe_closes_it() {
        let b = breaker();
        let t = Instant::now();
        assert_eq!(b.admit(t), Admission::Allowed);
        assert_eq!(b.record(true, t), None);
        assert_eq!(b.record(true, t), None);
        assert_eq!(b.record(true, t), Some(Transition::Opened));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t), Admission::Refused(Duration::from_secs(1)));
        // After the open period one probe goes; the others wait for it.
        let later = t + Duration::from_secs(1);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(matches!(b.admit(later), Admission::Refused(_)));
        assert_eq!(b.record(false, later), Some(Transition::Closed));
        assert_eq!(b.admit(later), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_opens_it_longer_up_to_the_cap() {
        let b = breaker();
        let mut t = Instant::now();
        for _ in 0..3 {
            b.record(true, t);
        }
        for expected in [2, 3, 3] {
            t += Duration::from_secs(5);
            assert_eq!(b.admit(t), Admission::Probe);
            assert_eq!(b.record(true, t), Some(Transition::Opened));
            assert_eq!(b.wait(t), Duration::from_secs(expected));
        }
    }

    #[test]
    fn a_high_error_rate_opens_it_without_a_run_of_failures() {
        let b = breaker();
        let t = Instant::now();
        let mut opened = false;
        for i in 0..12 {
            opened |= b.record(i % 2 == 0, t) == Some(Transition::Opened);
        }
        assert!(opened, "5 failures in the last 10 calls is the 50% rate");
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record(true, t);
        }
        let later = t + Duration::from_secs(1);
        assert_eq!(b.admit(later), Admission::Probe);
        b.release_probe();
        assert_eq!(b.admit(later), Admission::Probe);
    }
}
