//! The tamper-evident audit log (`[audit] path`): one JSONL record per request (time, request
//! id, the API key's digest, the route decision, every backend that was sent the request, what
//! the privacy step found and did, tokens and cost). Each record carries the sha256 of the one
//! before it (`prev`) and of itself (`hash`, over the line without that field), so an edit, a
//! removal or a move breaks the chain. The active file is renamed after its first record's number
//! when it outgrows `max_bytes`, and the chain goes on in the next file; `<path>.head` holds the
//! last record's number and hash, so cutting records off the end shows too. [`verify`] checks
//! files and names the first broken record (`tandem audit verify`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tandem_cloud_adapters::Usage;

use crate::config::AuditSettings;

/// The `prev` of the first record ever written.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// `,"hash":"` + 64 hex digits + `"}`: how every record ends.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// What the audit log says about one request.
#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The sha256 hex digest of the API key, when the request carried one.
    pub key: Option<&'a str>,
    /// The API path (`/v1/chat/completions`).
    pub endpoint: &'a str,
    /// The model id asked for.
    pub model: &'a str,
    /// The HTTP status answered.
    pub status: u16,
    /// The route decision and the backends tried.
    pub route: &'a AuditRoute,
    /// Token counts, when the answer reported them.
    pub usage: Option<&'a Usage>,
    /// Dollars, from the answering backend's prices.
    pub cost: f64,
}

/// What the audit log keeps of a request's route: the decision as `x-tandem-route` said it, the
/// backend that answered, every backend the request was sent to, and what the privacy step did.
#[derive(Debug, Clone, Default)]
pub struct AuditRoute {
    /// The `x-tandem-route` explanation.
    pub explanation: String,
    /// The answering backend (empty when none answered).
    pub answered_by: String,
    /// Every backend sent the request, in order.
    pub backends: Vec<String>,
    /// The privacy step's action and the kinds found, as JSON.
    pub privacy: Option<Value>,
}

/// The audit record of a request whose answer is still streaming: written when the stream ends,
/// with its tokens and cost.
#[derive(Debug, Clone)]
pub struct PendingAudit {
    /// The request id.
    pub request_id: std::sync::Arc<str>,
    /// The API key's digest.
    pub key: Option<String>,
    /// The API path.
    pub endpoint: &'static str,
    /// The model id asked for.
    pub model: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The route decision.
    pub route: AuditRoute,
}

impl PendingAudit {
    /// The record of a request to `endpoint` as it arrives: its id and the digest of the API key
    /// auth left in its extensions; the rest is filled in as the request goes.
    pub fn arriving(
        parts: &http::request::Parts,
        request_id: std::sync::Arc<str>,
        endpoint: &'static str,
    ) -> Self {
        Self {
            request_id,
            key: parts
                .extensions
                .get::<crate::context::ApiKeyDigest>()
                .map(crate::context::ApiKeyDigest::to_hex),
            endpoint,
            model: String::new(),
            status: 0,
            route: AuditRoute::default(),
        }
    }

    /// Writes the record to `log`.
    pub fn write(&self, log: &AuditLog, usage: Option<&Usage>, cost: f64) {
        log.append(&AuditRecord {
            request_id: &self.request_id,
            key: self.key.as_deref(),
            endpoint: self.endpoint,
            model: &self.model,
            status: self.status,
            route: &self.route,
            usage,
            cost,
        });
    }
}

/// The open audit log. One writer at a time: records are chained in the order they are written.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    inner: Mutex<Chain>,
}

#[derive(Debug)]
struct Chain {
    file: File,
    size: u64,
    /// The number of the next record.
    seq: u64,
    /// The hash of the last record written.
    prev: String,
    /// The number of the active file's first record.
    first_in_file: u64,
    head: File,
}

impl AuditLog {
    /// Opens the log `settings` names (None when it names none) and picks the chain up where the
    /// last record, in the active file or the newest rotated one, left it.
    pub fn open(settings: &AuditSettings) -> std::io::Result<Option<Self>> {
        let Some(path) = &settings.path else {
            return Ok(None);
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut last = last_record(path)?;
        if last.is_none()
            && let Some(rotated) = rotated_files(path)?.last()
        {
            last = last_record(rotated)?;
        }
        let (seq, prev) = match last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (0, GENESIS.to_owned()),
        };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        let first_in_file = match first_record_seq(path)? {
            Some(first) => first,
            None => seq,
        };
        let head = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(head_path(path))?;
        Ok(Some(Self {
            path: path.clone(),
            max_bytes: settings.max_bytes,
            inner: Mutex::new(Chain {
                file,
                size,
                seq,
                prev,
                first_in_file,
                head,
            }),
        }))
    }

    /// Appends one record; an IO failure is logged (the request was answered already).
    pub fn append(&self, record: &AuditRecord<'_>) {
        if let Err(e) = self.try_append(record) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }

    fn try_append(&self, r: &AuditRecord<'_>) -> std::io::Result<()> {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let tokens = r.usage.map(|u| {
            json!({
                "input": u.prompt_tokens,
                "output": u.completion_tokens,
                "cached_input": u.cached_prompt_tokens,
            })
        });
        let mut guard = self.inner.lock();
        let chain = &mut *guard;
        let body = json!({
            "seq": chain.seq,
            "time_ms": time_ms,
            "request_id": r.request_id,
            "key": r.key,
            "endpoint": r.endpoint,
            "model": r.model,
            "status": r.status,
            "answered_by": (!r.route.answered_by.is_empty()).then_some(r.route.answered_by.as_str()),
            "backends": r.route.backends,
            "route": r.route.explanation,
            "privacy": r.route.privacy,
            "tokens": tokens,
            "cost_usd": r.cost,
            "prev": chain.prev,
        })
        .to_string();
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        // The body ends in `}`; the hash goes in as its last field.
        let mut line = String::with_capacity(body.len() + HASH_SUFFIX_LEN + 1);
        line.push_str(&body[..body.len() - 1]);
        line.push_str(",\"hash\":\"");
        line.push_str(&hash);
        line.push_str("\"}\n");
        chain.file.write_all(line.as_bytes())?;
        chain.size += line.len() as u64;
        let seq = chain.seq;
        chain.seq += 1;
        chain.prev = hash;
        write_head(&mut chain.head, seq, &chain.prev)?;
        if chain.size >= self.max_bytes {
            self.rotate(chain)?;
        }
        Ok(())
    }

    /// Renames the active file after its first record's number and starts an empty one.
    fn rotate(&self, chain: &mut Chain) -> std::io::Result<()> {
        chain.file.flush()?;
        let rotated = rotated_name(&self.path, chain.first_in_file);
        std::fs::rename(&self.path, rotated)?;
        chain.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        chain.size = 0;
        chain.first_in_file = chain.seq;
        Ok(())
    }
}

fn head_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

fn rotated_name(path: &Path, first: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{first:012}"));
    PathBuf::from(name)
}

/// The rotated files of `path`, oldest first.
fn rotated_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .and_then(|n| {
                    n.strip_prefix(&prefix)
                        .map(|s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()))
                })
                .unwrap_or(false)
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The head file: the last record's number and hash, rewritten in place (fixed width).
fn write_head(head: &mut File, seq: u64, hash: &str) -> std::io::Result<()> {
    use std::io::Seek;
    // Padded to one width, so each write covers the last one whole.
    let record = format!("{{\"seq\":{seq},\"hash\":\"{hash}\"}}");
    let text = format!("{record:<104}\n");
    head.seek(std::io::SeekFrom::Start(0))?;
    head.write_all(text.as_bytes())
}

/// The number and hash of a file's last record, None when it has none.
fn last_record(path: &Path) -> std::io::Result<Option<(u64, String)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for line in BufReader::new(file).lines() {
        let line = line?;
        if let Ok(record) = Parsed::read(&line) {
            last = Some((record.seq, record.hash));
        }
    }
    Ok(last)
}

fn first_record_seq(path: &Path) -> std::io::Result<Option<u64>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let first = BufReader::new(file).lines().next().transpose()?;
    Ok(first.and_then(|l| Parsed::read(&l).ok()).map(|r| r.seq))
}

/// One record as read back.
struct Parsed {
    seq: u64,
    prev: String,
    hash: String,
}

impl Parsed {
    /// Reads a line and checks its own hash.
    fn read(line: &str) -> Result<Self, &'static str> {
        if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with("\"}") {
            return Err("incomplete record (the file was cut or the line edited)");
        }
        let split = line.len() - HASH_SUFFIX_LEN;
        let (head, suffix) = line.split_at(split);
        let Some(hash) = suffix
            .strip_prefix(",\"hash\":\"")
            .and_then(|s| s.strip_suffix("\"}"))
        else {
            return Err("incomplete record (the file was cut or the line edited)");
        };
        let body = format!("{head}}}");
        if hex::encode(Sha256::digest(body.as_bytes())) != hash {
            return Err("the record's hash does not match its content (edited)");
        }
        let value: Value = serde_json::from_str(&body).map_err(|_| "not a JSON record")?;
        let seq = value["seq"].as_u64().ok_or("no record number")?;
        let prev = value["prev"].as_str().ok_or("no prev hash")?.to_owned();
        Ok(Self {
            seq,
            prev,
            hash: hash.to_owned(),
        })
    }
}

/// The outcome of [`verify`] on an intact chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Files checked.
    pub files: usize,
    /// The first and last record numbers.
    pub seqs: Option<(u64, u64)>,
    /// Whether a head file confirmed that no record is missing at the end.
    pub head_checked: bool,
}

/// Where and why a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct Broken {
    /// The file holding the first broken record.
    pub file: PathBuf,
    /// Its line, from 1.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Checks the chain across `files` (any order: they are put in the order of their first
/// records), and against the head file beside them when there is one. Returns the first broken
/// record, by file and line.
pub fn verify(files: &[PathBuf]) -> Result<Verified, Broken> {
    let broken = |file: &Path, line: usize, reason: String| Broken {
        file: file.to_owned(),
        line,
        reason,
    };
    let mut contents = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| broken(path, 0, format!("cannot read: {e}")))?;
        let first = text
            .lines()
            .next()
            .map(|l| Parsed::read(l).map(|r| r.seq).unwrap_or(u64::MAX))
            .unwrap_or(u64::MAX);
        contents.push((first, path.clone(), text));
    }
    contents.sort_by_key(|(first, _, _)| *first);
    let mut expected: Option<(u64, String)> = None;
    let mut records = 0;
    let mut first_seq = None;
    let mut last: Option<(PathBuf, usize)> = None;
    for (_, path, text) in &contents {
        let complete = text.is_empty() || text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let at = i + 1;
            if !complete && at == lines.len() {
                return Err(broken(
                    path,
                    at,
                    "incomplete record (the file was cut)".into(),
                ));
            }
            let record = Parsed::read(line).map_err(|why| broken(path, at, why.into()))?;
            match &expected {
                None if record.seq == 0 && record.prev != GENESIS => {
                    return Err(broken(path, at, "record 0 does not start the chain".into()));
                }
                None => {}
                Some((seq, prev)) => {
                    if record.seq != *seq {
                        return Err(broken(
                            path,
                            at,
                            format!(
                                "record {} where record {seq} was expected (records removed or moved)",
                                record.seq
                            ),
                        ));
                    }
                    if record.prev != *prev {
                        return Err(broken(
                            path,
                            at,
                            format!(
                                "record {} does not follow the record before it (that one was edited, removed or moved)",
                                record.seq
                            ),
                        ));
                    }
                }
            }
            first_seq.get_or_insert(record.seq);
            records += 1;
            last = Some((path.clone(), at));
            expected = Some((record.seq + 1, record.hash));
        }
    }
    let mut head_checked = false;
    if let Some(head) = files.iter().find_map(|f| head_for(f)) {
        let text = std::fs::read_to_string(&head).unwrap_or_default();
        let value: Value = serde_json::from_str(text.trim()).unwrap_or_default();
        if let (Some(seq), Some(hash)) = (value["seq"].as_u64(), value["hash"].as_str()) {
            let (file, line) = last.clone().unwrap_or((head.clone(), 0));
            match &expected {
                Some((next, last_hash)) if next - 1 == seq && last_hash == hash => {}
                Some((next, _)) if next - 1 < seq => {
                    return Err(broken(
                        &file,
                        line,
                        format!(
                            "the log ends at record {} but record {seq} was written (records after this one were cut off)",
                            next - 1
                        ),
                    ));
                }
                _ => {
                    return Err(broken(
                        &file,
                        line,
                        format!(
                            "the last record does not match {} (record {seq})",
                            head.display()
                        ),
                    ));
                }
            }
            head_checked = true;
        }
    }
    Ok(Verified {
        records,
        files: files.len(),
        seqs: first_seq.zip(expected.map(|(next, _)| next - 1)),
        head_checked,
    })
}

/// The head file of the log `file` belongs to: `<file>.head`, or for a rotated file
/// (`<path>.000000000042`) `<path>.head`.
fn head_for(file: &Path) -> Option<PathBuf> {
    let direct = head_path(file);
    if direct.is_file() {
        return Some(direct);
    }
    let text = file.to_string_lossy();
    let (base, suffix) = text.rsplit_once('.')?;
    (suffix.len() == 12 && suffix.bytes().all(|b| b.is_ascii_digit()))
        .then(|| head_path(Path::new(base)))
        .filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(log: &AuditLog, n: usize) {
        let route = AuditRoute {
            answered_by: "openai".into(),
            explanation: "openai; route gpt".into(),
            backends: vec!["openai".into()],
            privacy: None,
        };
        for i in 0..n {
            let id = format!("req-{i}");
            log.append(&AuditRecord {
                request_id: &id,
                key: None,
                endpoint: "/v1/chat/completions",
                model: "gpt",
                status: 200,
                route: &route,
                usage: Some(&Usage::default()),
                cost: 0.0,
            });
        }
    }

    #[test]
    fn the_chain_rotates_and_continues_across_files_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let settings = AuditSettings {
            path: Some(path.clone()),
            max_bytes: 2048,
        };
        write(&AuditLog::open(&settings).unwrap().unwrap(), 10);
        // A restart picks the chain up.
        write(&AuditLog::open(&settings).unwrap().unwrap(), 10);
        let mut files = rotated_files(&path).unwrap();
        assert!(files.len() >= 2, "{files:?}");
        files.push(path.clone());
        let ok = verify(&files).unwrap();
        assert_eq!(ok.records, 20);
        assert_eq!(ok.seqs, Some((0, 19)));
        assert!(ok.head_checked);
        // Dropping the newest file is cutting the tail off.
        files.pop();
        if std::fs::metadata(&path).unwrap().len() > 0 {
            assert!(verify(&files).is_err());
        }
    }
}
