//! Providers over HTTP against the loopback mock upstream replaying the recorded fixtures.

// Helpers outside `#[test]` functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use tandem_cloud_adapters::client::HttpConfig;
use tandem_cloud_adapters::providers::anthropic::{Anthropic, AnthropicConfig};
use tandem_cloud_adapters::providers::dummy::DummyProvider;
use tandem_cloud_adapters::providers::openai_compatible::{
    Flavour, OpenAiCompatible, OpenAiCompatibleConfig,
};
use tandem_cloud_adapters::{
    ChatEvent, ChatRequest, FinishReason, Message, Provider, ProviderErrorKind, Role, Tool,
    collect_response, events_text as text_of,
};
use tandem_lab::mock::{Fixtures, MockHandle, MockUpstream};

fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![
            Message::text(Role::System, "Be brief."),
            Message::text(Role::User, "Say hello"),
        ],
        ..ChatRequest::default()
    }
}

async fn mock() -> MockHandle {
    MockUpstream::start(Fixtures::builtin()).await.unwrap().1
}

fn openai(mock: &MockHandle) -> OpenAiCompatible {
    let mut config = OpenAiCompatibleConfig::new("oa", mock.base_url());
    config.api_key = Some("sk-test".into());
    config.extra_headers = vec![("OpenAI-Organization".into(), "org-1".into())];
    OpenAiCompatible::new(config).unwrap()
}

fn anthropic(mock: &MockHandle) -> Anthropic {
    let mut config = AnthropicConfig::new("an", format!("http://{}", mock.addr()));
    config.api_key = Some("sk-ant-test".into());
    Anthropic::new(config).unwrap()
}

async fn collect(p: &dyn Provider, req: &ChatRequest) -> Vec<ChatEvent> {
    p.chat_stream(req).await.unwrap().collect().await
}

#[tokio::test]
async fn openai_chat_sends_key_headers_and_parses_the_answer() {
    let mock = mock().await;
    let p = openai(&mock);
    let r = p.chat(&request("gpt-4o-mini")).await.unwrap();
    assert_eq!(r.text, "Hello! How can I help you today?");
    assert_eq!(r.usage.cached_prompt_tokens, 1024);
    let sent = &mock.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(sent.header("openai-organization"), Some("org-1"));
    let body = sent.json().unwrap();
    assert_eq!(
        body["messages"][0],
        serde_json::json!({"role": "system", "content": "Be brief."})
    );
    assert!(body.get("stream").is_none());
}

#[tokio::test]
async fn openai_stream_always_asks_for_usage() {
    let mock = mock().await;
    let p = openai(&mock);
    let req = request("gpt-4o-mini"); // the client did not ask for usage
    let events = collect(&p, &req).await;
    assert_eq!(text_of(&events), "Hello! How can I help you today?");
    assert!(
        matches!(events.last(), Some(ChatEvent::Usage(u)) if u.prompt_tokens == 1117 && u.cached_prompt_tokens == 1024)
    );
    let body = mock.requests()[0].json().unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn openai_tool_stream_and_fold() {
    let mock = mock().await;
    let p = openai(&mock);
    let mut req = request("gpt-tool");
    req.tools = vec![Tool {
        name: "get_weather".into(),
        description: None,
        parameters: serde_json::json!({"type": "object"}),
    }];
    let r = collect_response(p.chat_stream(&req).await.unwrap())
        .await
        .unwrap();
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        r.tool_calls[0].arguments,
        "{\"location\":\"Paris, France\"}"
    );
    assert_eq!(
        mock.requests()[0].json().unwrap()["tools"][0]["function"]["name"],
        "get_weather"
    );
}

#[tokio::test]
async fn azure_flavour_uses_deployment_path_and_api_key_header() {
    let mock = mock().await;
    let mut config = OpenAiCompatibleConfig::new("az", format!("http://{}/", mock.addr()));
    config.api_key = Some("azure-key".into());
    config.flavour = Flavour::Azure {
        deployment: "gpt4o".into(),
        api_version: "2024-10-21".into(),
    };
    let p = OpenAiCompatible::new(config).unwrap();
    p.chat(&request("gpt-4o")).await.unwrap();
    let sent = &mock.requests()[0];
    assert_eq!(
        sent.path,
        "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(sent.header("api-key"), Some("azure-key"));
    assert_eq!(sent.header("authorization"), None);
}

#[tokio::test]
async fn upstream_errors_carry_status_and_retryability() {
    let mock = mock().await;
    let p = openai(&mock);
    let e = p.chat(&request("ratelimit")).await.unwrap_err();
    assert_eq!((e.status, e.retryable), (Some(429), true));
    assert!(e.message.starts_with("Rate limit reached"));
    let e = p.chat_stream(&request("error")).await.err().unwrap();
    assert_eq!((e.status, e.retryable), (Some(500), true));
    let e = p.chat(&request("status-401")).await.unwrap_err();
    assert_eq!((e.status, e.retryable), (Some(401), false));
    let a = anthropic(&mock);
    let e = a.chat(&request("overloaded")).await.unwrap_err();
    assert_eq!(
        (e.status, e.retryable, e.message.as_str()),
        (Some(529), true, "Overloaded")
    );
    let e = a.chat(&request("status-400")).await.unwrap_err();
    assert_eq!((e.status, e.retryable), (Some(400), false));
}

#[tokio::test]
async fn cut_streams_end_with_a_stream_cut_error() {
    let mock = mock().await;
    for p in [&openai(&mock) as &dyn Provider, &anthropic(&mock)] {
        let events = collect(p, &request("cut")).await;
        match events.last() {
            Some(ChatEvent::Error(e)) => {
                assert_eq!(e.kind, ProviderErrorKind::StreamCut, "{}", p.name());
                assert!(e.retryable);
            }
            other => panic!("{}: expected a stream cut, got {other:?}", p.name()),
        }
        assert!(text_of(&events).starts_with("Hello"));
    }
    let e = openai(&mock).chat(&request("cut")).await.unwrap_err();
    assert_eq!(e.kind, ProviderErrorKind::Decode);
}

#[tokio::test]
async fn anthropic_sends_version_and_key_and_defaults_max_tokens() {
    let mock = mock().await;
    let p = anthropic(&mock);
    let r = p.chat(&request("claude-sonnet-4")).await.unwrap();
    assert_eq!(r.text, "Hello! How can I help you today?");
    assert_eq!(r.usage.cached_prompt_tokens, 2048);
    let events = collect(&p, &request("claude-tool")).await;
    assert!(events.contains(&ChatEvent::Finish {
        reason: FinishReason::ToolCalls
    }));
    let sent = mock.requests();
    assert_eq!(sent[0].path, "/v1/messages");
    assert_eq!(sent[0].header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(sent[0].header("anthropic-version"), Some("2023-06-01"));
    let body = sent[0].json().unwrap();
    assert_eq!(body["max_tokens"], 4096);
    assert_eq!(
        body["system"],
        serde_json::json!([{"type": "text", "text": "Be brief."}])
    );
    assert_eq!(sent[1].json().unwrap()["stream"], true);
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_request() {
    let mock = mock().await;
    let p = openai(&mock);
    let mut stream = p.chat_stream(&request("slow")).await.unwrap();
    assert!(matches!(stream.next().await, Some(ChatEvent::Start { .. })));
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while mock.disconnect_count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mock never saw the client go away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.completed_count(), 0);
}

#[tokio::test]
async fn a_stalled_stream_times_out_and_a_closed_port_fails_to_connect() {
    let mock = mock().await;
    let mut config = OpenAiCompatibleConfig::new("oa", mock.base_url());
    config.http = HttpConfig {
        read_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    };
    let p = OpenAiCompatible::new(config).unwrap();
    let events = collect(&p, &request("stall")).await;
    assert!(
        matches!(events.last(), Some(ChatEvent::Error(e)) if e.kind == ProviderErrorKind::Timeout && e.retryable),
        "{events:?}"
    );

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = OpenAiCompatible::new(OpenAiCompatibleConfig::new(
        "gone",
        format!("http://127.0.0.1:{port}/v1"),
    ))
    .unwrap();
    let e = p.chat(&request("m")).await.unwrap_err();
    assert_eq!((e.kind, e.retryable), (ProviderErrorKind::Connect, true));
}

#[tokio::test]
async fn mock_serves_models_and_legacy_completions() {
    let mock = mock().await;
    tandem_cloud_adapters::client::install_crypto_provider();
    let client = reqwest::Client::new();
    let models: serde_json::Value = client
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let text = client
        .post(format!("{}/completions", mock.base_url()))
        .body(r#"{"model":"gpt-3.5-turbo-instruct","prompt":"x","stream":true}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("\"object\":\"text_completion\""));
}

#[tokio::test]
async fn invalid_configs_are_refused() {
    assert!(OpenAiCompatible::new(OpenAiCompatibleConfig::new("x", "localhost:8000")).is_err());
    let mut c = OpenAiCompatibleConfig::new("x", "http://h/v1");
    c.extra_headers = vec![("bad header".into(), "v".into())];
    assert!(OpenAiCompatible::new(c).is_err());
}

#[tokio::test]
async fn dummy_behaviours_follow_the_model_name() {
    let d = DummyProvider::new("dummy").with_slow_delay(Duration::from_millis(1));
    let r = d.chat(&request("echo")).await.unwrap();
    assert_eq!(r.text, "Say hello");
    assert_eq!(r.finish_reason, FinishReason::Stop);
    assert!(r.usage.prompt_tokens > 0 && r.usage.completion_tokens == 2);
    let events = collect(&d, &request("slow")).await;
    assert_eq!(text_of(&events), "Say hello");
    let e = d.chat(&request("error")).await.unwrap_err();
    assert_eq!((e.status, e.retryable), (Some(500), true));
    assert!(d.chat(&request("flaky")).await.is_err());
    assert!(d.chat(&request("flaky")).await.is_ok());
    let events = collect(&d, &request("cut")).await;
    assert!(
        matches!(events.last(), Some(ChatEvent::Error(e)) if e.kind == ProviderErrorKind::StreamCut)
    );
    let r = d.chat(&request("tool")).await.unwrap();
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.tool_calls[0].arguments, "{\"location\": \"Paris\"}");
}

#[tokio::test]
async fn legacy_completions_pass_through_and_parse() {
    let mock = mock().await;
    let p = openai(&mock);
    let r = p
        .completions(
            "gpt-3.5-turbo-instruct",
            bytes::Bytes::from_static(
                br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test"}"#,
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.text, "\n\nThis is indeed a test");
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert_eq!(r.usage.total_tokens(), 12);
    let events: Vec<ChatEvent> = p
        .completions_stream(
            "gpt-3.5-turbo-instruct",
            bytes::Bytes::from_static(
                br#"{"model":"gpt-3.5-turbo-instruct","prompt":"x","stream":true}"#,
            ),
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(text_of(&events), "\n\nThis is indeed a test");
    assert!(events.contains(&ChatEvent::Finish {
        reason: FinishReason::Length
    }));
    assert_eq!(mock.requests()[1].path, "/v1/completions");
}
