//! What a request cost, what it would have cost on its route's reference cloud model, and so
//! what routing saved.

use tandem_cloud_adapters::Usage;

use crate::config::{BackendKind, Config, Price};

/// One request's cost, paid and at the reference, in US dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Bill {
    /// What the answering backend charges for it (0 for the local model unless priced).
    pub paid: f64,
    /// What the route's reference cloud backend would have charged for the same tokens.
    pub reference: f64,
}

impl Bill {
    /// Reference minus paid (negative when a dearer backend answered).
    pub fn saved(&self) -> f64 {
        self.reference - self.paid
    }
}

/// The bill of `usage`, answered by `backend` on `route` (the model id asked for).
///
/// Paid: a speculative answer is billed for what its target processed (every verify round's
/// context, cached or not, and the target's own output), not the client-facing counts; any other
/// answer for its reported tokens. Reference: the client-facing tokens at the reference
/// backend's prices, its cache discount only where a cloud backend reported cached tokens (the
/// local prefix cache says nothing of a cloud's). A route without a cloud backend has no
/// reference: it costs what was paid.
pub fn bill(config: &Config, route: &str, backend: &str, usage: &Usage) -> Bill {
    let (input, output, cached) = match &usage.speculative {
        Some(spec) => (
            spec.target_input_tokens,
            spec.target_output_tokens,
            spec.target_cached_input_tokens,
        ),
        None => (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_prompt_tokens,
        ),
    };
    let answered = config.backends.get(backend);
    let paid = answered.map_or(0.0, |b| {
        price_of(config, b.name.as_str()).cost(input, cached, output)
    });
    let reference_backend = config
        .routes
        .get(route)
        .and_then(|r| r.reference.as_deref())
        .and_then(|name| config.backends.get(name));
    let reference = match reference_backend {
        Some(b) => {
            let cloud_answer = answered.is_some_and(|b| b.kind.is_cloud());
            let cached = if cloud_answer && usage.speculative.is_none() {
                usage.cached_prompt_tokens
            } else {
                0
            };
            b.price
                .cost(usage.prompt_tokens, cached, usage.completion_tokens)
        }
        None => paid,
    };
    Bill { paid, reference }
}

/// The prices `backend` is billed at: a speculative backend's are its target's.
fn price_of(config: &Config, backend: &str) -> Price {
    let Some(b) = config.backends.get(backend) else {
        return Price::default();
    };
    match (&b.kind, &b.speculative) {
        (BackendKind::Speculative, Some(spec)) => config
            .backends
            .get(&spec.target)
            .map_or(b.price, |t| t.price),
        _ => b.price,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapEnv;

    fn config() -> Config {
        Config::from_toml_str(
            r#"
            [backends.local]
            kind = "local"
            [backends.mini]
            kind = "openai"
            api_key_env = "K"
            price = { input = 0.15, output = 0.60, cached_input = 0.075 }
            [backends.big]
            kind = "openai"
            api_key_env = "K"
            price = { input = 2.50, output = 10.0, cached_input = 1.25 }
            [routes.auto]
            backends = ["local", "mini", "big"]
            reference = "big"
            [routes.plain]
            backends = ["local", "mini"]
            [routes.alone]
            backends = ["local"]
            "#,
            &MapEnv::default(),
        )
        .unwrap()
    }

    fn usage(prompt: u64, completion: u64, cached: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_prompt_tokens: cached,
            ..Usage::default()
        }
    }

    #[test]
    fn a_local_answer_saves_the_whole_reference_price() {
        let b = bill(
            &config(),
            "auto",
            "local",
            &usage(1_000_000, 1_000_000, 500_000),
        );
        assert_eq!(b.paid, 0.0);
        // The local prefix cache says nothing of the cloud's: full input price.
        assert_eq!(b.reference, 12.5);
        assert_eq!(b.saved(), 12.5);
    }

    #[test]
    fn a_cloud_answer_is_measured_against_the_reference_with_its_cache() {
        let c = config();
        let b = bill(&c, "auto", "mini", &usage(1_000_000, 1_000_000, 500_000));
        assert!((b.paid - (0.075 + 0.0375 + 0.60)).abs() < 1e-12);
        assert!((b.reference - (1.25 + 0.625 + 10.0)).abs() < 1e-12);
        // The default reference is the route's first cloud backend: itself, nothing saved.
        let b = bill(&c, "plain", "mini", &usage(1_000_000, 0, 0));
        assert_eq!(b.paid, b.reference);
        // No cloud backend on the route: no reference, nothing saved.
        let b = bill(&c, "alone", "local", &usage(1_000, 10, 0));
        assert_eq!(b, Bill::default());
    }
}
