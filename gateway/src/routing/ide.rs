//! Where a code completion runs: the local code model, or the `[ide] cloud` FIM backend when it
//! is predicted to answer a multi-line completion sooner within the request's budget (or, where
//! the local model is sooner, when it turns out unsure of its first tokens). One pure decision
//! ([`decide`]) over the request's shape and the rates measured so far ([`IdeRates`]).

use parking_lot::Mutex;

/// What the policy reads of a completion request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdeShape {
    /// The client asked for one line (a `"\n"` stop word) or for a few tokens at most.
    pub single_line: bool,
    /// Tokens to generate, as far as known (the request's `n_predict`, else a typical length).
    pub n_predict: u32,
    /// Prompt tokens the local model would compute (an estimate).
    pub prompt_tokens: usize,
    /// `t_max_prompt_ms` + `t_max_predict_ms`, when the client gave either.
    pub budget_ms: Option<u64>,
}

/// Why the cloud is out of the question for this request, before any prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Barred {
    /// No `[ide] cloud`.
    NoCloud,
    /// The route's or key's privacy rule keeps the text on this host.
    Privacy,
    /// The cloud backend's circuit breaker is open.
    BreakerOpen,
}

/// The decision, with the reason `x-tandem-route` gives.
#[derive(Debug, Clone, PartialEq)]
pub enum IdeDecision {
    /// The local code model.
    Local(String),
    /// The local code model, predicted sooner; the cloud may still take multi-line work within
    /// the budget, when the local model is unsure of its first tokens (`[ide] cloud_confidence`).
    LocalFirst(String),
    /// The cloud FIM backend.
    Cloud(String),
}

/// Requests of at most this many tokens are single-line work: never worth a round trip.
pub const SINGLE_LINE_TOKENS: u32 = 8;

/// Tokens assumed for a completion without `n_predict` (llama.vim's default).
pub const TYPICAL_TOKENS: u32 = 128;

/// Picks local or cloud: single-line stays local; multi-line goes to the cloud when the local
/// model's predicted time (decode plus prefill at the measured rates) exceeds the cloud's
/// expected latency, and that latency fits the request's budget.
pub fn decide(shape: IdeShape, rates: Rates, barred: Option<Barred>) -> IdeDecision {
    if shape.single_line || shape.n_predict <= SINGLE_LINE_TOKENS {
        return IdeDecision::Local("single line".into());
    }
    match barred {
        Some(Barred::NoCloud) => return IdeDecision::Local("no cloud".into()),
        Some(Barred::Privacy) => return IdeDecision::Local("privacy keeps it local".into()),
        Some(Barred::BreakerOpen) => {
            return IdeDecision::Local("cloud breaker open".into());
        }
        None => {}
    }
    let local_ms = 1000.0
        * (f64::from(shape.n_predict) / rates.decode_tps.max(1e-3)
            + shape.prompt_tokens as f64 / rates.prefill_tps.max(1e-3));
    let cloud_ms = rates.cloud_ms;
    if let Some(budget) = shape.budget_ms
        && cloud_ms > budget as f64
    {
        return IdeDecision::Local(format!(
            "cloud ~{cloud_ms:.0} ms over the {budget} ms budget"
        ));
    }
    if local_ms > cloud_ms {
        IdeDecision::Cloud(format!(
            "multi-line, local ~{local_ms:.0} ms > cloud ~{cloud_ms:.0} ms"
        ))
    } else {
        IdeDecision::LocalFirst(format!(
            "multi-line, local ~{local_ms:.0} ms <= cloud ~{cloud_ms:.0} ms"
        ))
    }
}

/// The measured speeds the policy predicts from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// The code model's decode rate, tokens/s.
    pub decode_tps: f64,
    /// The code model's prefill rate, tokens/s.
    pub prefill_tps: f64,
    /// The cloud's FIM latency, ms.
    pub cloud_ms: f64,
}

/// Weight of a new measurement in each moving average.
const SMOOTHING: f64 = 0.2;

/// Most a decode sample may exceed the average by (see [`IdeRates::local`]).
const BURST: f64 = 2.0;

/// Moving averages of the code model's speeds and the cloud's latency, seeded from what the
/// code model does on 2 cores and from `[ide] cloud_latency_ms`.
#[derive(Debug)]
pub struct IdeRates(Mutex<Rates>);

impl IdeRates {
    /// Seeded rates; `cloud_ms` from the config.
    pub fn new(cloud_ms: u64) -> Self {
        Self(Mutex::new(Rates {
            decode_tps: 50.0,
            prefill_tps: 250.0,
            cloud_ms: cloud_ms as f64,
        }))
    }

    /// The current rates.
    pub fn get(&self) -> Rates {
        *self.0.lock()
    }

    /// A local completion's counts: decode from `predicted` tokens over `predicted_ms`, prefill
    /// from `computed` prompt tokens over `prompt_ms` (each only when there was enough to time).
    /// A decode sample counts for at most [`BURST`] times the average: an answer the cache
    /// drafted (the earlier answer again) comes out in a pass or two, not at the model's pace.
    pub fn local(&self, predicted: usize, predicted_ms: f64, computed: usize, prompt_ms: f64) {
        let mut r = self.0.lock();
        if predicted >= 4 && predicted_ms > 0.0 {
            let sample = (1000.0 * predicted as f64 / predicted_ms).min(BURST * r.decode_tps);
            r.decode_tps = ewma(r.decode_tps, sample);
        }
        if computed >= 32 && prompt_ms > 0.0 {
            r.prefill_tps = ewma(r.prefill_tps, 1000.0 * computed as f64 / prompt_ms);
        }
    }

    /// A cloud completion's latency.
    pub fn cloud(&self, ms: f64) {
        let mut r = self.0.lock();
        r.cloud_ms = ewma(r.cloud_ms, ms);
    }
}

fn ewma(old: f64, new: f64) -> f64 {
    old + SMOOTHING * (new - old)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: Rates = Rates {
        decode_tps: 50.0,
        prefill_tps: 250.0,
        cloud_ms: 400.0,
    };

    fn shape(n_predict: u32) -> IdeShape {
        IdeShape {
            single_line: false,
            n_predict,
            prompt_tokens: 500,
            budget_ms: None,
        }
    }

    fn is_cloud(d: &IdeDecision) -> bool {
        matches!(d, IdeDecision::Cloud(_))
    }

    #[test]
    fn single_line_stays_local() {
        let one = IdeShape {
            single_line: true,
            ..shape(128)
        };
        assert_eq!(
            decide(one, RATES, None),
            IdeDecision::Local("single line".into())
        );
        assert!(!is_cloud(&decide(shape(SINGLE_LINE_TOKENS), RATES, None)));
    }

    #[test]
    fn multi_line_goes_to_the_cloud_when_local_is_slower() {
        // 128 / 50 s + 500 / 250 s = 4.56 s locally, against 0.4 s.
        assert!(is_cloud(&decide(shape(128), RATES, None)));
        let fast = Rates {
            decode_tps: 2000.0,
            prefill_tps: 20_000.0,
            ..RATES
        };
        assert!(matches!(
            decide(shape(128), fast, None),
            IdeDecision::LocalFirst(_)
        ));
    }

    #[test]
    fn the_budget_the_breaker_and_privacy_keep_it_local() {
        let tight = IdeShape {
            budget_ms: Some(300),
            ..shape(128)
        };
        assert!(!is_cloud(&decide(tight, RATES, None)));
        let roomy = IdeShape {
            budget_ms: Some(1000),
            ..shape(128)
        };
        assert!(is_cloud(&decide(roomy, RATES, None)));
        for barred in [Barred::NoCloud, Barred::Privacy, Barred::BreakerOpen] {
            assert!(!is_cloud(&decide(shape(128), RATES, Some(barred))));
        }
    }

    #[test]
    fn rates_move_toward_measurements() {
        let rates = IdeRates::new(400);
        rates.cloud(100.0);
        rates.local(100, 1000.0, 10, 1.0);
        let r = rates.get();
        assert_eq!(r.cloud_ms, 340.0);
        assert_eq!(r.decode_tps, 60.0);
        // Too few prompt tokens to time.
        assert_eq!(r.prefill_tps, 250.0);
        // 16 drafted tokens in 5 ms count as twice the average, not 3,200 a second.
        rates.local(16, 5.0, 0, 0.0);
        assert_eq!(rates.get().decode_tps, 72.0);
    }
}
