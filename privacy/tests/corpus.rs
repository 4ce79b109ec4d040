//! The labelled corpus (`tests/fixtures/privacy/`) through the detector alone: every sensitive
//! value is redacted, and the share of clean prompts with a finding (false positives) is
//! reported.

#![allow(clippy::print_stderr, clippy::unwrap_used)]

use tandem_privacy::{Detector, Redaction};

#[test]
fn every_sensitive_value_is_redacted_and_few_clean_prompts_are_flagged() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/privacy/corpus.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let detector = Detector::builtin();
    let (mut sensitive, mut clean, mut flagged) = (0, 0, Vec::new());
    let mut missed = Vec::new();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let prompt = row["prompt"].as_str().unwrap();
        let findings = detector.scan(prompt);
        if row["sensitive"].as_bool().unwrap() {
            sensitive += 1;
            let mut r = Redaction::new();
            let redacted = r.apply(&detector, prompt, &findings);
            for v in row["values"].as_array().unwrap() {
                let v = v.as_str().unwrap();
                if redacted.contains(v) {
                    missed.push(format!("{}: {v}", row["id"]));
                }
            }
            assert_eq!(r.restore(&redacted), prompt);
        } else {
            clean += 1;
            if !findings.is_empty() {
                let what: Vec<_> = findings
                    .iter()
                    .map(|f| {
                        format!(
                            "{} {:?}",
                            detector.kind_name(f.kind),
                            &prompt[f.start..f.end]
                        )
                    })
                    .collect();
                flagged.push(format!("{}: {}", row["id"], what.join(", ")));
            }
        }
    }
    let rate = flagged.len() as f64 / clean as f64;
    eprintln!(
        "privacy corpus (detector): {sensitive} sensitive prompts, {} values missed; {clean} clean prompts, {} flagged (false-positive rate {:.1}%)",
        missed.len(),
        flagged.len(),
        rate * 100.0
    );
    for f in &flagged {
        eprintln!("  flagged {f}");
    }
    assert!(missed.is_empty(), "missed: {missed:#?}");
    assert!(sensitive >= 100 && clean >= 100);
    assert!(rate <= 0.05, "false-positive rate {rate}");
}
