//! The privacy part of `tandem bench overhead`: the 2 kB prompts its detector and redaction rows
//! send, and a micro-benchmark of the detectors on them against a peer: the same kinds written as
//! the usual regular expressions (`regex` crate, one pass per pattern, no checksums).

use std::fmt::Write as _;
use std::time::Instant;

use regex::Regex;
use tandem_privacy::{Detector, Redaction};

/// A clean prompt of about 2 kB: prose, numbers that look risky, and code.
pub fn clean_prompt() -> String {
    let block = "Please review the release notes for build 10.0.19041 and the rollout of v2.14.3 \
        on 2024-03-15 at 10:30:45 UTC. Order ORD-2024-00123 shipped; invoice INV-000981 is \
        overdue by 12 days and the total moved from $1,299.99 to $1,249.49. The commit \
        3f786850e387550fdab836ed7e6dc881de23f663 touched `fn parse(input: &str) -> Result<Vec<u32>, \
        Error>` and the request 123e4567-e89b-42d3-a456-426614174000 timed out after 950 ms. ";
    let mut s = String::new();
    while s.len() < 2000 {
        s.push_str(block);
    }
    s.truncate(2000);
    s
}

/// The same prompt with nine sensitive values in it.
pub fn sensitive_prompt() -> String {
    let values = "Contact anna.schmidt@example.com or +44 20 7946 0958; card 4111 1111 1111 1111; \
        IBAN DE89 3704 0044 0532 0130 00; SSN 123-45-6789; host 192.168.10.4; key \
        sk-proj-Zx81kQp0LmN4vB7tR2sY9wE3aB5cD7eF; NINO AB 12 34 56 C; DNI 12345678Z. ";
    let mut s = clean_prompt();
    s.truncate(2000 - values.len());
    s.insert_str(s.len() / 2, values);
    s
}

/// The peer: one regular expression per kind, as a regex-based scanner writes them.
fn peer_patterns() -> Vec<Regex> {
    [
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
        r"\+?\(?\d{1,4}\)?[ .-]?\d{2,4}[ .-]?\d{3,4}[ .-]?\d{3,4}",
        r"\b(?:\d[ -]?){12,18}\d\b",
        r"\b\d{3}-\d{2}-\d{4}\b",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
        r"\b[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
        r"\b\d{8}[A-Z]\b",
        r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[A-Z0-9]{16}|ghp_[A-Za-z0-9]{36}|xox[bp]-[A-Za-z0-9-]{10,}|AIza[A-Za-z0-9_-]{35}|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)",
    ]
    .iter()
    .filter_map(|p| Regex::new(p).ok())
    .collect()
}

/// Times `f` `n` times; the p50 and p99 in µs.
fn time(n: usize, mut f: impl FnMut() -> usize) -> (f64, f64, usize) {
    let mut us = Vec::with_capacity(n);
    let mut found = 0;
    for _ in 0..n {
        let t = Instant::now();
        found = std::hint::black_box(f());
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    (us[n / 2], us[n * 99 / 100], found)
}

/// The micro-benchmark's table: detectors and redaction on the 2 kB prompts, the regex peer, and
/// the ratio.
pub fn detector_table(iterations: usize) -> String {
    let detector = Detector::builtin();
    let peer = peer_patterns();
    let n = iterations.max(100);
    let clean = clean_prompt();
    let sensitive = sensitive_prompt();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "detectors on a 2 kB prompt, one thread, {n} runs each (µs per prompt)"
    );
    let _ = writeln!(
        out,
        "{:<34} {:>9} {:>9} {:>7} {:>14} {:>12}",
        "what", "p50 µs", "p99 µs", "found", "peer p50 µs", "peer / ours"
    );
    for (name, text) in [
        ("scan, clean prompt", &clean),
        ("scan, 9 values", &sensitive),
    ] {
        let (p50, p99, found) = time(n, || detector.scan(text).len());
        let (peer50, _, peer_found) = time(n, || {
            peer.iter()
                .map(|r| r.find_iter(text).count())
                .sum::<usize>()
        });
        let _ = writeln!(
            out,
            "{name:<34} {p50:>9.2} {p99:>9.2} {found:>7} {peer50:>14.2} {:>12.2}   (peer found {peer_found})",
            peer50 / p50
        );
    }
    let (p50, p99, found) = time(n, || {
        let findings = detector.scan(&sensitive);
        let mut r = Redaction::new();
        let redacted = r.apply(&detector, &sensitive, &findings);
        r.restore(&redacted).len() + findings.len() - sensitive.len()
    });
    let _ = writeln!(
        out,
        "{:<34} {p50:>9.2} {p99:>9.2} {found:>7}",
        "scan + redact + restore, 9 values"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompts_are_2_kb_and_only_the_sensitive_one_has_findings() {
        let detector = Detector::builtin();
        assert_eq!(clean_prompt().len(), 2000);
        assert_eq!(sensitive_prompt().len(), 2000);
        assert!(detector.scan(&clean_prompt()).is_empty());
        assert_eq!(detector.scan(&sensitive_prompt()).len(), 9);
        assert!(detector_table(100).contains("scan, 9 values"));
    }
}
