//! Fill-in-the-middle prompts: the template is chosen from the special tokens a model's vocabulary
//! has (Qwen2.5-Coder, StarCoder/StarCoder2, CodeLlama, DeepSeek-Coder, CodeGemma, Codestral),
//! and a prompt is laid out as llama.cpp's `/infill` does: repository context (`input_extra`,
//! one file per separator), then prefix, the text at the cursor, suffix and the middle token.

/// The code-model family whose FIM tokens a vocabulary has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FimFamily {
    /// Qwen2.5-Coder: `<|fim_prefix|>` ... plus `<|repo_name|>` and `<|file_sep|>`.
    Qwen,
    /// CodeGemma: `<|fim_prefix|>` ... plus `<|file_separator|>`.
    CodeGemma,
    /// StarCoder and StarCoder2: `<fim_prefix>` ... plus `<reponame>` and `<file_sep>`.
    StarCoder,
    /// CodeLlama: `▁<PRE>`, `▁<SUF>`, `▁<MID>`, ended by `▁<EOT>`.
    CodeLlama,
    /// DeepSeek-Coder: `<｜fim▁begin｜>`, `<｜fim▁hole｜>`, `<｜fim▁end｜>`.
    DeepSeek,
    /// Codestral: `[SUFFIX]` then `[PREFIX]` (suffix first, no middle token).
    Codestral,
}

impl FimFamily {
    /// A short name for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qwen => "qwen2.5-coder",
            Self::CodeGemma => "codegemma",
            Self::StarCoder => "starcoder",
            Self::CodeLlama => "codellama",
            Self::DeepSeek => "deepseek-coder",
            Self::Codestral => "codestral",
        }
    }
}

/// The FIM tokens of one model, found in its vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FimTemplate {
    /// Which family the tokens belong to.
    pub family: FimFamily,
    /// Starts the prefix.
    pub prefix: u32,
    /// Starts the suffix.
    pub suffix: u32,
    /// Starts the middle (what the model writes); none where the layout ends with the prefix.
    pub middle: Option<u32>,
    /// Names the repository before the files of a repository-level prompt.
    pub repo_name: Option<u32>,
    /// Starts each file of a repository-level prompt (followed by its name and a newline).
    pub file_sep: Option<u32>,
    /// Tokens that end a completion besides the model's end-of-sequence tokens (a model that
    /// goes on to the next file or pads is done with the middle).
    pub stop_tokens: Vec<u32>,
    /// Whether the suffix comes before the prefix (suffix-prefix-middle).
    pub suffix_first: bool,
}

/// The candidate token names of each family, first match wins. Qwen is tried before CodeGemma:
/// both spell the prefix token `<|fim_prefix|>`, and only Qwen has `<|repo_name|>`.
struct Spelling {
    family: FimFamily,
    prefix: &'static str,
    suffix: &'static str,
    middle: Option<&'static str>,
    repo_name: Option<&'static str>,
    file_sep: &'static [&'static str],
    stops: &'static [&'static str],
    suffix_first: bool,
    /// A token only this family has, where the prefix token is shared.
    marker: Option<&'static str>,
}

const SPELLINGS: &[Spelling] = &[
    Spelling {
        family: FimFamily::Qwen,
        prefix: "<|fim_prefix|>",
        suffix: "<|fim_suffix|>",
        middle: Some("<|fim_middle|>"),
        repo_name: Some("<|repo_name|>"),
        file_sep: &["<|file_sep|>"],
        stops: &[
            "<|endoftext|>",
            "<|fim_pad|>",
            "<|file_sep|>",
            "<|repo_name|>",
        ],
        suffix_first: false,
        marker: Some("<|repo_name|>"),
    },
    Spelling {
        family: FimFamily::CodeGemma,
        prefix: "<|fim_prefix|>",
        suffix: "<|fim_suffix|>",
        middle: Some("<|fim_middle|>"),
        repo_name: None,
        file_sep: &["<|file_separator|>"],
        stops: &["<|file_separator|>", "<end_of_turn>", "<eos>"],
        suffix_first: false,
        marker: None,
    },
    Spelling {
        family: FimFamily::StarCoder,
        prefix: "<fim_prefix>",
        suffix: "<fim_suffix>",
        middle: Some("<fim_middle>"),
        repo_name: Some("<reponame>"),
        file_sep: &["<file_sep>", "<filename>"],
        stops: &["<|endoftext|>", "<fim_pad>", "<file_sep>", "<filename>"],
        suffix_first: false,
        marker: None,
    },
    Spelling {
        family: FimFamily::CodeLlama,
        prefix: "▁<PRE>",
        suffix: "▁<SUF>",
        middle: Some("▁<MID>"),
        repo_name: None,
        file_sep: &[],
        stops: &["▁<EOT>"],
        suffix_first: false,
        marker: None,
    },
    Spelling {
        family: FimFamily::DeepSeek,
        prefix: "<｜fim▁begin｜>",
        suffix: "<｜fim▁hole｜>",
        middle: Some("<｜fim▁end｜>"),
        repo_name: None,
        file_sep: &[],
        stops: &["<|EOT|>", "<｜end▁of▁sentence｜>"],
        suffix_first: false,
        marker: None,
    },
    Spelling {
        family: FimFamily::Codestral,
        prefix: "[PREFIX]",
        suffix: "[SUFFIX]",
        middle: None,
        repo_name: None,
        file_sep: &[],
        stops: &[],
        suffix_first: true,
        marker: None,
    },
];

/// One file of repository context (llama.cpp's `input_extra` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    /// The file's name as the editor knows it.
    pub filename: String,
    /// Its text (or the chunk of it the editor chose).
    pub text: String,
}

/// What a FIM prompt is built from.
#[derive(Debug, Clone, Default)]
pub struct FimInput<'a> {
    /// Text before the cursor.
    pub prefix: &'a str,
    /// Text after the cursor.
    pub suffix: &'a str,
    /// Text typed at the cursor, appended to the prefix (llama.cpp's `prompt`).
    pub prompt: &'a str,
    /// Repository context, laid out before the current file.
    pub extra: &'a [ExtraFile],
    /// Most prefix tokens kept (the end of the prefix is kept).
    pub max_prefix_tokens: usize,
    /// Suffix tokens, FIM tokens and typed text kept together (the start of the suffix is kept).
    pub max_suffix_tokens: usize,
    /// Most repository-context tokens kept (the files nearest the current one are kept).
    pub max_extra_tokens: usize,
    /// Write the cursor's line up to the cursor (the prefix's last, unfinished line and the
    /// typed `prompt`) after the middle token, as the start of the middle, instead of at the
    /// end of the prefix. Everything before the middle token then stays the same while the user
    /// types on a line, so a keystroke computes only its own tokens and the answer is still a
    /// cold run's. Prefix-suffix-middle families only.
    pub typed_in_middle: bool,
}

/// A built prompt and what was cut to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FimPrompt {
    /// The token ids.
    pub tokens: Vec<u32>,
    /// Whether the prefix, suffix or repository context was shortened to fit its budget.
    pub truncated: bool,
    /// The text the answer must begin with (not reported: it was typed): the cursor line's last
    /// token, given back when the line follows the middle token, so the model chooses the
    /// tokens across the cursor as it would across any text. Empty otherwise.
    pub forced: String,
}

/// The repository name written after `repo_name` (llama.cpp writes the same placeholder).
const REPO_NAME: &str = "myproject";
/// The current file's name after the last file separator (as llama.cpp, which does not know it).
const CURRENT_FILE: &str = "filename";
/// Between context chunks when a model has no file separator: a neutral divider.
const CHUNK_DIVIDER: &str = "\n\n--- snippet ---\n\n";

impl FimTemplate {
    /// The template whose tokens `lookup` (token text -> id) finds, or none when the vocabulary
    /// has no fill-in-the-middle tokens.
    pub fn detect(lookup: impl Fn(&str) -> Option<u32>) -> Option<Self> {
        SPELLINGS.iter().find_map(|s| {
            if let Some(marker) = s.marker
                && lookup(marker).is_none()
            {
                return None;
            }
            let prefix = lookup(s.prefix)?;
            let suffix = lookup(s.suffix)?;
            let middle = match s.middle {
                Some(m) => Some(lookup(m)?),
                None => None,
            };
            let mut stop_tokens: Vec<u32> = s.stops.iter().filter_map(|t| lookup(t)).collect();
            stop_tokens.dedup();
            Some(Self {
                family: s.family,
                prefix,
                suffix,
                middle,
                repo_name: s.repo_name.and_then(&lookup),
                file_sep: s.file_sep.iter().find_map(|t| lookup(t)),
                stop_tokens,
                suffix_first: s.suffix_first,
            })
        })
    }

    /// Lays out a prompt: `[repo] [file ...] [current file]`, BOS when the model adds one, then
    /// prefix + prompt and suffix in the family's order, then the middle token. `encode` turns
    /// text into tokens without specials (text that spells a control token stays text).
    pub fn build(
        &self,
        input: &FimInput<'_>,
        bos: Option<u32>,
        encode: impl Fn(&str) -> Vec<u32>,
    ) -> FimPrompt {
        let mut truncated = false;
        let in_middle = input.typed_in_middle && !self.suffix_first && self.middle.is_some();
        let (head, line) = match input.prefix.rfind('\n') {
            Some(i) if in_middle => input.prefix.split_at(i + 1),
            None if in_middle => ("", input.prefix),
            _ => (input.prefix, ""),
        };
        let mut prefix = encode(head);
        if prefix.len() > input.max_prefix_tokens {
            prefix.drain(..prefix.len() - input.max_prefix_tokens);
            truncated = true;
        }
        let line = format!("{line}{}", input.prompt);
        let mut typed = encode(&line);
        let mut forced = String::new();
        if in_middle && let Some(cut) = last_token_start(&line, &typed, &encode) {
            typed.pop();
            forced = line[cut..].to_owned();
        }
        let mut suffix = encode(input.suffix);
        // As llama.cpp: the suffix's share also holds the two FIM tokens and the typed text
        // (unless that follows the middle token: then the suffix stays put while typing).
        let held = if in_middle { 0 } else { typed.len() };
        let suffix_room = input.max_suffix_tokens.saturating_sub(2 + held);
        if suffix.len() > suffix_room {
            suffix.truncate(suffix_room);
            truncated = true;
        }

        let mut extra = Vec::new();
        if !input.extra.is_empty() || self.file_sep.is_some() {
            if let Some(repo) = self.repo_name {
                extra.push(repo);
                extra.extend(encode(&format!("{REPO_NAME}\n")));
            }
            for file in input.extra {
                match self.file_sep {
                    Some(sep) => {
                        extra.push(sep);
                        extra.extend(encode(&format!("{}\n", file.filename)));
                    }
                    None => extra.extend(encode(CHUNK_DIVIDER)),
                }
                extra.extend(encode(&file.text));
            }
            if let Some(sep) = self.file_sep {
                extra.push(sep);
                extra.extend(encode(&format!("{CURRENT_FILE}\n")));
            }
        }
        if extra.len() > input.max_extra_tokens {
            // The files nearest the current one (written last) matter most.
            extra.drain(..extra.len() - input.max_extra_tokens);
            truncated = true;
        }

        let mut tokens = extra;
        tokens.extend(bos);
        let mut pre = vec![self.prefix];
        pre.extend(prefix);
        if !in_middle {
            pre.extend(&typed);
        }
        let mut suf = vec![self.suffix];
        suf.extend(suffix);
        if self.suffix_first {
            tokens.extend(suf);
            tokens.extend(pre);
        } else {
            tokens.extend(pre);
            tokens.extend(suf);
        }
        tokens.extend(self.middle);
        if in_middle {
            tokens.extend(typed);
        }
        FimPrompt {
            tokens,
            truncated,
            forced,
        }
    }
}

/// Where the last of `tokens` (the encoding of `text`) begins in `text`: the char boundary
/// whose text before encodes to all the other tokens. `None` for no tokens, or when the last
/// token is not a whole piece of text within a few bytes of the end.
fn last_token_start(
    text: &str,
    tokens: &[u32],
    encode: impl Fn(&str) -> Vec<u32>,
) -> Option<usize> {
    /// Longer than any token a line ends in, short enough to search per keystroke.
    const LONGEST: usize = 48;
    let (_, head) = tokens.split_last()?;
    (text.len().saturating_sub(LONGEST)..text.len())
        .rev()
        .filter(|&k| text.is_char_boundary(k))
        .find(|&k| encode(&text[..k]) == head)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vocab(tokens: &[&str]) -> HashMap<String, u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), 1000 + i as u32))
            .collect()
    }

    fn detect(v: &HashMap<String, u32>) -> Option<FimTemplate> {
        FimTemplate::detect(|t| v.get(t).copied())
    }

    /// One token per byte, so a layout reads back as text.
    fn enc(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    fn show(v: &HashMap<String, u32>, tokens: &[u32]) -> String {
        let names: HashMap<u32, &str> = v.iter().map(|(k, id)| (*id, k.as_str())).collect();
        tokens
            .iter()
            .map(|t| match names.get(t) {
                Some(n) => n.to_string(),
                None if *t == 1 => "<s>".to_string(),
                None => char::from(*t as u8).to_string(),
            })
            .collect()
    }

    fn input<'a>(extra: &'a [ExtraFile]) -> FimInput<'a> {
        FimInput {
            prefix: "def f(",
            suffix: ")\n",
            prompt: "x",
            extra,
            max_prefix_tokens: 1000,
            max_suffix_tokens: 1000,
            max_extra_tokens: 1000,
            typed_in_middle: false,
        }
    }

    const QWEN: &[&str] = &[
        "<|endoftext|>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    ];

    #[test]
    fn qwen_lays_out_repository_context_with_its_repo_and_file_tokens() {
        let v = vocab(QWEN);
        let t = detect(&v).unwrap();
        assert_eq!(t.family, FimFamily::Qwen);
        assert_eq!(t.stop_tokens.len(), 4);
        let extra = [ExtraFile {
            filename: "a.py".into(),
            text: "A=1\n".into(),
        }];
        let p = t.build(&input(&extra), None, enc);
        assert_eq!(
            show(&v, &p.tokens),
            "<|repo_name|>myproject\n<|file_sep|>a.py\nA=1\n<|file_sep|>filename\n\
             <|fim_prefix|>def f(x<|fim_suffix|>)\n<|fim_middle|>"
        );
        assert!(!p.truncated);
    }

    #[test]
    fn the_cursor_line_can_start_the_middle_so_typing_only_appends() {
        let v = vocab(QWEN);
        let t = detect(&v).unwrap();
        let layout = |prefix: &str, prompt: &str| {
            let input = FimInput {
                prefix,
                prompt,
                suffix: "\n    return y\n",
                max_prefix_tokens: 1000,
                max_suffix_tokens: 1000,
                max_extra_tokens: 1000,
                typed_in_middle: true,
                ..FimInput::default()
            };
            let built = t.build(&input, None, enc);
            (show(&v, &built.tokens), built.forced)
        };
        let before = "<|repo_name|>myproject\n<|file_sep|>filename\n<|fim_prefix|>def f(x):\n<|fim_suffix|>\n    return y\n<|fim_middle|>";
        // llama.vim's fields, and the same text all in the prefix, lay out alike; the line's
        // last token is left for the answer to spell (one byte per token here).
        assert_eq!(
            layout("def f(x):\n", "    y = "),
            (format!("{before}    y ="), " ".to_owned())
        );
        assert_eq!(
            layout("def f(x):\n    y = ", ""),
            (format!("{before}    y ="), " ".to_owned())
        );
        assert_eq!(
            layout("def f(x):\n    y = x", ""),
            (format!("{before}    y = "), "x".to_owned())
        );
        // A suffix-first family keeps its order.
        let mut spm = t.clone();
        spm.suffix_first = true;
        let input = FimInput {
            typed_in_middle: true,
            ..input(&[])
        };
        assert_eq!(
            show(&v, &spm.build(&input, None, enc).tokens),
            "<|repo_name|>myproject\n<|file_sep|>filename\n<|fim_suffix|>)\n<|fim_prefix|>def f(x<|fim_middle|>"
        );
    }

    #[test]
    fn codegemma_shares_the_prefix_token_but_not_the_repo_token() {
        let v = vocab(&[
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|file_separator|>",
            "<eos>",
        ]);
        let t = detect(&v).unwrap();
        assert_eq!(t.family, FimFamily::CodeGemma);
        assert_eq!(t.repo_name, None);
        let p = t.build(&input(&[]), Some(1), enc);
        assert_eq!(
            show(&v, &p.tokens),
            "<|file_separator|>filename\n<s><|fim_prefix|>def f(x<|fim_suffix|>)\n<|fim_middle|>"
        );
    }

    #[test]
    fn starcoder2_and_starcoder1_file_tokens() {
        let v = vocab(&[
            "<|endoftext|>",
            "<fim_prefix>",
            "<fim_middle>",
            "<fim_suffix>",
            "<fim_pad>",
            "<reponame>",
            "<file_sep>",
        ]);
        let t = detect(&v).unwrap();
        assert_eq!(t.family, FimFamily::StarCoder);
        let extra = [ExtraFile {
            filename: "b.rs".into(),
            text: "fn b(){}".into(),
        }];
        let p = t.build(&input(&extra), None, enc);
        assert_eq!(
            show(&v, &p.tokens),
            "<reponame>myproject\n<file_sep>b.rs\nfn b(){}<file_sep>filename\n\
             <fim_prefix>def f(x<fim_suffix>)\n<fim_middle>"
        );
        let v1 = vocab(&["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<filename>"]);
        let t1 = detect(&v1).unwrap();
        assert_eq!(t1.file_sep, v1.get("<filename>").copied());
    }

    #[test]
    fn codellama_uses_its_spaced_tokens_and_bos() {
        let v = vocab(&["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]);
        let t = detect(&v).unwrap();
        assert_eq!(t.family, FimFamily::CodeLlama);
        assert_eq!(t.stop_tokens, vec![v["▁<EOT>"]]);
        let p = t.build(&input(&[]), Some(1), enc);
        assert_eq!(show(&v, &p.tokens), "<s>▁<PRE>def f(x▁<SUF>)\n▁<MID>");
    }

    #[test]
    fn deepseek_coder_begin_hole_end_and_a_divider_between_snippets() {
        let v = vocab(&[
            "<｜fim▁begin｜>",
            "<｜fim▁hole｜>",
            "<｜fim▁end｜>",
            "<|EOT|>",
        ]);
        let t = detect(&v).unwrap();
        assert_eq!(t.family, FimFamily::DeepSeek);
        let extra = [ExtraFile {
            filename: "c.py".into(),
            text: "C".into(),
        }];
        let p = t.build(&input(&extra), Some(1), enc);
        assert_eq!(
            show(&v, &p.tokens),
            "\n\n--- snippet ---\n\nC<s><｜fim▁begin｜>def f(x<｜fim▁hole｜>)\n<｜fim▁end｜>"
        );
    }

    #[test]
    fn codestral_puts_the_suffix_first_and_has_no_middle_token() {
        let v = vocab(&["[PREFIX]", "[SUFFIX]"]);
        let t = detect(&v).unwrap();
        assert_eq!(t.family, FimFamily::Codestral);
        assert!(t.suffix_first && t.middle.is_none());
        let p = t.build(&input(&[]), Some(1), enc);
        assert_eq!(show(&v, &p.tokens), "<s>[SUFFIX])\n[PREFIX]def f(x");
    }

    #[test]
    fn a_vocabulary_without_fim_tokens_has_no_template() {
        assert!(detect(&vocab(&["<|im_start|>", "<|im_end|>", "<|endoftext|>"])).is_none());
        // Half a family is not a template.
        assert!(detect(&vocab(&["<fim_prefix>", "<fim_suffix>"])).is_none());
    }

    #[test]
    fn budgets_keep_the_end_of_the_prefix_the_start_of_the_suffix_and_the_nearest_files() {
        let v = vocab(QWEN);
        let t = detect(&v).unwrap();
        let extra = [ExtraFile {
            filename: "far.py".into(),
            text: "FAR".into(),
        }];
        let p = t.build(
            &FimInput {
                prefix: "0123456789",
                suffix: "abcdefghij",
                prompt: "",
                extra: &extra,
                max_prefix_tokens: 3,
                max_suffix_tokens: 4,
                max_extra_tokens: 10,
                typed_in_middle: false,
            },
            None,
            enc,
        );
        assert!(p.truncated);
        assert_eq!(
            show(&v, &p.tokens),
            "<|file_sep|>filename\n<|fim_prefix|>789<|fim_suffix|>ab<|fim_middle|>"
        );
    }
}
