//! The evaluator on a tiny hand-checked CSV, and its metric arithmetic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use tandem_lab::router::dataset::Dataset;
use tandem_lab::router::eval::{CASCADE_ROUTER, EvalArgs, eval};
use tandem_lab::router::metrics::Curve;
use tandem_lab::router::{TrainArgs, train_answer_check};
use tandem_router_policy::AnswerCheck;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

// Rows after dropping q9: gains (strong − weak) = +1, +1, 0, 0, 0, −1, +1, 0.
// Weak accuracy 4/8, strong 6/8, so the gap is two answers.
const WEAK: [f32; 8] = [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0];
const STRONG: [f32; 8] = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0];

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn loads_and_drops_contaminated() {
    let d = Dataset::load(&fixture()).unwrap();
    assert_eq!(d.rows.len(), 8);
    assert_eq!(d.dropped_contaminated, 1);
    assert_eq!(d.models, vec!["weak-model", "strong-model"]);
    let weak: Vec<f32> = d.rows.iter().map(|r| r.scores[0]).collect();
    assert_eq!(weak, WEAK);
}

#[test]
fn hand_checked_router_curve() {
    // Router scores in row order: accuracy×8 goes 4,5,6,6,6,6,5,6,6, so PGR is
    // 0,.5,1,1,1,1,.5,1,1 and the trapezoid area is 6.5/8.
    let scores = [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0];
    let s = Curve::from_scores(&scores, &WEAK, &STRONG).summary();
    assert!(close(s.apgr, 0.8125), "{}", s.apgr);
    assert_eq!(s.cpt50, Some(0.125));
    assert_eq!(s.cpt80, Some(0.25));
}

#[test]
fn hand_checked_oracle_and_random() {
    // Oracle: the three +1 first (PGR .5, 1, 1.5), four ties at 1.5, then the −1 (PGR 1):
    // area (.25 + .75 + 1.25 + 4·1.5 + 1.25) / 8 = 1.1875.
    let gain: Vec<f32> = STRONG.iter().zip(WEAK).map(|(s, w)| s - w).collect();
    let o = Curve::from_scores(&gain, &WEAK, &STRONG).summary();
    assert!(close(o.apgr, 1.1875), "{}", o.apgr);
    assert_eq!(o.cpt50, Some(0.125));
    assert_eq!(o.cpt80, Some(0.25));
    // Random: PGR equals the share, so the area is one half and CPT(x) is the first share ≥ x.
    let r = Curve::from_scores(&[0.0; 8], &WEAK, &STRONG).summary();
    assert!(close(r.apgr, 0.5));
    assert_eq!(r.cpt50, Some(0.5));
    assert_eq!(r.cpt80, Some(0.875));
}

#[test]
fn eval_reports_random_and_oracle_rows_and_writes_files() {
    let out = tempfile::tempdir().unwrap();
    let report = eval(&EvalArgs {
        data: fixture(),
        out: Some(out.path().to_path_buf()),
        folds: 2,
        bootstrap: 20,
        use_embeddings: false,
        ..EvalArgs::default()
    })
    .unwrap();
    assert_eq!(report.datasets.len(), 1);
    let d = &report.datasets[0];
    assert_eq!((d.prompts, d.dropped_contaminated), (8, 1));
    assert!(close(d.weak_accuracy, 0.5) && close(d.strong_accuracy, 0.75));
    let names: Vec<&str> = d.rows.iter().map(|r| r.router.as_str()).collect();
    assert_eq!(
        names,
        [
            "random", "logistic", "mlp", "mf", "knn", "ensemble", "oracle"
        ]
    );
    let random = &d.rows[0];
    assert!(close(random.apgr.value, 0.5));
    assert!(close(random.cpt50.value, 0.5) && close(random.cpt80.value, 0.875));
    let oracle = d.rows.last().unwrap();
    assert!(close(oracle.apgr.value, 1.1875));
    assert!(close(oracle.cpt50.value, 0.125) && close(oracle.cpt80.value, 0.25));
    assert!(oracle.apgr.lo <= oracle.apgr.value && oracle.apgr.value <= oracle.apgr.hi);
    for r in &d.rows[1..6] {
        assert!(r.realised_share.is_some());
        assert!((0.0..=1.5).contains(&r.apgr.value));
    }
    let text = report.to_string();
    assert!(text.contains("random") && text.contains("oracle"));
    assert!(out.path().join("router_eval.json").is_file());
    assert!(out.path().join("router_eval.txt").is_file());
    let png = out.path().join("tiny_accuracy_vs_share.png");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}

#[test]
fn named_columns_and_bad_names() {
    let args = EvalArgs {
        data: fixture(),
        weak: Some("strong-model".into()),
        strong: Some("weak-model".into()),
        folds: 2,
        bootstrap: 0,
        use_embeddings: false,
        ..EvalArgs::default()
    };
    let r = eval(&args).unwrap();
    assert!(close(r.datasets[0].weak_accuracy, 0.75));
    let bad = EvalArgs {
        weak: Some("nope".into()),
        ..args
    };
    let err = eval(&bad).unwrap_err().to_string();
    assert!(err.contains("no model column \"nope\""), "{err}");
}

fn answers_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/answers")
}

#[test]
fn a_file_with_the_weak_models_answers_adds_the_cascade_row() {
    let d = Dataset::load(&answers_fixture()).unwrap();
    assert!(d.has_responses(0) && d.has_responses(1));
    assert!(d.rows[0].responses[0].as_deref().unwrap().contains("####"));
    assert!(!Dataset::load(&fixture()).unwrap().has_responses(0));

    let report = eval(&EvalArgs {
        data: answers_fixture(),
        folds: 2,
        bootstrap: 20,
        use_embeddings: false,
        ..EvalArgs::default()
    })
    .unwrap();
    let d = &report.datasets[0];
    let names: Vec<&str> = d.rows.iter().map(|r| r.router.as_str()).collect();
    assert_eq!(names[names.len() - 2..], [CASCADE_ROUTER, "oracle"]);
    // Every wrong weak answer has a slip or no final answer, so the check finds them all first:
    // it matches the oracle.
    let (cascade, oracle) = (&d.rows[d.rows.len() - 2], &d.rows[d.rows.len() - 1]);
    assert!(
        close(cascade.apgr.value, oracle.apgr.value),
        "{:?}",
        cascade.apgr
    );
    assert!(close(cascade.cpt80.value, 0.4375), "{:?}", cascade.cpt80);
    assert!(
        report
            .to_string()
            .contains("the weak model answers every prompt")
    );
}

#[test]
fn the_answer_check_trains_on_answers_and_refuses_data_without_them() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("check.json");
    let args = TrainArgs {
        data: answers_fixture(),
        out: path.clone(),
        folds: 2,
        ..TrainArgs::default()
    };
    let report = train_answer_check(&args).unwrap();
    assert_eq!(report.prompts, 16);
    let check = AnswerCheck::load(&path).unwrap();
    let prompt = "Sam has 20 apples and buys 3 bags of 3 more. How many apples now?";
    let clean = check.score(
        prompt,
        "3 * 3 = <<3*3=9>>9.\n20 + 9 = <<20+9=29>>29.\n#### 29",
    );
    let slip = check.score(prompt, "3 * 3 = <<3*3=10>>10.\n20 + 10 = 31.\n#### 31");
    assert!(slip > clean, "{slip} <= {clean}");

    let err = train_answer_check(&TrainArgs {
        data: fixture(),
        ..args
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("_response"), "{err}");
}
