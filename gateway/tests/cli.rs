//! The `tandem` binary: `config check`, `config hash-key`, `audit verify`, and `serve` answering
//! on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

#[test]
fn config_check_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../tandem.example.toml");
    let out = tandem()
        .args(["config", "check", example])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(
        stdout.contains("gpt-4o-mini -> openai, azure (fallback)"),
        "{stdout}"
    );
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[backends.x]\nkind = \"openai-compatible\"\nbase_url = \"nope\"\n",
    )
    .unwrap();
    let out = tandem()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("backends.x.base_url"), "{stderr}");
}

#[test]
fn hash_key_prints_sha256() {
    let out = tandem()
        .args(["config", "hash-key", "abc"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn serve_answers_health_and_models() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tandem()
        .args(["serve", "--offline", "--listen", "127.0.0.1:0"])
        .env("TANDEM_CACHE_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let addr = url.trim_start_matches("http://").to_owned();
    let get = |path: &str| -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    let models = get("/v1/models");
    assert!(
        models.contains("\"id\":\"local\"") && models.contains("smollm2-135m"),
        "{models}"
    );
    // An empty cache and --offline: the model cannot load, so not ready, and chat says why.
    std::thread::sleep(Duration::from_millis(300));
    let ready = get("/readyz");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("tandem models fetch"), "{ready}");
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn audit_verify_passes_an_intact_log_and_names_the_broken_record() {
    use tandem_gateway::audit::{AuditLog, AuditRecord, AuditRoute};
    use tandem_gateway::config::AuditSettings;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&AuditSettings {
        path: Some(path.clone()),
        max_bytes: 1 << 20,
    })
    .unwrap()
    .unwrap();
    let route = AuditRoute::default();
    for i in 0..3 {
        log.append(&AuditRecord {
            request_id: &format!("r{i}"),
            key: None,
            endpoint: "/v1/chat/completions",
            model: "m",
            status: 200,
            route: &route,
            usage: None,
            cost: 0.0,
        });
    }
    let out = tandem()
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("ok: 3 records"), "{stdout}");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("\"model\":\"m\"", "\"model\":\"x\"", 2),
    )
    .unwrap();
    let out = tandem()
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("audit.jsonl:1: "), "{stderr}");
}
