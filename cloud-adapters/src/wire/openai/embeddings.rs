//! OpenAI's `/v1/embeddings`: the request decoded (text, texts, token ids, one list of token
//! ids per input), the answer encoded with float or base64 vectors, and the usage read from an
//! upstream's answer.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::error::WireError;
use crate::wire::json::{self, opt};

/// Most inputs in one request, as in OpenAI's API.
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// What to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingInput {
    /// One text per input.
    Texts(Vec<String>),
    /// One list of token ids per input.
    Tokens(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// How many inputs.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Texts(t) => t.len(),
            EmbeddingInput::Tokens(t) => t.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    #[default]
    Float,
    /// The little-endian `f32` bytes in base64.
    Base64,
}

/// An `/v1/embeddings` request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    /// The model asked for.
    pub model: String,
    /// The inputs.
    pub input: EmbeddingInput,
    /// How the vectors come back.
    pub encoding_format: EncodingFormat,
    /// The vector length asked for, where the model can shorten its vectors.
    pub dimensions: Option<u32>,
    /// The body as the client sent it, for an upstream of this format.
    pub body: Map<String, Value>,
}

/// Decodes a client's `/v1/embeddings` body.
pub fn decode_embeddings_request(body: &[u8]) -> Result<EmbeddingsRequest, WireError> {
    let obj = json::parse_object(body)?;
    let model = json::req_str(&obj, "model", "model")?;
    let input = match opt(&obj, "input") {
        None => return Err(WireError::missing("input")),
        Some(v) => decode_input(v)?,
    };
    if input.is_empty() {
        return Err(WireError::invalid_value(
            "input",
            "'input' must not be empty",
        ));
    }
    if input.len() > MAX_EMBEDDING_INPUTS {
        return Err(WireError::invalid_value(
            "input",
            format!(
                "'input' has {} items; at most {MAX_EMBEDDING_INPUTS} are allowed",
                input.len()
            ),
        ));
    }
    let encoding_format = match json::opt_str_ref(&obj, "encoding_format", "encoding_format")? {
        None | Some("float") => EncodingFormat::Float,
        Some("base64") => EncodingFormat::Base64,
        Some(other) => {
            return Err(WireError::invalid_value(
                "encoding_format",
                format!("invalid 'encoding_format' '{other}': expected float or base64"),
            ));
        }
    };
    let dimensions = json::opt_u32(&obj, "dimensions", "dimensions")?;
    if dimensions == Some(0) {
        return Err(WireError::invalid_value(
            "dimensions",
            "'dimensions' must be at least 1",
        ));
    }
    json::opt_str(&obj, "user", "user")?;
    Ok(EmbeddingsRequest {
        model,
        input,
        encoding_format,
        dimensions,
        body: obj,
    })
}

fn decode_input(value: &Value) -> Result<EmbeddingInput, WireError> {
    let empty_text = |param: &str| {
        WireError::invalid_value(param, format!("'{param}' must not be an empty string"))
    };
    match value {
        Value::String(s) if s.is_empty() => Err(empty_text("input")),
        Value::String(s) => Ok(EmbeddingInput::Texts(vec![s.clone()])),
        Value::Array(items) => match items.first() {
            None => Ok(EmbeddingInput::Texts(Vec::new())),
            Some(Value::String(_)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) if s.is_empty() => Err(empty_text(&format!("input[{i}]"))),
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(WireError::invalid_type(&format!("input[{i}]"), "a string")),
                })
                .collect::<Result<_, _>>()
                .map(EmbeddingInput::Texts),
            Some(Value::Number(_)) => Ok(EmbeddingInput::Tokens(vec![token_ids(items, "input")?])),
            Some(Value::Array(_)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let param = format!("input[{i}]");
                    match v {
                        Value::Array(ids) if !ids.is_empty() => token_ids(ids, &param),
                        Value::Array(_) => Err(WireError::invalid_value(
                            &param,
                            format!("'{param}' must not be empty"),
                        )),
                        _ => Err(WireError::invalid_type(&param, "an array of token ids")),
                    }
                })
                .collect::<Result<_, _>>()
                .map(EmbeddingInput::Tokens),
            Some(_) => Err(WireError::invalid_type(
                "input[0]",
                "a string, a token id or an array of token ids",
            )),
        },
        _ => Err(WireError::invalid_type(
            "input",
            "a string, an array of strings, an array of token ids or an array of such arrays",
        )),
    }
}

fn token_ids(items: &[Value], param: &str) -> Result<Vec<u32>, WireError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| WireError::invalid_type(&format!("{param}[{i}]"), "a token id"))
        })
        .collect()
}

/// The `/v1/embeddings` answer: one `embedding` object per vector, in input order.
pub fn encode_embeddings_response<V: AsRef<[f32]>>(
    vectors: &[V],
    model: &str,
    prompt_tokens: u64,
    format: EncodingFormat,
) -> Bytes {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match format {
                EncodingFormat::Float => json!(v.as_ref()),
                EncodingFormat::Base64 => Value::String(base64_f32(v.as_ref())),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Bytes::from(body.to_string())
}

/// The input tokens an upstream's embeddings answer reports (0 when it reports none).
pub fn embeddings_prompt_tokens(body: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("usage")?.get("prompt_tokens")?.as_u64())
        .unwrap_or(0)
}

/// The little-endian bytes of `values` in standard base64, as OpenAI writes base64 vectors.
pub fn base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_in_every_shape() {
        let r = decode_embeddings_request(br#"{"model":"m","input":"hi"}"#).unwrap();
        assert_eq!(r.input, EmbeddingInput::Texts(vec!["hi".into()]));
        let r = decode_embeddings_request(br#"{"model":"m","input":[1,2,3]}"#).unwrap();
        assert_eq!(r.input, EmbeddingInput::Tokens(vec![vec![1, 2, 3]]));
        let r = decode_embeddings_request(
            br#"{"model":"m","input":[[1],[2,3]],"encoding_format":"base64","dimensions":8}"#,
        )
        .unwrap();
        assert_eq!(r.input, EmbeddingInput::Tokens(vec![vec![1], vec![2, 3]]));
        assert_eq!(r.encoding_format, EncodingFormat::Base64);
        assert_eq!(r.dimensions, Some(8));
        for (body, param) in [
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":""}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":["a",""]}"#, "input[1]"),
            (r#"{"model":"m","input":["a",1]}"#, "input[1]"),
            (r#"{"model":"m","input":[1,-1]}"#, "input[1]"),
            (
                r#"{"model":"m","input":"a","encoding_format":"int8"}"#,
                "encoding_format",
            ),
            (r#"{"model":"m","input":"a","dimensions":0}"#, "dimensions"),
        ] {
            let err = decode_embeddings_request(body.as_bytes()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {err:?}");
        }
    }

    #[test]
    fn base64_is_the_little_endian_floats() {
        // 1.0f32 is 00 00 80 3f.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
        let body = encode_embeddings_response(&[vec![1.0f32]], "m", 3, EncodingFormat::Base64);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"][0]["embedding"], "AACAPw==");
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(embeddings_prompt_tokens(&body), 3);
    }
}
