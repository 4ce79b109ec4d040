//! The tokenizer stored in a GGUF file: byte-level BPE (`gpt2`) and sentencepiece-style (`llama`)
//! vocabularies, with special-token parsing, BOS/EOS handling and byte-exact decoding.

use std::collections::HashMap;

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// GGUF token type: an ordinary token.
const TYPE_NORMAL: i64 = 1;
/// GGUF token type: a control token (`<|im_start|>`, `<bos>`).
const TYPE_CONTROL: i64 = 3;
/// GGUF token type: a user-defined token, always matched literally.
const TYPE_USER_DEFINED: i64 = 4;
/// GGUF token type: a byte-fallback token `<0xNN>`.
const TYPE_BYTE: i64 = 6;

/// The GPT-2 pre-tokenizer pattern with its final `\s+(?!\S)` handled in code (no look-ahead here).
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Qwen2's pre-tokenizer pattern (single digits; punctuation joins the letters after it and the
/// line breaks after it), its `\s+(?!\S)` handled in code.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

/// Llama 3's: as Qwen2's with digits in runs of up to three.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per tokenizer, built once
enum Model {
    /// Byte-level BPE: merges ranked by position; `(left, right) -> (rank, merged)`.
    Bpe {
        merges: HashMap<(u32, u32), (u32, u32)>,
        /// Byte value -> vocab id of its byte-level character.
        byte_ids: [u32; 256],
        /// Split every digit into its own piece before the regex (`smollm`, `llama3`-like).
        split_digits: bool,
        pattern: Regex,
        /// The pattern matches line breaks on their own (Qwen2, Llama 3): only a run of spaces
        /// without one gives its last character to the next piece.
        newline_runs: bool,
    },
    /// Sentencepiece-style: highest-scoring merge of adjacent symbols first, byte fallback.
    Spm {
        scores: Vec<f32>,
        /// Byte value -> id of `<0xNN>`.
        byte_ids: Vec<Option<u32>>,
        add_space_prefix: bool,
    },
}

/// A tokenizer built from GGUF metadata.
#[derive(Debug)]
pub struct Tokenizer {
    model: Model,
    /// Vocab strings in id order, as stored in the file.
    tokens: Vec<String>,
    /// Decoded bytes of each token.
    token_bytes: Vec<Vec<u8>>,
    token_types: Vec<i64>,
    vocab: HashMap<String, u32>,
    /// Tokens matched literally in text, longest first: (text, id, is_control).
    specials: Vec<(String, u32, bool)>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    vocab_hash: String,
}

/// GPT-2's reversible map from bytes to printable characters.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        map[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    map
}

fn str_array(gguf: &GgufFile, key: &str) -> Result<Vec<String>> {
    let arr = gguf
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Tokenizer(format!("metadata {key} missing")))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Tokenizer(format!("{key} holds a non-string")))
        })
        .collect()
}

fn opt_id(gguf: &GgufFile, key: &str, n: usize) -> Option<u32> {
    gguf.get(key)
        .and_then(Value::as_u64)
        .filter(|&v| (v as usize) < n)
        .map(|v| v as u32)
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let kind = gguf
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Tokenizer("metadata tokenizer.ggml.model missing".into()))?
            .to_owned();
        let tokens = str_array(gguf, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::Tokenizer("empty vocabulary".into()));
        }
        let token_types: Vec<i64> = match gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(a) if a.len() == n => a
                .iter()
                .map(|v| match v {
                    Value::I64(i) => *i,
                    Value::U64(u) => *u as i64,
                    _ => TYPE_NORMAL,
                })
                .collect(),
            _ => vec![TYPE_NORMAL; n],
        };
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let get_bool = |k: &str| gguf.get(k).and_then(Value::as_bool);
        let bos = opt_id(gguf, "tokenizer.ggml.bos_token_id", n);
        let eos = opt_id(gguf, "tokenizer.ggml.eos_token_id", n);

        let (model, token_bytes, add_bos_default) = match kind.as_str() {
            "gpt2" => {
                let b2u = bytes_to_unicode();
                let mut u2b: HashMap<char, u8> = HashMap::with_capacity(256);
                // Bytes without a token (some vocabularies drop control bytes) map to <unk>.
                let unk = opt_id(gguf, "tokenizer.ggml.unknown_token_id", n).unwrap_or(0);
                let mut byte_ids = [unk; 256];
                for (b, &c) in b2u.iter().enumerate() {
                    u2b.insert(c, b as u8);
                    if let Some(&id) = vocab.get(&c.to_string()) {
                        byte_ids[b] = id;
                    }
                }
                let merge_strs = str_array(gguf, "tokenizer.ggml.merges")?;
                let mut merges = HashMap::with_capacity(merge_strs.len());
                for (rank, m) in merge_strs.iter().enumerate() {
                    let Some((l, r)) = m.split_once(' ') else {
                        return Err(Error::Tokenizer(format!("malformed merge {m:?}")));
                    };
                    let (Some(&li), Some(&ri), Some(&mi)) =
                        (vocab.get(l), vocab.get(r), vocab.get(&format!("{l}{r}")))
                    else {
                        continue;
                    };
                    merges.entry((li, ri)).or_insert((rank as u32, mi));
                }
                let bytes = tokens
                    .iter()
                    .zip(&token_types)
                    .map(|(t, &ty)| {
                        if ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED {
                            t.as_bytes().to_vec()
                        } else {
                            t.chars()
                                .map(|c| u2b.get(&c).copied())
                                .collect::<Option<Vec<u8>>>()
                                .unwrap_or_else(|| t.as_bytes().to_vec())
                        }
                    })
                    .collect();
                let pre = gguf
                    .get("tokenizer.ggml.pre")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let split_digits =
                    matches!(pre, "smollm" | "starcoder" | "refact" | "deepseek-coder");
                let (source, newline_runs) = match pre {
                    "qwen2" | "deepseek-r1-qwen" => (QWEN2_PATTERN, true),
                    "llama3" | "llama-bpe" | "smaug-bpe" => (LLAMA3_PATTERN, true),
                    _ => (GPT2_PATTERN, false),
                };
                let pattern = Regex::new(source)
                    .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
                (
                    Model::Bpe {
                        merges,
                        byte_ids,
                        split_digits,
                        pattern,
                        newline_runs,
                    },
                    bytes,
                    false,
                )
            }
            "llama" => {
                let scores: Vec<f32> =
                    match gguf.get("tokenizer.ggml.scores").and_then(Value::as_array) {
                        Some(a) if a.len() == n => {
                            a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()
                        }
                        _ => return Err(Error::Tokenizer("tokenizer.ggml.scores missing".into())),
                    };
                let mut byte_ids = vec![None; 256];
                let mut bytes = Vec::with_capacity(n);
                for (i, (t, &ty)) in tokens.iter().zip(&token_types).enumerate() {
                    if ty == TYPE_BYTE
                        && let Some(b) = t
                            .strip_prefix("<0x")
                            .and_then(|s| s.strip_suffix('>'))
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        byte_ids[b as usize] = Some(i as u32);
                        bytes.push(vec![b]);
                        continue;
                    }
                    bytes.push(t.replace('\u{2581}', " ").into_bytes());
                }
                let add_space_prefix = get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                (
                    Model::Spm {
                        scores,
                        byte_ids,
                        add_space_prefix,
                    },
                    bytes,
                    true,
                )
            }
            other => {
                return Err(Error::Unsupported(format!("tokenizer model {other:?}")));
            }
        };

        let mut specials: Vec<(String, u32, bool)> = tokens
            .iter()
            .zip(&token_types)
            .enumerate()
            .filter(|(_, (t, ty))| {
                !t.is_empty() && (**ty == TYPE_CONTROL || **ty == TYPE_USER_DEFINED)
            })
            .map(|(i, (t, &ty))| (t.clone(), i as u32, ty == TYPE_CONTROL))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));

        let mut hasher = Sha256::new();
        for t in &tokens {
            hasher.update((t.len() as u64).to_le_bytes());
            hasher.update(t.as_bytes());
        }
        let vocab_hash = hex::encode(hasher.finalize());

        Ok(Self {
            model,
            tokens,
            token_bytes,
            token_types,
            vocab,
            specials,
            bos,
            eos,
            add_bos: get_bool("tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default),
            add_eos: get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
            vocab_hash,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// BOS token id, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// EOS token id, if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The fill-in-the-middle template this vocabulary's special tokens spell, if any.
    pub fn fim_template(&self) -> Option<crate::fim::FimTemplate> {
        crate::fim::FimTemplate::detect(|t| self.token_id(t))
    }

    /// Whether `encode(.., add_special = true)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// sha256 (hex) over the token strings in id order, each prefixed by its byte length.
    pub fn vocab_hash(&self) -> &str {
        &self.vocab_hash
    }

    /// The id of a token string, exactly as stored in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Whether a token is a control token (never shown as text by default).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_types.get(id as usize) == Some(&TYPE_CONTROL)
    }

    /// Encodes text, parsing special tokens written in the text (`<|im_start|>`) as specials.
    /// `add_special` adds BOS/EOS as the model's metadata asks.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.encode_with(text, add_special, true)
    }

    /// Encodes text; with `parse_special = false`, control tokens in the text are plain text.
    pub fn encode_with(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special
            && self.add_bos
            && let Some(b) = self.bos
        {
            out.push(b);
        }
        let mut rest = text;
        let mut first_fragment = true;
        while !rest.is_empty() {
            // Find the earliest special occurrence (longest at that position).
            let mut best: Option<(usize, usize, u32)> = None;
            for (s, id, is_control) in &self.specials {
                if *is_control && !parse_special {
                    continue;
                }
                if let Some(p) = rest.find(s.as_str()) {
                    let better = match best {
                        None => true,
                        Some((bp, bl, _)) => p < bp || (p == bp && s.len() > bl),
                    };
                    if better {
                        best = Some((p, s.len(), *id));
                    }
                }
            }
            match best {
                Some((p, len, id)) => {
                    if p > 0 {
                        self.encode_fragment(&rest[..p], first_fragment, &mut out);
                    }
                    out.push(id);
                    rest = &rest[p + len..];
                }
                None => {
                    self.encode_fragment(rest, first_fragment, &mut out);
                    rest = "";
                }
            }
            first_fragment = false;
        }
        if add_special
            && self.add_eos
            && let Some(e) = self.eos
        {
            out.push(e);
        }
        out
    }

    fn encode_fragment(&self, text: &str, first: bool, out: &mut Vec<u32>) {
        match &self.model {
            Model::Bpe {
                merges,
                byte_ids,
                split_digits,
                pattern,
                newline_runs,
            } => {
                let mut piece_start = 0;
                let emit = |piece: &str, out: &mut Vec<u32>| {
                    for word in gpt2_split(pattern, piece, *newline_runs) {
                        bpe_word(merges, byte_ids, word.as_bytes(), out);
                    }
                };
                if *split_digits {
                    for (i, c) in text.char_indices() {
                        if c.is_numeric() {
                            if piece_start < i {
                                emit(&text[piece_start..i], out);
                            }
                            emit(&text[i..i + c.len_utf8()], out);
                            piece_start = i + c.len_utf8();
                        }
                    }
                    if piece_start < text.len() {
                        emit(&text[piece_start..], out);
                    }
                } else {
                    emit(text, out);
                }
            }
            Model::Spm {
                scores,
                byte_ids,
                add_space_prefix,
            } => {
                let mut norm = String::with_capacity(text.len() + 3);
                if *add_space_prefix && first {
                    norm.push('\u{2581}');
                }
                for c in text.chars() {
                    norm.push(if c == ' ' { '\u{2581}' } else { c });
                }
                self.spm_encode(&norm, scores, byte_ids, out);
            }
        }
    }

    fn spm_encode(&self, text: &str, scores: &[f32], byte_ids: &[Option<u32>], out: &mut Vec<u32>) {
        // Symbols are byte ranges into `text`, linked as a list; merge the best-scoring pair
        // whose concatenation is a vocabulary token, leftmost on ties.
        let mut starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let mut ends: Vec<usize> = starts.iter().skip(1).copied().chain([text.len()]).collect();
        let n = starts.len();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = std::collections::BinaryHeap::new();
        let push = |heap: &mut std::collections::BinaryHeap<(
            OrdF32,
            std::cmp::Reverse<usize>,
            usize,
            usize,
        )>,
                    l: usize,
                    starts: &[usize],
                    ends: &[usize],
                    next: &[usize]| {
            let r = next[l];
            if r >= n {
                return;
            }
            let s = &text[starts[l]..ends[r]];
            if let Some(&id) = self.vocab.get(s) {
                heap.push((
                    OrdF32(scores[id as usize]),
                    std::cmp::Reverse(l),
                    l,
                    ends[r],
                ));
            }
        };
        for i in 0..n.saturating_sub(1) {
            push(&mut heap, i, &starts, &ends, &next);
        }
        while let Some((_, _, l, end)) = heap.pop() {
            let r = next[l];
            // Stale entry: one side changed since it was pushed.
            if !alive[l] || r >= n || !alive[r] || ends[r] != end {
                continue;
            }
            ends[l] = ends[r];
            alive[r] = false;
            next[l] = next[r];
            if next[l] < n {
                prev[next[l]] = l;
            }
            if prev[l] < n {
                push(&mut heap, prev[l], &starts, &ends, &next);
            }
            push(&mut heap, l, &starts, &ends, &next);
        }
        let mut i = 0;
        while i < n {
            let s = &text[starts[i]..ends[i]];
            match self.vocab.get(s) {
                Some(&id) => out.push(id),
                None => {
                    for b in s.bytes() {
                        if let Some(id) = byte_ids[b as usize] {
                            out.push(id);
                        } else if let Some(&unk) = self.vocab.get("<unk>") {
                            out.push(unk);
                        }
                    }
                }
            }
            i = next[i];
        }
        starts.clear();
    }

    /// Decodes ids to text (lossy on invalid UTF-8), control tokens included as their text.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    /// Decodes ids to raw bytes.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id));
        }
        out
    }

    /// The bytes a token stands for (a control token's text for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The token as shown to a person: its bytes as text (lossy for partial UTF-8).
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }

    /// The raw vocabulary string (byte-level or `▁` form) of a token.
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
}

/// f32 ordered for the merge heap (scores are finite).
#[derive(Clone, Copy)]
struct OrdF32(f32);
impl PartialEq for OrdF32 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Splits text like the GPT-2 regex, including `\s+(?!\S)`: a whitespace run followed by
/// non-space leaves its last character to the next piece.
/// With `newline_runs`, a run holding a line break was matched by its own branch and is whole.
fn gpt2_split<'a>(pattern: &Regex, text: &'a str, newline_runs: bool) -> Vec<&'a str> {
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        let Some(m) = pattern.find_at(text, pos) else {
            pieces.push(&text[pos..]);
            break;
        };
        let mut end = m.end();
        if m.start() != pos {
            // Not expected (the pattern covers every character); keep the gap as its own piece.
            pieces.push(&text[pos..m.start()]);
            pos = m.start();
        }
        let s = &text[pos..end];
        if end < text.len()
            && s.chars().all(char::is_whitespace)
            && s.chars().count() > 1
            && !(newline_runs && s.contains(['\r', '\n']))
            && let Some((last, _)) = s.char_indices().next_back()
        {
            end = pos + last;
        }
        pieces.push(&text[pos..end]);
        pos = end;
    }
    pieces
}

/// Byte-level BPE of one pre-tokenized word: lowest-rank merge first.
fn bpe_word(
    merges: &HashMap<(u32, u32), (u32, u32)>,
    byte_ids: &[u32; 256],
    word: &[u8],
    out: &mut Vec<u32>,
) {
    let mut syms: Vec<u32> = word.iter().map(|&b| byte_ids[b as usize]).collect();
    loop {
        let mut best: Option<(u32, usize, u32)> = None;
        for i in 0..syms.len().saturating_sub(1) {
            if let Some(&(rank, merged)) = merges.get(&(syms[i], syms[i + 1]))
                && best.is_none_or(|(r, _, _)| rank < r)
            {
                best = Some((rank, i, merged));
            }
        }
        let Some((_, i, merged)) = best else { break };
        syms[i] = merged;
        syms.remove(i + 1);
    }
    out.extend_from_slice(&syms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_split_keeps_last_space_for_next_word() {
        let re = Regex::new(GPT2_PATTERN).unwrap();
        assert_eq!(gpt2_split(&re, "a   b", false), vec!["a", "  ", " b"]);
        assert_eq!(
            gpt2_split(&re, "a\n\nb  ", false),
            vec!["a", "\n", "\n", "b", "  "]
        );
        assert_eq!(
            gpt2_split(&re, "it's ok!", false),
            vec!["it", "'s", " ok", "!"]
        );
    }

    #[test]
    fn qwen2_split_joins_punctuation_to_words_and_line_breaks() {
        let re = Regex::new(QWEN2_PATTERN).unwrap();
        assert_eq!(
            gpt2_split(&re, "def f(n):\n    return n12\n\n  x", true),
            vec![
                "def", " f", "(n", "):\n", "   ", " return", " n", "1", "2", "\n\n", " ", " x"
            ]
        );
        assert_eq!(gpt2_split(&re, "It'S", true), vec!["It", "'S"]);
    }

    #[test]
    fn byte_map_is_a_bijection() {
        let m = bytes_to_unicode();
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(m[b'A' as usize], 'A');
        assert_eq!(m[b' ' as usize], '\u{120}');
    }
}
