//! TLS end to end: the ingress listener over TLS with a CA made here, a certificate reload that
//! new connections see while an open one goes on, plain HTTP to the TLS port refused at once,
//! client certificates required (mTLS), and an upstream that requires the backend's client
//! certificate.

// Helpers outside #[test] functions build certificates and files; a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::serve::Listener as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use serde_json::json;
use tandem_cloud_adapters::tls::PemIdentity;
use tandem_gateway::config::{Config, TlsSettings};
use tandem_gateway::tls::{ServerTls, TlsListener};
use tandem_gateway::{Gateway, GatewayOptions, LocalLoad};
use tandem_lab::mock::{MockConfig, MockHandle};
use tandem_tests::{Harness, config_text, test_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate and its key, PEM, plus the certificate's DER to compare with what a server
/// presented.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

/// A CA made for one test, and the directory its files go to.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf for `localhost` and 127.0.0.1, for a server or a client.
    fn leaf(&self, name: &str, client: bool) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes `contents` to `name` in the test's directory.
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes a leaf as `NAME.pem` and `NAME.key`.
    fn write_leaf(&self, name: &str, leaf: &Leaf) -> PemIdentity {
        PemIdentity {
            cert: self.write(&format!("{name}.pem"), &leaf.cert),
            key: self.write(&format!("{name}.key"), &leaf.key),
        }
    }
}

/// A client that trusts `ca_pem` alone and reports the certificate each server presented.
fn https_client(ca_pem: &str, identity: Option<&Leaf>) -> reqwest::Client {
    tandem_cloud_adapters::client::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    if let Some(leaf) = identity {
        let pem = format!("{}{}", leaf.cert, leaf.key);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// The certificate the server presented on the connection `response` came on.
fn served_cert(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// `server` keys for a certificate (and a client CA).
fn server_tls(identity: &PemIdentity, client_ca: Option<&PathBuf>) -> String {
    let mut text = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        identity.cert, identity.key
    );
    if let Some(ca) = client_ca {
        text.push_str(&format!("tls_client_ca = {ca:?}\n"));
    }
    text
}

async fn chat(client: &reqwest::Client, h: &Harness) -> reqwest::Result<reqwest::Response> {
    client
        .post(h.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
}

#[tokio::test]
async fn a_client_trusting_the_ca_gets_answers_over_tls() {
    let pki = Pki::new("ingress");
    let leaf = pki.leaf("tandem", false);
    let identity = pki.write_leaf("server", &leaf);
    let h = Harness::start_around(MockConfig::default(), |_| server_tls(&identity, None))
        .await
        .unwrap();
    assert!(h.gateway.url().starts_with("https://127.0.0.1:"));
    let client = https_client(&pki.ca_pem(), None);
    let r = chat(&client, &h).await.unwrap();
    assert_eq!(r.status(), 200);
    // ALPN offers HTTP/2 first.
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(served_cert(&r), leaf.der);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    let r = client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A client that trusts another CA is refused by its own check.
    let stranger = https_client(&Pki::new("other").ca_pem(), None);
    let e = chat(&stranger, &h).await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_and_name_their_key() {
    let pki = Pki::new("files");
    let leaf = pki.leaf("tandem", false);
    let other = pki.leaf("other", false);
    let cert = pki.write("cert.pem", &leaf.cert);
    let wrong_key = pki.write("wrong.key", &other.key);
    for (extra, expected) in [
        (
            format!("tls_cert = {cert:?}\ntls_key = \"/nonexistent/key.pem\"\n"),
            "server.tls_key: /nonexistent/key.pem: cannot read",
        ),
        (
            format!("tls_cert = {wrong_key:?}\ntls_key = {wrong_key:?}\n"),
            "server.tls_cert: ",
        ),
        (
            format!("tls_cert = {cert:?}\ntls_key = {wrong_key:?}\n"),
            "server.tls_key: ",
        ),
    ] {
        let text = config_text("http://127.0.0.1:9/v1", &extra);
        let config = Config::from_toml_str(&text, &test_env()).unwrap();
        let options = GatewayOptions {
            local: LocalLoad::Offline,
            quiet: true,
            ..GatewayOptions::default()
        };
        let e = match Gateway::start(config, options).await {
            Ok(_) => panic!("started with {extra}"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with(expected), "{e} (wanted {expected})");
    }
}

#[tokio::test]
async fn a_new_certificate_serves_new_connections_while_an_open_one_keeps_going() {
    let pki = Pki::new("reload");
    let first = pki.leaf("first", false);
    let identity = pki.write_leaf("server", &first);
    let h = Harness::start_around(MockConfig::default(), |_| server_tls(&identity, None))
        .await
        .unwrap();
    let open = https_client(&pki.ca_pem(), None);
    let r = chat(&open, &h).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_cert(&r), first.der);
    r.bytes().await.unwrap();

    // The certificate is written first and the key after it, as a renewal tool would: the
    // pair in between does not fit and is skipped.
    let second = pki.leaf("second", false);
    pki.write_leaf("server", &second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = chat(&https_client(&pki.ca_pem(), None), &h).await.unwrap();
        assert_eq!(r.status(), 200);
        if served_cert(&r) == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The connection opened before the reload carries on with its session.
    for _ in 0..3 {
        let r = chat(&open, &h).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            served_cert(&r),
            first.der,
            "the open connection was replaced"
        );
        r.bytes().await.unwrap();
    }

    // A broken key leaves the last good pair in service, and SIGHUP's reload says why.
    pki.write("server.key", "not a key\n");
    let e = h.gateway.reload_tls().unwrap_err().to_string();
    assert!(e.starts_with("server.tls_key: "), "{e}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = chat(&https_client(&pki.ca_pem(), None), &h).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_cert(&r), second.der);
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_refused_within_a_second() {
    let pki = Pki::new("plain");
    let identity = pki.write_leaf("server", &pki.leaf("tandem", false));
    let h = Harness::start_around(MockConfig::default(), |_| server_tls(&identity, None))
        .await
        .unwrap();
    let plain_url = format!("http://{}/v1/chat/completions", h.gateway.addr);
    let started = Instant::now();
    let r = h
        .client
        .post(&plain_url)
        .json(&json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "https_required", "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // Bytes that are neither TLS nor HTTP: the connection is closed at once.
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    tcp.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf))
        .await
        .expect("the connection hung")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(1));

    // The TLS side is unaffected.
    let r = chat(&https_client(&pki.ca_pem(), None), &h).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let pki = Pki::new("mtls");
    let identity = pki.write_leaf("server", &pki.leaf("tandem", false));
    let client_ca = pki.write("clients.pem", &pki.ca_pem());
    let h = Harness::start_around(MockConfig::default(), |_| {
        server_tls(&identity, Some(&client_ca))
    })
    .await
    .unwrap();

    let anonymous = https_client(&pki.ca_pem(), None);
    let started = Instant::now();
    assert!(chat(&anonymous, &h).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));

    let outsider = Pki::new("outsider").leaf("mallory", true);
    assert!(
        chat(&https_client(&pki.ca_pem(), Some(&outsider)), &h)
            .await
            .is_err()
    );

    let member = pki.leaf("app", true);
    let r = chat(&https_client(&pki.ca_pem(), Some(&member)), &h)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.mock.request_count(), 1);
}

/// A TLS front for the mock that requires client certificates from `pki`'s CA and forwards
/// the bytes of each session to the mock; its address.
fn mtls_front(pki: &Pki, mock: &MockHandle) -> std::net::SocketAddr {
    let settings = TlsSettings {
        identity: pki.write_leaf("upstream", &pki.leaf("upstream", false)),
        client_ca: Some(pki.write("upstream-clients.pem", &pki.ca_pem())),
    };
    let tls = ServerTls::load(&settings).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener =
        TlsListener::new(tokio::net::TcpListener::from_std(tcp).unwrap(), tls).unwrap();
    let target = mock.addr();
    tokio::spawn(async move {
        loop {
            let (mut session, _) = listener.accept().await;
            tokio::spawn(async move {
                if let Ok(mut plain) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut session, &mut plain).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_that_requires_a_client_certificate_gets_the_backends() {
    let pki = Pki::new("upstream");
    let ca = pki.write("ca.pem", &pki.ca_pem());
    let client = pki.write_leaf("gateway-client", &pki.leaf("tandem-gateway", true));
    let h = Harness::start_around(MockConfig::default(), |mock| {
        let front = mtls_front(&pki, mock);
        format!(
            r#"
[backends.secure]
kind = "openai-compatible"
base_url = "https://127.0.0.1:{port}/v1"
ca_cert = {ca:?}
client_cert = {cert:?}
client_key = {key:?}
models = {{ "secure-gpt" = "gpt-4o-mini" }}

[backends.anonymous]
kind = "openai-compatible"
base_url = "https://127.0.0.1:{port}/v1"
ca_cert = {ca:?}
models = {{ "anonymous-gpt" = "gpt-4o-mini" }}
"#,
            port = front.port(),
            cert = client.cert,
            key = client.key,
        )
    })
    .await
    .unwrap();
    let ask =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});

    let (status, headers, body) = h
        .post("/v1/chat/completions", &ask("secure-gpt"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["x-tandem-route"]
            .to_str()
            .unwrap()
            .starts_with("secure"),
        "{headers:?}"
    );
    assert_eq!(h.mock.request_count(), 1);

    // Without the certificate the upstream refuses the session: a clear upstream error.
    let (status, _, body) = h
        .post("/v1/chat/completions", &ask("anonymous-gpt"))
        .await
        .unwrap();
    assert!(status >= 500, "{status} {body}");
    assert_eq!(h.mock.request_count(), 1);
}
