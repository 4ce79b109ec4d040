//! The redacting executor: wraps a backend that runs outside this host (a cloud API, a cascade
//! that may escalate to one) for a request the privacy step redacted. The backend gets the copy
//! with placeholders; the answer gets the values back, whole or streamed (a placeholder split
//! across chunks is held back until it is whole), in text and in tool-call arguments.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tandem_cloud_adapters::openai::ChatCompletion;
use tandem_cloud_adapters::{ChatEvent, ChatRequest, ChatResponse, EventStream};
use tandem_privacy::{Redaction, Restorer};

use super::Executor;
use super::completion::{CompletionCall, CompletionOutput};
use crate::config::{BackendKind, Price};
use crate::error::Error;

/// A backend that sees only the redacted copy of a request.
pub struct RedactingExecutor {
    inner: Arc<dyn Executor>,
    redaction: Arc<Redaction>,
    redacted: ChatRequest,
}

impl RedactingExecutor {
    /// `inner`, sent `redacted` in place of the request it is given.
    pub fn new(inner: Arc<dyn Executor>, redaction: Arc<Redaction>, redacted: ChatRequest) -> Self {
        Self {
            inner,
            redaction,
            redacted,
        }
    }

    /// The copy to send: the redacted one, with the streaming flag of the call (a whole answer
    /// may be asked of a stream request and the other way round).
    fn request(&self, given: &ChatRequest) -> ChatRequest {
        let mut copy = self.redacted.clone();
        copy.stream = given.stream;
        copy.include_usage = given.include_usage;
        copy
    }
}

impl std::fmt::Debug for RedactingExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactingExecutor")
            .field("backend", &self.inner.backend())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Executor for RedactingExecutor {
    fn backend(&self) -> &str {
        self.inner.backend()
    }

    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn price(&self) -> Price {
        self.inner.price()
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<EventStream, Error> {
        let events = self.inner.chat_stream(self.request(&request)).await?;
        Ok(restored_stream(events, self.redaction.clone()))
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, Error> {
        let mut answer = self.inner.chat(self.request(&request)).await?;
        answer.text = self.redaction.restore(&answer.text);
        for call in &mut answer.tool_calls {
            call.arguments = self.redaction.restore_json(&call.arguments);
        }
        Ok(answer)
    }

    async fn chat_completion(&self, request: ChatRequest) -> Result<ChatCompletion, Error> {
        let mut answer = self.inner.chat_completion(self.request(&request)).await?;
        answer.body = restored_body(&self.redaction, &answer.body)?;
        Ok(answer)
    }

    async fn completion(&self, _call: &CompletionCall) -> Result<CompletionOutput, Error> {
        // The privacy step redacts chat requests only; a legacy completion never gets here.
        Err(Error::Internal(
            "a redacted request reached the legacy completions API".into(),
        ))
    }
}

/// An OpenAI `chat.completion` body with its placeholders restored: every string of the JSON,
/// with tool-call `arguments` (JSON inside a string) restored as JSON.
fn restored_body(redaction: &Redaction, body: &Bytes) -> Result<Bytes, Error> {
    fn walk(redaction: &Redaction, key: Option<&str>, v: &mut Value) {
        match v {
            Value::String(s) if s.contains('<') => {
                *s = if key == Some("arguments") {
                    redaction.restore_json(s)
                } else {
                    redaction.restore(s)
                };
            }
            Value::Array(a) => a.iter_mut().for_each(|v| walk(redaction, None, v)),
            Value::Object(o) => o.iter_mut().for_each(|(k, v)| walk(redaction, Some(k), v)),
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Internal(format!("an upstream answer is not JSON: {e}")))?;
    walk(redaction, None, &mut value);
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("re-encoding an answer: {e}")))
}

/// The stream with its placeholders restored. Text held back at a chunk's end goes out with the
/// next chunk, or before the stream's finish, usage or error.
fn restored_stream(events: EventStream, redaction: Arc<Redaction>) -> EventStream {
    struct State {
        events: EventStream,
        text: Restorer,
        text_index: u32,
        tools: Vec<Restorer>,
        redaction: Arc<Redaction>,
        out: VecDeque<ChatEvent>,
        ended: bool,
    }
    impl State {
        /// Everything held back, as events.
        fn flush(&mut self) {
            let rest = self.text.finish();
            if !rest.is_empty() {
                self.out.push_back(ChatEvent::TextDelta {
                    index: self.text_index,
                    text: rest,
                    logprobs: None,
                });
            }
            for (index, tool) in self.tools.iter_mut().enumerate() {
                let rest = tool.finish();
                if !rest.is_empty() {
                    self.out.push_back(ChatEvent::ToolCallDelta {
                        index: index as u32,
                        id: None,
                        name: None,
                        arguments: rest,
                    });
                }
            }
        }

        fn take(&mut self, event: ChatEvent) {
            match event {
                ChatEvent::TextDelta {
                    index,
                    text,
                    logprobs,
                } => {
                    self.text_index = index;
                    let text = self.text.push(&text);
                    if !text.is_empty() || logprobs.is_some() {
                        self.out.push_back(ChatEvent::TextDelta {
                            index,
                            text,
                            logprobs,
                        });
                    }
                }
                ChatEvent::ToolCallDelta {
                    index,
                    id,
                    name,
                    arguments,
                } => {
                    let i = index as usize;
                    while self.tools.len() <= i {
                        self.tools.push(self.redaction.json_restorer());
                    }
                    let arguments = self.tools[i].push(&arguments);
                    if !arguments.is_empty() || id.is_some() || name.is_some() {
                        self.out.push_back(ChatEvent::ToolCallDelta {
                            index,
                            id,
                            name,
                            arguments,
                        });
                    }
                }
                e @ (ChatEvent::Finish { .. } | ChatEvent::Usage(_) | ChatEvent::Error(_)) => {
                    self.flush();
                    self.out.push_back(e);
                }
                e @ ChatEvent::Start { .. } => self.out.push_back(e),
            }
        }
    }
    let state = State {
        events,
        text: redaction.restorer(),
        text_index: 0,
        tools: Vec::new(),
        redaction,
        out: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.out.pop_front() {
                return Some((e, s));
            }
            if s.ended {
                return None;
            }
            match s.events.next().await {
                Some(event) => s.take(event),
                None => {
                    s.ended = true;
                    s.flush();
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use tandem_cloud_adapters::FinishReason;
    use tandem_privacy::Detector;

    use super::*;

    #[tokio::test]
    async fn a_stream_gets_its_values_back_across_chunks() {
        let d = Detector::builtin();
        let text = "mail bob@example.com now";
        let mut r = Redaction::new();
        let redacted = r.apply(&d, text, &d.scan(text));
        let r = Arc::new(r);
        let mut events: Vec<ChatEvent> = redacted
            .as_bytes()
            .chunks(3)
            .map(|c| ChatEvent::TextDelta {
                index: 0,
                text: String::from_utf8_lossy(c).into_owned(),
                logprobs: None,
            })
            .collect();
        events.push(ChatEvent::Finish {
            reason: FinishReason::Stop,
        });
        let out: Vec<ChatEvent> = restored_stream(futures::stream::iter(events).boxed(), r)
            .collect()
            .await;
        let joined: String = out
            .iter()
            .filter_map(|e| match e {
                ChatEvent::TextDelta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(joined, text);
        assert!(matches!(out.last(), Some(ChatEvent::Finish { .. })));
    }

    #[test]
    fn a_whole_body_is_restored_with_tool_arguments_as_json() {
        let d = Detector::builtin();
        let mut r = Redaction::new();
        let _ = r.apply(&d, "a@b.io", &d.scan("a@b.io"));
        let body = Bytes::from_static(
            br#"{"choices":[{"message":{"content":"hi <EMAIL_1>","tool_calls":[{"function":{"arguments":"{\"to\":\"<EMAIL_1>\"}"}}]}}]}"#,
        );
        let out = restored_body(&r, &body).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "hi a@b.io");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            r#"{"to":"a@b.io"}"#
        );
    }
}
