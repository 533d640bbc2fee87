//! Progress bars on stderr, when stderr is a terminal.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use moulin::progress::Reporter;

pub struct Bars {
    multi: MultiProgress,
    files: ProgressBar,
    embed: ProgressBar,
    pages: AtomicU64,
    failed: AtomicUsize,
    started: Mutex<Option<Instant>>,
}

impl Bars {
    /// Bars when stderr is a terminal and the user did not ask for quiet; `None` otherwise.
    pub fn new(quiet: bool) -> Option<Bars> {
        use std::io::IsTerminal;
        if quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let files = multi.add(ProgressBar::new(0));
        files.set_style(
            ProgressStyle::with_template(
                "{prefix:>9.bold} [{bar:30}] {pos}/{len} files, {msg} ({eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        files.set_prefix("Reading");
        let embed = multi.add(ProgressBar::new(0));
        embed.set_style(
            ProgressStyle::with_template(
                "{prefix:>9.bold} [{bar:30}] {pos}/{len} chunks, {per_sec} ({eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        embed.set_prefix("Embedding");
        Some(Bars {
            multi,
            files,
            embed,
            pages: AtomicU64::new(0),
            failed: AtomicUsize::new(0),
            started: Mutex::new(None),
        })
    }
}

impl Reporter for Bars {
    fn start(&self, inputs: usize) {
        self.files.set_length(inputs as u64);
        *self.started.lock().expect("not poisoned") = Some(Instant::now());
    }

    fn input_done(&self, source: &str, pages: u32, failed: Option<&str>) {
        let pages = self.pages.fetch_add(pages as u64, Ordering::Relaxed) + pages as u64;
        if let Some(reason) = failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let _ = self.multi.println(format!("  failed {source}: {reason}"));
        }
        self.files.inc(1);
        self.files.set_message(format!(
            "{pages} pages, {} failed",
            self.failed.load(Ordering::Relaxed)
        ));
    }

    fn chunks_queued(&self, chunks: usize) {
        self.embed.inc_length(chunks as u64);
    }

    fn embedded(&self, chunks: usize) {
        self.embed.inc(chunks as u64);
    }

    fn note(&self, message: &str) {
        self.files.set_message(message.to_string());
    }

    fn finish(&self) {
        self.files.finish_and_clear();
        self.embed.finish_and_clear();
    }
}

/// Logs the failures when no bars are drawn, so that a redirected stderr still says what failed.
pub struct Plain;

impl Reporter for Plain {
    fn input_done(&self, source: &str, _pages: u32, failed: Option<&str>) {
        if let Some(reason) = failed {
            tracing::warn!(source, reason, "failed");
        }
    }

    fn note(&self, message: &str) {
        tracing::info!("{message}");
    }
}
