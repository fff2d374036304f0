//! A one-line progress bar on stderr, drawn only when stderr is a terminal.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// Redraws at most this often.
const REDRAW: Duration = Duration::from_millis(100);

pub struct Progress {
    label: &'static str,
    total: u64,
    started: Instant,
    drawn: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` items; silent unless `wanted` and stderr is a terminal.
    pub fn new(label: &'static str, total: u64, wanted: bool) -> Self {
        Self {
            label,
            total,
            started: Instant::now(),
            drawn: None,
            enabled: wanted && std::io::stderr().is_terminal(),
        }
    }

    pub fn set(&mut self, done: u64) {
        if !self.enabled || self.drawn.is_some_and(|drawn| drawn.elapsed() < REDRAW) {
            return;
        }
        self.drawn = Some(Instant::now());
        let width = 30;
        let filled = usize::try_from(done.saturating_mul(width) / self.total.max(1)).unwrap_or(0).min(30);
        let rate = rate(done, self.started.elapsed());
        eprint!(
            "\r{} [{}{}] {done}/{} ({rate:.0}/s) ",
            self.label,
            "#".repeat(filled),
            " ".repeat(30 - filled),
            self.total
        );
        let _ = std::io::stderr().flush();
    }

    pub fn finish(&mut self) {
        if self.enabled && self.drawn.is_some() {
            eprintln!();
        }
    }
}

/// Items per second.
pub fn rate(done: u64, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "a display figure")]
    let done = done as f64;
    done / elapsed.as_secs_f64().max(1e-9)
}
