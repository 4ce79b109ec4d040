//! `[ide]`: the code model served next to the chat model for editor plugins (`/infill`, and
//! `/v1/completions` with `suffix`), its threads, KV cache and the prompt budget of a completion.

use std::collections::BTreeSet;

use tandem_artifacts::CODE_MODEL;
use tandem_local_model::EngineConfig;

use super::raw::RawIde;
use super::{ConfigError, invalid};

/// The validated `[ide]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct IdeConfig {
    /// Model name (`qwen2.5-coder-0.5b`) or `.gguf` path; it must have fill-in-the-middle tokens.
    pub model: String,
    /// Compute threads.
    pub threads: usize,
    /// KV cache size in tokens (prefix cache across keystrokes included).
    pub kv_cache_tokens: usize,
    /// Most tokens of the current file's prefix and suffix (3 : 1, as llama.cpp splits them).
    pub context_tokens: usize,
    /// Most tokens of repository context (`input_extra`).
    pub extra_tokens: usize,
    /// Model ids that name the code model on `/v1/completions` (its name, `ide`, and more).
    pub aliases: Vec<String>,
    /// Lay `/infill` prompts out suffix first, so a keystroke changes only the prompt's end
    /// (`layout = "spm"`); the model's own order otherwise.
    pub suffix_first: bool,
    /// Write the cursor's line up to the cursor after the middle token, as the start of the
    /// middle (`layout = "line-in-middle"`, the default): typing on a line then only appends to
    /// the prompt, so a keystroke computes its own tokens and its answer is exactly that
    /// prompt's. The line's last token is given back to the model to spell, so the word the
    /// cursor cuts is tokenized as the model would write it. `"psm"` ends the prefix with the
    /// typed text, as llama.cpp's server writes it, and computes the suffix again at every
    /// keystroke.
    pub typed_in_middle: bool,
    /// Shortest run of cached tokens reused where a keystroke moved it by at most as many
    /// tokens (the suffix after text typed at the end of the prefix, in the `psm` layout): its
    /// KV is moved instead of computed again. The moved run attended to the text before the
    /// keystroke, and measurably follows it rather than what was typed, so it is off by
    /// default (0).
    pub cache_reuse: usize,
    /// Shortest run of cached tokens reused wherever it moved (0 = off, the default): after a
    /// jump, the lines the new window shares with a cached one (both show them, at other
    /// positions, or as prefix where they were suffix) are moved, not computed, as llama.cpp's
    /// `cache_reuse` does. A jump then computes only the lines it had not shown. The moved
    /// lines keep what they attended to before, so some answers differ from a cold run's
    /// (measured in `docs/BENCHMARKS.md`). Replaces `cache_reuse`.
    pub jump_reuse: usize,
    /// Most prompt-lookup draft tokens checked per decode step: code repeats itself, and a
    /// drafted token the model agrees with costs no step of its own (0 = off; the output is the
    /// same either way).
    pub draft_tokens: usize,
    /// The cloud code model multi-line completions may go to, when the routing policy
    /// predicts it answers sooner (see [`crate::routing::ide`]).
    pub cloud: Option<IdeCloud>,
}

/// `[ide] cloud`: a backend serving OpenAI's `/v1/completions` with `suffix` (Codestral's or
/// DeepSeek's FIM, a vLLM or llama.cpp server).
#[derive(Debug, Clone, PartialEq)]
pub struct IdeCloud {
    /// The `[backends.NAME]` it is.
    pub backend: String,
    /// The model id sent (mapped through the backend's `models`).
    pub model: String,
    /// Its expected latency until one is measured, ms.
    pub latency_ms: u64,
    /// Longest wait for its answer before the local model answers instead, ms.
    pub timeout_ms: u64,
    /// A multi-line completion the local model starts goes to the cloud when the confidence
    /// of its first tokens is under this (0 = never; see `tandem_router_policy::CascadePolicy`).
    pub confidence: f32,
}

impl Default for IdeConfig {
    fn default() -> Self {
        Self {
            model: CODE_MODEL.into(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            kv_cache_tokens: 8192,
            context_tokens: 2048,
            extra_tokens: 2048,
            aliases: vec![CODE_MODEL.into(), "ide".into()],
            suffix_first: false,
            typed_in_middle: true,
            cache_reuse: 0,
            jump_reuse: 0,
            draft_tokens: 6,
            cloud: None,
        }
    }
}

impl IdeConfig {
    /// Prefix tokens kept (the end of the prefix).
    pub fn prefix_tokens(&self) -> usize {
        self.context_tokens * 3 / 4
    }

    /// Suffix tokens kept (the start of the suffix).
    pub fn suffix_tokens(&self) -> usize {
        self.context_tokens - self.prefix_tokens()
    }

    /// The code model's engine settings on top of `cfg`: moved runs and prompt-lookup drafts.
    pub fn tune(&self, cfg: EngineConfig) -> EngineConfig {
        let cfg = if self.jump_reuse > 0 {
            cfg.cache_reuse(self.jump_reuse).cache_reuse_anywhere(true)
        } else {
            cfg.cache_reuse(self.cache_reuse)
        };
        cfg.draft_tokens(self.draft_tokens)
    }

    /// Whether `model` names the code model.
    pub fn is_named(&self, model: &str) -> bool {
        self.aliases.iter().any(|a| a == model)
    }
}

/// Validates `[ide]`; every error names its key.
pub fn validate_ide(raw: RawIde) -> Result<IdeConfig, ConfigError> {
    let d = IdeConfig::default();
    let model = raw.model.unwrap_or(d.model);
    if model.trim().is_empty() {
        return Err(invalid("ide.model", "must be a model name or a .gguf path"));
    }
    let threads = match raw.threads {
        Some(0) => return Err(invalid("ide.threads", "must be greater than 0")),
        Some(t) => t as usize,
        None => d.threads,
    };
    let kv_cache_tokens = match raw.kv_cache_tokens {
        Some(t) if t < 256 => return Err(invalid("ide.kv_cache_tokens", "must be at least 256")),
        Some(t) => t as usize,
        None => d.kv_cache_tokens,
    };
    let context_tokens = match raw.context_tokens {
        Some(t) if t < 16 => return Err(invalid("ide.context_tokens", "must be at least 16")),
        Some(t) => t as usize,
        None => d.context_tokens,
    };
    let extra_tokens = raw.extra_tokens.map_or(d.extra_tokens, |t| t as usize);
    if context_tokens + extra_tokens > kv_cache_tokens {
        return Err(invalid(
            "ide.context_tokens",
            format!(
                "context_tokens ({context_tokens}) plus extra_tokens ({extra_tokens}) must fit kv_cache_tokens ({kv_cache_tokens})"
            ),
        ));
    }
    let (suffix_first, typed_in_middle) = match raw.layout.as_deref() {
        Some("psm") => (false, false),
        None | Some("line-in-middle") => (false, true),
        Some("spm") => (true, false),
        Some(other) => {
            return Err(invalid(
                "ide.layout",
                format!("unknown layout `{other}` (expected psm, line-in-middle or spm)"),
            ));
        }
    };
    let cache_reuse = match raw.cache_reuse {
        Some(n @ 1..4) => {
            return Err(invalid(
                "ide.cache_reuse",
                format!("{n} tokens is too short a run to reuse; use 0 (off) or at least 4"),
            ));
        }
        Some(n) => n as usize,
        None => d.cache_reuse,
    };
    let jump_reuse = match raw.jump_reuse {
        Some(n @ 1..4) => {
            return Err(invalid(
                "ide.jump_reuse",
                format!("{n} tokens is too short a run to reuse; use 0 (off) or at least 4"),
            ));
        }
        Some(n) if n > 0 && cache_reuse > 0 => {
            return Err(invalid(
                "ide.jump_reuse",
                "reuses every run cache_reuse would; set one of them",
            ));
        }
        Some(n) => n as usize,
        None => d.jump_reuse,
    };
    let draft_tokens = match raw.draft_tokens {
        Some(n) if n > 32 => {
            return Err(invalid(
                "ide.draft_tokens",
                format!("{n} is more than 32 draft tokens per step"),
            ));
        }
        Some(n) => n as usize,
        None => d.draft_tokens,
    };
    let cloud = match raw.cloud {
        None => {
            let orphan = [
                ("ide.cloud_model", raw.cloud_model.is_some()),
                ("ide.cloud_latency_ms", raw.cloud_latency_ms.is_some()),
                ("ide.cloud_timeout_ms", raw.cloud_timeout_ms.is_some()),
                ("ide.cloud_confidence", raw.cloud_confidence.is_some()),
            ]
            .into_iter()
            .find(|(_, set)| *set);
            if let Some((key, _)) = orphan {
                return Err(invalid(key, "has no effect without ide.cloud"));
            }
            None
        }
        Some(backend) => Some(IdeCloud {
            model: raw.cloud_model.unwrap_or_else(|| model.clone()),
            latency_ms: raw.cloud_latency_ms.unwrap_or(400),
            timeout_ms: match raw.cloud_timeout_ms {
                Some(0) => return Err(invalid("ide.cloud_timeout_ms", "must be greater than 0")),
                Some(ms) => ms,
                None => 3000,
            },
            confidence: match raw.cloud_confidence {
                Some(c) if !(0.0..=1.0).contains(&c) => {
                    return Err(invalid(
                        "ide.cloud_confidence",
                        format!("{c} is not between 0 and 1"),
                    ));
                }
                Some(c) => c as f32,
                None => 0.0,
            },
            backend,
        }),
    };
    let mut aliases: BTreeSet<String> = raw.aliases.into_iter().collect();
    aliases.insert("ide".into());
    if !model.ends_with(".gguf") {
        aliases.insert(model.clone());
    }
    Ok(IdeConfig {
        model,
        threads,
        kv_cache_tokens,
        context_tokens,
        extra_tokens,
        aliases: aliases.into_iter().collect(),
        suffix_first,
        typed_in_middle,
        cache_reuse,
        jump_reuse,
        draft_tokens,
        cloud,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, MapEnv};

    #[test]
    fn an_ide_section_serves_the_code_model_with_its_budget() {
        let c = Config::from_toml_str(
            "[ide]\nthreads = 1\ncontext_tokens = 1000\naliases = [\"code\"]\n",
            &MapEnv::default(),
        )
        .unwrap();
        let ide = c.ide.unwrap();
        assert_eq!(ide.model, "qwen2.5-coder-0.5b");
        assert_eq!(
            (ide.threads, ide.prefix_tokens(), ide.suffix_tokens()),
            (1, 750, 250)
        );
        assert!(ide.is_named("code") && ide.is_named("ide") && ide.is_named("qwen2.5-coder-0.5b"));
        assert!(Config::default_local().ide.is_none());
    }

    #[test]
    fn jump_reuse_moves_runs_anywhere_and_cache_reuse_only_near() {
        let ide = |toml: &str| {
            let c = Config::from_toml_str(toml, &MapEnv::default()).unwrap();
            c.ide
                .unwrap()
                .tune(tandem_local_model::EngineConfig::new("m.gguf"))
        };
        let e = ide("[ide]\njump_reuse = 32\n");
        assert_eq!(
            (e.cache_reuse, e.cache_reuse_anywhere, e.draft_tokens),
            (32, true, 6)
        );
        let e = ide("[ide]\ncache_reuse = 16\ndraft_tokens = 0\n");
        assert_eq!(
            (e.cache_reuse, e.cache_reuse_anywhere, e.draft_tokens),
            (16, false, 0)
        );
        let e = ide("[ide]\n");
        assert_eq!((e.cache_reuse, e.cache_reuse_anywhere), (0, false));
    }

    #[test]
    fn a_cloud_names_an_openai_api_backend() {
        let c = Config::from_toml_str(
            "[backends.fim]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[ide]\ncloud = \"fim\"\n",
            &MapEnv::default(),
        )
        .unwrap();
        let cloud = c.ide.unwrap().cloud.unwrap();
        assert_eq!(
            (cloud.backend.as_str(), cloud.model.as_str()),
            ("fim", "qwen2.5-coder-0.5b")
        );
        assert_eq!((cloud.latency_ms, cloud.timeout_ms), (400, 3000));
    }

    #[test]
    fn bad_ide_values_name_their_key() {
        for (toml, key) in [
            ("[ide]\nthreads = 0\n", "ide.threads"),
            ("[ide]\nmodel = \" \"\n", "ide.model"),
            ("[ide]\nkv_cache_tokens = 10\n", "ide.kv_cache_tokens"),
            ("[ide]\ncontext_tokens = 9000\n", "ide.context_tokens"),
            ("[ide]\nport = 1\n", "ide"),
            ("[ide]\nlayout = \"x\"\n", "ide.layout"),
            ("[ide]\ncloud = \"nope\"\n", "ide.cloud"),
            ("[ide]\ncloud_model = \"m\"\n", "ide.cloud_model"),
            (
                "[backends.a]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[ide]\ncloud = \"a\"\n",
                "ide.cloud",
            ),
            (
                "[backends.c]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[ide]\ncloud = \"c\"\ncloud_timeout_ms = 0\n",
                "ide.cloud_timeout_ms",
            ),
            (
                "[backends.c]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[ide]\ncloud = \"c\"\ncloud_confidence = 1.5\n",
                "ide.cloud_confidence",
            ),
            ("[ide]\ncloud_confidence = 0.4\n", "ide.cloud_confidence"),
            ("[ide]\njump_reuse = 2\n", "ide.jump_reuse"),
            (
                "[ide]\ncache_reuse = 32\njump_reuse = 32\n",
                "ide.jump_reuse",
            ),
        ] {
            let e = Config::from_toml_str(toml, &MapEnv::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn env_overrides_reach_the_ide_section() {
        let env = MapEnv::from_pairs([("TANDEM__IDE__THREADS", "3")]);
        let c = Config::from_toml_str("[ide]\n", &env).unwrap();
        assert_eq!(c.ide.unwrap().threads, 3);
    }
}
