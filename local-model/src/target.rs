//! The target's text side without its weights: tokenizer, chat template and end tokens read from
//! the target's GGUF file, so an edge with a different local model can render prompts and
//! re-tokenize drafts in the target's vocabulary.

use std::path::Path;
use std::sync::Arc;

use crate::Result;
use crate::chat::{CHATML_TEMPLATE, ChatMessage, ChatTemplate, GEMMA_TEMPLATE};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// End-of-turn tokens recognized by name, besides the file's EOS.
const END_TOKENS: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>"];

/// A target model's tokenizer, chat template and end tokens.
#[derive(Debug, Clone)]
pub struct TargetTokenizer {
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    eos: Vec<u32>,
}

impl TargetTokenizer {
    /// Reads the text side of the model at `path` (only metadata is read, not the weights).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let gguf = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let mut eos: Vec<u32> = tokenizer.eos_id().into_iter().collect();
        for name in END_TOKENS {
            if let Some(id) = tokenizer.token_id(name)
                && !eos.contains(&id)
            {
                eos.push(id);
            }
        }
        if let Some(id) = gguf
            .get("tokenizer.ggml.eot_token_id")
            .and_then(|v| v.as_u64())
            .map(|id| id as u32)
            && !eos.contains(&id)
            && (id as usize) < tokenizer.vocab_size()
        {
            eos.push(id);
        }
        let arch = gguf
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let source = match gguf.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(t) => t.to_owned(),
            None if arch.starts_with("gemma")
                || tokenizer.token_id("<start_of_turn>").is_some() =>
            {
                GEMMA_TEMPLATE.to_owned()
            }
            None => CHATML_TEMPLATE.to_owned(),
        };
        let text_of = |id: Option<u32>| id.map(|i| tokenizer.token_text(i)).unwrap_or_default();
        let template = ChatTemplate::new(
            &source,
            &text_of(tokenizer.bos_id()),
            &text_of(tokenizer.eos_id()),
        )?;
        Ok(Self {
            tokenizer: Arc::new(tokenizer),
            template: Arc::new(template),
            eos,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Tokens that end an answer.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The vocabulary hash (equal hashes: the same tokenizer).
    pub fn vocab_hash(&self) -> &str {
        self.tokenizer.vocab_hash()
    }

    /// Renders and tokenizes a chat prompt as the target's own engine would: specials parsed,
    /// BOS added unless the template wrote it.
    pub fn chat_prompt(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.template.render(messages, add_generation_prompt)?;
        let tok = &self.tokenizer;
        let has_bos = tok
            .bos_id()
            .is_some_and(|b| !tok.token_text(b).is_empty() && text.starts_with(&tok.token_text(b)));
        Ok(tok.encode(&text, !has_bos))
    }
}
