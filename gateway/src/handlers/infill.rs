//! `POST /infill`, compatible with llama.cpp's server: decode its fields (a field Tandem does not
//! honour is a 400 naming it), run the completion on the code model, encode llama.cpp's answer
//! (`content`, `tokens_predicted`, `tokens_evaluated`, `timings`, `truncated`, `stop_type`, ...)
//! as JSON or as a stream of `data:` events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tandem_local_model::{ExtraFile, SamplingParams};

use super::chat::record_usage;
use super::{finish_response, json_response, read_body, request_id, sse_response};
use crate::dispatch::{RouteInfo, run_infill};
use crate::error::{ApiFlavor, Error};
use crate::executor::infill::{InfillChunk, InfillOutcome, InfillRequest};
use crate::routing::RequestHints;
use crate::state::AppState;

/// The header that names an editor session: a newer request of the session stops the older.
pub const EDITOR_SESSION_HEADER: &str = "x-tandem-editor-session";

/// Sampler names llama.cpp accepts that Tandem's sampler does not apply (accepted so that
/// editor plugins work unchanged; the FIM end tokens already end the middle, as `infill` would).
const SAMPLERS_NOT_APPLIED: &[&str] = &[
    "infill",
    "penalties",
    "dry",
    "top_n_sigma",
    "typ_p",
    "typical_p",
    "xtc",
];

/// Fields accepted with no effect on the answer: the prefix cache is always used (a cached
/// prefix gives the same logits as a computed one); there is one code model.
const ACCEPTED_NO_EFFECT: &[&str] = &["cache_prompt", "model"];

fn bad(message: impl Into<String>, param: &str) -> Error {
    Error::invalid(message, Some(param))
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<String, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("'{key}' must be a string"), key)),
    }
}

fn int(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad(format!("'{key}' must be an integer"), key)),
    }
}

fn number(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("'{key}' must be a number"), key)),
    }
}

fn boolean(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("'{key}' must be true or false"), key)),
    }
}

fn strings(obj: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("'{key}' must be an array of strings"), key))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad(format!("'{key}' must be an array of strings"), key)),
    }
}

/// A time budget: a positive number of ms, or off (llama.cpp's -1 and 0).
fn budget_ms(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, Error> {
    Ok(int(obj, key)?.filter(|&ms| ms > 0).map(|ms| ms as u64))
}

/// The decoded request and the response fields asked for (`response_fields`).
#[derive(Debug)]
pub struct Decoded {
    /// The request for the code model.
    pub request: InfillRequest,
    /// Only these fields are answered (`a/b` names a nested one); all when empty.
    pub response_fields: Vec<String>,
    /// The slot id echoed in the answer.
    pub id_slot: i64,
}

/// Decodes an `/infill` body; `session` is the editor session header, if sent.
pub fn decode(bytes: &[u8], session: Option<String>) -> Result<Decoded, Error> {
    let obj = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Err(Error::invalid("the body must be a JSON object", None)),
        Err(e) => return Err(Error::invalid(format!("the body is not JSON: {e}"), None)),
    };
    const KNOWN: &[&str] = &[
        "input_prefix",
        "input_suffix",
        "input_extra",
        "prompt",
        "n_predict",
        "max_tokens",
        "t_max_prompt_ms",
        "t_max_predict_ms",
        "n_indent",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "seed",
        "stop",
        "samplers",
        "stream",
        "id_slot",
        "response_fields",
    ];
    if let Some(unknown) = obj
        .keys()
        .find(|k| !KNOWN.contains(&k.as_str()) && !ACCEPTED_NO_EFFECT.contains(&k.as_str()))
    {
        return Err(Error::Unsupported {
            message: format!("'{unknown}' is not supported on /infill"),
            param: unknown.clone(),
        });
    }
    if let Some(v) = obj.get("cache_prompt")
        && !v.is_boolean()
        && !v.is_null()
    {
        return Err(bad("'cache_prompt' must be true or false", "cache_prompt"));
    }

    let mut input_extra = Vec::new();
    match obj.get("input_extra") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Value::Object(chunk) = item else {
                    return Err(bad(
                        format!("input_extra[{i}] must be an object with 'filename' and 'text'"),
                        "input_extra",
                    ));
                };
                let text = match chunk.get("text") {
                    Some(Value::String(t)) => t.clone(),
                    _ => {
                        return Err(bad(
                            format!("input_extra[{i}].text must be a string"),
                            "input_extra",
                        ));
                    }
                };
                let filename = match chunk.get("filename") {
                    None | Some(Value::Null) => "tmp".to_owned(),
                    Some(Value::String(f)) => f.clone(),
                    Some(_) => {
                        return Err(bad(
                            format!("input_extra[{i}].filename must be a string"),
                            "input_extra",
                        ));
                    }
                };
                input_extra.push(ExtraFile { filename, text });
            }
        }
        Some(_) => return Err(bad("'input_extra' must be an array", "input_extra")),
    }

    let n_predict_key = if obj.contains_key("n_predict") {
        "n_predict"
    } else {
        "max_tokens"
    };
    let n_predict = match int(&obj, n_predict_key)? {
        None | Some(-1) => None,
        Some(n) if n < 0 => {
            return Err(bad(
                format!("'{n_predict_key}' must be -1 (no limit) or at least 0"),
                n_predict_key,
            ));
        }
        Some(n) => Some(n.min(u32::MAX as i64) as u32),
    };
    let n_indent = match int(&obj, "n_indent")? {
        None => 0,
        Some(n) if n < 0 => return Err(bad("'n_indent' must be at least 0", "n_indent")),
        Some(n) => n as u32,
    };

    // llama.cpp's defaults; `samplers` names which of them apply.
    let mut temperature = number(&obj, "temperature")?.unwrap_or(0.8) as f32;
    let mut top_k = match int(&obj, "top_k")? {
        Some(k) if k < 0 => return Err(bad("'top_k' must be at least 0", "top_k")),
        Some(k) => k as usize,
        None => 40,
    };
    let mut top_p = number(&obj, "top_p")?.unwrap_or(0.95) as f32;
    if !(0.0..=1.0).contains(&top_p) {
        return Err(bad("'top_p' must be between 0 and 1", "top_p"));
    }
    let mut min_p = number(&obj, "min_p")?.unwrap_or(0.05) as f32;
    if !(0.0..=1.0).contains(&min_p) {
        return Err(bad("'min_p' must be between 0 and 1", "min_p"));
    }
    if let Some(samplers) = strings(&obj, "samplers")? {
        let applied = ["top_k", "top_p", "min_p", "temperature"];
        if let Some(other) = samplers
            .iter()
            .find(|s| !applied.contains(&s.as_str()) && !SAMPLERS_NOT_APPLIED.contains(&s.as_str()))
        {
            return Err(Error::Unsupported {
                message: format!("sampler '{other}' is not supported"),
                param: "samplers".into(),
            });
        }
        let has = |name: &str| samplers.iter().any(|s| s == name);
        if !has("top_k") {
            top_k = 0;
        }
        if !has("top_p") {
            top_p = 1.0;
        }
        if !has("min_p") {
            min_p = 0.0;
        }
        if !has("temperature") {
            temperature = 1.0;
        }
    }
    let seed = int(&obj, "seed")?.filter(|&s| s >= 0).map(|s| s as u64);
    let id_slot = int(&obj, "id_slot")?.unwrap_or(-1);
    let session = session.or_else(|| (id_slot >= 0).then(|| format!("slot:{id_slot}")));

    let request = InfillRequest {
        input_prefix: string(&obj, "input_prefix")?,
        input_suffix: string(&obj, "input_suffix")?,
        prompt: string(&obj, "prompt")?,
        input_extra,
        n_predict,
        t_max_prompt_ms: budget_ms(&obj, "t_max_prompt_ms")?,
        t_max_predict_ms: budget_ms(&obj, "t_max_predict_ms")?,
        n_indent,
        params: SamplingParams {
            // llama.cpp samples greedily at a temperature of 0 or below.
            temperature: temperature.max(0.0),
            top_k,
            top_p,
            min_p,
            seed,
            stop: strings(&obj, "stop")?.unwrap_or_default(),
            ..SamplingParams::default()
        },
        stream: boolean(&obj, "stream")?.unwrap_or(false),
        session,
    };
    Ok(Decoded {
        request,
        response_fields: strings(&obj, "response_fields")?.unwrap_or_default(),
        id_slot,
    })
}

/// llama.cpp's answer object for a finished completion.
pub fn encode(outcome: &InfillOutcome, model: &str, id_slot: i64, stop: bool) -> Value {
    let prompt_n = outcome.computed_tokens();
    let per = |n: usize, ms: f64| {
        if n == 0 || ms <= 0.0 {
            (0.0, 0.0)
        } else {
            (ms / n as f64, 1000.0 * n as f64 / ms)
        }
    };
    let (prompt_per_token_ms, prompt_per_second) = per(prompt_n, outcome.prompt_ms);
    let (predicted_per_token_ms, predicted_per_second) =
        per(outcome.tokens_predicted, outcome.predicted_ms);
    let mut body = json!({
        "index": 0,
        "id_slot": id_slot,
        "content": outcome.content,
        "tokens": [],
        "model": model,
        "stop": stop,
        "tokens_predicted": outcome.tokens_predicted,
        "tokens_evaluated": outcome.prompt_tokens,
        "tokens_cached": outcome.prompt_tokens + outcome.tokens_predicted,
        "has_new_line": outcome.content.contains('\n'),
        "truncated": outcome.truncated,
        "stop_type": outcome.stop_type.map_or("none", |s| s.as_str()),
        "stopping_word": outcome.stopping_word,
        "timings": {
            "cache_n": outcome.cached_tokens,
            "prompt_n": prompt_n,
            "prompt_ms": outcome.prompt_ms,
            "prompt_per_token_ms": prompt_per_token_ms,
            "prompt_per_second": prompt_per_second,
            "predicted_n": outcome.tokens_predicted,
            "predicted_ms": outcome.predicted_ms,
            "predicted_per_token_ms": predicted_per_token_ms,
            "predicted_per_second": predicted_per_second,
        },
    });
    if outcome.superseded {
        body["superseded"] = json!(true);
    }
    body
}

/// Keeps only `fields` (`a/b` keeps a nested field, answered under its full name, as
/// llama.cpp does).
fn only_fields(body: Value, fields: &[String]) -> Value {
    if fields.is_empty() {
        return body;
    }
    let mut out = Map::new();
    for f in fields {
        let mut v = Some(&body);
        for part in f.split('/') {
            v = v.and_then(|x| x.get(part));
        }
        if let Some(v) = v {
            out.insert(f.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// `POST /infill`: decode, run on the code model, encode.
pub async fn infill(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let id = request_id(&parts);
    let session = parts
        .headers
        .get(EDITOR_SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| format!("header:{s}"));
    let decoded = async {
        let bytes = read_body(&parts, body).await?;
        let hints = RequestHints::from_parts(id.0.clone(), &parts)?;
        decode(&bytes, session).map(|d| (d, hints))
    }
    .await;
    let (decoded, hints) = match decoded {
        Ok(d) => d,
        Err(e) => return e.into_response_for(ApiFlavor::OpenAi),
    };
    let model = state
        .config
        .ide
        .as_ref()
        .map(|i| i.model.clone())
        .or_else(|| state.config.local.as_ref().map(|l| l.model.clone()))
        .unwrap_or_default();
    let (mut response, route) = if decoded.request.stream {
        stream(state.clone(), decoded, hints, model.clone()).await
    } else {
        let (result, route) = run_infill(&state, &decoded.request, &hints, None, None).await;
        meter_cloud(&state, &hints, &model, &route, &result);
        let answered = result.is_ok();
        let mut response = match result {
            Ok(outcome) => json_response(&only_fields(
                encode(&outcome, &model, decoded.id_slot, true),
                &decoded.response_fields,
            )),
            Err(e) => e.into_response_for(ApiFlavor::OpenAi),
        };
        finish_response(&state, &mut response, &id, &route, model.clone(), answered);
        return response;
    };
    finish_response(&state, &mut response, &id, &route, model, true);
    response
}

/// Counts a cloud answer's tokens and cost as every cloud call's are (a local one costs
/// nothing to meter here).
fn meter_cloud(
    state: &AppState,
    hints: &RequestHints,
    model: &str,
    route: &RouteInfo,
    result: &Result<InfillOutcome, Error>,
) {
    if let (Ok(o), "cloud") = (result, route.mode) {
        let usage = tandem_cloud_adapters::Usage {
            prompt_tokens: o.prompt_tokens as u64,
            completion_tokens: o.tokens_predicted as u64,
            ..Default::default()
        };
        record_usage(
            state,
            model,
            &route.backend,
            &usage,
            hints.meter.as_deref(),
            hints.ticket.as_ref(),
        );
    }
}

/// A streamed completion: one `data:` event per piece of text, then the whole answer with
/// `stop: true`; an error after the start is an error event. The route is the one the run
/// chose before its first chunk.
async fn stream(
    state: Arc<AppState>,
    decoded: Decoded,
    hints: RequestHints,
    model: String,
) -> (Response, RouteInfo) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<InfillChunk>(64);
    let (route_tx, mut route_rx) = tokio::sync::oneshot::channel();
    let Decoded {
        request,
        response_fields,
        id_slot,
    } = decoded;
    let runner = tokio::spawn({
        let state = state.clone();
        let model_name = model.clone();
        async move {
            let (result, route) =
                run_infill(&state, &request, &hints, Some(tx.clone()), Some(route_tx)).await;
            meter_cloud(&state, &hints, &model_name, &route, &result);
            let _ = tx
                .send(match result {
                    Ok(outcome) => InfillChunk::Done(outcome),
                    Err(e) => InfillChunk::Failed(e),
                })
                .await;
        }
    });
    // An error before any text is an ordinary error answer.
    let first = rx.recv().await;
    let route = route_rx
        .try_recv()
        .unwrap_or_else(|_| RouteInfo::local("", format!("infill ({model})")));
    if let Some(InfillChunk::Failed(e)) = first {
        return (e.into_response_for(ApiFlavor::OpenAi), route);
    }
    let frame = |v: Value| Bytes::from(format!("data: {v}\n\n"));
    let frames = futures::stream::unfold(
        (first, rx, runner, false),
        move |(pending, mut rx, runner, done)| {
            let model = model.clone();
            let fields = response_fields.clone();
            async move {
                if done {
                    return None;
                }
                let chunk = match pending {
                    Some(c) => Some(c),
                    None => rx.recv().await,
                };
                let (bytes, done) = match chunk {
                    Some(InfillChunk::Text(text)) => (
                        frame(
                            json!({"index": 0, "content": text, "tokens": [], "stop": false, "id_slot": id_slot}),
                        ),
                        false,
                    ),
                    Some(InfillChunk::Done(outcome)) => (
                        frame(only_fields(
                            encode(&outcome, &model, id_slot, true),
                            &fields,
                        )),
                        true,
                    ),
                    Some(InfillChunk::Failed(e)) => (
                        frame(json!({"error": {"message": e.to_string(), "type": "server_error"}})),
                        true,
                    ),
                    None => (
                        frame(
                            json!({"error": {"message": "the completion stopped before its end", "type": "server_error"}}),
                        ),
                        true,
                    ),
                };
                Some((Ok::<_, Infallible>(bytes), (None, rx, runner, done)))
            }
        },
    );
    (sse_response(Body::from_stream(frames)), route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_llama_vim_s_request() {
        let body = json!({
            "input_prefix": "def f(", "input_suffix": ")\n", "prompt": "x",
            "input_extra": [{"filename": "a.py", "text": "A = 1\n"}, {"text": "B"}],
            "n_predict": 128, "n_indent": 4, "top_k": 40, "top_p": 0.99, "stream": false,
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": true,
            "t_max_prompt_ms": 500, "t_max_predict_ms": -1, "stop": ["\n\n"],
            "response_fields": ["content", "timings/prompt_n"], "id_slot": 2,
        });
        let d = decode(body.to_string().as_bytes(), None).unwrap();
        let r = &d.request;
        assert_eq!((r.n_predict, r.n_indent), (Some(128), 4));
        assert_eq!(r.input_extra[1].filename, "tmp");
        assert_eq!((r.t_max_prompt_ms, r.t_max_predict_ms), (Some(500), None));
        assert_eq!(
            (r.params.top_k, r.params.temperature, r.params.min_p),
            (40, 1.0, 0.0)
        );
        assert_eq!(r.session.as_deref(), Some("slot:2"));
        let d = decode(
            br#"{"input_prefix":"a","n_predict":-1}"#,
            Some("header:e".into()),
        )
        .unwrap();
        assert_eq!(d.request.n_predict, None);
        assert_eq!(d.request.session.as_deref(), Some("header:e"));
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, param) in [
            (r#"{"input_prefix": 3}"#, "input_prefix"),
            (r#"{"input_extra": [{"filename": "a"}]}"#, "input_extra"),
            (r#"{"n_predict": -5}"#, "n_predict"),
            (r#"{"n_indent": "x"}"#, "n_indent"),
            (r#"{"top_p": 2}"#, "top_p"),
            (r#"{"samplers": ["mirostat"]}"#, "samplers"),
            (r#"{"grammar": "root ::= x"}"#, "grammar"),
            (r#"{"cache_prompt": 1}"#, "cache_prompt"),
        ] {
            let e = decode(body.as_bytes(), None).unwrap_err();
            let text = format!("{e:?}");
            assert!(text.contains(param), "{body}: {text}");
        }
    }

    #[test]
    fn response_fields_pick_nested_values() {
        let outcome = InfillOutcome {
            content: "x".into(),
            prompt_tokens: 10,
            cached_tokens: 7,
            ..InfillOutcome::default()
        };
        let v = only_fields(
            encode(&outcome, "m", -1, true),
            &["content".into(), "timings/prompt_n".into()],
        );
        assert_eq!(v, json!({"content": "x", "timings/prompt_n": 3}));
    }
}
