//! Scores answers with the shipped answer check: reads JSON lines `{"prompt", "answer"}` on stdin
//! and prints each score, then how many the check would escalate at a few escalation shares of
//! its held-out table.
//!
//! `... | cargo run -p tandem-router-policy --example answer_check`

#![allow(clippy::print_stdout)] // a measuring tool: its table goes to stdout

use std::io::BufRead;

use anyhow::{Context, Result};
use tandem_router_policy::AnswerCheck;

fn main() -> Result<()> {
    let check = AnswerCheck::shipped()?;
    let mut scores = Vec::new();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("line {}", n + 1))?;
        let text = |key: &str| row.get(key).and_then(|v| v.as_str()).unwrap_or("");
        let score = check.score(text("prompt"), text("answer"));
        println!("{:>4} {score:.3}", n + 1);
        scores.push(score);
    }
    println!("{} answers", scores.len());
    println!(
        "{:>16} {:>10} {:>10}",
        "held-out share", "threshold", "escalated"
    );
    for share in [0.1, 0.3, 0.5] {
        let t = check.threshold_for_share(share);
        let escalated = scores.iter().filter(|&&s| s >= t).count();
        println!(
            "{:>15.0}% {t:>10.3} {:>9.0}%",
            100.0 * share,
            100.0 * escalated as f64 / scores.len().max(1) as f64
        );
    }
    Ok(())
}
