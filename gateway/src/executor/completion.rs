//! What an executor is given and gives back for a legacy `/v1/completions` request. An upstream
//! answers in normalized form (encoded by the handler with the shared legacy encoder); the local
//! model also reports what only it knows (prompt scores, tokens named by id), so its answer has
//! its own shape.

use serde_json::{Map, Value, json};
use tandem_cloud_adapters::openai::CompletionRequest;
use tandem_cloud_adapters::{
    ChatRequest, ChatResponse, EventStream, FinishReason, Message, Role, Usage,
};
use tandem_local_model::GenerateEvent;
use tokio::sync::mpsc;

/// A decoded `/v1/completions` request with the client's body, which an upstream speaking
/// OpenAI's API is sent as it came (model mapped).
#[derive(Debug, Clone)]
pub struct CompletionCall {
    /// The decoded request.
    pub request: CompletionRequest,
    /// The client's JSON object.
    pub body: Map<String, Value>,
}

impl CompletionCall {
    /// What the routing policy reads of the request: the prompt as one user turn, with the
    /// length and streaming asked for. A token-id prompt has no text to read.
    pub fn policy_view(&self) -> ChatRequest {
        let r = &self.request;
        let text = match &r.prompt {
            tandem_cloud_adapters::openai::Prompt::Text(text) => text.clone(),
            tandem_cloud_adapters::openai::Prompt::Tokens(_) => String::new(),
        };
        ChatRequest {
            model: r.model.clone(),
            messages: vec![Message::text(Role::User, text)],
            max_tokens: Some(r.max_tokens),
            stream: r.stream,
            ..ChatRequest::default()
        }
    }
}

/// An executor's answer to a completion.
pub enum CompletionOutput {
    /// An upstream's whole answer.
    Answer(ChatResponse),
    /// An upstream's stream.
    Events(EventStream),
    /// The local model's whole answer.
    Local(LocalCompletion),
    /// The local model's stream.
    LocalStream(LocalStream),
}

impl std::fmt::Debug for CompletionOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Answer(_) => "Answer",
            Self::Events(_) => "Events",
            Self::Local(_) => "Local",
            Self::LocalStream(_) => "LocalStream",
        })
    }
}

/// The local model's whole completion.
#[derive(Debug)]
pub struct LocalCompletion {
    /// The echoed prompt (when asked) and the generated text.
    pub text: String,
    /// Per-token log-probabilities in the legacy shape, when asked.
    pub logprobs: Option<LegacyLogprobs>,
    /// vLLM's `prompt_logprobs`: `null` for the first token, then a map per position.
    pub prompt_logprobs: Option<Vec<Value>>,
    /// Why generation ended (`stop` or `length`).
    pub finish: FinishReason,
    /// Token counts from the tokenizer.
    pub usage: Usage,
}

/// The local model's streamed completion: the echoed prompt first, then the engine's events.
#[derive(Debug)]
pub struct LocalStream {
    /// The prompt to repeat before the completion (`echo`), when not empty.
    pub echo: Option<String>,
    /// The engine's events; dropping the receiver cancels the generation.
    pub events: mpsc::Receiver<GenerateEvent>,
}

/// The legacy `logprobs` object over some tokens: each token's name, log-probability (none for
/// the first prompt token), alternatives and text offset.
#[derive(Debug, Default)]
pub struct LegacyLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
    offset: usize,
}

impl LegacyLogprobs {
    /// Appends one token.
    pub fn push(&mut self, token: String, logprob: Option<f32>, top: Value) {
        self.text_offset.push(self.offset);
        self.offset += token.len();
        self.tokens.push(token);
        self.token_logprobs.push(logprob);
        self.top_logprobs.push(top);
    }

    /// The object as the API spells it.
    pub fn to_json(&self) -> Value {
        json!({"tokens": self.tokens, "token_logprobs": self.token_logprobs,
               "top_logprobs": self.top_logprobs, "text_offset": self.text_offset})
    }
}
