//! Request features: the prompt embedding, cheap text features and the local model's confidence.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::embedding::{EMBEDDING_DIM, EmbeddingSource};

/// The writing system that dominates a prompt (script detection, enough to tell languages apart
/// for routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Script {
    /// Latin letters (English and most European languages).
    #[default]
    Latin,
    /// Cyrillic.
    Cyrillic,
    /// Chinese, Japanese or Korean characters.
    Cjk,
    /// Arabic or Hebrew.
    ArabicHebrew,
    /// Devanagari and other Indic scripts.
    Indic,
    /// Anything else, or no letters at all.
    Other,
}

/// Numbers that are cheap to compute from a request, without a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheapFeatures {
    /// Characters in the last user turn.
    pub chars: usize,
    /// Whitespace-separated words in the last user turn.
    pub words: usize,
    /// The prompt looks like code (fences, keywords, braces).
    pub code_score: f32,
    /// The prompt looks like math (digits, operators, LaTeX, word problems).
    pub math_score: f32,
    /// Dominant script.
    pub script: Script,
    /// Share of letters outside the Latin script.
    pub non_latin_share: f32,
    /// Conversation turns (messages) so far.
    pub turns: usize,
    /// `max_tokens` the client asked for, if any.
    pub max_tokens: Option<u32>,
    /// Tools were offered to the model.
    pub tools_present: bool,
    /// The prompt carries lettered answer choices (multiple choice).
    pub multiple_choice: bool,
}

impl CheapFeatures {
    /// Computes the text features of `prompt`; the request-level fields are set by the caller.
    pub fn from_text(prompt: &str) -> Self {
        let chars = prompt.chars().count();
        let words = prompt.split_whitespace().count();
        let (script, non_latin_share) = detect_script(prompt);
        Self {
            chars,
            words,
            code_score: code_score(prompt),
            math_score: math_score(prompt),
            script,
            non_latin_share,
            turns: 1,
            max_tokens: None,
            tools_present: false,
            multiple_choice: multiple_choice(prompt),
        }
    }

    /// Request-level fields: turn count, requested max tokens, tools present.
    pub fn with_request(mut self, turns: usize, max_tokens: Option<u32>, tools: bool) -> Self {
        self.turns = turns.max(1);
        self.max_tokens = max_tokens;
        self.tools_present = tools;
        self
    }

    /// The features as a fixed-width vector, scaled to roughly unit range.
    pub fn to_vector(&self) -> [f32; CHEAP_DIM] {
        let script = |s: Script| if self.script == s { 1.0 } else { 0.0 };
        [
            ((1 + self.chars) as f32).ln() / 8.0,
            ((1 + self.words) as f32).ln() / 6.0,
            self.code_score,
            self.math_score,
            self.non_latin_share,
            script(Script::Cjk),
            script(Script::Cyrillic),
            script(Script::ArabicHebrew) + script(Script::Indic) + script(Script::Other),
            ((self.turns.max(1)) as f32).ln() / 3.0,
            self.max_tokens.map_or(0.0, |m| ((1 + m) as f32).ln() / 8.0),
            if self.max_tokens.is_some() { 1.0 } else { 0.0 },
            if self.tools_present { 1.0 } else { 0.0 },
            if self.multiple_choice { 1.0 } else { 0.0 },
        ]
    }
}

/// Width of [`CheapFeatures::to_vector`].
pub const CHEAP_DIM: usize = 13;

/// What the local model said about its own first few tokens: the cascade's and the predictor's
/// local-confidence signal. Plain numbers, so this crate does not depend on the engine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LocalConfidence {
    /// Mean per-token entropy (nats) of the first tokens' distributions.
    pub mean_entropy: f32,
    /// Mean log-probability of the chosen first tokens.
    pub mean_logprob: f32,
    /// How many tokens the numbers cover.
    pub tokens: u32,
}

impl LocalConfidence {
    /// Summarizes per-token log-probabilities and entropies.
    pub fn from_tokens(logprobs: &[f32], entropies: &[f32]) -> Option<Self> {
        if logprobs.is_empty() || logprobs.len() != entropies.len() {
            return None;
        }
        let n = logprobs.len() as f32;
        Some(Self {
            mean_entropy: entropies.iter().sum::<f32>() / n,
            mean_logprob: logprobs.iter().sum::<f32>() / n,
            tokens: logprobs.len() as u32,
        })
    }

    /// One confidence number in (0, 1]: the geometric-mean token probability, lowered by entropy.
    pub fn score(&self) -> f32 {
        (self.mean_logprob.min(0.0) - 0.25 * self.mean_entropy.max(0.0)).exp()
    }
}

/// Everything the policy knows about one request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestFeatures {
    /// The prompt embedding, when the encoder ran (or its cache answered).
    #[serde(skip)]
    pub embedding: Option<Arc<[f32]>>,
    /// Text and request features.
    pub cheap: CheapFeatures,
    /// The local model's first-token confidence, when it was computed.
    pub local_confidence: Option<LocalConfidence>,
    /// Estimated prompt tokens (for cost).
    pub input_tokens: u32,
    /// Prompt tokens expected to hit the provider's prompt cache (billed at the cached price).
    #[serde(default)]
    pub cached_input_tokens: u32,
    /// Expected output tokens (for cost and latency); `max_tokens` or a default.
    pub expected_output_tokens: u32,
    /// Which encoder produced `embedding`; the router reads a static embedding with the model
    /// trained on static embeddings.
    #[serde(default)]
    pub embedding_source: EmbeddingSource,
}

impl RequestFeatures {
    /// Features of a single-turn prompt, with the embedding if one is at hand.
    pub fn from_prompt(prompt: &str, embedding: Option<Arc<[f32]>>) -> Self {
        let cheap = CheapFeatures::from_text(prompt);
        // About four characters per token for English; a floor of one token.
        let input_tokens = (cheap.chars as u32 / 4).max(1);
        Self {
            embedding,
            cheap,
            local_confidence: None,
            input_tokens,
            cached_input_tokens: 0,
            expected_output_tokens: 256,
            embedding_source: EmbeddingSource::Full,
        }
    }

    /// These features with an embedding from `source` (see [`crate::Encoder::embed_for_decision`]).
    pub fn with_embedding(mut self, embedding: Arc<[f32]>, source: EmbeddingSource) -> Self {
        self.embedding = Some(embedding);
        self.embedding_source = source;
        self
    }

    /// The model input: embedding (zeros when absent), cheap features, confidence features.
    pub fn to_vector(&self) -> Vec<f32> {
        let mut v = Vec::with_capacity(FEATURE_DIM);
        match &self.embedding {
            Some(e) if e.len() == EMBEDDING_DIM => v.extend_from_slice(e),
            _ => v.extend(std::iter::repeat_n(0.0, EMBEDDING_DIM)),
        }
        v.extend_from_slice(&self.cheap.to_vector());
        match self.local_confidence {
            Some(c) => v.extend_from_slice(&[1.0, c.mean_entropy / 5.0, c.mean_logprob / 5.0]),
            None => v.extend_from_slice(&[0.0, 0.0, 0.0]),
        }
        v
    }
}

/// Width of [`RequestFeatures::to_vector`].
pub const FEATURE_DIM: usize = EMBEDDING_DIM + CHEAP_DIM + 3;

fn detect_script(text: &str) -> (Script, f32) {
    let mut counts = [0usize; 6];
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        let idx = match c as u32 {
            0x0041..=0x024F | 0x1E00..=0x1EFF => 0,
            0x0400..=0x052F => 1,
            0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF => 2,
            0x0590..=0x06FF | 0x0750..=0x077F => 3,
            0x0900..=0x0DFF => 4,
            _ => 5,
        };
        counts[idx] += 1;
    }
    let total: usize = counts.iter().sum();
    if total == 0 {
        return (Script::Other, 0.0);
    }
    let (best, _) = counts
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| **n)
        .unwrap_or((5, &0));
    let script = [
        Script::Latin,
        Script::Cyrillic,
        Script::Cjk,
        Script::ArabicHebrew,
        Script::Indic,
        Script::Other,
    ][best];
    (script, 1.0 - counts[0] as f32 / total as f32)
}

fn code_score(text: &str) -> f32 {
    const MARKERS: [&str; 14] = [
        "```",
        "def ",
        "fn ",
        "function ",
        "class ",
        "import ",
        "#include",
        "return ",
        "=>",
        "();",
        "{\n",
        "SELECT ",
        "console.",
        "print(",
    ];
    let hits = MARKERS.iter().filter(|m| text.contains(*m)).count();
    let symbols = text
        .chars()
        .filter(|c| matches!(c, '{' | '}' | ';' | '<' | '>' | '_'))
        .count();
    let density = symbols as f32 / text.chars().count().max(1) as f32;
    ((hits as f32) / 3.0 + density * 10.0).min(1.0)
}

fn math_score(text: &str) -> f32 {
    const MARKERS: [&str; 12] = [
        "\\frac",
        "\\sqrt",
        "$",
        "=",
        "how many",
        "how much",
        "calculate",
        "solve",
        "equation",
        "percent",
        "probability",
        "integral",
    ];
    let lower = text.to_lowercase();
    let hits = MARKERS.iter().filter(|m| lower.contains(*m)).count();
    let n = text.chars().count().max(1) as f32;
    let digits = text.chars().filter(char::is_ascii_digit).count() as f32 / n;
    let ops = text
        .chars()
        .filter(|c| matches!(c, '+' | '*' | '/' | '^' | '%'))
        .count() as f32
        / n;
    ((hits as f32) / 4.0 + digits * 5.0 + ops * 10.0).min(1.0)
}

fn multiple_choice(text: &str) -> bool {
    ["\nA.", "\nB.", "\nC."].iter().all(|m| text.contains(m))
        || ["(A)", "(B)", "(C)"].iter().all(|m| text.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_and_markers() {
        let f = CheapFeatures::from_text("Привет, как дела?");
        assert_eq!(f.script, Script::Cyrillic);
        let f = CheapFeatures::from_text("这是一个测试");
        assert_eq!(f.script, Script::Cjk);
        let f = CheapFeatures::from_text("```rust\nfn main() { println!(\"x\"); }\n```");
        assert!(f.code_score > 0.5);
        let f = CheapFeatures::from_text("Janet has 16 eggs. How many eggs are left after 3 + 4?");
        assert!(f.math_score > 0.3);
        let f = CheapFeatures::from_text("Pick one\nA. x\nB. y\nC. z\nD. w");
        assert!(f.multiple_choice);
    }

    #[test]
    fn vector_width_is_fixed() {
        let f = RequestFeatures::from_prompt("hello", None);
        assert_eq!(f.to_vector().len(), FEATURE_DIM);
    }
}
