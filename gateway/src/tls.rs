//! TLS on a listener: the certificate and key (and, for mTLS, the CA that client certificates
//! must chain to) from PEM files, reloaded when they change, and [`TlsListener`], which hands
//! `axum::serve` connections whose handshake is done. New handshakes use the current files; open
//! connections keep the session they started with, so a reload drops none of them.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use axum::serve::Listener;
use parking_lot::{Mutex, RwLock};
use rustls::server::WebPkiClientVerifier;
use tandem_cloud_adapters::tls::{read_certs, read_key, read_roots};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{ConfigError, TlsSettings};

/// How often the certificate, key and client CA files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a client may take to complete its handshake; past it the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes done but not yet taken by the server.
const READY_QUEUE: usize = 256;

/// The first byte of a TLS record carrying a handshake message (a `ClientHello`).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-HTTP request to a TLS port gets before the connection closes.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 168\r\n\r\n{\"error\":{\"message\":\"this port speaks HTTPS; the request came as plain HTTP (use an https:// URL)\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"https_required\"}}";

/// A file's modification time and length: a change to either means a reload.
type Stamp = Option<(SystemTime, u64)>;

/// The server side of TLS for one listener: the current `rustls::ServerConfig`, rebuilt from the
/// files when they change. Cheap to share; each accepted connection takes the current config.
#[derive(Debug)]
pub struct ServerTls {
    settings: TlsSettings,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// The files' stamps at the last load attempt (successful or not), so that a broken file is
    /// reported once and retried when it changes again.
    seen: Mutex<Vec<Stamp>>,
}

impl ServerTls {
    /// Reads the files. Errors name the config key of the file at fault (`server.tls_key: ...`).
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, ConfigError> {
        let seen = stamps(settings);
        let config = build(settings)?;
        Ok(Arc::new(Self {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(seen),
        }))
    }

    /// The config new handshakes use.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().clone()
    }

    /// Reads the files again and, when they make a usable config, serves it to new handshakes;
    /// otherwise the previous one stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        *self.seen.lock() = stamps(&self.settings);
        let config = build(&self.settings)?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// Reloads when a file's stamp changed since the last attempt; logs the outcome.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.settings);
        if *self.seen.lock() == now {
            return;
        }
        match self.reload() {
            Ok(()) => tracing::info!(
                cert = %self.settings.identity.cert.display(),
                "TLS certificate reloaded"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "TLS files changed but cannot be used; still serving the previous certificate"
            ),
        }
    }

    /// Checks the files every `every` on a background task, which ends when `self` is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(tls) = weak.upgrade() else { return };
                // File reads and parsing stay off the async workers.
                let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
            }
        });
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Stamp> {
    let id = &settings.identity;
    [Some(&id.cert), Some(&id.key), settings.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// The rustls config of `settings`: its certificate and key, HTTP/2 and HTTP/1.1 by ALPN, and
/// client certificates required when a client CA is set.
fn build(settings: &TlsSettings) -> Result<rustls::ServerConfig, ConfigError> {
    let invalid = |path: &str, e: &dyn std::fmt::Display| ConfigError::Invalid {
        path: path.into(),
        message: e.to_string(),
    };
    tandem_cloud_adapters::client::install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&settings.identity.cert).map_err(|e| invalid("server.tls_cert", &e))?;
    let key = read_key(&settings.identity.key).map_err(|e| invalid("server.tls_key", &e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("server", &e))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = read_roots(ca).map_err(|e| invalid("server.tls_client_ca", &e))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid("server.tls_client_ca", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            "server.tls_key",
            &format!(
                "{} does not fit {}: {e}",
                settings.identity.key.display(),
                settings.identity.cert.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A listener whose connections are TLS sessions: it accepts TCP connections from `inner`,
/// runs each handshake on its own task (a slow client holds up no other) under
/// [`HANDSHAKE_TIMEOUT`], and yields those that complete. A failed handshake is logged at debug
/// and closed; a plain-HTTP request gets a 400 saying to use `https://` first.
///
/// Serving over TLS is `axum::serve(TlsListener::new(listener, tls)?, app)`.
#[derive(Debug)]
pub struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Wraps `inner` (a `TcpListener`, or one with `tap_io` such as the server's `no_delay`);
    /// the handshakes use `tls`'s config current at each accept. Needs a tokio runtime.
    pub fn new<L>(inner: L, tls: Arc<ServerTls>) -> std::io::Result<Self>
    where
        L: Listener<Io = TcpStream, Addr = SocketAddr>,
    {
        let addr = inner.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accept = tokio::spawn(accept_loop(inner, tls, tx));
        Ok(Self {
            addr,
            ready,
            accept,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The TCP listener closes with its task: a stopped server accepts nothing more.
        self.accept.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends with the listener; nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

async fn accept_loop<L>(
    mut inner: L,
    tls: Arc<ServerTls>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) where
    L: Listener<Io = TcpStream, Addr = SocketAddr>,
{
    loop {
        let (tcp, peer) = tokio::select! {
            conn = inner.accept() => conn,
            () = ready.closed() => return,
        };
        let acceptor = TlsAcceptor::from(tls.current());
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The server side of one handshake; a connection that opens with something other than a TLS
/// handshake record is refused (with a 400 when it looks like HTTP).
async fn handshake(
    acceptor: TlsAcceptor,
    mut tcp: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before the handshake",
        ));
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            refuse_plain_http(&mut tcp).await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "plain HTTP on the TLS port (answered 400)",
            ));
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a TLS handshake (first byte {:#04x})", first[0]),
        ));
    }
    acceptor.accept(tcp).await
}

/// Reads the request head (so that closing does not reset the connection before the client
/// reads the answer), answers 400 and closes.
async fn refuse_plain_http(tcp: &mut TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
    let _ = tcp.shutdown().await;
    // Whatever body followed the head is read off briefly, for the same reason.
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_has_the_length_it_declares() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "https_required");
    }

    #[tokio::test]
    async fn missing_files_name_their_key() {
        let settings = TlsSettings {
            identity: tandem_cloud_adapters::tls::PemIdentity {
                cert: "/nonexistent/cert.pem".into(),
                key: "/nonexistent/key.pem".into(),
            },
            client_ca: None,
        };
        let e = ServerTls::load(&settings).unwrap_err().to_string();
        assert!(
            e.starts_with("server.tls_cert: /nonexistent/cert.pem: cannot read"),
            "{e}"
        );
    }
}
