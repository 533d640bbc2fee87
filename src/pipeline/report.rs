//! The run report: what happened to every input, totals, and time per stage.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Extracted, chunked, embedded and written.
    Ingested,
    /// Left alone: unchanged since the last run, or a format moulin does not read.
    Skipped,
    /// Could not be read; the reason says why. Nothing of it is in the collection.
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputReport {
    pub path: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    pub pages: u32,
    pub chunks: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub inputs: usize,
    pub ingested: usize,
    pub skipped: usize,
    pub failed: usize,
    pub pages: u64,
    pub chunks: usize,
    /// Documents of earlier runs deleted because their source is gone (`prune`).
    pub pruned: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seconds {
    pub model_load: f64,
    pub extract: f64,
    pub chunk: f64,
    pub embed: f64,
    pub write: f64,
    pub index: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub moulin_version: String,
    pub started_at: String,
    pub collection: String,
    pub db: String,
    pub model: Option<crate::embed::ModelInfo>,
    pub config: serde_json::Value,
    pub totals: Totals,
    pub seconds: Seconds,
    pub inputs: Vec<InputReport>,
}

impl RunReport {
    /// 0 when nothing failed, 1 when some inputs failed.
    pub fn exit_code(&self) -> i32 {
        if self.totals.failed > 0 { 1 } else { 0 }
    }

    pub fn tally(&mut self) {
        let mut t = Totals {
            inputs: self.inputs.len(),
            pruned: self.totals.pruned,
            ..Default::default()
        };
        for i in &self.inputs {
            match i.status {
                Status::Ingested => t.ingested += 1,
                Status::Skipped => t.skipped += 1,
                Status::Failed => t.failed += 1,
            }
            t.pages += i.pages as u64;
            t.chunks += i.chunks;
        }
        self.totals = t;
    }
}
