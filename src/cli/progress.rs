//! Progress bars on stderr, when stderr is a terminal.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use moulin::pipeline::report::{InputReport, Status};
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

    fn input_done(&self, input: &InputReport) {
        let pages =
            self.pages.fetch_add(input.pages as u64, Ordering::Relaxed) + input.pages as u64;
        if input.status == Status::Failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let _ = self.multi.println(format!(
                "  failed {}: {}",
                super::paths::short(&input.path),
                input.reason.as_deref().unwrap_or("")
            ));
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

/// Logs what happens when no bars are drawn (with -v), so that a redirected
/// stderr says it; the summary lists the inputs that were not ingested.
pub struct Plain;

impl Reporter for Plain {
    fn input_done(&self, input: &InputReport) {
        tracing::info!(
            source = input.path,
            status = input.status.as_str(),
            reason = input.reason.as_deref().unwrap_or(""),
            "input done"
        );
    }

    fn note(&self, message: &str) {
        tracing::info!("{message}");
    }
}
