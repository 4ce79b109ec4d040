//! The cloud providers: one generic HTTP provider ([`generic::HttpProvider`]) over a wire
//! format's [`codec::Codec`], and one file per API that configures it (`openai_compatible`,
//! `anthropic`), plus Azure's per-deployment pick, the named OpenAI-format presets and the dummy.

pub mod anthropic;
pub mod azure;
pub mod codec;
pub mod dummy;
pub mod generic;
pub mod openai_compatible;
pub mod presets;

use http::header::{HeaderMap, HeaderName, HeaderValue};

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

/// An API key as a sensitive header value (kept out of logs and debug output).
pub(crate) fn key_value(provider: &str, value: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| Error::Config(format!("{provider}: api_key is not a valid header value")))?;
    value.set_sensitive(true);
    Ok(value)
}

fn is_secret(name: &HeaderName) -> bool {
    matches!(name.as_str(), "authorization" | "api-key" | "x-api-key")
}

/// `base_url` without trailing slashes, after checking its scheme.
pub(crate) fn checked_base<'a>(provider: &str, base_url: &'a str) -> Result<&'a str> {
    let base = base_url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::Config(format!(
            "{provider}: base_url must start with http:// or https://, got '{base_url}'"
        )));
    }
    Ok(base)
}

/// An endpoint's URL, parsed once when the provider is built rather than on every request.
pub(crate) fn endpoint(provider: &str, url: String) -> Result<http::Uri> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::Config(format!("{provider}: invalid endpoint url '{url}': {e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(Error::Config(format!(
            "{provider}: invalid endpoint url '{url}': no host"
        )));
    }
    Ok(uri)
}
