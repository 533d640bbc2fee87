//! A run over many workers: each shard runs the pipeline on its inputs and stages
//! its writes ([`Pipeline::run_shard`]), then one commit makes the run visible
//! ([`Pipeline::commit`]). See [`crate::store::staging`] for what is staged and
//! how the commit stays single and idempotent.

use std::time::Instant;

use super::report::RunReport;
use super::sources::Listing;
use super::{Context, Output, Pipeline, reusable};
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::progress::Reporter;
use crate::shard::Shard;
use crate::store::staging::Committed;
use crate::store::{Access, RunKind, RunRecord, RunStatus, Store};

/// The longest run id: it names a folder of the collection.
const MAX_RUN_ID_CHARS: usize = 128;

/// Whether `id` can name a run over many workers, with the reason if not.
pub fn check_run_id(id: &str) -> std::result::Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_RUN_ID_CHARS
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a run id: 1 to {MAX_RUN_ID_CHARS} ASCII letters, digits, '_', '-' and '.', not starting with '.'"
        ))
    }
}

/// What a commit did.
#[derive(Debug, Clone)]
pub struct CommitOutcome {
    /// Whether this commit made the run visible (false: it already was).
    pub committed: bool,
    /// The run's report, merged from its shards' (none when it was already in).
    pub report: Option<RunReport>,
}

impl Pipeline {
    /// Run shard `shard` of run `run_id`: the inputs whose document id falls in
    /// it, read, chunked and embedded as a whole run would, and written without
    /// committing; then the shard's manifest. No lock is taken: the shards of a
    /// run write at the same time, and only [`Pipeline::commit`] changes what
    /// readers see.
    pub async fn run_shard(
        &self,
        mut listing: Listing,
        shard: Shard,
        run_id: &str,
        reporter: &dyn Reporter,
    ) -> Result<RunReport> {
        check_run_id(run_id).map_err(|reason| Error::Collection {
            collection: self.config.collection.name.clone(),
            reason,
        })?;
        listing.inputs.retain(|l| shard.contains(&l.document_id()));
        let started = Instant::now();
        let mut report = self.new_report(listing.warnings.clone());
        report.run_id = run_id.to_string();
        report.shards = Some(shard.to_string());
        reporter.start(listing.inputs.len());
        let cfg = &self.config;
        let store =
            Store::connect_with(&cfg.collection.db, Access::Write, &cfg.collection.storage).await?;
        // The shards of a new collection may all try to create it: the losers open it.
        let opened = match self.open_collection(&store, reporter).await {
            Ok(opened) => opened,
            Err(first) => match self.open_collection(&store, reporter).await {
                Ok(opened) => opened,
                Err(_) => return Err(first),
            },
        };
        let (collection, stages, fingerprints) = opened;
        let staged = collection.stage(run_id).await?;
        report.versions_before = staged.base().clone();
        report.versions_after = staged.base().clone();
        let states = collection.document_states().await?;
        let ctx = Context {
            config: cfg,
            source: &collection,
            collection: &collection,
            stages: &stages,
            fingerprints: &fingerprints,
            reuse: reusable(&states, &fingerprints),
            states,
            client: crate::extract::fetch::client(&cfg.extract)?,
            run_id: run_id.to_string(),
            output: Output::Staged {
                writes: Box::new(tokio::sync::Mutex::new(staged)),
                shard,
            },
        };
        self.write(&ctx, &listing, &mut report, reporter).await?;
        let Output::Staged { writes, .. } = ctx.output else {
            unreachable!("a shard stages its writes")
        };
        let loaded = stages.get();
        report.seconds.model_load = loaded.map_or(0.0, |s| s.load_seconds);
        report.model = Some(loaded.map_or_else(
            || collection.info.model_info(),
            |s| s.embedder.info().clone(),
        ));
        report.seconds.total = started.elapsed().as_secs_f64();
        report.tally();
        let value = serde_json::to_value(&report).expect("serializable");
        writes.into_inner().finish(run_id, shard, value).await?;
        reporter.finish();
        Ok(report)
    }

    /// Commit run `run_id`: every shard must have finished; then the run becomes
    /// visible at once, is recorded in the collection's history with the merged
    /// report, and the indexes are refreshed once. Committing a run that is
    /// already in changes nothing.
    pub async fn commit(
        &self,
        run_id: &str,
        options: &super::RunOptions,
        reporter: &dyn Reporter,
    ) -> Result<CommitOutcome> {
        check_run_id(run_id).map_err(|reason| Error::Collection {
            collection: self.config.collection.name.clone(),
            reason,
        })?;
        let started = Instant::now();
        let cfg = &self.config;
        let store =
            Store::connect_with(&cfg.collection.db, Access::Read, &cfg.collection.storage).await?;
        let name = &cfg.collection.name;
        let _lock = store.lock(name, run_id, options.wait)?;
        let collection = store.open(name).await?;
        let runs = collection.run_summaries().await?;
        let recorded = runs
            .iter()
            .any(|r| r.run_id == run_id && r.status == RunStatus::Complete);
        if recorded {
            return Ok(CommitOutcome {
                committed: false,
                report: None,
            });
        }
        collection.check_no_half_commit(&runs, Some(run_id)).await?;
        let manifests = collection.staged_run(run_id).await?;
        let reports = manifests
            .iter()
            .map(|m| {
                serde_json::from_value::<RunReport>(m.report.clone()).map_err(|e| {
                    Error::Collection {
                        collection: name.clone(),
                        reason: format!("the report of shard {} cannot be read: {e}", m.shard()),
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut report = RunReport::merge(reports).expect("a staged run has shards");
        let base = crate::store::staging::run_base(&manifests);
        report.versions_before = base.clone();
        reporter.note("committing the run");
        let committed = collection.commit_staged(run_id, &manifests).await?;
        let mut run = RunRecord::start(RunKind::Ingest, &base, &report.config);
        run.run_id = run_id.to_string();
        run.started_at = report.started_at.clone();
        // The stage times are the shards'; the commit's own time goes with the index's.
        let total = report.seconds.total;
        self.record_run(&collection, &mut run, &mut report, started, reporter)
            .await?;
        report.seconds.total += total;
        Ok(CommitOutcome {
            committed: matches!(committed, Committed::Now(_)),
            report: Some(report),
        })
    }
}
