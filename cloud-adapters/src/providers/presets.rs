//! Servers and hosted APIs that speak OpenAI's chat format, by the name a backend's `kind` takes:
//! each gives the address it answers on by default and what its API honours. A new one that
//! speaks the same format is one line in [`PRESETS`]; the OpenAI-compatible provider serves it.

use crate::provider::Capabilities;

/// An OpenAI-format server known by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The backend `kind` that names it in the config.
    pub kind: &'static str,
    /// Where it answers when the config gives no `base_url`.
    pub base_url: &'static str,
    /// What its API honours; the rest is refused before sending.
    pub capabilities: Capabilities,
}

/// Every preset. Self-hosted servers take everything the normalized request says, top-k
/// included; hosted APIs are held to what OpenAI's own API takes.
pub const PRESETS: &[Preset] = &[
    Preset {
        kind: "vllm",
        base_url: "http://127.0.0.1:8000/v1",
        capabilities: Capabilities::FULL,
    },
    Preset {
        kind: "sglang",
        base_url: "http://127.0.0.1:30000/v1",
        capabilities: Capabilities::FULL,
    },
    Preset {
        kind: "llama-cpp",
        base_url: "http://127.0.0.1:8080/v1",
        capabilities: Capabilities::FULL,
    },
    Preset {
        kind: "groq",
        base_url: "https://api.groq.com/openai/v1",
        capabilities: Capabilities::OPENAI,
    },
    Preset {
        kind: "cerebras",
        base_url: "https://api.cerebras.ai/v1",
        capabilities: Capabilities::OPENAI,
    },
    Preset {
        kind: "together",
        base_url: "https://api.together.xyz/v1",
        capabilities: Capabilities::OPENAI,
    },
];

/// The preset a `kind` names, if any.
pub fn preset(kind: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_unique_and_addresses_are_urls() {
        for (i, p) in PRESETS.iter().enumerate() {
            assert!(
                PRESETS[i + 1..].iter().all(|q| q.kind != p.kind),
                "{}",
                p.kind
            );
            assert!(p.base_url.starts_with("http"), "{}", p.kind);
            assert_eq!(preset(p.kind), Some(p));
        }
        assert_eq!(preset("no-such-server"), None);
    }
}
