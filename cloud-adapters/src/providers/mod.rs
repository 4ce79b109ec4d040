//! One file per cloud provider.

pub mod anthropic;
pub mod dummy;
pub mod openai_compatible;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::error::{Error, Result};

/// Builds a header map, naming the provider and header in errors.
pub(crate) fn header_map(provider: &str, headers: &[(String, String)]) -> Result<HeaderMap> {
    let mut map = HeaderMap::with_capacity(headers.len() + 2);
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::Config(format!("{provider}: invalid header name '{name}'")))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| Error::Config(format!("{provider}: invalid value for header '{name}'")))?;
        if is_secret(&name) {
            value.set_sensitive(true);
        }
        map.insert(name, value);
    }
    Ok(map)
}

fn is_secret(name: &HeaderName) -> bool {
    matches!(name.as_str(), "authorization" | "api-key" | "x-api-key")
}

/// `base` without trailing slashes.
pub(crate) fn trim_base(base: &str) -> &str {
    base.trim_end_matches('/')
}
