//! Egress of OpenAI's Responses API: a normalized answer as a `response` object, and a stream
//! of normalized events as the typed Responses events, each with its `sequence_number`:
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta` / `.done`,
//! `response.content_part.done`, `response.function_call_arguments.delta` / `.done`,
//! `response.output_item.done`, then `response.completed` (or `response.incomplete`) with
//! usage, or `error` and `response.failed`: never a silent end.

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};

use super::responses::item_id;
use crate::error::ProviderError;
use crate::types::{ChatEvent, ChatResponse, FinishReason, Usage, unix_now};
use crate::wire::sse;

/// What a response echoes of its request, set before the answer starts.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The response id (`resp_...`).
    pub id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The model asked for.
    pub model: String,
    /// Echoed request fields: `instructions`, `max_output_tokens`, `metadata`,
    /// `parallel_tool_calls`, `previous_response_id`, `store`, `temperature`, `text`,
    /// `tool_choice`, `tools`, `top_p`, `truncation`, `user`.
    pub echo: serde_json::Map<String, Value>,
}

impl ResponseHead {
    /// A head with a fresh id, created now.
    pub fn new(model: impl Into<String>, echo: serde_json::Map<String, Value>) -> Self {
        ResponseHead {
            id: item_id("resp"),
            created_at: unix_now(),
            model: model.into(),
            echo,
        }
    }

    /// The `response` object in `status` with `output` and `usage`.
    fn response(&self, status: &str, output: &[Value], usage: Option<&Usage>) -> Value {
        let mut r = json!({
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "error": null, "incomplete_details": null,
            "model": self.model, "output": output,
            "usage": usage.map(usage_json),
        });
        if let Value::Object(map) = &mut r {
            for (k, v) in &self.echo {
                map.insert(k.clone(), v.clone());
            }
        }
        r
    }
}

/// Responses usage: input and output tokens, with cached and reasoning details.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens(),
    })
}

/// Usage read from a `response` object's `usage` (as [`usage_json`] writes it, and OpenAI's own
/// Responses API sends it); missing counts are 0.
pub fn usage_from_json(usage: &Value) -> Usage {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Usage {
        prompt_tokens: n(&usage["input_tokens"]),
        completion_tokens: n(&usage["output_tokens"]),
        cached_prompt_tokens: n(&usage["input_tokens_details"]["cached_tokens"]),
        reasoning_tokens: n(&usage["output_tokens_details"]["reasoning_tokens"]),
        ..Usage::default()
    }
}

/// A response's status and `incomplete_details` for how generation stopped.
fn status_for(reason: FinishReason) -> (&'static str, Value) {
    match reason {
        FinishReason::Length => ("incomplete", json!({"reason": "max_output_tokens"})),
        FinishReason::ContentFilter => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
           "arguments": arguments, "status": status})
}

/// A whole answer as a `response` object.
pub fn encode_response(head: &ResponseHead, answer: &ChatResponse) -> Value {
    let mut output = Vec::new();
    if !answer.text.is_empty() || answer.tool_calls.is_empty() {
        output.push(message_item(&item_id("msg"), &answer.text, "completed"));
    }
    for call in &answer.tool_calls {
        output.push(call_item(
            &item_id("fc"),
            &call.id,
            &call.name,
            &call.arguments,
            "completed",
        ));
    }
    let (status, incomplete) = status_for(answer.finish_reason);
    let mut r = head.response(status, &output, Some(&answer.usage));
    r["incomplete_details"] = incomplete;
    r
}

/// The output item being streamed.
enum Open {
    None,
    Message {
        id: String,
        text: String,
    },
    Call {
        index: u32,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Encodes a stream of normalized events as Responses SSE events. The final `response` object
/// (completed, incomplete or failed) is kept for storing: [`ResponsesEncoder::response`].
pub struct ResponsesEncoder {
    head: ResponseHead,
    sequence: u64,
    output: Vec<Value>,
    open: Open,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    started: bool,
    done: Option<Value>,
}

impl ResponsesEncoder {
    /// An encoder for a response with `head`.
    pub fn new(head: ResponseHead) -> Self {
        ResponsesEncoder {
            head,
            sequence: 0,
            output: Vec::new(),
            open: Open::None,
            finish: None,
            usage: None,
            started: false,
            done: None,
        }
    }

    /// The response's id.
    pub fn id(&self) -> &str {
        &self.head.id
    }

    /// The final `response` object, once the stream ended (completed, incomplete or failed).
    pub fn response(&self) -> Option<&Value> {
        self.done.as_ref()
    }

    fn event(&mut self, out: &mut BytesMut, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        sse::write_event(out, Some(kind), &data.to_string());
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.head.response("in_progress", &[], None);
        self.event(out, "response.created", json!({"response": response}));
        self.event(out, "response.in_progress", json!({"response": response}));
    }

    /// Closes the open item: its `.done` events, and the item in the output.
    fn close(&mut self, out: &mut BytesMut) {
        let index = self.output.len();
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Message { id, text } => {
                let base = json!({"item_id": id, "output_index": index, "content_index": 0});
                let mut done = base.clone();
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                self.event(out, "response.output_text.done", done);
                let mut part = base;
                part["part"] = json!({"type": "output_text", "text": text, "annotations": []});
                self.event(out, "response.content_part.done", part);
                let item = message_item(&id, &text, "completed");
                self.event(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            } => {
                self.event(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name,
                           "arguments": arguments}),
                );
                let item = call_item(&id, &call_id, &name, &arguments, "completed");
                self.event(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
        }
    }

    /// The frames for one event.
    pub fn encode(&mut self, event: &ChatEvent) -> Bytes {
        let mut out = BytesMut::new();
        if self.done.is_some() {
            return out.freeze();
        }
        match event {
            ChatEvent::Start { .. } => self.start(&mut out),
            ChatEvent::TextDelta { text, .. } => {
                self.start(&mut out);
                if !matches!(self.open, Open::Message { .. }) {
                    self.close(&mut out);
                    let id = item_id("msg");
                    let index = self.output.len();
                    let item = json!({"type": "message", "id": id, "status": "in_progress",
                                      "role": "assistant", "content": []});
                    self.event(
                        &mut out,
                        "response.output_item.added",
                        json!({"output_index": index, "item": item}),
                    );
                    self.event(
                        &mut out,
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "part": {"type": "output_text", "text": "", "annotations": []}}),
                    );
                    self.open = Open::Message {
                        id,
                        text: String::new(),
                    };
                }
                if text.is_empty() {
                    return out.freeze();
                }
                let index = self.output.len();
                if let Open::Message { id, text: all } = &mut self.open {
                    all.push_str(text);
                    let data = json!({"item_id": id, "output_index": index, "content_index": 0,
                                      "delta": text, "logprobs": []});
                    self.event(&mut out, "response.output_text.delta", data);
                }
            }
            ChatEvent::ToolCallDelta {
                index: call,
                id,
                name,
                arguments,
            } => {
                self.start(&mut out);
                let same = matches!(&self.open, Open::Call { index, .. } if index == call);
                if !same {
                    self.close(&mut out);
                    let item = item_id("fc");
                    let call_id = id.clone().unwrap_or_else(|| item_id("call"));
                    let name = name.clone().unwrap_or_default();
                    let added = call_item(&item, &call_id, &name, "", "in_progress");
                    let index = self.output.len();
                    self.event(
                        &mut out,
                        "response.output_item.added",
                        json!({"output_index": index, "item": added}),
                    );
                    self.open = Open::Call {
                        index: *call,
                        id: item,
                        call_id,
                        name,
                        arguments: String::new(),
                    };
                }
                if !arguments.is_empty() {
                    let index = self.output.len();
                    if let Open::Call {
                        id, arguments: all, ..
                    } = &mut self.open
                    {
                        all.push_str(arguments);
                        let data =
                            json!({"item_id": id, "output_index": index, "delta": arguments});
                        self.event(&mut out, "response.function_call_arguments.delta", data);
                    }
                }
            }
            ChatEvent::Usage(u) => self.usage = Some(*u),
            ChatEvent::Finish { reason } => {
                self.start(&mut out);
                self.close(&mut out);
                self.finish = Some(*reason);
            }
            ChatEvent::Error(e) => self.fail(&mut out, e),
        }
        out.freeze()
    }

    /// `error`, then `response.failed` with what was output so far.
    fn fail(&mut self, out: &mut BytesMut, e: &ProviderError) {
        self.start(out);
        let code = match e.kind.as_str() {
            "timeout" => "timeout",
            "stream_cut" => "stream_cut",
            _ => "server_error",
        };
        let message = if e.message.is_empty() {
            format!("the backend failed ({})", e.kind.as_str())
        } else {
            e.message.clone()
        };
        self.event(
            out,
            "error",
            json!({"code": code, "message": message, "param": null}),
        );
        let mut response = self
            .head
            .response("failed", &self.output, self.usage.as_ref());
        response["error"] = json!({"code": code, "message": message});
        self.event(out, "response.failed", json!({"response": response}));
        self.done = Some(response);
    }

    /// The last frames after a finished stream: `response.completed` (or `.incomplete`) with
    /// the whole response and its usage.
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if self.done.is_some() {
            return out.freeze();
        }
        self.start(&mut out);
        self.close(&mut out);
        let (status, incomplete) = status_for(self.finish.unwrap_or(FinishReason::Stop));
        let usage = self.usage.unwrap_or_default();
        let mut response = self.head.response(status, &self.output, Some(&usage));
        response["incomplete_details"] = incomplete;
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event(&mut out, kind, json!({"response": response}));
        self.done = Some(response);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProviderErrorKind;
    use crate::wire::sse::SseParser;

    fn events(bytes: &[Bytes]) -> Vec<Value> {
        let mut parser = SseParser::new();
        for b in bytes {
            parser.push(b);
        }
        let mut out = Vec::new();
        while let Some(e) = parser.next_event() {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(e.event.as_deref(), v["type"].as_str());
            out.push(v);
        }
        out
    }

    #[test]
    fn text_then_a_call_in_order_with_sequence_numbers() {
        let mut enc = ResponsesEncoder::new(ResponseHead::new("m", Default::default()));
        let mut frames = Vec::new();
        for e in [
            ChatEvent::Start {
                id: "x".into(),
                model: "m".into(),
                created: 0,
            },
            ChatEvent::TextDelta {
                index: 0,
                text: "Hel".into(),
                logprobs: None,
            },
            ChatEvent::TextDelta {
                index: 0,
                text: "lo".into(),
                logprobs: None,
            },
            ChatEvent::ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "{\"a\":".into(),
            },
            ChatEvent::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: "1}".into(),
            },
            ChatEvent::Finish {
                reason: FinishReason::ToolCalls,
            },
            ChatEvent::Usage(Usage {
                prompt_tokens: 5,
                completion_tokens: 3,
                cached_prompt_tokens: 2,
                ..Usage::default()
            }),
        ] {
            frames.push(enc.encode(&e));
        }
        frames.push(enc.finish());
        let all = events(&frames);
        let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e["sequence_number"], i);
        }
        let done = &all[14]["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["output"][1]["call_id"], "call_1");
        assert_eq!(done["usage"]["input_tokens_details"]["cached_tokens"], 2);
        assert_eq!(enc.response().unwrap()["status"], "completed");
    }

    #[test]
    fn a_cut_ends_in_error_and_response_failed() {
        let mut enc = ResponsesEncoder::new(ResponseHead::new("m", Default::default()));
        let a = enc.encode(&ChatEvent::TextDelta {
            index: 0,
            text: "Hi".into(),
            logprobs: None,
        });
        let b = enc.encode(&ChatEvent::Error(ProviderError::new(
            ProviderErrorKind::StreamCut,
            "up",
            "cut",
        )));
        let c = enc.finish();
        let all = events(&[a, b, c]);
        let last = &all[all.len() - 1];
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(all[all.len() - 2]["type"], "error");
        assert_eq!(enc.response().unwrap()["error"]["code"], "stream_cut");
    }

    #[test]
    fn usage_reads_back_as_it_is_written() {
        let u = Usage {
            prompt_tokens: 1117,
            completion_tokens: 10,
            cached_prompt_tokens: 1024,
            reasoning_tokens: 3,
            ..Usage::default()
        };
        assert_eq!(usage_from_json(&usage_json(&u)), u);
        assert_eq!(usage_from_json(&Value::Null), Usage::default());
    }
}
