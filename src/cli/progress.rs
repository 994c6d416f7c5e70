//! Load progress on stderr: a labelled bar on a terminal, plain lines in a log.
//!
//! Input: byte counts from the loader's threads. Output: an `indicatif` bar when stderr
//! is a TTY; otherwise, once a load has run for 2 s, a line such as
//! `loading qwen3_moe: 40 % (1.2 of 3.0 GB)` at every tenth of the total and at least every
//! 5 s, so a long load in a log is never silent and a short one adds no noise. Nothing with
//! `--quiet`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::out::err;

/// How often a plain progress line is printed when the tenths come slowly.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// How long a load runs before plain progress lines start (test builds read
/// `WMAPC_TEST_PROGRESS_AFTER_MS`, so a process test sees the lines of a short load).
fn plain_after() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("WMAPC_TEST_PROGRESS_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Duration::from_millis(ms);
    }
    Duration::from_secs(2)
}

pub enum Progress {
    Quiet,
    Bar(indicatif::ProgressBar),
    Plain(Plain),
}

pub struct Plain {
    label: String,
    total: u64,
    done: AtomicU64,
    /// The last tenth printed and when.
    last: Mutex<(u64, Instant)>,
    /// When lines may start.
    quiet_until: Instant,
}

impl Progress {
    pub fn new(label: String, total: u64, quiet: bool) -> Progress {
        if quiet {
            return Progress::Quiet;
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Progress::Plain(Plain {
                label,
                total,
                done: AtomicU64::new(0),
                last: Mutex::new((0, Instant::now())),
                quiet_until: Instant::now() + plain_after(),
            });
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:40} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(label);
        Progress::Bar(bar)
    }

    pub fn tick(&self, n: u64) {
        match self {
            Progress::Quiet => {}
            Progress::Bar(bar) => bar.inc(n),
            Progress::Plain(p) => p.tick(n),
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

impl Plain {
    fn tick(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if Instant::now() < self.quiet_until {
            return;
        }
        let tenth = done.saturating_mul(10) / self.total.max(1);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if tenth > last.0 || last.1.elapsed() >= PLAIN_EVERY {
            *last = (tenth, Instant::now());
            err!(
                "{}: {} % ({:.1} of {:.1} MB)\n",
                self.label,
                (done.saturating_mul(100) / self.total.max(1)).min(100),
                done as f64 / 1e6,
                self.total as f64 / 1e6
            );
        }
    }
}
