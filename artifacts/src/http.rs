//! HTTP for the fetcher: one client (rustls, system roots, env proxies) and resumable downloads.

use std::path::Path;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_RANGE, RANGE};
use reqwest::{Client, StatusCode, Url};
use tokio::io::AsyncWriteExt;

use crate::cache::{io_err, remove_quietly, sha256_file, with_suffix};
use crate::progress::{Progress, ProgressMode};
use crate::{Error, Result};

/// Tries per download before giving up on a server that drops connections mid-body.
const MAX_ATTEMPTS: u32 = 4;

/// Build the fetcher's client. TLS is rustls with the ring provider and the operating system's
/// trust store (via the platform verifier), so TLS-inspecting corporate proxies work; proxies
/// come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, except for loopback-only use.
pub(crate) fn client(loopback_only: bool) -> Result<Client> {
    // Another part of the process may have installed a provider already; either is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = Client::builder()
        .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60));
    if loopback_only {
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|e| Error::Fetch(format!("building the HTTP client: {}", error_chain(&e))))
}

/// Whether every URL points at this machine (then proxies are skipped).
pub(crate) fn all_loopback<'a>(urls: impl IntoIterator<Item = &'a str>) -> bool {
    urls.into_iter().all(|u| {
        Url::parse(u).ok().is_some_and(|url| {
            let host = url.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
    })
}

/// An error and its causes, joined: reqwest's own message alone hides the useful part.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// reqwest's message and causes without the URL it repeats ("... for url (...)").
fn reqwest_chain(e: &reqwest::Error) -> String {
    let text = error_chain(e);
    match e.url() {
        Some(url) => text.replace(&format!(" for url ({url})"), ""),
        None => text,
    }
}

fn request_error(url: &str, e: &reqwest::Error) -> Error {
    if e.is_connect() {
        Error::Unreachable {
            url: url.to_string(),
            reason: reqwest_chain(e),
        }
    } else {
        Error::Fetch(format!("{url}: {}", reqwest_chain(e)))
    }
}

/// GET a text page (a simple index page); returns the final URL after redirects and the body.
pub(crate) async fn get_text(client: &Client, url: &str) -> Result<(Url, String)> {
    let resp = client
        .get(url)
        .header(
            ACCEPT,
            "application/vnd.pypi.simple.v1+html, text/html;q=0.9",
        )
        .send()
        .await
        .map_err(|e| request_error(url, &e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(Error::Fetch(format!("{url}: HTTP {status}")));
    }
    let final_url = resp.url().clone();
    let body = resp.text().await.map_err(|e| request_error(url, &e))?;
    Ok((final_url, body))
}

/// What a downloaded file must be.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Expect<'a> {
    /// Its sha256, lowercase hex.
    pub sha256: Option<&'a str>,
    /// Its size in bytes.
    pub size: Option<u64>,
}

/// Download `url` to `dest` through `<dest>.part`, resuming a partial file with a `Range`
/// request, then check size and hash and rename into place. A wrong hash removes the file.
/// Returns the file's sha256.
pub(crate) async fn download(
    client: &Client,
    url: &str,
    dest: &Path,
    expect: Expect<'_>,
    label: &str,
    mode: ProgressMode,
) -> Result<String> {
    let part = with_suffix(dest, ".part");
    // A partial file left by an earlier run may belong to other bytes (the file changed on the
    // server, or the disk was damaged); if the resumed result is wrong, start over once.
    let mut resumed = part.is_file();
    loop {
        fetch_to_part(client, url, &part, expect, label, mode).await?;
        let actual = hash_blocking(&part).await?;
        match expect.sha256 {
            Some(expected) if !actual.eq_ignore_ascii_case(expected) => {
                remove_quietly(&part);
                if resumed {
                    resumed = false;
                    mode.note(&format!(
                        "  {label}: resumed file has the wrong sha256; downloading it again"
                    ));
                    continue;
                }
                return Err(Error::Sha256Mismatch {
                    path: dest.to_path_buf(),
                    expected: expected.to_ascii_lowercase(),
                    actual,
                });
            }
            _ => {
                install_part(&part, dest)?;
                return Ok(actual);
            }
        }
    }
}

fn install_part(part: &Path, dest: &Path) -> Result<()> {
    std::fs::rename(part, dest).map_err(|e| {
        io_err(
            format!("moving {} to {}", part.display(), dest.display()),
            e,
        )
    })
}

/// Bring `<dest>.part` to the full length, resuming and retrying on dropped connections.
async fn fetch_to_part(
    client: &Client,
    url: &str,
    part: &Path,
    expect: Expect<'_>,
    label: &str,
    mode: ProgressMode,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match download_attempt(client, url, part, expect, label, mode).await {
            Ok(()) => return Ok(()),
            Err(Attempt::Retry(reason)) if attempt < MAX_ATTEMPTS => {
                let wait = Duration::from_secs(1 << (attempt - 1));
                mode.note(&format!(
                    "  {label}: {reason}; retrying in {} s",
                    wait.as_secs()
                ));
                tokio::time::sleep(wait).await;
            }
            Err(Attempt::Retry(reason)) => {
                return Err(Error::Fetch(format!(
                    "{url}: {reason} (gave up after {MAX_ATTEMPTS} tries)"
                )));
            }
            Err(Attempt::Fail(e)) => return Err(e),
        }
    }
}

/// sha256 of a file on the blocking pool.
pub(crate) async fn hash_blocking(path: &Path) -> Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(|e| Error::Fetch(format!("hashing task failed: {e}")))?
}

enum Attempt {
    /// Worth another try (connection dropped, server busy).
    Retry(String),
    /// Not worth another try.
    Fail(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Self::Fail(e)
    }
}

async fn download_attempt(
    client: &Client,
    url: &str,
    part: &Path,
    expect: Expect<'_>,
    label: &str,
    mode: ProgressMode,
) -> Result<(), Attempt> {
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if let Some(size) = expect.size {
        if have == size {
            return Ok(()); // complete from an earlier run; the hash check decides
        }
        if have > size {
            remove_quietly(part);
            have = 0;
        }
    }

    let mut request = client.get(url);
    if have > 0 {
        request = request.header(RANGE, format!("bytes={have}-"));
    }
    let mut resp = request.send().await.map_err(|e| {
        if e.is_connect() {
            Attempt::Fail(request_error(url, &e))
        } else {
            Attempt::Retry(reqwest_chain(&e))
        }
    })?;

    let status = resp.status();
    let (append, total) = match status {
        StatusCode::PARTIAL_CONTENT if have > 0 => match parse_content_range(&resp) {
            Some((start, total)) if start == have => (true, total),
            // The server answered another range than asked: start over.
            _ => {
                remove_quietly(part);
                return Err(Attempt::Retry(
                    "server answered an unexpected range; restarting".into(),
                ));
            }
        },
        StatusCode::OK => (false, resp.content_length()),
        StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
            remove_quietly(part);
            return Err(Attempt::Retry(
                "server refused to resume; restarting".into(),
            ));
        }
        s if s.is_server_error()
            || s == StatusCode::TOO_MANY_REQUESTS
            || s == StatusCode::REQUEST_TIMEOUT =>
        {
            return Err(Attempt::Retry(format!("HTTP {s}")));
        }
        s => return Err(Attempt::Fail(Error::Fetch(format!("{url}: HTTP {s}")))),
    };
    if let (Some(total), Some(size)) = (total, expect.size)
        && total != size
    {
        // A different file than the one pinned: do not spend the bandwidth.
        return Err(Attempt::Fail(Error::Fetch(format!(
            "{url}: server offers {total} bytes, expected {size}"
        ))));
    }

    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await
        .map_err(|e| io_err(format!("opening {}", part.display()), e))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let already = if append { have } else { 0 };
    let mut progress = Progress::start(mode, label, total, already);
    let mut written = already;
    let result = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if let Err(e) = out.write_all(&chunk).await {
                    break Err(Attempt::Fail(io_err(
                        format!("writing {}", part.display()),
                        e,
                    )));
                }
                written += chunk.len() as u64;
                progress.advance(chunk.len() as u64);
            }
            Ok(None) => break Ok(()),
            Err(e) => {
                break Err(Attempt::Retry(format!(
                    "download interrupted: {}",
                    reqwest_chain(&e)
                )));
            }
        }
    };
    // Keep what arrived, even on failure: the next try resumes from it.
    let flushed = out.flush().await;
    progress.finish(result.is_ok());
    result?;
    flushed.map_err(|e| io_err(format!("writing {}", part.display()), e))?;
    if let Some(total) = total
        && written != total
    {
        return Err(Attempt::Retry(format!(
            "connection closed after {written} of {total} bytes"
        )));
    }
    Ok(())
}

/// `Content-Range: bytes START-END/TOTAL` as (START, Some(TOTAL)).
fn parse_content_range(resp: &reqwest::Response) -> Option<(u64, Option<u64>)> {
    let value = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    parse_content_range_value(value)
}

fn parse_content_range_value(value: &str) -> Option<(u64, Option<u64>)> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = range.split_once('/')?;
    let (start, _end) = span.split_once('-')?;
    let total = total.trim().parse().ok();
    Some((start.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range_value("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range_value("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range_value("items 5-9/10"), None);
    }

    #[test]
    fn loopback_detection() {
        assert!(all_loopback([
            "http://127.0.0.1:9/simple",
            "http://localhost:1/"
        ]));
        assert!(all_loopback(["http://[::1]:80/"]));
        assert!(!all_loopback([
            "http://127.0.0.1:9/",
            "https://pypi.org/simple"
        ]));
    }
}
