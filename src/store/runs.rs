//! The runs table: every run that wrote a collection, with its counts, the table
//! versions before and after it, its configuration and its report. It is what
//! `moulin collections runs` lists and what `rollback` goes back to.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase};
use serde::{Deserialize, Serialize};

use super::rows;
use crate::error::{Error, Result};

pub(crate) const TABLE: &str = "runs";

/// What wrote the collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Ingest,
    Reindex,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Started and not finished: still going, or killed.
    Running,
    Complete,
    /// Stopped by an error; what it committed before stays.
    Failed,
}

/// Documents a run added, updated, re-chunked, left unchanged, deleted, or could not read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    pub added: u64,
    pub updated: u64,
    pub rechunked: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub failed: u64,
}

/// Table versions, before and after a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub chunks: u64,
    pub documents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub kind: RunKind,
    pub status: RunStatus,
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub chunks_before: u64,
    pub documents_before: u64,
    #[serde(default)]
    pub chunks_after: Option<u64>,
    #[serde(default)]
    pub documents_after: Option<u64>,
    /// The configuration of the run (JSON, no secrets).
    pub config: String,
    /// The run report (JSON), once the run is over.
    #[serde(default)]
    pub report: Option<String>,
    /// What a rollback went back to, or why a run failed.
    #[serde(default)]
    pub note: Option<String>,
}

impl RunRecord {
    /// A run starting now, against tables at `before`.
    pub fn start(kind: RunKind, before: &Versions, config: &serde_json::Value) -> Self {
        RunRecord {
            run_id: new_run_id(),
            kind,
            status: RunStatus::Running,
            started_at: now(),
            finished_at: None,
            counts: RunCounts::default(),
            chunks_before: before.chunks,
            documents_before: before.documents,
            chunks_after: None,
            documents_after: None,
            config: config.to_string(),
            report: None,
            note: None,
        }
    }

    /// The run went through, leaving the tables at `after`.
    pub fn complete(&mut self, after: &Versions) {
        self.status = RunStatus::Complete;
        self.finished_at = Some(now());
        self.chunks_after = Some(after.chunks);
        self.documents_after = Some(after.documents);
    }

    /// The run stopped on an error, said in its note.
    pub fn fail(&mut self, reason: String) {
        self.status = RunStatus::Failed;
        self.finished_at = Some(now());
        self.note = Some(reason);
    }

    /// The tables it started from, once they are known (after the lock).
    pub fn set_before(&mut self, before: &Versions) {
        self.chunks_before = before.chunks;
        self.documents_before = before.documents;
    }

    /// The versions this run left, when it completed.
    pub fn after(&self) -> Option<Versions> {
        Some(Versions {
            chunks: self.chunks_after?,
            documents: self.documents_after?,
        })
    }
}

/// Now, as runs record times.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A run id that sorts by time and does not depend on the machine: the UTC
/// time to the second and 6 random hex digits (`20261130T142501Z-3f9a1c`).
pub fn new_run_id() -> String {
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    format!("{now}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

pub fn schema() -> SchemaRef {
    let s = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let u = |n: &str, null: bool| Field::new(n, DataType::UInt64, null);
    // The run id is the table's key: Lance then refuses to rebase one
    // merge-insert over another that inserted the same id (two commits of one
    // sharded run racing on object storage), and the loser's retry updates the
    // row instead of adding a second one.
    let key = s("run_id", false).with_metadata(
        [(
            "lance-schema:unenforced-primary-key".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    Arc::new(Schema::new(vec![
        key,
        s("kind", false),
        s("status", false),
        s("started_at", false),
        s("finished_at", true),
        u("added", false),
        u("updated", false),
        u("rechunked", false),
        u("unchanged", false),
        u("deleted", false),
        u("failed", false),
        u("chunks_before", false),
        u("documents_before", false),
        u("chunks_after", true),
        u("documents_after", true),
        s("config", false),
        s("report", true),
        s("note", true),
    ]))
}

pub(crate) struct Runs {
    pub table: lancedb::Table,
}

impl Runs {
    fn err(&self) -> impl Fn(lancedb::Error) -> Error + '_ {
        |e| Error::Collection {
            collection: TABLE.into(),
            reason: super::describe(&e),
        }
    }

    /// Record a run, or its new state, in one commit.
    pub async fn put(&self, run: &RunRecord) -> Result<()> {
        let batch = rows::to_batch(TABLE, schema(), std::slice::from_ref(run))?;
        let reader = arrow_array::RecordBatchIterator::new([Ok(batch)], schema());
        let mut merge = self.table.merge_insert(&["run_id"]);
        merge
            .when_matched_update_all(None)
            .when_not_matched_insert_all();
        merge.execute(Box::new(reader)).await.map_err(self.err())?;
        Ok(())
    }

    /// Every run recorded, oldest first; without their reports unless `reports`
    /// (a report lists every input: large for large collections).
    pub async fn list(&self, reports: bool) -> Result<Vec<RunRecord>> {
        let mut query = self.table.query();
        if !reports {
            let columns: Vec<String> = schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| n != "report")
                .collect();
            query = query.select(lancedb::query::Select::columns(&columns));
        }
        let batches: Vec<arrow_array::RecordBatch> = query
            .execute()
            .await
            .map_err(self.err())?
            .try_collect()
            .await
            .map_err(self.err())?;
        let runs: Vec<RunRecord> = rows::from_batches(TABLE, &batches)?;
        Ok(one_per_run(runs))
    }
}

/// The runs sorted by id, one record each. Tables written before the run id
/// was declared their key can hold a run twice (two racing commits of one
/// sharded run both inserted it): the furthest along of its records stands.
fn one_per_run(mut runs: Vec<RunRecord>) -> Vec<RunRecord> {
    let rank = |r: &RunRecord| match r.status {
        RunStatus::Running => 0,
        RunStatus::Failed => 1,
        RunStatus::Complete => 2,
    };
    runs.sort_by(|a, b| {
        a.run_id
            .cmp(&b.run_id)
            .then_with(|| rank(a).cmp(&rank(b)))
            .then_with(|| a.finished_at.cmp(&b.finished_at))
    });
    let mut out: Vec<RunRecord> = Vec::with_capacity(runs.len());
    for run in runs {
        match out.last_mut() {
            Some(last) if last.run_id == run.run_id => *last = run,
            _ => out.push(run),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: RunStatus) -> RunRecord {
        let mut run = RunRecord::start(
            RunKind::Ingest,
            &Versions::default(),
            &serde_json::json!({}),
        );
        run.run_id = id.into();
        if status == RunStatus::Complete {
            run.complete(&Versions {
                chunks: 2,
                documents: 2,
            });
        }
        run
    }

    #[test]
    fn a_run_recorded_twice_is_listed_once_furthest_along() {
        let runs = vec![
            record("b", RunStatus::Complete),
            record("a", RunStatus::Running),
            record("b", RunStatus::Running),
            record("a", RunStatus::Running),
        ];
        let listed = one_per_run(runs);
        let ids: Vec<_> = listed.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(listed[1].status, RunStatus::Complete);
    }

    /// Real LanceDB on disk: puts of one run racing each other leave one row.
    #[test]
    fn racing_puts_of_one_run_leave_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let db = lancedb::connect(dir.path().to_str().unwrap())
                .execute()
                .await
                .unwrap();
            let table = db
                .create_empty_table(TABLE, schema())
                .execute()
                .await
                .unwrap();
            let runs = Arc::new(Runs { table });
            let mut tasks = Vec::new();
            for i in 0..6 {
                let runs = runs.clone();
                tasks.push(tokio::spawn(async move {
                    let status = if i % 2 == 0 {
                        RunStatus::Running
                    } else {
                        RunStatus::Complete
                    };
                    runs.put(&record("racing", status)).await
                }));
            }
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            assert_eq!(runs.table.count_rows(None).await.unwrap(), 1);
        });
    }
}
