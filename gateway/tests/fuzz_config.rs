//! Structured fuzzing of the config parser (`Config::from_toml_str`): arbitrary text, and TOML
//! built from the real sections and keys with odd values (wrong types, huge and negative numbers,
//! empty and unicode strings, nested tables), plus `TANDEM__` overrides. Properties: no panic;
//! an error names a path (a section key, `(root)` or the variable) or is a TOML syntax error; an
//! accepted config summarizes, and the same text gives the same config. proptest's default 256
//! cases per property unless `PROPTEST_CASES` says otherwise (`benches/fuzz.sh` runs it long).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tandem_gateway::config::{Config, ConfigError, MapEnv};

const SECTIONS: &[&str] = &[
    "server",
    "limits",
    "local",
    "backends.a",
    "backends.b",
    "backends.a.price",
    "routes.m",
    "routes.\"gpt-4o\"",
    "router",
    "router.keys.abc",
    "resilience",
    "other",
];

const KEYS: &[&str] = &[
    "listen",
    "api_key_hashes",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "max_body_bytes",
    "max_concurrency",
    "request_timeout_ms",
    "first_token_timeout_ms",
    "retry_after_secs",
    "model",
    "threads",
    "kv_cache_tokens",
    "weights",
    "aliases",
    "verify_endpoints",
    "verify_scoring",
    "verify_sessions",
    "kind",
    "base_url",
    "api_key_env",
    "api_version",
    "models",
    "price",
    "connect_timeout_ms",
    "client_cert",
    "client_key",
    "ca_cert",
    "verify",
    "target",
    "drafter",
    "tokenizer",
    "max_draft",
    "strength",
    "prior_ttft_ms",
    "prior_itl_ms",
    "input",
    "output",
    "cached_input",
    "backends",
    "fallback",
    "policy",
    "placement",
    "lambda_per_usd",
    "mu_per_s",
    "target_cloud_share",
    "latency_slo_ms",
    "cascade_threshold",
    "model_path",
    "decision_log",
    "bandit_path",
    "cascade_band",
    "cascade_judge",
    "encoder",
    "retries",
    "retry_backoff_ms",
    "breaker_failures",
    "breaker_error_rate",
    "local_fallback",
    "shutdown_grace_ms",
    "cache_dir",
    "redis_url",
    "unknown_key",
];

const WORDS: &[&str] = &[
    "local",
    "openai",
    "openai-compatible",
    "azure",
    "anthropic",
    "speculative",
    "vllm",
    "groq",
    "fixed",
    "learned",
    "local-only",
    "cloud-only",
    "ngram",
    "tandem",
    "sglang",
    "none",
    "q8_0",
    "batched",
    "answer",
    "127.0.0.1:0",
    "[::1]:8080",
    "http://127.0.0.1:9/v1",
    "https://x/v1",
    "redis://127.0.0.1",
    "a",
    "b",
    "m",
    "",
    " ",
    "é😀",
    "c.pem",
];

/// A TOML value: mostly the right kind for some key, often not for this one.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(|w| format!("{w:?}")),
        3 => any::<i64>().prop_map(|n| n.to_string()),
        2 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => prop::sample::select(&["0", "-1", "1.5", "nan", "inf", "-inf", "1e300", "9223372036854775807", "true", "false", "1979-05-27T07:32:00Z"][..]).prop_map(str::to_owned),
        1 => any::<String>().prop_map(|s| format!("{s:?}")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

/// The keys each section takes, so that most generated keys reach validation.
fn own_keys(section: &str) -> &'static [&'static str] {
    match section {
        "server" => &[
            "listen",
            "api_key_hashes",
            "tls_cert",
            "tls_key",
            "tls_client_ca",
        ],
        "limits" => &[
            "max_body_bytes",
            "max_concurrency",
            "request_timeout_ms",
            "first_token_timeout_ms",
            "retry_after_secs",
        ],
        "local" => &[
            "model",
            "threads",
            "kv_cache_tokens",
            "weights",
            "aliases",
            "verify_endpoints",
            "verify_scoring",
            "verify_sessions",
        ],
        "backends.a" | "backends.b" => &[
            "kind",
            "base_url",
            "api_key_env",
            "api_version",
            "models",
            "connect_timeout_ms",
            "client_cert",
            "client_key",
            "ca_cert",
            "verify",
            "target",
            "drafter",
            "max_draft",
            "strength",
        ],
        "backends.a.price" => &["input", "output", "cached_input"],
        "routes.m" | "routes.\"gpt-4o\"" => &[
            "backends",
            "fallback",
            "policy",
            "placement",
            "lambda_per_usd",
            "target_cloud_share",
            "latency_slo_ms",
            "cascade_threshold",
        ],
        "router" => &[
            "model_path",
            "decision_log",
            "bandit_path",
            "cascade_band",
            "cascade_judge",
            "encoder",
        ],
        "resilience" => &[
            "retries",
            "retry_backoff_ms",
            "breaker_failures",
            "breaker_error_rate",
            "local_fallback",
            "shutdown_grace_ms",
        ],
        _ => KEYS,
    }
}

/// A config file: sections of keys (mostly their own) with values.
fn config_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::option::weighted(0.9, prop::sample::select(SECTIONS)).prop_flat_map(|section| {
            let own = own_keys(section.unwrap_or("(top)"));
            let key = prop_oneof![4 => prop::sample::select(own), 1 => prop::sample::select(KEYS)];
            (Just(section), prop::collection::vec((key, value()), 0..6))
        }),
        0..6,
    )
    .prop_map(|sections| {
        let mut text = String::new();
        for (name, keys) in sections {
            if let Some(name) = name {
                text.push_str(&format!("[{name}]\n"));
            }
            for (k, v) in keys {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        text
    })
}

/// `TANDEM__` overrides of real and unknown keys.
fn env() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop::collection::vec(
                prop_oneof![
                    prop::sample::select(SECTIONS).prop_map(|s| s.replace('.', "__")),
                    prop::sample::select(KEYS).prop_map(str::to_owned),
                    Just(String::new())
                ],
                1..3,
            ),
            prop_oneof![value(), any::<String>()],
        )
            .prop_map(|(path, v)| (format!("TANDEM__{}", path.join("__").to_uppercase()), v)),
        0..3,
    )
}

fn check(text: &str, vars: &[(String, String)]) {
    let env = MapEnv::from_pairs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    match Config::from_toml_str(text, &env) {
        Ok(config) => {
            let _ = config.summary();
            let again = Config::from_toml_str(text, &env).unwrap();
            assert_eq!(format!("{again:?}"), format!("{config:?}"));
        }
        Err(ConfigError::Syntax(message)) => assert!(!message.is_empty()),
        Err(ConfigError::Invalid { path, message }) => {
            assert!(!message.is_empty(), "{path}");
            let head = path.split(['.', '[']).next().unwrap_or_default();
            let known = [
                "(root)",
                "server",
                "limits",
                "local",
                "backends",
                "routes",
                "router",
                "resilience",
                "cache_dir",
                "redis_url",
                "other",
            ];
            // Any other head is a key as the file or a variable wrote it.
            let written =
                text.contains(head) || vars.iter().any(|(k, _)| k.contains(&head.to_uppercase()));
            assert!(
                !path.is_empty()
                    && (known.contains(&head) || path.starts_with("TANDEM__") || written),
                "an error without a path to a key: {path}: {message}\n{text}"
            );
        }
        Err(e @ ConfigError::Read { .. }) => panic!("read error from text: {e}"),
    }
}

proptest! {
    // Cases from PROPTEST_CASES (256 by default); what a run finds becomes a named test below.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_text(text in any::<String>()) {
        check(&text, &[]);
    }

    #[test]
    fn structured_toml(text in config_text(), vars in env()) {
        check(&text, &vars);
    }
}
