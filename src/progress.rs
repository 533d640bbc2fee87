//! How the library tells its caller what is happening; only the CLI draws progress bars.

/// Receives progress events from a pipeline run. Every method has a no-op default.
pub trait Reporter: Send + Sync {
    /// The run has `inputs` inputs to go through.
    fn start(&self, _inputs: usize) {}
    /// One input is done with: ingested, unchanged, unsupported or failed.
    fn input_done(&self, _input: &crate::pipeline::report::InputReport) {}
    /// `chunks` more chunks await embedding.
    fn chunks_queued(&self, _chunks: usize) {}
    /// `chunks` more chunks were embedded.
    fn embedded(&self, _chunks: usize) {}
    /// A message worth a line (a stage starting, an index being built).
    fn note(&self, _message: &str) {}
    fn finish(&self) {}
}

/// A reporter that says nothing.
pub struct Silent;

impl Reporter for Silent {}
