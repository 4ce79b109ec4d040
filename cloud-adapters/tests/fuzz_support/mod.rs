//! Strategies shared by the fuzz suites: JSON text that is valid but odd (deep nesting, huge and
//! negative numbers, wrong types, unicode and escapes, missing fields), arbitrary bytes, and the
//! places a byte stream is split. Each suite runs proptest's default 256 cases unless
//! `PROPTEST_CASES` says otherwise (`benches/fuzz.sh` runs them long).

#![allow(dead_code)]

use proptest::prelude::*;

/// Field names of both request formats and their parts, so that generated objects often hit a
/// decoder's paths.
pub const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "name",
    "tools",
    "tool_choice",
    "function",
    "arguments",
    "parameters",
    "tool_calls",
    "tool_call_id",
    "id",
    "image_url",
    "url",
    "detail",
    "source",
    "media_type",
    "data",
    "input",
    "tool_use_id",
    "is_error",
    "system",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stop_sequences",
    "stream",
    "stream_options",
    "include_usage",
    "n",
    "logprobs",
    "top_logprobs",
    "response_format",
    "parallel_tool_calls",
    "user",
    "metadata",
    "user_id",
    "prompt",
    "suffix",
    "echo",
    "best_of",
    "input_schema",
    "description",
    "cache_control",
    "disable_parallel_tool_use",
    "thinking",
    "refusal",
    "input_audio",
    "file",
    "choices",
    "delta",
    "finish_reason",
    "index",
    "usage",
    "error",
    "message",
    "content_block",
    "stop_reason",
];

/// Role and part type values, valid and not.
pub const WORDS: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
    "text",
    "image_url",
    "image",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "input_audio",
    "file",
    "document",
    "base64",
    "url",
    "auto",
    "any",
    "none",
    "required",
    "json_object",
    "json_schema",
    "object",
    "stop",
    "length",
    "tool_calls",
    "end_turn",
    "max_tokens",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "text_delta",
    "input_json_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
    "",
];

/// A JSON string literal: plain, a known word, unicode, escapes (a lone surrogate among them).
pub fn string_lit() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(|w| format!("{w:?}")),
        2 => any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
        1 => Just(r#""\u0000\n\t\"\\\/é😀\ud83d\ude00""#.to_owned()),
        1 => "[a-z\u{80}-\u{10FFFF}]{0,64}".prop_map(|s| serde_json::Value::String(s).to_string()),
        1 => (0usize..20_000).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
    ]
}

/// A JSON number literal: ordinary, huge, negative, fractional, exponent.
pub fn number_lit() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0i64..300).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        1 => prop::sample::select(&[
            "0", "-0", "1e300", "-1e300", "1e-400", "18446744073709551616",
            "340282366920938463463374607431768211456", "4294967296", "4294967295", "2.5", "-1",
            "0.0", "1E2", "9007199254740993", "123456789012345678901234567890.5",
        ][..])
        .prop_map(str::to_owned),
    ]
}

/// A scalar JSON literal.
pub fn scalar_lit() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => string_lit(),
        3 => number_lit(),
        1 => Just("true".to_owned()),
        1 => Just("false".to_owned()),
        1 => Just("null".to_owned()),
    ]
}

/// Literals JSON parsers refuse: a lone surrogate, a number past f64, nesting past serde_json's
/// recursion limit, a bare word.
pub fn invalid_lit() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#""\ud800""#.to_owned()),
        Just("1e400".to_owned()),
        Just("NaN".to_owned()),
        Just("'x'".to_owned()),
        (129usize..2000).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d))),
    ]
}

/// `depth` nested arrays or objects around a scalar, within serde_json's recursion limit.
pub fn deep_lit() -> impl Strategy<Value = String> {
    (1usize..120, any::<bool>(), scalar_lit()).prop_map(|(depth, arrays, inner)| {
        if arrays {
            format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            format!(
                "{}{inner}{}",
                r#"{"content":"#.repeat(depth),
                "}".repeat(depth)
            )
        }
    })
}

/// Any JSON text, objects keyed mostly by [`KEYS`].
pub fn json_lit() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![6 => scalar_lit(), 1 => deep_lit()];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key(), inner), 0..8).prop_map(|fields| object(&fields)),
        ]
    })
}

/// A key: mostly one of [`KEYS`].
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
        1 => any::<String>(),
    ]
}

/// A JSON object from keys and literal values (a key given twice stays twice).
pub fn object(fields: &[(String, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k.clone())))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A content part: a typed object whose fields are right or odd.
pub fn part_lit() -> impl Strategy<Value = String> {
    (
        prop::sample::select(WORDS),
        prop::collection::vec(
            (key(), prop_oneof![3 => scalar_lit(), 1 => json_lit()]),
            0..4,
        ),
    )
        .prop_map(|(kind, mut fields)| {
            fields.insert(0, ("type".to_owned(), format!("{kind:?}")));
            object(&fields)
        })
}

/// A text part, right but for odd text.
pub fn text_part_lit() -> impl Strategy<Value = String> {
    string_lit().prop_map(|t| format!(r#"{{"type":"text","text":{t}}}"#))
}

/// A message: a role (mostly one of `roles`) and content (a string, parts, or anything).
pub fn message_lit(roles: &'static [&'static str]) -> impl Strategy<Value = String> {
    let content = prop_oneof![
        6 => string_lit(),
        3 => prop::collection::vec(text_part_lit(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
        2 => prop::collection::vec(prop_oneof![text_part_lit(), part_lit()], 0..4)
            .prop_map(|v| format!("[{}]", v.join(","))),
        1 => json_lit(),
    ];
    let role = prop_oneof![
        12 => prop::sample::select(roles).prop_map(|r| format!("{r:?}")),
        2 => prop::sample::select(WORDS).prop_map(|w| format!("{w:?}")),
        1 => json_lit(),
    ];
    (
        role,
        prop::option::weighted(0.95, content),
        prop_oneof![
            6 => Just(Vec::new()),
            1 => prop::collection::vec((key(), json_lit()), 0..3),
        ],
    )
        .prop_map(|(role, content, extra)| {
            let mut fields = vec![("role".to_owned(), role)];
            if let Some(c) = content {
                fields.push(("content".to_owned(), c));
            }
            fields.extend(extra);
            object(&fields)
        })
}

/// A request body that is mostly right: `model` and `messages` with `roles` (each may be
/// missing or odd), `required` fields (name, value) mostly present, plus fields from [`KEYS`]
/// with any value.
fn request_with(
    roles: &'static [&'static str],
    required: &'static [(&'static str, &'static str)],
) -> impl Strategy<Value = String> {
    (
        prop::option::weighted(0.95, prop_oneof![9 => Just("\"m\"".to_owned()), 1 => json_lit()]),
        prop::option::weighted(
            0.95,
            prop_oneof![
                8 => prop::collection::vec(message_lit(roles), 1..5).prop_map(|v| format!("[{}]", v.join(","))),
                1 => json_lit(),
            ],
        ),
        prop::collection::vec(prop::option::weighted(0.95, prop_oneof![4 => Just(None), 1 => json_lit().prop_map(Some)]), required.len()),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => prop::collection::vec((key(), prop_oneof![2 => scalar_lit(), 1 => json_lit()]), 0..4),
        ],
    )
        .prop_map(move |(model, messages, required_values, extra)| {
            let mut fields = Vec::new();
            if let Some(m) = model {
                fields.push(("model".to_owned(), m));
            }
            if let Some(m) = messages {
                fields.push(("messages".to_owned(), m));
            }
            for ((name, good), value) in required.iter().zip(required_values) {
                if let Some(value) = value {
                    fields.push(((*name).to_owned(), value.unwrap_or_else(|| (*good).to_owned())));
                }
            }
            fields.extend(extra);
            object(&fields)
        })
}

/// A chat completions body (OpenAI), mostly right.
pub fn request_lit() -> impl Strategy<Value = String> {
    request_with(&["user", "assistant", "system", "developer"], &[])
}

/// A messages body (Anthropic), mostly right.
pub fn messages_request_lit() -> impl Strategy<Value = String> {
    request_with(
        &["user", "assistant"],
        &[("max_tokens", "256"), ("system", "\"be brief\"")],
    )
}

/// Arbitrary bytes, or JSON text cut short or with a byte changed.
pub fn bytes_or_broken(text: BoxedStrategy<String>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..512),
        1 => (text.clone(), invalid_lit(), any::<prop::sample::Index>()).prop_map(|(t, bad, at)| {
            // A refused literal in place of a value (after a colon) or spliced in anywhere.
            let colons: Vec<usize> = t.match_indices(':').map(|(i, _)| i + 1).collect();
            let i = if colons.is_empty() { at.index(t.len() + 1) } else { colons[at.index(colons.len())] };
            let mut out = t[..i].to_owned();
            out.push_str(&bad);
            out.push_str(&t[i..]);
            out.into_bytes()
        }),
        2 => (text, any::<prop::sample::Index>(), any::<u8>(), any::<bool>()).prop_map(
            |(t, at, byte, cut)| {
                let mut bytes = t.into_bytes();
                if bytes.is_empty() {
                    return bytes;
                }
                let i = at.index(bytes.len());
                if cut {
                    bytes.truncate(i);
                } else {
                    bytes[i] = byte;
                }
                bytes
            }
        ),
    ]
}

/// `bytes` cut at the given points (indices reduced modulo its length, duplicates dropped).
pub fn split_at(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}
