//! Policy behaviour on small fixtures: hard rules, share calibration, cascade, bandit feedback,
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! feedback errors, backend state, and the shipped default model.

use std::path::PathBuf;
use std::sync::Arc;

use tandem_router_policy::backend::{BackendCandidate, BackendProfile, Price, Site};
use tandem_router_policy::bandit::{BanditStore, FileBanditStore, MemoryBanditStore};
use tandem_router_policy::features::FEATURE_DIM;
use tandem_router_policy::model::{Logistic, QualityModel, Standardizer};
use tandem_router_policy::{
    Choice, Error, Feedback, ModelFile, Placement, RequestFeatures, RouteRules, Router,
    RouterConfig, Weights, apply_feedback,
};

/// A model whose P(strong better) is σ(4 · (math_score − 0.5)): math prompts want the cloud.
fn math_model() -> ModelFile {
    let mut w = vec![0.0; FEATURE_DIM];
    // Index of `math_score` in the feature vector: after the embedding, the 4th cheap feature.
    w[384 + 3] = 4.0;
    ModelFile {
        version: 1,
        encoder: "none".into(),
        trained_on: "fixture".into(),
        share_thresholds: (0..=10)
            .map(|k| (k as f32 / 10.0, 1.0 - k as f32 / 10.0))
            .collect(),
        model: QualityModel::Logistic(Logistic {
            norm: Standardizer {
                mean: vec![0.0; FEATURE_DIM],
                std: vec![1.0; FEATURE_DIM],
            },
            w,
            b: -2.0,
        }),
    }
}

fn candidate(name: &str, kind: Site, strength: f32, ttft: f64, price: f64) -> BackendCandidate {
    BackendCandidate::from_profile(BackendProfile {
        name: name.into(),
        kind,
        strength,
        price: Price {
            input_per_mtok: price,
            output_per_mtok: 4.0 * price,
            cached_input_per_mtok: price / 2.0,
        },
        serial: kind == Site::Local,
        verifies_drafts: kind == Site::Cloud,
        drafts: kind == Site::Local,
        prior_ttft_ms: ttft,
        prior_itl_ms: 10.0,
    })
}

fn backends() -> Vec<BackendCandidate> {
    vec![
        candidate("local", Site::Local, 0.0, 50.0, 0.0),
        candidate("cloud", Site::Cloud, 1.0, 300.0, 2.0),
    ]
}

fn cheap_config() -> RouterConfig {
    RouterConfig {
        weights: Weights {
            lambda_per_usd: 100.0,
            mu_per_s: 0.01,
        },
        ..RouterConfig::default()
    }
}

const MATH: &str =
    "Solve: how many apples remain if 144 / 12 + 7 * 3 = x and she sells 15% of them?";
const CHAT: &str = "Say hello to my friend";

#[test]
fn learned_policy_sends_hard_prompts_to_the_cloud() {
    let router = Router::new(math_model(), cheap_config()).unwrap();
    let math = router.decide(
        &RequestFeatures::from_prompt(MATH, None),
        &backends(),
        &RouteRules::default(),
    );
    let chat = router.decide(
        &RequestFeatures::from_prompt(CHAT, None),
        &backends(),
        &RouteRules::default(),
    );
    assert_eq!(
        math.choice,
        Choice::Cloud {
            backend: "cloud".into()
        },
        "{:?}",
        math.explanation
    );
    assert_eq!(
        chat.choice,
        Choice::Local {
            backend: "local".into()
        },
        "{:?}",
        chat.explanation
    );
    assert!(math.explanation.p_strong > chat.explanation.p_strong);
    let header = math.explanation.header_value();
    assert!(header.starts_with("cloud:cloud; p="), "{header}");
    assert!(!header.contains('\n'));
    let line = math.log_line("req-1");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request_id"], "req-1");
    assert_eq!(v["choice"]["kind"], "cloud");
}

#[test]
fn hard_rules_override_learning() {
    let router = Router::new(math_model(), cheap_config()).unwrap();
    let math = RequestFeatures::from_prompt(MATH, None);
    let chat = RequestFeatures::from_prompt(CHAT, None);
    // Data residency keeps even a prompt the model wants in the cloud local.
    let local_only = RouteRules::default().with_placement(Placement::LocalOnly, "header");
    let d = router.decide(&math, &backends(), &local_only);
    assert_eq!(
        d.choice,
        Choice::Local {
            backend: "local".into()
        }
    );
    assert!(
        d.explanation.reason.starts_with("rule:local-only"),
        "{}",
        d.explanation.reason
    );
    // A later cloud-only from another source does not lift local-only.
    let both = local_only
        .clone()
        .with_placement(Placement::CloudOnly, "key");
    assert_eq!(
        router.decide(&math, &backends(), &both).choice,
        Choice::Local {
            backend: "local".into()
        }
    );
    let cloud_only = RouteRules::default().with_placement(Placement::CloudOnly, "route");
    assert_eq!(
        router.decide(&chat, &backends(), &cloud_only).choice,
        Choice::Cloud {
            backend: "cloud".into()
        }
    );
    // Local-only with no local backend is a rejection, never a cloud call.
    let only_cloud = vec![backends()[1].clone()];
    assert_eq!(
        router.decide(&chat, &only_cloud, &local_only).choice,
        Choice::Reject
    );
    // An SLO the cloud is predicted to miss excludes it.
    let slo = RouteRules {
        latency_slo_ms: Some(3_000.0),
        ..RouteRules::default()
    };
    let mut slow_cloud = backends();
    slow_cloud[1].ttft_ms = 5_000.0;
    let d = router.decide(&math, &slow_cloud, &slo);
    assert_eq!(
        d.choice,
        Choice::Local {
            backend: "local".into()
        }
    );
    assert!(
        d.explanation.excluded.iter().any(|e| e == "cloud:slo"),
        "{:?}",
        d.explanation.excluded
    );
    // Unhealthy backends are never chosen.
    let mut sick = backends();
    sick[1].healthy = false;
    assert_eq!(
        router.decide(&math, &sick, &RouteRules::default()).choice,
        Choice::Local {
            backend: "local".into()
        }
    );
    assert!(Placement::parse("Local-Only").is_ok());
    assert!(Placement::parse("moon").is_err());
}

#[test]
fn cost_weight_moves_the_decision() {
    let router = Router::new(math_model(), cheap_config()).unwrap();
    let math = RequestFeatures::from_prompt(MATH, None);
    let pricey = RouteRules {
        weights: Some(Weights {
            lambda_per_usd: 1e6,
            mu_per_s: 0.0,
        }),
        ..RouteRules::default()
    };
    assert_eq!(
        router.decide(&math, &backends(), &pricey).choice,
        Choice::Local {
            backend: "local".into()
        }
    );
}

#[test]
fn target_share_uses_the_held_out_threshold() {
    let config = RouterConfig {
        target_cloud_share: Some(0.5),
        ..cheap_config()
    };
    let router = Router::new(math_model(), config).unwrap();
    let prompts: Vec<String> = (0..200)
        .map(|i| {
            if i % 4 == 0 {
                format!("{MATH} {i}")
            } else {
                format!("{CHAT} number {i}")
            }
        })
        .collect();
    // The fixture's table maps share s to threshold 1 − s; check the decision follows it.
    let threshold = router.model_file().threshold_for_share(0.5);
    assert!((threshold - 0.5).abs() < 1e-6);
    for p in &prompts {
        let f = RequestFeatures::from_prompt(p, None);
        let d = router.decide(&f, &backends(), &RouteRules::default());
        let cloud = matches!(d.choice, Choice::Cloud { .. });
        assert_eq!(cloud, d.explanation.p_strong >= threshold);
        assert_eq!(d.explanation.reason, "share-threshold");
    }
}

#[test]
fn cascade_and_speculative_choices() {
    let config = RouterConfig {
        cascade_band: Some(10.0),
        cascade_threshold: 0.4,
        ..cheap_config()
    };
    let router = Router::new(math_model(), config).unwrap();
    let d = router.decide(
        &RequestFeatures::from_prompt(MATH, None),
        &backends(),
        &RouteRules::default(),
    );
    assert_eq!(
        d.choice,
        Choice::Cascade {
            local: "local".into(),
            cloud: "cloud".into(),
            threshold: 0.4
        }
    );
    let config = RouterConfig {
        speculative: true,
        ..cheap_config()
    };
    let router = Router::new(math_model(), config).unwrap();
    let d = router.decide(
        &RequestFeatures::from_prompt(MATH, None),
        &backends(),
        &RouteRules::default(),
    );
    assert_eq!(
        d.choice,
        Choice::Speculative {
            drafter: "local".into(),
            target: "cloud".into()
        }
    );
}

#[test]
fn feedback_moves_the_bandit_the_right_way() {
    let router = Router::new(math_model(), cheap_config()).unwrap();
    let chat = RequestFeatures::from_prompt(CHAT, None);
    let before = router.decide(&chat, &backends(), &RouteRules::default());
    assert!(matches!(before.choice, Choice::Local { .. }));
    let q_before = before.explanation.predicted_quality;
    // The local answers to chat prompts keep being wrong.
    for i in 0..200 {
        let d = router.decide(&chat, &backends(), &RouteRules::default());
        let id = format!("r{i}");
        router.remember(&id, &d);
        if matches!(d.choice, Choice::Cloud { .. }) {
            break;
        }
        let out = router
            .apply_feedback(&Feedback {
                request_id: id,
                correct: Some(false),
                ..Feedback::default()
            })
            .unwrap();
        assert_eq!(out.backend, "local");
        assert_eq!(out.reward, 0.0);
    }
    let after = router.decide(&chat, &backends(), &RouteRules::default());
    assert!(
        matches!(after.choice, Choice::Cloud { .. }),
        "{:?}",
        after.explanation
    );
    let local_q_after = {
        let only_local = vec![backends()[0].clone()];
        router
            .decide(&chat, &only_local, &RouteRules::default())
            .explanation
            .predicted_quality
    };
    assert!(
        local_q_after < q_before - 0.05,
        "before {q_before} after {local_q_after}"
    );

    // The state survives a file round trip.
    let dir = tempfile::tempdir().unwrap();
    let store = FileBanditStore::new(dir.path().join("bandit.json"));
    assert!(store.load().unwrap().is_none());
    router.save_bandit(&store).unwrap();
    let mut resumed = Router::new(math_model(), cheap_config()).unwrap();
    resumed.restore_bandit(&store).unwrap();
    assert_eq!(resumed.bandit_state(), router.bandit_state());
    assert!(matches!(
        resumed
            .decide(&chat, &backends(), &RouteRules::default())
            .choice,
        Choice::Cloud { .. }
    ));
    let mem = MemoryBanditStore::default();
    router.save_bandit(&mem).unwrap();
    assert_eq!(mem.load().unwrap(), Some(router.bandit_state()));
}

#[test]
fn positive_feedback_raises_quality() {
    let router = Router::new(math_model(), cheap_config()).unwrap();
    let chat = RequestFeatures::from_prompt(CHAT, None);
    let d = router.decide(&chat, &backends(), &RouteRules::default());
    let q0 = d.explanation.predicted_quality;
    for i in 0..50 {
        let id = format!("a{i}");
        router.remember(&id, &d);
        router
            .apply_feedback(&Feedback {
                request_id: id,
                thumbs_up: Some(true),
                ..Feedback::default()
            })
            .unwrap();
    }
    let q1 = router
        .decide(&chat, &backends(), &RouteRules::default())
        .explanation
        .predicted_quality;
    assert!(q1 > q0, "{q0} -> {q1}");
}

#[test]
fn bad_feedback_is_a_clear_client_error() {
    let router = Router::new(math_model(), cheap_config()).unwrap();
    let d = router.decide(
        &RequestFeatures::from_prompt(CHAT, None),
        &backends(),
        &RouteRules::default(),
    );
    router.remember("known", &d);
    let err = router.apply_feedback(&Feedback {
        request_id: "nope".into(),
        score: Some(0.5),
        ..Feedback::default()
    });
    assert!(
        matches!(err, Err(Error::UnknownRequest(ref id)) if id == "nope"),
        "{err:?}"
    );
    assert_eq!(err.unwrap_err().to_string(), "unknown request id nope");
    for (body, needle) in [
        (
            r#"{"request_id":"known","score":1.5}"#,
            "score 1.5 is outside 0..=1",
        ),
        (r#"{"request_id":"known"}"#, "no signal"),
        (r#"{"request_id":"","score":0.5}"#, "request_id is empty"),
        (r#"{"request_id":"known","score":"high"}"#, "invalid type"),
        (r#"{"request_id":"known","stars":5}"#, "unknown field"),
        ("not json", "expected"),
    ] {
        let err = apply_feedback(&router, body.as_bytes()).unwrap_err();
        assert!(matches!(err, Error::InvalidFeedback(_)), "{body}: {err:?}");
        assert!(err.is_client_error());
        assert!(err.to_string().contains(needle), "{body}: {err}");
    }
    let ok = apply_feedback(&router, br#"{"request_id":"known","score":0.9}"#).unwrap();
    assert_eq!(ok.backend, "local");
    // One update per answer: a repeat cannot pile onto the same arm.
    let again = apply_feedback(&router, br#"{"request_id":"known","score":0.9}"#).unwrap_err();
    assert!(
        matches!(again, Error::FeedbackAlreadyApplied(ref id) if id == "known"),
        "{again:?}"
    );
    assert!(again.is_client_error());
    // A fallback answered instead: feedback teaches the backend that answered.
    router.answered_by("known", "cloud");
    let moved = apply_feedback(&router, br#"{"request_id":"known","score":0.2}"#).unwrap();
    assert_eq!(moved.backend, "cloud");
}

#[test]
fn recent_request_window_is_bounded() {
    let config = RouterConfig {
        recent_requests: 3,
        ..cheap_config()
    };
    let router = Router::new(math_model(), config).unwrap();
    let d = router.decide(
        &RequestFeatures::from_prompt(CHAT, None),
        &backends(),
        &RouteRules::default(),
    );
    // At least the last 3 are kept, and at most 6: "a" is 7th from the end.
    for id in ["a", "b", "c", "d", "e", "f", "g"] {
        router.remember(id, &d);
    }
    let fb = |id: &str| Feedback {
        request_id: id.into(),
        score: Some(1.0),
        ..Feedback::default()
    };
    assert!(matches!(
        router.apply_feedback(&fb("a")),
        Err(Error::UnknownRequest(_))
    ));
    for id in ["e", "f", "g"] {
        assert!(router.apply_feedback(&fb(id)).is_ok(), "{id} forgotten");
    }
}

#[test]
fn default_model_ships_and_decides() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/default.json");
    let file = ModelFile::load(&path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 1_000_000, "default model is {size} bytes");
    assert!(file.share_thresholds.len() >= 2);
    let router = Router::load_default(RouterConfig::default()).unwrap();
    let e: Arc<[f32]> = Arc::from(vec![0.05f32; 384]);
    let d = router.decide(
        &RequestFeatures::from_prompt(MATH, Some(e)),
        &backends(),
        &RouteRules::default(),
    );
    assert!((0.0..=1.0).contains(&d.explanation.p_strong));
    assert_ne!(d.choice, Choice::Reject);
}

#[test]
fn missing_embedding_falls_back_to_the_training_mean() {
    let router = Router::load_default(RouterConfig::default()).unwrap();
    let QualityModel::MatrixFactorization(_) = &router.model_file().model else {
        return;
    };
    let mean: Vec<f32> = router.model_file().model.input_mean().unwrap()[..384].to_vec();
    let without = router.predict(&RequestFeatures::from_prompt(MATH, None));
    let with_mean = router.predict(&RequestFeatures::from_prompt(MATH, Some(Arc::from(mean))));
    assert!(
        (without - with_mean).abs() < 1e-6,
        "{without} vs {with_mean}"
    );
}

#[test]
fn lambda_from_a_budget_meets_it() {
    let router = Router::new(math_model(), cheap_config()).unwrap();
    let sample: Vec<RequestFeatures> = (0..40)
        .map(|i| RequestFeatures::from_prompt(&format!("{MATH} variant {i}"), None))
        .collect();
    let rules = RouteRules {
        weights: Some(Weights {
            lambda_per_usd: 0.0,
            mu_per_s: 0.0,
        }),
        ..RouteRules::default()
    };
    let cost_at = |lambda: f64| {
        let r = RouteRules {
            weights: Some(Weights {
                lambda_per_usd: lambda,
                mu_per_s: 0.0,
            }),
            ..RouteRules::default()
        };
        sample
            .iter()
            .map(|f| router.decide(f, &backends(), &r).explanation.cost_usd)
            .sum::<f64>()
            / 40.0
    };
    let free = cost_at(0.0);
    assert!(
        free > 0.0,
        "math prompts go to the paid cloud when cost is free"
    );
    let budget = free / 2.0;
    let lambda = router
        .lambda_for_budget(&sample, &backends(), &rules, budget)
        .unwrap();
    assert!(cost_at(lambda) <= budget + 1e-12);
    assert_eq!(
        router.lambda_for_budget(&sample, &backends(), &rules, free * 2.0),
        Some(0.0)
    );
}
