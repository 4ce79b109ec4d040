//! Small helpers for walking decoded JSON with errors that name the parameter.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::error::WireError;

/// A parameter's name for error messages, built only when an error needs it: decoding a valid
/// request formats no names (`messages[3].content` is a closure until then).
pub(crate) trait Param {
    /// The name, e.g. `messages[0].role`.
    fn name(&self) -> Cow<'_, str>;
}

impl Param for str {
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl Param for String {
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl<F: Fn() -> String> Param for F {
    fn name(&self) -> Cow<'_, str> {
        Cow::Owned(self())
    }
}

/// Parses a request body that must be a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, WireError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(WireError::new(
            "invalid_json",
            None,
            "the request body must be a JSON object",
        )),
        Err(e) => Err(WireError::new(
            "invalid_json",
            None,
            format!("could not parse the JSON body of the request: {e}"),
        )),
    }
}

/// `value` when it lies in `min..=max`, else the invalid-value error naming `param`.
pub(crate) fn within<T>(
    value: Option<T>,
    param: &str,
    min: T,
    max: T,
) -> Result<Option<T>, WireError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(WireError::invalid_value(
            param,
            format!("'{param}' must be between {min} and {max}, got {v}"),
        )),
        v => Ok(v),
    }
}

/// A token limit, which must allow at least one token.
pub(crate) fn token_limit(value: Option<u32>, param: &str) -> Result<Option<u32>, WireError> {
    if value == Some(0) {
        return Err(WireError::invalid_value(
            param,
            format!("'{param}' must be at least 1"),
        ));
    }
    Ok(value)
}

/// A field that may be absent or `null`.
pub(crate) fn opt<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

pub(crate) fn opt_str(
    obj: &Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<Option<String>, WireError> {
    Ok(opt_str_ref(obj, key, param)?.map(str::to_owned))
}

/// A string field that may be absent, borrowed: for fields only compared, never kept.
pub(crate) fn opt_str_ref<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<Option<&'a str>, WireError> {
    match opt(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(WireError::invalid_type(&param.name(), "a string")),
    }
}

/// A required string field, borrowed.
pub(crate) fn req_str_ref<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<&'a str, WireError> {
    opt_str_ref(obj, key, param)?.ok_or_else(|| WireError::missing(&param.name()))
}

/// Takes a required string field out of `obj`, moving the text instead of copying it.
pub(crate) fn take_req_str(
    obj: &mut Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<String, WireError> {
    match take(obj, key) {
        None => Err(WireError::missing(&param.name())),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(WireError::invalid_type(&param.name(), "a string")),
    }
}

/// Takes a field that may be absent or `null` out of `obj`.
pub(crate) fn take(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    obj.remove(key).filter(|v| !v.is_null())
}

pub(crate) fn opt_bool(
    obj: &Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<Option<bool>, WireError> {
    match opt(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(WireError::invalid_type(&param.name(), "a boolean")),
    }
}

pub(crate) fn opt_f32(
    obj: &Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<Option<f32>, WireError> {
    match opt(obj, key) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(|f| Some(f as f32))
            .ok_or_else(|| WireError::invalid_type(&param.name(), "a number")),
        Some(_) => Err(WireError::invalid_type(&param.name(), "a number")),
    }
}

pub(crate) fn opt_u64(
    obj: &Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<Option<u64>, WireError> {
    match opt(obj, key) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            None if n.as_i64().is_some() => Err(WireError::invalid_value(
                &param.name(),
                format!("'{}' must not be negative", param.name()),
            )),
            None => Err(WireError::invalid_type(&param.name(), "an integer")),
        },
        Some(_) => Err(WireError::invalid_type(&param.name(), "an integer")),
    }
}

pub(crate) fn opt_u32(
    obj: &Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<Option<u32>, WireError> {
    match opt_u64(obj, key, param)? {
        None => Ok(None),
        Some(v) => u32::try_from(v).map(Some).map_err(|_| {
            WireError::invalid_value(&param.name(), format!("'{}' is too large", param.name()))
        }),
    }
}

/// `stop`: a string or an array of strings.
pub(crate) fn stop_list(
    obj: &Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<Vec<String>, WireError> {
    match opt(obj, key) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(WireError::invalid_type(
                    &format!("{}[{i}]", param.name()),
                    "a string",
                )),
            })
            .collect(),
        Some(_) => Err(WireError::invalid_type(
            &param.name(),
            "a string or an array of strings",
        )),
    }
}

pub(crate) fn as_object<'a>(
    value: &'a Value,
    param: &(impl Param + ?Sized),
) -> Result<&'a Map<String, Value>, WireError> {
    value
        .as_object()
        .ok_or_else(|| WireError::invalid_type(&param.name(), "an object"))
}

pub(crate) fn as_array<'a>(
    value: &'a Value,
    param: &(impl Param + ?Sized),
) -> Result<&'a Vec<Value>, WireError> {
    value
        .as_array()
        .ok_or_else(|| WireError::invalid_type(&param.name(), "an array"))
}

/// A required string field.
pub(crate) fn req_str(
    obj: &Map<String, Value>,
    key: &str,
    param: &(impl Param + ?Sized),
) -> Result<String, WireError> {
    req_str_ref(obj, key, param).map(str::to_owned)
}

/// Serializes to a `String`; serializing our own plain structs cannot fail.
pub(crate) fn to_string<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Tool-call arguments as JSON; text that is not JSON is kept as a JSON string.
pub(crate) fn arguments_value(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Map::new());
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

/// Tool-call arguments as text (the inverse of [`arguments_value`]).
pub(crate) fn arguments_text(input: &Value) -> Cow<'_, str> {
    match input {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        other => Cow::Owned(to_string(other)),
    }
}
