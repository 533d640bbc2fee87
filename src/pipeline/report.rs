//! The run report: what happened to every input, totals, and time per stage.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Extracted, chunked, embedded and written.
    Ingested,
    /// The same bytes as the stored document: nothing to do.
    Unchanged,
    /// Not a format moulin reads; the reason says what it looked like.
    Unsupported,
    /// A format moulin reads that could not be read, or a page that could not be
    /// fetched; the reason says why. A version stored by an earlier run is kept.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ingested => "ingested",
            Status::Unchanged => "unchanged",
            Status::Unsupported => "unsupported",
            Status::Failed => "failed",
        }
    }
}

/// What an ingested input was to the collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// A new document.
    Added,
    /// Its bytes changed: read again, chunks swapped.
    Updated,
    /// The same bytes, chunked again from its stored text because the chunker or
    /// embedding settings changed.
    Rechunked,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputReport {
    /// The input's source: its absolute path, or its URL.
    pub path: String,
    pub status: Status,
    /// For an ingested input: added, updated or re-chunked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    pub pages: u32,
    pub chunks: usize,
    /// The user named this input (a file or URL), rather than moulin finding it
    /// in a folder: if it is unsupported, the run counts it as a failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub named: bool,
    /// What extraction noticed and went past (a name that says another format).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl InputReport {
    /// Whether this input makes the run's exit code 1.
    pub fn counts_as_failure(&self) -> bool {
        match self.status {
            Status::Failed => true,
            Status::Unsupported => self.named,
            Status::Ingested | Status::Unchanged => false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub inputs: usize,
    pub ingested: usize,
    pub added: usize,
    pub updated: usize,
    pub rechunked: usize,
    pub unchanged: usize,
    pub unsupported: usize,
    pub failed: usize,
    pub pages: u64,
    pub chunks: usize,
    /// Chunks embedded by this run; the others kept their stored vectors.
    pub embedded: usize,
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
    /// The run's id: its writes carry it, `moulin collections runs` lists it.
    pub run_id: String,
    pub started_at: String,
    pub collection: String,
    pub db: String,
    pub model: Option<crate::embed::ModelInfo>,
    /// The configuration of the run, without secrets.
    pub config: serde_json::Value,
    /// The versions of the chunks and documents tables before and after the run.
    pub versions_before: crate::store::Versions,
    pub versions_after: crate::store::Versions,
    /// For a run over many workers: the shards whose work this report holds
    /// (`2/8` for one shard; all of them once committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<String>,
    pub totals: Totals,
    pub seconds: Seconds,
    /// Problems that did not stop the run (a source that lists nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub inputs: Vec<InputReport>,
}

impl RunReport {
    /// 0 when every input went through; 1 when an input failed, or an input the
    /// user named is in a format moulin does not read.
    pub fn exit_code(&self) -> i32 {
        if self.inputs.iter().any(InputReport::counts_as_failure) {
            1
        } else {
            0
        }
    }

    /// The report of a run over many workers, from its shards' reports (by
    /// shard): their inputs and warnings, their stage times added up (worker
    /// seconds), the earliest start.
    pub fn merge(shards: Vec<RunReport>) -> Option<RunReport> {
        let count = shards.len();
        let mut iter = shards.into_iter();
        let mut out = iter.next()?;
        for r in iter {
            if r.started_at < out.started_at {
                out.started_at = r.started_at;
            }
            if out.model.is_none() {
                out.model = r.model;
            }
            out.totals.pruned += r.totals.pruned;
            out.totals.embedded += r.totals.embedded;
            let (a, b) = (&mut out.seconds, &r.seconds);
            a.model_load += b.model_load;
            a.extract += b.extract;
            a.chunk += b.chunk;
            a.embed += b.embed;
            a.write += b.write;
            a.total = a.total.max(b.total);
            for w in r.warnings {
                if !out.warnings.contains(&w) {
                    out.warnings.push(w);
                }
            }
            out.inputs.extend(r.inputs);
        }
        out.shards = Some(format!("{count} of {count}"));
        out.tally();
        Some(out)
    }

    pub fn tally(&mut self) {
        let mut t = Totals {
            inputs: self.inputs.len(),
            pruned: self.totals.pruned,
            embedded: self.totals.embedded,
            ..Default::default()
        };
        for i in &self.inputs {
            match i.change {
                Some(Change::Added) => t.added += 1,
                Some(Change::Updated) => t.updated += 1,
                Some(Change::Rechunked) => t.rechunked += 1,
                None => {}
            }
            match i.status {
                Status::Ingested => t.ingested += 1,
                Status::Unchanged => t.unchanged += 1,
                Status::Unsupported => t.unsupported += 1,
                Status::Failed => t.failed += 1,
            }
            t.pages += i.pages as u64;
            t.chunks += i.chunks;
        }
        self.totals = t;
    }
}
