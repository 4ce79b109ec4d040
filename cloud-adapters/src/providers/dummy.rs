//! A provider for tests whose behaviour is chosen by the model name: `echo` (the default)
//! echoes the last user message, `slow` waits between chunks, `error` fails with a retryable
//! 500, `flaky` fails every other call, `cut` breaks the stream mid-way, `tool` calls a tool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::provider::{EventStream, Provider, ProviderError};
use crate::types::{
    ChatEvent, ChatRequest, ChatResponse, FinishReason, ResponseBuilder, Usage, WireFormat,
    unix_now,
};

/// What the dummy does for a model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Echo the last user message.
    Echo,
    /// Echo, waiting between chunks.
    Slow,
    /// Fail with a retryable 500.
    Error,
    /// Fail on the 1st, 3rd, 5th... `flaky` call; echo otherwise.
    Flaky,
    /// Start echoing, then cut the stream.
    Cut,
    /// Call a tool.
    Tool,
}

impl Behaviour {
    /// The behaviour a model name selects (`dummy-slow`, `slow`, `my-error-model`...).
    pub fn for_model(model: &str) -> Self {
        let m = model.to_ascii_lowercase();
        if m.contains("error") {
            Behaviour::Error
        } else if m.contains("flaky") {
            Behaviour::Flaky
        } else if m.contains("cut") {
            Behaviour::Cut
        } else if m.contains("tool") {
            Behaviour::Tool
        } else if m.contains("slow") {
            Behaviour::Slow
        } else {
            Behaviour::Echo
        }
    }
}

/// The dummy provider.
#[derive(Debug)]
pub struct DummyProvider {
    name: String,
    format: WireFormat,
    slow_delay: Duration,
    calls: AtomicU64,
    flaky_calls: AtomicU64,
}

impl DummyProvider {
    /// A dummy named `name` that claims to speak OpenAI.
    pub fn new(name: impl Into<String>) -> Self {
        DummyProvider {
            name: name.into(),
            format: WireFormat::OpenAi,
            slow_delay: Duration::from_millis(25),
            calls: AtomicU64::new(0),
            flaky_calls: AtomicU64::new(0),
        }
    }

    /// Claims to speak `format` instead.
    pub fn with_format(mut self, format: WireFormat) -> Self {
        self.format = format;
        self
    }

    /// The pause between chunks for `slow` models.
    pub fn with_slow_delay(mut self, delay: Duration) -> Self {
        self.slow_delay = delay;
        self
    }

    /// How many calls were made.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The events of an answer, or the error the call fails with.
    fn plan(&self, req: &ChatRequest) -> Result<(Behaviour, Vec<ChatEvent>), ProviderError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let behaviour = Behaviour::for_model(&req.model);
        match behaviour {
            Behaviour::Error => {
                return Err(ProviderError::status(
                    500,
                    &*self.name,
                    "dummy upstream error",
                ));
            }
            Behaviour::Flaky
                if self
                    .flaky_calls
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(2) =>
            {
                return Err(ProviderError::status(
                    503,
                    &*self.name,
                    "dummy upstream is flaky",
                ));
            }
            _ => {}
        }
        let prompt_tokens: u64 = req
            .messages
            .iter()
            .map(|m| m.joined_text().split_whitespace().count() as u64 + 1)
            .sum();
        let mut events = vec![ChatEvent::Start {
            id: format!("chatcmpl-dummy{call}"),
            model: req.model.clone(),
            created: unix_now(),
        }];
        let completion_tokens;
        if behaviour == Behaviour::Tool {
            let name = req.tools.first().map_or("get_weather", |t| t.name.as_str());
            events.push(ChatEvent::ToolCallDelta {
                index: 0,
                id: Some(format!("call_dummy{call}")),
                name: Some(name.to_owned()),
                arguments: String::new(),
            });
            for piece in ["{\"location\":", " \"Paris\"}"] {
                events.push(ChatEvent::ToolCallDelta {
                    index: 0,
                    id: None,
                    name: None,
                    arguments: piece.to_owned(),
                });
            }
            completion_tokens = 8;
            events.push(ChatEvent::Finish {
                reason: FinishReason::ToolCalls,
            });
        } else {
            let text = req.last_user_text().unwrap_or_default();
            let mut pieces = split_words(&text);
            if let Some(max) = req.max_tokens {
                pieces.truncate(max as usize);
            }
            completion_tokens = pieces.len() as u64;
            let reason = if req
                .max_tokens
                .is_some_and(|m| (m as usize) < split_words(&text).len())
            {
                FinishReason::Length
            } else {
                FinishReason::Stop
            };
            for piece in pieces {
                events.push(ChatEvent::TextDelta {
                    index: 0,
                    text: piece,
                    logprobs: None,
                });
            }
            if behaviour == Behaviour::Cut {
                let keep = (events.len() / 2).max(2).min(events.len());
                events.truncate(keep);
                events.push(ChatEvent::Error(ProviderError::stream_cut(&*self.name)));
                return Ok((behaviour, events));
            }
            events.push(ChatEvent::Finish { reason });
        }
        events.push(ChatEvent::Usage(Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        }));
        Ok((behaviour, events))
    }
}

/// Splits text into word pieces that keep their leading space, like tokens of a stream.
fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c == ' ' && !current.trim().is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[async_trait]
impl Provider for DummyProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> WireFormat {
        self.format
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let (behaviour, events) = self.plan(req)?;
        if behaviour == Behaviour::Slow {
            tokio::time::sleep(self.slow_delay * events.len() as u32).await;
        }
        let mut builder = ResponseBuilder::new();
        for event in events {
            builder.push(event);
        }
        builder.finish()
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        let (behaviour, events) = self.plan(req)?;
        let delay = (behaviour == Behaviour::Slow).then_some(self.slow_delay);
        let stream = futures::stream::iter(events).then(move |event| async move {
            if let (Some(delay), false) = (delay, matches!(event, ChatEvent::Start { .. })) {
                tokio::time::sleep(delay).await;
            }
            event
        });
        Ok(stream.boxed())
    }
}
