//! A policy defined outside the crate, in one place: it always serves from the cheapest allowed
//! backend. It is registered on a router and reached through `Router::decide`, the gateway's
//! entry point, so the hard rules still apply and feedback still finds the decision.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tandem_router_policy::backend::{BackendCandidate, BackendProfile, Price, Site};
use tandem_router_policy::{
    Choice, Decision, Feedback, Placement, Policy, PolicyInput, PolicyKind, RequestFeatures,
    RouteRules, Router, RouterConfig,
};

/// Always the cheapest allowed backend for this request.
#[derive(Debug)]
struct Cheapest;

impl Policy for Cheapest {
    fn name(&self) -> &str {
        "cheapest"
    }

    fn decide(&self, input: &PolicyInput<'_>) -> Decision {
        let cheapest = input
            .allowed()
            .iter()
            .min_by(|a, b| input.cost(a).total_cmp(&input.cost(b)));
        match cheapest {
            Some(c) => input.pick(c, self.name(), "cheapest"),
            None => self.reject(input),
        }
    }
}

fn candidate(name: &str, kind: Site, price: f64) -> BackendCandidate {
    BackendCandidate::from_profile(BackendProfile {
        name: name.into(),
        kind,
        strength: if kind == Site::Local { 0.0 } else { 1.0 },
        price: Price {
            input_per_mtok: price,
            output_per_mtok: 4.0 * price,
            cached_input_per_mtok: price / 2.0,
        },
        serial: kind == Site::Local,
        verifies_drafts: false,
        drafts: false,
        prior_ttft_ms: 100.0,
        prior_itl_ms: 10.0,
    })
}

/// A paid local backend (say, a rented GPU) and two clouds, the second cheapest of all.
fn backends() -> Vec<BackendCandidate> {
    vec![
        candidate("local", Site::Local, 1.0),
        candidate("pricey", Site::Cloud, 10.0),
        candidate("thrifty", Site::Cloud, 0.5),
    ]
}

fn router() -> Router {
    Router::load_default(RouterConfig::default())
        .unwrap()
        .with_policy(Arc::new(Cheapest))
}

#[test]
fn registered_policy_decides_through_the_router() {
    let router = router();
    assert_eq!(router.policy().name(), "cheapest");
    let f = RequestFeatures::from_prompt("Prove that there are infinitely many primes.", None);
    let d = router.decide(&f, &backends(), &RouteRules::default());
    assert_eq!(
        d.choice,
        Choice::Cloud {
            backend: "thrifty".into()
        }
    );
    assert_eq!(d.explanation.reason, "cheapest");
    assert_eq!(d.explanation.model, "cheapest");
    let header = d.explanation.header_value();
    assert!(header.starts_with("cloud:thrifty; "), "{header}");
    assert!(header.ends_with("reason=cheapest"), "{header}");
}

#[test]
fn hard_rules_bind_a_registered_policy() {
    let router = router();
    let f = RequestFeatures::from_prompt("Keep this on the machine.", None);
    // Data residency: the cheapest cloud is out, the local backend serves.
    let local_only = RouteRules::default().with_placement(Placement::LocalOnly, "header");
    let d = router.decide(&f, &backends(), &local_only);
    assert_eq!(
        d.choice,
        Choice::Local {
            backend: "local".into()
        }
    );
    assert!(d.explanation.reason.starts_with("rule:local-only"));
    assert!(
        d.explanation
            .excluded
            .iter()
            .any(|e| e == "thrifty:local-only"),
        "{:?}",
        d.explanation.excluded
    );
    // An allow-list without the cheapest: the cheapest of the rest.
    let allow = RouteRules {
        allowed_backends: vec!["local".into(), "pricey".into()],
        ..RouteRules::default()
    };
    let d = router.decide(&f, &backends(), &allow);
    assert_eq!(
        d.choice,
        Choice::Local {
            backend: "local".into()
        }
    );
    // Nothing left: a rejection, explained by the policy.
    let none = vec![backends()[1].clone()];
    let d = router.decide(&f, &none, &local_only);
    assert_eq!(d.choice, Choice::Reject);
    assert_eq!(d.explanation.model, "cheapest");
}

#[test]
fn feedback_reaches_a_policy_that_does_not_learn() {
    let router = router();
    let f = RequestFeatures::from_prompt("Say hi.", None);
    let d = router.decide(&f, &backends(), &RouteRules::default());
    router.remember("r1", &d);
    let out = router
        .apply_feedback(&Feedback {
            request_id: "r1".into(),
            thumbs_up: Some(true),
            ..Feedback::default()
        })
        .unwrap();
    assert_eq!(out.backend, "thrifty");
    assert_eq!(out.reward, 1.0);
}

#[test]
fn config_names_the_in_tree_policies() {
    let config: RouterConfig = serde_json::from_str(
        r#"{"weights":{"lambda_per_usd":1.0,"mu_per_s":0.0},"policy":"fixed"}"#,
    )
    .unwrap();
    assert_eq!(config.policy, PolicyKind::Fixed);
    let router = Router::load_default(config).unwrap();
    assert_eq!(router.policy().name(), "fixed");
    let f = RequestFeatures::from_prompt("Anything.", None);
    // Route order: the first backend that passes.
    let d = router.decide(&f, &backends(), &RouteRules::default());
    assert_eq!(
        d.choice,
        Choice::Local {
            backend: "local".into()
        }
    );
    let cloud_only = RouteRules::default().with_placement(Placement::CloudOnly, "key");
    let d = router.decide(&f, &backends(), &cloud_only);
    assert_eq!(
        d.choice,
        Choice::Cloud {
            backend: "pricey".into()
        }
    );
    assert_eq!(
        Router::load_default(RouterConfig::default())
            .unwrap()
            .policy()
            .name(),
        "learned"
    );
}
