//! Download progress on stderr: a bar on a terminal, a few plain lines otherwise, or nothing.
//! The one place the fetcher writes to the terminal: `tandem models fetch` is interactive.
#![allow(clippy::print_stderr)]

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain-line mode reports.
const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// How progress is shown for this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgressMode {
    /// Nothing at all.
    Quiet,
    /// Plain lines (logs, CI).
    Lines,
    /// An indicatif bar.
    Bar,
}

impl ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise, nothing when quiet.
    pub(crate) fn detect(quiet: bool) -> Self {
        if quiet {
            Self::Quiet
        } else if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Lines
        }
    }

    /// Print a status line (not in quiet mode).
    pub(crate) fn note(self, message: &str) {
        if self != Self::Quiet {
            eprintln!("{message}");
        }
    }
}

/// Progress of one download.
pub(crate) struct Progress {
    label: String,
    kind: Kind,
    total: Option<u64>,
    done: u64,
    started_at: u64,
    start: Instant,
    last_line: Instant,
}

enum Kind {
    Quiet,
    Lines,
    Bar(ProgressBar),
}

impl Progress {
    /// Start showing a download of `total` bytes (if known), `already` of them present from before.
    pub(crate) fn start(mode: ProgressMode, label: &str, total: Option<u64>, already: u64) -> Self {
        let kind = match mode {
            ProgressMode::Quiet => Kind::Quiet,
            ProgressMode::Lines => {
                let size = total.map_or_else(|| "unknown size".to_string(), human_bytes);
                if already > 0 {
                    eprintln!(
                        "fetching {label} ({size}), resuming at {}",
                        human_bytes(already)
                    );
                } else {
                    eprintln!("fetching {label} ({size})");
                }
                Kind::Lines
            }
            ProgressMode::Bar => {
                // The message goes last and is cut to fit, so the bar stays on one line.
                let template = if total.is_some() {
                    "[{bar:25}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {wide_msg}"
                } else {
                    "{spinner} {bytes} {binary_bytes_per_sec} {wide_msg}"
                };
                let mut bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
                    .with_message(label.to_string())
                    .with_position(already);
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar = bar.with_style(style.progress_chars("=> "));
                }
                bar.reset_eta();
                Kind::Bar(bar)
            }
        };
        let now = Instant::now();
        Self {
            label: label.to_string(),
            kind,
            total,
            done: already,
            started_at: already,
            start: now,
            last_line: now,
        }
    }

    /// `n` more bytes arrived.
    pub(crate) fn advance(&mut self, n: u64) {
        self.done += n;
        match &self.kind {
            Kind::Quiet => {}
            Kind::Bar(bar) => bar.set_position(self.done),
            Kind::Lines => {
                if self.last_line.elapsed() >= LINE_INTERVAL {
                    self.last_line = Instant::now();
                    let pct = self
                        .total
                        .filter(|t| *t > 0)
                        .map(|t| format!(" ({:.0}%)", self.done as f64 * 100.0 / t as f64))
                        .unwrap_or_default();
                    eprintln!(
                        "  {}: {}{pct}, {}/s",
                        self.label,
                        human_bytes(self.done),
                        human_bytes(self.rate())
                    );
                }
            }
        }
    }

    /// The download ended (well or not).
    pub(crate) fn finish(self, ok: bool) {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = self.rate();
        match self.kind {
            Kind::Quiet => {}
            Kind::Bar(bar) => {
                bar.finish_and_clear();
                if ok {
                    eprintln!(
                        "fetched {} ({} in {secs:.1} s, {}/s)",
                        self.label,
                        human_bytes(self.done - self.started_at),
                        human_bytes(rate)
                    );
                }
            }
            Kind::Lines if ok => eprintln!(
                "  {}: done, {} in {secs:.1} s ({}/s)",
                self.label,
                human_bytes(self.done - self.started_at),
                human_bytes(rate)
            ),
            Kind::Lines => {}
        }
    }

    fn rate(&self) -> u64 {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        ((self.done - self.started_at) as f64 / secs) as u64
    }
}

/// Bytes as `12.3 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn formats_bytes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(98_362_432), "93.8 MiB");
    }
}
