//! The dashboard on the admin listener: one page (`/ui`) with its script and style built into
//! the binary (plain HTML, CSS and JavaScript in `ui/`, drawing its own SVG charts; nothing to
//! install or build), and the JSON it reads (`/ui/api/summary`, behind the admin key: the page
//! holds no data and asks for the key, which its script sends as a bearer token): the ledger's totals since start and, over the chosen window and
//! filters (key, route, decision), the routing mix and cost over time, requests and tokens by
//! route and backend, latency percentiles, error, fallback and speculative rates, local CPU and
//! energy, and the most recent decisions with their explanations, over every replica sharing
//! the store (Redis) or this process alone. Read-only.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, header};

use crate::observe::{ledger, replicas};
use crate::state::AppState;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// The dashboard's data (behind the admin key).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/ui/api/summary", get(summary))
}

/// The page and its script and style: static, no data, served without the key so a browser
/// can load them and then ask for it.
pub fn assets() -> Router {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

/// A built-in asset, never cached stale (it changes with the binary) and allowed to load only
/// its own script and style.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self'; img-src 'self' data:"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /ui/api/summary?window=SECONDS&key=&route=&decision=&limit=`.
async fn summary(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ledger::Query>,
) -> Response {
    let now_ms = crate::observe::trace::unix_ns() / 1_000_000;
    let mut body = replicas::summary(&state.observer, &state.store, &query, now_ms).await;
    body["energy_source"] = state.observer.energy.source().into();
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MapEnv};
    use crate::server::{GatewayOptions, build_state};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (u16, String, String) {
        let response = app
            .clone()
            .oneshot(
                http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let ct = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_page_its_assets_and_its_data_are_served() {
        let config = Config::from_toml_str(
            "[backends.openai]\nkind = \"openai\"\napi_key_env = \"K\"\n",
            &MapEnv::default(),
        )
        .unwrap();
        let state = build_state(config, &GatewayOptions::default()).unwrap();
        let app = routes().with_state(state).merge(assets());
        let (status, ct, page) = get(&app, "/ui").await;
        assert_eq!((status, ct.as_str()), (200, "text/html; charset=utf-8"));
        assert!(page.contains("/ui/app.js") && page.contains("data-testid=\"total-saved\""));
        let (status, ct, _) = get(&app, "/ui/app.js").await;
        assert_eq!(
            (status, ct.as_str()),
            (200, "text/javascript; charset=utf-8")
        );
        let (status, ct, _) = get(&app, "/ui/app.css").await;
        assert_eq!((status, ct.as_str()), (200, "text/css; charset=utf-8"));
        let (status, _, json) = get(&app, "/ui/api/summary?window=300&decision=local").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["window_s"], 300);
        assert_eq!(v["totals"]["requests"], 0);
        assert_eq!(v["energy_source"], "watts_per_core");
        let (status, _, _) = get(&app, "/ui/api/summary?window=soon").await;
        assert_eq!(status, 400, "a bad window is the client's error");
    }

    #[test]
    fn the_grafana_dashboard_reads_only_metrics_the_gateway_exports() {
        let dashboard = include_str!("../../../docs/grafana/tandem.json");
        let _: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        // A family renders once it has a series: give each one.
        let m = crate::metrics::Metrics::new();
        let chat = crate::metrics::endpoint_index("/v1/chat/completions");
        m.pair("r", "b")
            .record_request(&m, chat, http::StatusCode::OK, 0.1);
        m.record_usage("r", "b", 1, 1, 0, (1.0, 2.0));
        m.record_local_compute("b", 1.0, 1.0);
        m.record_cache_hit("r");
        let backend = crate::metrics::BackendLabels {
            backend: "b".into(),
        };
        m.first_token.get_or_create(&backend).observe(0.1);
        m.fallbacks.get_or_create(&backend).inc();
        m.errors
            .get_or_create(&crate::metrics::ErrorLabels {
                endpoint: "chat",
                kind: "x",
            })
            .inc();
        m.modes
            .get_or_create(&crate::metrics::ModeLabels {
                route: "r".into(),
                mode: "local",
            })
            .inc();
        m.overhead
            .get_or_create(&crate::metrics::EndpointLabels { endpoint: "chat" })
            .observe(0.001);
        m.speculative_tokens
            .get_or_create(&crate::metrics::SpeculativeLabels {
                backend: "b".into(),
                kind: "accepted",
            })
            .inc();
        let rendered = m.render();
        let exported: Vec<&str> = rendered
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut named = 0;
        for (i, _) in dashboard.match_indices("tandem_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let base = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            if base == "tandem_gateway" {
                continue; // the dashboard's uid
            }
            named += 1;
            assert!(
                exported.contains(&base),
                "{name} is not exported: {exported:?}"
            );
        }
        assert!(named > 10);
    }
}
