//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver HTTP) loads `/ui` after a known set of requests, and the numbers it
//! shows equal those in `/metrics`. A screenshot is saved under the target directory
//! (`test-artifacts/dashboard.png`). Skipped, saying so, where Chromium is not installed.

// A test skipped for want of a browser says so on stderr.
#![allow(clippy::print_stderr)]
// The helpers below are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tandem_gateway::config::{Config, MapEnv};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{Fixtures, MockConfig, MockUpstream};
use tandem_tests::{client, local_engine};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";
const ADMIN_KEY: &str = "admin-secret-for-the-dashboard";

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Option<Self> {
        if !std::path::Path::new(CHROMIUM).exists() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if let Ok(r) = client().get(format!("{}/status", driver.url)).send().await
                && r.status().is_success()
            {
                return Some(driver);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = client().request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let response = r.send().await.unwrap();
        let v: Value = response.json().await.unwrap();
        assert!(
            v["value"]["error"].is_null(),
            "webdriver {path}: {}",
            v["value"]
        );
        v["value"].clone()
    }
}

/// One browser session.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl<'a> Session<'a> {
    async fn open(driver: &'a Driver) -> Session<'a> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,2000"]
            }
        }}});
        let v = driver
            .call(reqwest::Method::POST, "/session", Some(caps))
            .await;
        Session {
            driver,
            id: v["sessionId"].as_str().unwrap().to_owned(),
        }
    }

    async fn go(&self, url: &str) {
        self.driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{}/url", self.id),
                Some(json!({"url": url})),
            )
            .await;
    }

    /// The id of the element `css` selects.
    async fn find(&self, css: &str) -> String {
        let el = self
            .driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{}/element", self.id),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        el.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    }

    /// Types `text` into the element `css` selects.
    async fn type_into(&self, css: &str, text: &str) {
        let eid = self.find(css).await;
        self.driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{}/element/{eid}/value", self.id),
                Some(json!({"text": text})),
            )
            .await;
    }

    /// Clicks the element `css` selects.
    async fn click(&self, css: &str) {
        let eid = self.find(css).await;
        self.driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{}/element/{eid}/click", self.id),
                Some(json!({})),
            )
            .await;
    }

    /// Waits up to 15 s for the status line to start with `prefix`.
    async fn wait_status(&self, prefix: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.text("status").await;
            if status.starts_with(prefix) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status is `{status}`, never `{prefix}...`"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The visible text of the element with `data-testid` = `id`.
    async fn text(&self, id: &str) -> String {
        let eid = self.find(&format!("[data-testid=\"{id}\"]")).await;
        self.driver
            .call(
                reqwest::Method::GET,
                &format!("/session/{}/element/{eid}/text", self.id),
                None,
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Rows of a table's body.
    async fn rows(&self, table: &str) -> usize {
        let v = self
            .driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{}/elements", self.id),
                Some(json!({"using": "css selector", "value": format!("[data-testid=\"{table}\"] tbody tr")})),
            )
            .await;
        v.as_array().map_or(0, Vec::len)
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self
            .driver
            .call(
                reqwest::Method::GET,
                &format!("/session/{}/screenshot", self.id),
                None,
            )
            .await;
        base64_decode(v.as_str().unwrap())
    }

    async fn close(self) {
        self.driver
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.id),
                None,
            )
            .await;
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| {
            acc | (u32::from(value(*c)) << (18 - 6 * i))
        });
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Where test artifacts go: `<target>/<profile>/test-artifacts`.
fn artifact_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test binary>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The sum of a metric's series whose labels include every pair of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// The dashboard's own number formats.
fn int(n: f64) -> String {
    let digits = format!("{}", n as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[tokio::test]
async fn the_dashboard_shows_the_numbers_in_metrics() {
    let Some(driver) = Driver::start().await else {
        eprintln!(
            "skipped: Chromium or chromedriver is not installed (scripts/test.sh installs them)"
        );
        return;
    };
    let engine = local_engine().await;
    let (_, mock) = MockUpstream::start_with(Fixtures::builtin(), MockConfig::default())
        .await
        .unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_key_env = "ADMIN_KEY"
[observability]
rapl = false
watts_per_core = 9.0
[backends.local]
kind = "local"
[backends.mini]
kind = "openai-compatible"
base_url = "{}"
api_key_env = "MOCK_OPENAI_KEY"
models = {{ "mix-cloud" = "gpt-4o-mini" }}
price = {{ input = 0.5, output = 1.5 }}
[routes."mix-local"]
backends = ["local", "mini"]
[routes."mix-cloud"]
backends = ["mini"]
"#,
        mock.base_url()
    );
    let config = Config::from_toml_str(
        &text,
        &MapEnv::from_pairs([("MOCK_OPENAI_KEY", "k"), ("ADMIN_KEY", ADMIN_KEY)]),
    )
    .unwrap();
    let gw = Gateway::start(
        config,
        GatewayOptions {
            local: LocalLoad::Engine(engine.clone()),
            quiet: true,
            ..GatewayOptions::default()
        },
    )
    .await
    .unwrap();

    // A known set: three local answers, three cloud (one streamed), one unknown model.
    let requests = [
        ("mix-local", false),
        ("mix-local", true),
        ("mix-local", false),
        ("mix-cloud", false),
        ("mix-cloud", true),
        ("mix-cloud", false),
        ("no-such-model", false),
    ];
    for (model, stream) in requests {
        let body = json!({"model": model, "stream": stream, "max_tokens": 6, "temperature": 0,
                          "messages": [{"role": "user", "content": "Name a colour."}]});
        let r = client()
            .post(format!("{}/v1/chat/completions", gw.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let _ = r.text().await.unwrap();
        assert_eq!(status, if model == "no-such-model" { 404 } else { 200 });
    }
    let ledger = &gw.state.observer.ledger;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ledger.totals().requests < requests.len() as u64 && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = client()
        .get(format!("{}/metrics", gw.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // On the admin listener: the data needs the admin key, the page asks for it.
    let admin = gw.admin_url().unwrap();
    let ui = format!("{admin}/ui");
    let api = client()
        .get(format!("{admin}/ui/api/summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api.status().as_u16(),
        401,
        "the data is behind the admin key"
    );
    let api = client()
        .get(format!("{admin}/ui/api/summary"))
        .bearer_auth("not-the-key")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 401);

    let session = Session::open(&driver).await;
    session.go(&ui).await;
    session.wait_status("admin key needed").await;
    session.type_into("#admin-key", ADMIN_KEY).await;
    session.click("#login button").await;
    session.wait_status("updated").await;

    let model_requests: f64 = ["chat", "completions", "messages"]
        .iter()
        .map(|e| metric_sum(&metrics, "tandem_requests_total", &[("endpoint", e)]))
        .sum();
    assert_eq!(model_requests, 7.0, "{metrics}");
    let paid = metric_sum(&metrics, "tandem_cost_dollars_total", &[]);
    let reference = metric_sum(&metrics, "tandem_reference_cost_dollars_total", &[]);
    let cpu = metric_sum(&metrics, "tandem_local_cpu_seconds_total", &[]);
    let energy = metric_sum(&metrics, "tandem_local_energy_joules_total", &[]);
    assert!(paid > 0.0 && reference > paid && cpu > 0.0, "{metrics}");
    let expected = [
        ("total-requests", int(model_requests)),
        (
            "total-input-tokens",
            int(metric_sum(
                &metrics,
                "tandem_tokens_total",
                &[("kind", "prompt")],
            )),
        ),
        (
            "total-output-tokens",
            int(metric_sum(
                &metrics,
                "tandem_tokens_total",
                &[("kind", "completion")],
            )),
        ),
        ("total-paid", format!("${paid:.6}")),
        ("total-reference", format!("${reference:.6}")),
        ("total-saved", format!("${:.6}", reference - paid)),
        ("total-cpu", format!("{cpu:.3} s")),
        ("total-energy", format!("{energy:.3} J")),
        ("win-requests", int(model_requests)),
    ];
    for (id, want) in &expected {
        assert_eq!(&session.text(id).await, want, "{id}\n{metrics}");
    }
    for mode in ["local", "cloud", "none"] {
        let n = metric_sum(&metrics, "tandem_request_modes_total", &[("mode", mode)]);
        assert_eq!(
            session.text(&format!("mix-{mode}")).await,
            format!("{mode} {}", n as u64),
            "{metrics}"
        );
    }
    assert_eq!(session.rows("recent").await, 7);
    let error_rate = 1.0 / 7.0 * 100.0;
    assert_eq!(
        session.text("win-error-rate").await,
        format!("{error_rate:.1}%")
    );

    let png = session.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = artifact_dir().join("dashboard.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());
    session.close().await;
    gw.shutdown().await.unwrap();
}
