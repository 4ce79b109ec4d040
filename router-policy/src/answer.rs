//! Answer check: signs in a finished local answer that it is wrong (no final answer, arithmetic
//! that does not add up, text cut off, hedging), and a learned model over them that scores how
//! much sending the request to the cloud would help. A cascade that judges the whole answer uses
//! it; so does `tandem router eval` where a data set carries the weak model's answers.
//!
//! The signs are cheap text checks (microseconds per answer), strongest on worked arithmetic
//! answers: the model shipped in `models/answer_check.json` is trained on GSM8K answers. A prose
//! answer has no final result and no sums, which that model reads like an unfinished one, so it
//! scores high: the shipped check suits routes that serve worked answers.

use std::collections::HashSet;
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::model::QualityModel;
use crate::{Error, Result};

/// Names of the features [`answer_features`] returns, in order.
pub const ANSWER_FEATURES: [&str; 24] = [
    "final_marker",
    "final_number",
    "final_not_integer",
    "final_negative",
    "final_in_prompt",
    "final_is_last_number",
    "final_magnitude",
    "answer_chars",
    "answer_lines",
    "prompt_chars",
    "prompt_numbers",
    "length_ratio",
    "answer_numbers",
    "new_numbers",
    "unused_prompt_numbers",
    "annotations",
    "annotation_errors",
    "equations",
    "equation_errors",
    "any_arithmetic_error",
    "cut_off",
    "hedges",
    "rounding",
    "prompt_percent",
];

/// The answer check shipped with Tandem (trained by `tandem router train-answer-check`).
pub const SHIPPED_ANSWER_CHECK: &str = include_str!("../models/answer_check.json");

/// The text patterns the checks read.
struct Patterns {
    /// A number as people write it: optional sign and `$`, thousands commas, decimals.
    number: Regex,
    /// A calculator annotation, `<<48/2=24>>`.
    annotation: Regex,
    /// An inline chain of operations with its result, `16 - 3 - 4 = 9`.
    equation: Regex,
}

/// Compiled once; the patterns are constants the tests compile, so None never happens in practice
/// and keeps this path free of panics.
static PATTERNS: LazyLock<Option<Patterns>> = LazyLock::new(|| {
    Some(Patterns {
        number: Regex::new(r"-?\$?[\d,]*\.?\d+").ok()?,
        annotation: Regex::new(r"<<([^=<>]+)=([^<>]+)>>").ok()?,
        equation: Regex::new(
            r"(\d[\d,]*\.?\d*(?:\s*[-+*/x×]\s*\$?\d[\d,]*\.?\d*)+)\s*=\s*\$?(\d[\d,]*\.?\d*)",
        )
        .ok()?,
    })
});

/// Words that mark an unsure or self-correcting answer.
const HEDGES: [&str; 12] = [
    "however",
    "assum",
    "approximately",
    "not possible",
    "cannot",
    "can't",
    "unclear",
    "wait",
    "mistake",
    "actually",
    "but ",
    "if we",
];

/// Markers after which an answer states its final result.
const FINAL_MARKERS: [&str; 4] = ["####", "the answer is", "answer:", "\\boxed{"];

fn parse_number(text: &str) -> Option<f64> {
    let clean: String = text.chars().filter(|c| *c != '$' && *c != ',').collect();
    clean.parse::<f64>().ok().filter(|x| x.is_finite())
}

fn numbers(re: &Regex, text: &str) -> Vec<f64> {
    re.find_iter(text)
        .filter_map(|m| parse_number(m.as_str()))
        .collect()
}

/// Exact set membership for numbers parsed from text (bit patterns of finite values).
fn number_set(values: &[f64]) -> HashSet<u64> {
    values.iter().map(|v| (v + 0.0).to_bits()).collect()
}

fn contains(set: &HashSet<u64>, value: f64) -> bool {
    set.contains(&(value + 0.0).to_bits())
}

/// The position just past the last final-answer marker in `lower` (the answer, ASCII-lowercased
/// so byte positions match), when it has one.
fn final_marker_end(lower: &str) -> Option<usize> {
    FINAL_MARKERS
        .iter()
        .filter_map(|m| lower.rfind(m).map(|at| at + m.len()))
        .max()
}

/// The features of `answer` to `prompt`, in [`ANSWER_FEATURES`] order.
pub fn answer_features(prompt: &str, answer: &str) -> Vec<f32> {
    let Some(re) = PATTERNS.as_ref() else {
        return vec![0.0; ANSWER_FEATURES.len()];
    };
    let lower = answer.to_ascii_lowercase();
    let marker = final_marker_end(&lower);
    let final_value = marker.and_then(|end| {
        let first = answer[end..].split_whitespace().next()?;
        parse_number(first.trim_end_matches(['.', '}', ')']))
    });
    let prompt_numbers = numbers(&re.number, prompt);
    let prompt_set = number_set(&prompt_numbers);
    // With where each ends: a marker's last character cannot be part of a number, so the ones
    // ending before it are exactly those a scan of the text up to it would find.
    let (answer_numbers, answer_ends): (Vec<f64>, Vec<usize>) = re
        .number
        .find_iter(answer)
        .filter_map(|m| Some((parse_number(m.as_str())?, m.end())))
        .unzip();
    let answer_set = number_set(&answer_numbers);
    let last_before_marker = marker.and_then(|end| {
        let before = answer_ends.partition_point(|&e| e <= end);
        before.checked_sub(1).map(|i| answer_numbers[i])
    });

    let (mut annotations, mut annotation_errors) = (0usize, 0usize);
    for c in re.annotation.captures_iter(answer) {
        annotations += 1;
        let claimed = c.get(2).and_then(|m| m.as_str().trim().parse::<f64>().ok());
        let computed = c.get(1).and_then(|m| evaluate(m.as_str()));
        match (computed, claimed) {
            (Some(x), Some(y)) if (x - y).abs() <= 1e-4 * y.abs().max(1.0) => {}
            _ => annotation_errors += 1,
        }
    }
    let (mut equations, mut equation_errors) = (0usize, 0usize);
    for c in re.equation.captures_iter(answer) {
        // The whole chain is read, so `2 + 3 + 4 = 9` is one correct equation rather than a
        // wrong `3 + 4 = 9`.
        let lhs: String = c
            .get(1)
            .map_or("", |m| m.as_str())
            .chars()
            .filter(|ch| *ch != '$' && *ch != ',')
            .map(|ch| if ch == 'x' || ch == '×' { '*' } else { ch })
            .collect();
        let result = c.get(2).and_then(|m| parse_number(m.as_str()));
        let (Some(value), Some(result)) = (evaluate(&lhs), result) else {
            continue;
        };
        equations += 1;
        if (value - result).abs() > 1e-2 * result.abs().max(1.0) {
            equation_errors += 1;
        }
    }

    let trimmed = answer.trim_end();
    let (answer_chars, prompt_chars) = (answer.chars().count(), prompt.chars().count());
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let ln = |n: usize| (n as f32).ln_1p();
    vec![
        flag(marker.is_some()),
        flag(final_value.is_some()),
        flag(final_value.is_some_and(|v| (v - v.round()).abs() > 1e-9)),
        flag(final_value.is_some_and(|v| v < 0.0)),
        flag(final_value.is_some_and(|v| contains(&prompt_set, v))),
        flag(final_value.is_some_and(|v| last_before_marker == Some(v))),
        final_value.map_or(0.0, |v| (v.abs() + 1.0).log10() as f32),
        ln(answer_chars),
        ln(answer.matches('\n').count()),
        ln(prompt_chars),
        prompt_numbers.len() as f32,
        ln(answer_chars) - ln(prompt_chars),
        ln(answer_numbers.len()),
        ln(answer_numbers
            .iter()
            .filter(|v| !contains(&prompt_set, **v))
            .count()),
        prompt_set
            .iter()
            .filter(|bits| !answer_set.contains(bits))
            .count() as f32,
        annotations as f32,
        annotation_errors as f32,
        equations as f32,
        equation_errors as f32,
        flag(annotation_errors + equation_errors > 0),
        flag(marker.is_none() && !trimmed.ends_with(['.', ')'])),
        HEDGES.iter().filter(|h| lower.contains(*h)).count() as f32,
        flag(lower.contains("round")),
        flag(prompt.contains('%')),
    ]
}

/// Evaluates `+ - * /`, `^` or `**`, parentheses and decimal numbers (calculator annotations);
/// None when the text is anything else.
fn evaluate(expr: &str) -> Option<f64> {
    let tokens: Vec<char> = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let mut parser = Calc {
        tokens: &tokens,
        at: 0,
    };
    let value = parser.sum()?;
    (parser.at == tokens.len() && value.is_finite()).then_some(value)
}

/// A recursive-descent reader over an expression's characters.
struct Calc<'a> {
    tokens: &'a [char],
    at: usize,
}

impl Calc<'_> {
    fn peek(&self) -> Option<char> {
        self.tokens.get(self.at).copied()
    }

    fn sum(&mut self) -> Option<f64> {
        let mut value = self.product()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.at += 1;
            let rhs = self.product()?;
            value = if op == '+' { value + rhs } else { value - rhs };
        }
        Some(value)
    }

    fn product(&mut self) -> Option<f64> {
        let mut value = self.power()?;
        loop {
            match self.peek() {
                Some('*') if self.tokens.get(self.at + 1) != Some(&'*') => {
                    self.at += 1;
                    value *= self.power()?;
                }
                Some('/') => {
                    self.at += 1;
                    value /= self.power()?;
                }
                _ => return Some(value),
            }
        }
    }

    fn power(&mut self) -> Option<f64> {
        let base = self.unary()?;
        let caret = self.peek() == Some('^');
        let stars = self.peek() == Some('*') && self.tokens.get(self.at + 1) == Some(&'*');
        if caret || stars {
            self.at += if caret { 1 } else { 2 };
            // Right-associative, as in Python.
            return Some(base.powf(self.power()?));
        }
        Some(base)
    }

    fn unary(&mut self) -> Option<f64> {
        match self.peek()? {
            '-' => {
                self.at += 1;
                Some(-self.unary()?)
            }
            '+' => {
                self.at += 1;
                self.unary()
            }
            '(' => {
                self.at += 1;
                let value = self.sum()?;
                (self.peek() == Some(')')).then(|| self.at += 1)?;
                Some(value)
            }
            _ => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
                    self.at += 1;
                }
                let text: String = self.tokens[start..self.at].iter().collect();
                text.parse().ok()
            }
        }
    }
}

/// A trained answer check: the model, and held-out thresholds for escalation shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerCheck {
    /// Format version.
    pub version: u32,
    /// What it was trained on.
    pub trained_on: String,
    /// Feature names, in input order (checked against [`ANSWER_FEATURES`] on load).
    pub features: Vec<String>,
    /// Held-out (out-of-fold) calibration: (escalation share, threshold on the score).
    pub share_thresholds: Vec<(f32, f32)>,
    /// The predictor: P(the cloud answers better | the local answer).
    pub model: QualityModel,
}

impl AnswerCheck {
    /// The answer check shipped in `models/answer_check.json`.
    pub fn shipped() -> Result<Self> {
        Self::parse(SHIPPED_ANSWER_CHECK, Path::new("models/answer_check.json"))
    }

    /// Reads an answer-check file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let format = |message: String| Error::Format {
            path: path.into(),
            message,
        };
        let check: Self = serde_json::from_str(text).map_err(|e| format(e.to_string()))?;
        if check.features != ANSWER_FEATURES || check.model.input_dim() != ANSWER_FEATURES.len() {
            return Err(format(format!(
                "answer features {:?} do not match this build's {ANSWER_FEATURES:?}",
                check.features
            )));
        }
        Ok(check)
    }

    /// Writes the file as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::write_json(self, path)
    }

    /// How much the cloud would help with this answer, in [0, 1]; higher means escalate.
    pub fn score(&self, prompt: &str, answer: &str) -> f32 {
        self.model.predict(&answer_features(prompt, answer))
    }

    /// The score threshold that escalated `share` of the held-out answers.
    pub fn threshold_for_share(&self, share: f32) -> f32 {
        crate::calibration::threshold_in_table(&self.share_thresholds, share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(prompt: &str, answer: &str, name: &str) -> f32 {
        let at = ANSWER_FEATURES.iter().position(|n| *n == name);
        answer_features(prompt, answer)[at.unwrap_or(usize::MAX)]
    }

    const PROMPT: &str = "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4. \
                          She sells the rest for $2 each. How much does she make?";

    #[test]
    fn the_patterns_compile() {
        assert!(PATTERNS.is_some());
    }

    #[test]
    fn a_worked_answer_checks_out() {
        let answer = "She has 16 - 3 = 13 eggs, then 13 - 4 = 9.\n\
                      She makes 9 * $2 = $<<9*2=18>>18.\n#### 18";
        let f = answer_features(PROMPT, answer);
        assert_eq!(f.len(), ANSWER_FEATURES.len());
        assert_eq!(feature(PROMPT, answer, "final_marker"), 1.0);
        assert_eq!(feature(PROMPT, answer, "final_number"), 1.0);
        assert_eq!(feature(PROMPT, answer, "final_is_last_number"), 1.0);
        assert_eq!(feature(PROMPT, answer, "annotations"), 1.0);
        assert_eq!(feature(PROMPT, answer, "annotation_errors"), 0.0);
        assert_eq!(feature(PROMPT, answer, "equations"), 3.0);
        assert_eq!(feature(PROMPT, answer, "equation_errors"), 0.0);
        assert_eq!(feature(PROMPT, answer, "any_arithmetic_error"), 0.0);
        assert_eq!(feature(PROMPT, answer, "cut_off"), 0.0);
        assert_eq!(feature(PROMPT, answer, "final_in_prompt"), 0.0);
    }

    #[test]
    fn arithmetic_slips_are_counted() {
        // The annotation's own `12*2=25` reads as an inline equation too.
        let answer = "16 - 3 = 12 eggs. 12 * 2 = <<12*2=25>>25.\n#### 25";
        assert_eq!(feature(PROMPT, answer, "equation_errors"), 2.0);
        // A chain is checked whole, with the usual precedence.
        let chained = "16 - 3 - 4 = 9 eggs, 2 + 3 * 4 = 14, 9 x $2 = $18, 1,000 / 8 = 125";
        assert_eq!(feature(PROMPT, chained, "equations"), 4.0);
        assert_eq!(feature(PROMPT, chained, "equation_errors"), 0.0);
        assert_eq!(feature(PROMPT, "16 - 3 - 4 = 10", "equation_errors"), 1.0);
        assert_eq!(feature(PROMPT, answer, "annotation_errors"), 1.0);
        assert_eq!(feature(PROMPT, answer, "any_arithmetic_error"), 1.0);
    }

    #[test]
    fn a_cut_off_answer_has_no_final_number() {
        let answer = "The value after repairs is 80,000 + 50,000 = $<<80000+50000=130000>>130,00";
        assert_eq!(feature(PROMPT, answer, "final_marker"), 0.0);
        assert_eq!(feature(PROMPT, answer, "final_number"), 0.0);
        assert_eq!(feature(PROMPT, answer, "cut_off"), 1.0);
        assert_eq!(feature(PROMPT, answer, "annotation_errors"), 0.0);
    }

    #[test]
    fn other_final_markers_count() {
        for answer in ["So the answer is 18.", "Answer: $1,800", "\\boxed{18}"] {
            assert_eq!(feature(PROMPT, answer, "final_number"), 1.0, "{answer}");
        }
        assert_eq!(feature(PROMPT, "Answer: 2.5", "final_not_integer"), 1.0);
        assert_eq!(feature(PROMPT, "Answer: 16", "final_in_prompt"), 1.0);
    }

    #[test]
    fn the_calculator_reads_what_annotations_hold() {
        assert_eq!(evaluate("2+3*4"), Some(14.0));
        assert_eq!(evaluate("(2+3)*4"), Some(20.0));
        assert_eq!(evaluate("2**3**2"), Some(512.0));
        assert_eq!(evaluate("2^3"), Some(8.0));
        assert_eq!(evaluate("-5/2"), Some(-2.5));
        assert_eq!(evaluate("7 - 2 - 1"), Some(4.0));
        assert_eq!(evaluate("2*$3"), None);
        assert_eq!(evaluate("(1+2"), None);
        assert_eq!(evaluate("1/0"), None);
        assert_eq!(evaluate(""), None);
    }

    #[test]
    fn odd_text_gives_finite_features() {
        for answer in [
            "",
            "####",
            "#### -",
            "<<=>>",
            "1 / 0 = 5",
            "\u{1F600} 3 × 4 = 12",
        ] {
            let f = answer_features("", answer);
            assert!(f.iter().all(|v| v.is_finite()), "{answer}: {f:?}");
        }
        assert_eq!(feature("", "3 × 4 = 12", "equation_errors"), 0.0);
    }

    #[test]
    fn the_shipped_check_loads_and_ranks_a_slip_above_a_clean_answer() {
        let check = AnswerCheck::shipped();
        assert!(check.is_ok(), "{check:?}");
        let Ok(check) = check else { return };
        let clean =
            "She has 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = <<9*2=18>>18 dollars.\n#### 18";
        let slip = "She has 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = <<9*2=16>>16 dollars, \
                    however I assume some";
        assert!(check.score(PROMPT, slip) > check.score(PROMPT, clean));
        let t = check.threshold_for_share(0.3);
        assert!((0.0..=1.0).contains(&t), "{t}");
    }
}
