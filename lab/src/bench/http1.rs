//! The load generator's HTTP/1.1 client: a request encoded once and written as it is on
//! kept-alive loopback connections, and the answer read in place (status line, length, body),
//! with no header map, request builder or per-connection task. The benches share two vCPUs
//! with what they measure: at 5k RPS through hyper's pooled client the generator's thread used
//! about 45 µs of CPU per request, this way about 33 µs (2026-12-07, same period), CPU the proxy
//! under test no longer competes for. The bytes on the wire are the same request hyper sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A POST encoded once, to send many times.
#[derive(Debug, Clone)]
pub(super) struct Encoded {
    addr: SocketAddr,
    bytes: Bytes,
}

impl Encoded {
    /// A POST of `body` (JSON) to `url` (`http://IP:PORT/PATH`), with `auth` as its
    /// `authorization` header when given.
    pub(super) fn post(
        url: &str,
        body: &[u8],
        auth: Option<&http::HeaderValue>,
    ) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse()?;
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
        let addr: SocketAddr = authority.as_str().parse()?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut bytes = Vec::with_capacity(256 + body.len());
        bytes.extend_from_slice(format!("POST {path} HTTP/1.1\r\n").as_bytes());
        bytes.extend_from_slice(b"content-type: application/json\r\n");
        if let Some(auth) = auth {
            bytes.extend_from_slice(b"authorization: ");
            bytes.extend_from_slice(auth.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(format!("host: {authority}\r\n").as_bytes());
        bytes.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        bytes.extend_from_slice(body);
        Ok(Self {
            addr,
            bytes: bytes.into(),
        })
    }
}

/// Why an exchange failed.
#[derive(Debug)]
enum Failure {
    /// The connection closed before any byte of the answer: on a kept-alive connection, the
    /// server closed it while idle, so the request is sent again on a fresh one.
    ClosedBeforeAnswer,
    /// Anything else, as the failure's cause.
    Other(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Other(format!("transport: {e}"))
    }
}

/// One kept-alive connection and its read buffer (kept, so a request allocates nothing).
#[derive(Debug)]
struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> Result<Self, Failure> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self {
            tcp,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Reads more of the answer; the count read, 0 at the end of the stream.
    async fn read_more(&mut self) -> Result<usize, Failure> {
        self.buf.reserve(8192);
        Ok(self.tcp.read_buf(&mut self.buf).await?)
    }

    /// Reads until `buf` holds at least `len` bytes.
    async fn fill(&mut self, len: usize) -> Result<(), Failure> {
        while self.buf.len() < len {
            if self.read_more().await? == 0 {
                return Err(Failure::Other(
                    "transport: connection closed mid-answer".into(),
                ));
            }
        }
        Ok(())
    }

    /// The end of the line starting at `from` (the index of its `\r\n`), reading as needed.
    async fn line_end(&mut self, from: usize) -> Result<usize, Failure> {
        loop {
            if let Some(i) = find(&self.buf[from.min(self.buf.len())..], b"\r\n") {
                return Ok(from + i);
            }
            if self.read_more().await? == 0 {
                return Err(Failure::Other(
                    "transport: connection closed mid-answer".into(),
                ));
            }
        }
    }

    /// Sends `request` and reads the whole answer: its status, and whether the connection may
    /// carry another request.
    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, bool), Failure> {
        self.tcp.write_all(request).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.read_more().await? == 0 {
                return Err(if self.buf.is_empty() {
                    Failure::ClosedBeforeAnswer
                } else {
                    Failure::Other("transport: connection closed mid-head".into())
                });
            }
        };
        let head = Head::parse(&self.buf[..head_end])
            .ok_or_else(|| Failure::Other("transport: malformed answer head".into()))?;
        let mut keep = head.keep_alive;
        match head.body {
            BodyLength::Known(len) => self.fill(head_end + len).await?,
            BodyLength::Chunked => {
                let mut at = head_end;
                loop {
                    let end = self.line_end(at).await?;
                    let size = chunk_size(&self.buf[at..end])
                        .ok_or_else(|| Failure::Other("transport: malformed chunk size".into()))?;
                    at = end + 2;
                    if size == 0 {
                        // Trailer lines, if any, up to the empty line.
                        loop {
                            let end = self.line_end(at).await?;
                            let empty = end == at;
                            at = end + 2;
                            if empty {
                                break;
                            }
                        }
                        break;
                    }
                    at += size + 2;
                    self.fill(at).await?;
                }
            }
            BodyLength::UntilClose => {
                keep = false;
                while self.read_more().await? > 0 {}
            }
        }
        Ok((head.status, keep))
    }
}

/// How the answer's body is delimited.
#[derive(Debug, PartialEq)]
enum BodyLength {
    Known(usize),
    Chunked,
    UntilClose,
}

/// What the load generator reads of an answer's head.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    body: BodyLength,
    keep_alive: bool,
}

impl Head {
    /// Parses a head ending with its empty line; None if it is not HTTP/1.x.
    fn parse(head: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(head).ok()?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next()?;
        let rest = status_line.strip_prefix("HTTP/1.")?;
        let http10 = rest.starts_with('0');
        let status: u16 = rest.get(2..5)?.parse().ok()?;
        let mut head = Self {
            status,
            body: if status == 204 || status == 304 || (100..200).contains(&status) {
                BodyLength::Known(0)
            } else {
                BodyLength::UntilClose
            },
            keep_alive: !http10,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                if head.body != BodyLength::Chunked {
                    head.body = BodyLength::Known(value.parse().ok()?);
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                if value.to_ascii_lowercase().contains("chunked") {
                    head.body = BodyLength::Chunked;
                }
            } else if name.eq_ignore_ascii_case("connection") {
                if value.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    head.keep_alive = true;
                }
            }
        }
        Some(head)
    }
}

/// A chunk-size line's size (extensions ignored).
fn chunk_size(line: &[u8]) -> Option<usize> {
    let line = std::str::from_utf8(line).ok()?;
    let hex = line.split(';').next()?.trim();
    usize::from_str_radix(hex, 16).ok()
}

/// The first index of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Kept-alive connections per address, reused newest first as hyper's pool does; clones share
/// them. A request finding none idle opens one, so connections follow the requests in flight.
#[derive(Debug, Clone, Default)]
pub(super) struct LoadClient {
    idle: Arc<Mutex<HashMap<SocketAddr, Vec<Conn>>>>,
}

impl LoadClient {
    /// Sends `request` and reads the whole answer; its status.
    pub(super) async fn send(&self, request: &Encoded) -> Result<u16, String> {
        let pooled = self.checkout(request.addr);
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => Conn::connect(request.addr).await.map_err(describe)?,
        };
        let answer = match conn.exchange(&request.bytes).await {
            Err(Failure::ClosedBeforeAnswer) if reused => {
                conn = Conn::connect(request.addr).await.map_err(describe)?;
                conn.exchange(&request.bytes).await
            }
            answer => answer,
        };
        let (status, keep) = answer.map_err(describe)?;
        if keep {
            self.lock().entry(request.addr).or_default().push(conn);
        }
        Ok(status)
    }

    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        self.lock().get_mut(&addr).and_then(Vec::pop)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Conn>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A failure's cause, as the table's failure notes group them.
fn describe(failure: Failure) -> String {
    match failure {
        Failure::ClosedBeforeAnswer => "transport: connection closed before the answer".into(),
        Failure::Other(cause) => cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_give_status_length_and_keep_alive() {
        let head = |text: &str| Head::parse(text.as_bytes());
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nx-a: b\r\n\r\n"),
            Some(Head {
                status: 200,
                body: BodyLength::Known(12),
                keep_alive: true
            })
        );
        assert_eq!(
            head(
                "HTTP/1.1 429 Too Many\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            ),
            Some(Head {
                status: 429,
                body: BodyLength::Chunked,
                keep_alive: false
            })
        );
        assert_eq!(
            head("HTTP/1.0 204 No Content\r\n\r\n"),
            Some(Head {
                status: 204,
                body: BodyLength::Known(0),
                keep_alive: false
            })
        );
        assert_eq!(head("SSH-2.0\r\n\r\n"), None);
        assert_eq!(chunk_size(b"1a;x=y"), Some(26));
    }

    #[test]
    fn requests_are_sent_whole_and_answers_read_whole_on_one_connection() -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            // Answers twice on one connection: once with a length, once chunked with a trailer.
            let server = tokio::spawn(async move {
                let (mut tcp, _) = listener.accept().await?;
                let mut seen = Vec::new();
                for answer in [
                    &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..],
                    &b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n"[..],
                ] {
                    let mut request = Vec::new();
                    while find(&request, b"{}").is_none() {
                        let mut chunk = [0u8; 1024];
                        let n = tcp.read(&mut chunk).await?;
                        anyhow::ensure!(n > 0, "client closed");
                        request.extend_from_slice(&chunk[..n]);
                    }
                    seen.push(String::from_utf8(request)?);
                    tcp.write_all(answer).await?;
                }
                anyhow::Ok(seen)
            });
            let auth = http::HeaderValue::from_static("Bearer k");
            let request = Encoded::post(&format!("http://{addr}/v1/x"), b"{}", Some(&auth))?;
            let client = LoadClient::default();
            assert_eq!(client.send(&request).await, Ok(200));
            assert_eq!(client.send(&request).await, Ok(201));
            let seen = server.await??;
            assert_eq!(
                seen[0],
                format!(
                    "POST /v1/x HTTP/1.1\r\ncontent-type: application/json\r\n\
                     authorization: Bearer k\r\nhost: {addr}\r\ncontent-length: 2\r\n\r\n{{}}"
                )
            );
            assert_eq!(seen[0], seen[1]);
            anyhow::Ok(())
        })
    }
}
