//! The JSONL decision log: requests hand lines to a writer thread over a bounded channel, so a
//! request never waits on file IO; when the channel is full the line is dropped and counted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// A handle to the writer thread. Dropping every handle ends the thread after the queue drains,
/// and the last one waits for it, so a stopping gateway loses no decision.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    // Declared before `writer`, so each handle's sender is gone before its share of the writer.
    tx: SyncSender<String>,
    #[expect(dead_code, reason = "held for its drop, which joins the writer thread")]
    writer: Arc<Writer>,
    dropped: Arc<AtomicU64>,
    path: PathBuf,
}

/// Joins the writer thread when the last handle drops.
#[derive(Debug)]
struct Writer(Option<JoinHandle<()>>);

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

impl DecisionLog {
    /// Opens (appends to) `path` and starts the writer thread with room for `queue` lines.
    pub fn open(path: &Path, queue: usize) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = sync_channel(queue.max(1));
        let thread = std::thread::Builder::new()
            .name("tandem-decision-log".into())
            .spawn(move || write_lines(file, rx))?;
        Ok(Self {
            tx,
            writer: Arc::new(Writer(Some(thread))),
            dropped: Arc::new(AtomicU64::new(0)),
            path: path.to_owned(),
        })
    }

    /// Queues one line (without its newline); false when it was dropped (queue full or writer
    /// gone).
    pub fn append(&self, line: String) -> bool {
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes lines as they come and flushes whenever the queue is empty, so readers see every
/// decision soon after it was made.
fn write_lines(file: std::fs::File, rx: Receiver<String>) {
    let mut out = std::io::BufWriter::new(file);
    while let Ok(line) = rx.recv() {
        let mut result = writeln!(out, "{line}");
        while let Ok(more) = rx.try_recv() {
            result = result.and_then(|()| writeln!(out, "{more}"));
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "writing the decision log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_and_overflow_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d/decisions.jsonl");
        let log = DecisionLog::open(&path, 1024).unwrap();
        for i in 0..10 {
            assert!(log.append(format!("{{\"i\":{i}}}")));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 10 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn dropping_the_last_handle_writes_every_queued_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::open(&path, 4096).unwrap();
        let other = log.clone();
        for i in 0..2000 {
            assert!(log.append(format!("{{\"i\":{i}}}")));
        }
        drop(log);
        assert!(other.append("{\"last\":true}".into()));
        drop(other);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2001);
        assert_eq!(text.lines().last(), Some("{\"last\":true}"));
    }
}
