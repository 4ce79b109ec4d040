//! Shared helpers for the end-to-end tests: starting Tandem in-process on port 0 in front of the
//! mock upstream, an HTTP client, and SSE reading.

#![forbid(unsafe_code)]

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{Fixtures, MockConfig, MockHandle, MockUpstream};

/// Tandem in front of a mock upstream.
pub struct Harness {
    /// The gateway.
    pub gateway: Gateway,
    /// The mock upstream (OpenAI and Anthropic wire formats).
    pub mock: MockHandle,
    /// A client for requests to the gateway.
    pub client: reqwest::Client,
    /// The embedded store's directory when the config names none (each test its own state).
    pub state_dir: tempfile::TempDir,
}

/// The config used by most tests: an OpenAI-compatible and an Anthropic backend on the mock,
/// plus `extra` TOML (limits, server, routes).
pub fn config_text(mock_base: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra}

[backends.openai]
kind = "openai-compatible"
base_url = "{mock_base}"
api_key_env = "MOCK_OPENAI_KEY"
models = {{ "gpt" = "gpt-4o-mini", "gpt-tool" = "tool", "gpt-cut" = "cut", "gpt-error" = "error", "gpt-ratelimit" = "ratelimit", "gpt-slow" = "slow", "gpt-stall" = "stall", "gpt-delay" = "delay-3000", "gpt-flaky" = "flaky", "gpt-400" = "status-400", "gpt-long" = "context-length" }}
price = {{ input = 1.0, output = 2.0, cached_input = 0.5 }}

[backends.anthropic]
kind = "anthropic"
base_url = "{mock_base}"
api_key_env = "MOCK_ANTHROPIC_KEY"
models = {{ "claude" = "claude-3-5-haiku", "claude-tool" = "tool", "claude-cut" = "cut", "claude-overloaded" = "overloaded" }}

[backends.down]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"
connect_timeout_ms = 500
models = {{ "down-only" = "x" }}

[routes."with-fallback"]
backends = ["down", "openai"]
fallback = true

[routes."error-then-anthropic"]
backends = ["openai", "anthropic"]
fallback = true
"#
    )
}

/// An Azure backend `azure` on `mock` (the resource's root at the mock's address, `api-version`
/// 2024-10-21, the mock's key): model `gpt-azure` on deployment `prod-4o-mini`.
pub fn azure_backend(mock: &MockHandle) -> String {
    format!(
        r#"
[backends.azure]
kind = "azure"
base_url = "http://{}"
api_version = "2024-10-21"
api_key_env = "MOCK_OPENAI_KEY"
models = {{ "gpt-azure" = "prod-4o-mini" }}
"#,
        mock.addr()
    )
}

/// The environment the tests' config reads (no process env is touched).
pub fn test_env() -> MapEnv {
    MapEnv::from_pairs([
        ("MOCK_OPENAI_KEY", "sk-mock"),
        ("MOCK_ANTHROPIC_KEY", "ak-mock"),
    ])
}

/// The `/metrics` text of the gateway at `base` (`http://127.0.0.1:PORT`), or why it could not
/// be read.
pub async fn metrics_of(client: &reqwest::Client, base: &str) -> String {
    match client.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("metrics unreachable: {e}"),
    }
}

/// An answer's `x-tandem-route` (empty when it has none).
pub fn route_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-tandem-route")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A client that keeps no connection pool surprises: plain HTTP on loopback.
pub fn client() -> reqwest::Client {
    tandem_cloud_adapters::client::install_crypto_provider();
    match reqwest::Client::builder()
        .read_timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => panic!("http client: {e}"),
    }
}

impl Harness {
    /// Starts a mock upstream and Tandem with [`config_text`] plus `extra`.
    pub async fn start(extra: &str) -> anyhow::Result<Self> {
        Self::start_with(extra, MockConfig::default()).await
    }

    /// Like [`Harness::start`] with mock settings.
    pub async fn start_with(extra: &str, mock_config: MockConfig) -> anyhow::Result<Self> {
        Self::start_around(mock_config, |_| extra.to_owned()).await
    }

    /// Like [`Harness::start_with`], with the extra TOML written once the mock is up, for
    /// backends that need its address in a form other than [`MockHandle::base_url`].
    pub async fn start_around(
        mock_config: MockConfig,
        extra: impl FnOnce(&MockHandle) -> String,
    ) -> anyhow::Result<Self> {
        let (_addr, mock) = MockUpstream::start_with(Fixtures::builtin(), mock_config).await?;
        let text = config_text(&mock.base_url(), &extra(&mock));
        let mut config = Config::from_toml_str(&text, &test_env())?;
        let state_dir = tempfile::tempdir()?;
        config
            .controls
            .store
            .path
            .get_or_insert_with(|| state_dir.path().join("store.log"));
        let options = GatewayOptions {
            local: LocalLoad::Offline,
            quiet: true,
            ..GatewayOptions::default()
        };
        let gateway = Gateway::start(config, options).await?;
        Ok(Self {
            gateway,
            mock,
            client: client(),
            state_dir,
        })
    }

    /// Tandem with the whole config `text` in front of a running `mock` (a restart keeps the
    /// mock and its counts, and the config's own store: nothing is redirected to a temporary one).
    pub async fn start_on(mock: MockHandle, text: &str) -> anyhow::Result<Self> {
        let config = Config::from_toml_str(text, &test_env())?;
        let options = GatewayOptions {
            local: LocalLoad::Offline,
            quiet: true,
            ..GatewayOptions::default()
        };
        let gateway = Gateway::start(config, options).await?;
        Ok(Self {
            gateway,
            mock,
            client: client(),
            state_dir: tempfile::tempdir()?,
        })
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_of(&self.client, &self.gateway.url()).await
    }

    /// POSTs JSON and returns status, headers and the body as JSON (or a string value).
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let r = self.client.post(self.url(path)).json(body).send().await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, headers, json))
    }

    /// POSTs raw bytes with a content type.
    pub async fn post_raw(&self, path: &str, body: &'static str) -> anyhow::Result<(u16, Value)> {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// POSTs a streaming request and returns status, headers and the SSE events (event name, data).
    pub async fn post_stream(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Vec<SseEvent>)> {
        let (status, headers, text) = self.post_stream_text(path, body).await?;
        Ok((status, headers, parse_sse(&text)))
    }

    /// Waits up to `limit` for the mock to see a response body abandoned before its end (the
    /// gateway dropping its upstream request); whether it did.
    pub async fn upstream_dropped_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.mock.disconnect_count() == 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// POSTs a streaming request and returns status, headers and the body as sent, for checks
    /// of the SSE framing itself.
    pub async fn post_stream_text(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, String)> {
        let r = self.client.post(self.url(path)).json(body).send().await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await?;
        Ok((status, headers, text))
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// `event:` name, if any.
    pub event: Option<String>,
    /// `data:` payload.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON (`Null` when it is not JSON, like `[DONE]`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// The text of a streamed OpenAI chat answer: every chunk's `delta.content`, joined.
pub fn streamed_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter_map(|e| {
            e.json()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Splits an SSE body into events.
pub fn parse_sse(text: &str) -> Vec<SseEvent> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
                }
            }
            (!data.is_empty() || event.is_some()).then(|| SseEvent {
                event,
                data: data.join("\n"),
            })
        })
        .collect()
}

/// Reads a streaming response's first chunk and then drops it (a client going away).
pub async fn read_first_chunk_and_drop(
    response: reqwest::Response,
) -> anyhow::Result<bytes::Bytes> {
    let mut stream = response.bytes_stream();
    let first = stream
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("empty stream"))??;
    drop(stream);
    Ok(first)
}

/// The cached smollm2-135m on its engine thread (2 threads, 4096 KV tokens); panics naming the
/// fetch command when the model is not in the cache.
pub async fn local_engine() -> tandem_local_model::Engine {
    use tandem_artifacts::{ProcessEnv, default_cache_root, locate};
    let root = default_cache_root(&ProcessEnv);
    let Some(paths) = locate(&root, "smollm2-135m") else {
        panic!(
            "smollm2-135m is not in the cache at {} (run `tandem models fetch smollm2-135m`)",
            root.display()
        )
    };
    let path = paths.primary().to_path_buf();
    let started = tokio::task::spawn_blocking(move || {
        tandem_local_model::Engine::start(
            tandem_local_model::EngineConfig::new(path)
                .threads(2)
                .kv_cache_tokens(4096),
        )
    })
    .await;
    match started {
        Ok(Ok(engine)) => engine,
        Ok(Err(e)) => panic!("the engine did not start: {e}"),
        Err(e) => panic!("the engine loader failed: {e}"),
    }
}
