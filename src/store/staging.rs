//! Staged runs: the shards of one run write their data files without committing,
//! each with a small manifest, and one commit makes the whole run visible.
//!
//! A shard ([`StagedWrites`]) writes its chunks and document rows as Lance data
//! files that no version references yet, and records what it wrote (the
//! fragments), which stored documents it replaces and which it deletes, and its
//! report, in `{db}/_moulin/{collection}/staging/{run_id}/shard-I-of-N.json`. A
//! rerun of a shard writes new files and replaces its manifest; the files of
//! the attempt it replaces are never referenced, and Lance's cleanup removes
//! them once they are older than its unverified-file threshold (7 days), never
//! while a run may still be writing.
//!
//! [`Collection::commit_staged`] reads the manifests, checks that every shard
//! is there and read the same versions, then commits each table once: one Lance
//! `Update` transaction that removes the replaced documents' rows and adds every
//! shard's fragments, so that a reader sees the run entirely or not at all. The
//! transaction carries the run id in its properties: a commit that finds it in
//! the history knows the run is in, and a second commit of the same run (or two
//! racing) cannot apply it twice — the transaction also carries a key filter
//! with the run id, which Lance's conflict check refuses to rebase over another
//! update.
//!
//! Manifests are removed by the upkeep ([`Collection::expire_staging`]): a
//! committed run's an hour after its commit (a commit racing it still reads
//! them), an abandoned run's once nothing under its staging folder is newer
//! than Lance's unverified-file threshold (its data files go at the same age).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use lance::Dataset;
use lance::dataset::transaction::{Operation, TransactionBuilder, UpdateMode};
use lance::dataset::{CommitBuilder, DeleteBuilder, InsertBuilder, WriteMode, WriteParams};
use lance::table::format::Fragment;
use lance::table::format::key_existence::{KeyExistenceFilterBuilder, KeyValue};
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use super::{
    Collection, DocumentRow, EmbeddedDocument, Versions, documents, id_filter, rows, schema,
};
use crate::error::{Error, Result};
use crate::shard::Shard;

/// The transaction property that names the run a commit applied.
const RUN_PROPERTY: &str = "moulin.run_id";

/// Set in the environment, a commit stops (aborts) between its two tables:
/// how the tests put a collection in the state a kill there leaves.
#[doc(hidden)]
pub const FAIL_BETWEEN_TABLES: &str = "MOULIN_TEST_ABORT_BETWEEN_TABLES";

/// Buffered rows are written as data files once they take this much memory.
const FLUSH_BYTES: usize = 64 << 20;

/// What one shard of a run wrote and would change, for the commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardManifest {
    pub run_id: String,
    pub shard: u32,
    pub shards: u32,
    pub collection: String,
    /// The versions the shard read: every shard of a run must have read the same
    /// (or empty tables: shards that create a collection may each commit its
    /// creation).
    pub base: Versions,
    /// Whether the tables were empty at `base`.
    #[serde(default)]
    pub base_empty: bool,
    pub finished_at: String,
    pub moulin_version: String,
    /// Data files of new chunks and of new document rows, not yet in any version.
    pub chunk_fragments: Vec<Fragment>,
    pub document_fragments: Vec<Fragment>,
    /// Stored documents whose chunks and row the new ones replace.
    pub replaced: Vec<String>,
    /// Stored documents the run deletes (pruned).
    pub deleted: Vec<String>,
    /// The shard's run report.
    pub report: serde_json::Value,
}

impl ShardManifest {
    pub fn shard(&self) -> Shard {
        Shard {
            index: self.shard,
            count: self.shards,
        }
    }
}

/// One table's rows of a shard, buffered, then written as uncommitted data files.
struct StagedTable {
    dataset: Arc<Dataset>,
    pending: Vec<RecordBatch>,
    pending_bytes: usize,
    fragments: Vec<Fragment>,
}

impl StagedTable {
    fn new(dataset: Arc<Dataset>) -> Self {
        StagedTable {
            dataset,
            pending: Vec::new(),
            pending_bytes: 0,
            fragments: Vec::new(),
        }
    }

    async fn push(&mut self, batch: RecordBatch, collection: &str) -> Result<()> {
        self.pending_bytes += batch.get_array_memory_size();
        self.pending.push(batch);
        if self.pending_bytes >= FLUSH_BYTES {
            self.flush(collection).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, collection: &str) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let params = WriteParams {
            mode: WriteMode::Append,
            ..Default::default()
        };
        let transaction = InsertBuilder::new(self.dataset.clone())
            .with_params(&params)
            .execute_uncommitted(batches)
            .await
            .map_err(lance_err(collection))?;
        match transaction.operation {
            Operation::Append { fragments } => self.fragments.extend(fragments),
            other => {
                return Err(Error::Collection {
                    collection: collection.to_string(),
                    reason: format!("Lance staged an unexpected {other} for an append"),
                });
            }
        }
        Ok(())
    }
}

/// What a shard writes, held back from every version until the run's commit.
pub struct StagedWrites {
    collection: String,
    dimension: usize,
    base: Versions,
    base_empty: bool,
    chunks: StagedTable,
    documents: StagedTable,
    staging: (Arc<lance::io::ObjectStore>, ObjectPath),
    replaced: BTreeSet<String>,
    deleted: BTreeSet<String>,
}

fn lance_err(collection: &str) -> impl Fn(lance::Error) -> Error + '_ {
    move |e| Error::Collection {
        collection: collection.to_string(),
        reason: super::without_locations(&e.to_string()),
    }
}

/// The Lance dataset behind a LanceDB table, at its latest version.
async fn dataset(collection: &str, table: &lancedb::Table) -> Result<Arc<Dataset>> {
    let err = |e: lancedb::Error| Error::Collection {
        collection: collection.to_string(),
        reason: super::describe(&e),
    };
    table.checkout_latest().await.map_err(err)?;
    let wrapper = table.dataset().ok_or_else(|| Error::Collection {
        collection: collection.to_string(),
        reason: "a sharded run needs a Lance table, not a remote one".into(),
    })?;
    wrapper.get().await.map_err(err)
}

/// `{db}/_moulin/{name}/staging/{run_id}`, in the documents table's object store.
async fn staging_dir(
    collection: &str,
    documents: &Dataset,
    run_id: &str,
) -> Result<(Arc<lance::io::ObjectStore>, ObjectPath)> {
    let (store, root) = staging_root(collection, documents).await?;
    Ok((store, root.join(run_id)))
}

/// `{db}/_moulin/{name}/staging`, where every run's folder lives.
async fn staging_root(
    collection: &str,
    documents: &Dataset,
) -> Result<(Arc<lance::io::ObjectStore>, ObjectPath)> {
    let store = documents
        .object_store(None)
        .await
        .map_err(lance_err(collection))?;
    // The documents table lives at `{sidecar}/documents.lance`; its data in `…/data`.
    let data = documents.data_dir();
    let parts: Vec<_> = data.parts().collect();
    let sidecar: ObjectPath = parts[..parts.len().saturating_sub(2)]
        .iter()
        .cloned()
        .collect();
    Ok((store, sidecar.join("staging")))
}

impl Collection {
    /// Start the staged writes of a shard of run `run_id`, against the current versions.
    pub async fn stage(&self, run_id: &str) -> Result<StagedWrites> {
        self.check_no_half_commit(&self.run_summaries().await?, None)
            .await?;
        let chunks = dataset(&self.name, &self.table).await?;
        let docs = dataset(&self.name, &self.documents()?.table).await?;
        let base = Versions {
            chunks: chunks.version().version,
            documents: docs.version().version,
        };
        let rows = |d: &Arc<Dataset>| {
            d.manifest
                .fragments
                .iter()
                .any(|f| f.physical_rows != Some(0))
        };
        let base_empty = !rows(&chunks) && !rows(&docs);
        let staging = staging_dir(&self.name, &docs, run_id).await?;
        Ok(StagedWrites {
            collection: self.name.clone(),
            dimension: self.info.dimension,
            base,
            base_empty,
            chunks: StagedTable::new(chunks),
            documents: StagedTable::new(docs),
            staging,
            replaced: BTreeSet::new(),
            deleted: BTreeSet::new(),
        })
    }
}

impl StagedWrites {
    /// The versions this shard read.
    pub fn base(&self) -> &Versions {
        &self.base
    }

    /// Stage these documents' chunks and rows; `stored` are those of them that
    /// the collection already holds (their earlier chunks and row go at the commit).
    pub async fn write(
        &mut self,
        docs: &[EmbeddedDocument<'_>],
        rows_: &[DocumentRow],
        run_id: &str,
        stored: impl IntoIterator<Item = String>,
    ) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let chunks = schema::to_record_batch(docs, self.dimension, run_id)?;
        self.chunks.push(chunks, &self.collection).await?;
        let rows = rows::to_batch(documents::TABLE, documents::schema(), rows_)?;
        self.documents.push(rows, &self.collection).await?;
        self.replaced.extend(stored);
        Ok(())
    }

    /// Stage the deletion of these stored documents.
    pub fn delete(&mut self, ids: impl IntoIterator<Item = String>) {
        self.deleted.extend(ids);
    }

    /// Write what is still buffered, then the manifest (replacing the one an
    /// earlier attempt of this shard left).
    pub async fn finish(
        mut self,
        run_id: &str,
        shard: Shard,
        report: serde_json::Value,
    ) -> Result<ShardManifest> {
        self.chunks.flush(&self.collection).await?;
        self.documents.flush(&self.collection).await?;
        let manifest = ShardManifest {
            run_id: run_id.to_string(),
            shard: shard.index,
            shards: shard.count,
            collection: self.collection.clone(),
            base: self.base.clone(),
            base_empty: self.base_empty,
            finished_at: super::runs::now(),
            moulin_version: env!("CARGO_PKG_VERSION").to_string(),
            chunk_fragments: self.chunks.fragments,
            document_fragments: self.documents.fragments,
            replaced: self.replaced.into_iter().collect(),
            deleted: self.deleted.into_iter().collect(),
            report,
        };
        let (store, dir) = &self.staging;
        let path = dir
            .clone()
            .join(format!("{}.json", shard.file_stem()).as_str());
        let bytes = serde_json::to_vec(&manifest).expect("serializable");
        store
            .put(&path, &bytes)
            .await
            .map_err(lance_err(&self.collection))?;
        Ok(manifest)
    }
}

/// What the commit of a staged run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The run is now visible, at these versions.
    Now(Versions),
    /// An earlier commit (or one racing with this one) had already made it visible.
    Already,
}

/// Why the shards of a run cannot be committed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    pub shards: u32,
    pub missing: Vec<u32>,
}

impl Collection {
    /// The manifests the shards of run `run_id` left, by shard; an error names
    /// the shards missing or written for another count.
    pub async fn staged_run(&self, run_id: &str) -> Result<Vec<ShardManifest>> {
        let docs = dataset(&self.name, &self.documents()?.table).await?;
        let (store, dir) = staging_dir(&self.name, &docs, run_id).await?;
        let listed: Vec<_> = store
            .list(Some(dir.clone()))
            .try_collect()
            .await
            .map_err(lance_err(&self.name))?;
        let mut manifests = Vec::new();
        for meta in listed {
            if meta.location.extension() != Some("json") {
                continue;
            }
            let bytes = store
                .read_one_all(&meta.location)
                .await
                .map_err(lance_err(&self.name))?;
            let manifest: ShardManifest =
                serde_json::from_slice(&bytes).map_err(|e| Error::Collection {
                    collection: self.name.clone(),
                    reason: format!("the shard manifest {} cannot be read: {e}", meta.location),
                })?;
            manifests.push(manifest);
        }
        if manifests.is_empty() {
            return Err(Error::Collection {
                collection: self.name.clone(),
                reason: format!("no shard of run {run_id} has finished (nothing staged at {dir})"),
            });
        }
        let counts: BTreeSet<u32> = manifests.iter().map(|m| m.shards).collect();
        if counts.len() > 1 {
            return Err(Error::Collection {
                collection: self.name.clone(),
                reason: format!(
                    "the shards of run {run_id} were run with different shard counts ({}): rerun them all with one count",
                    counts
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let shards = *counts.first().expect("not empty");
        let by_index: BTreeMap<u32, ShardManifest> =
            manifests.into_iter().map(|m| (m.shard, m)).collect();
        let missing: Vec<u32> = (0..shards).filter(|i| !by_index.contains_key(i)).collect();
        if !missing.is_empty() {
            let list = missing
                .iter()
                .map(|i| format!("{i}/{shards}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::Collection {
                collection: self.name.clone(),
                reason: format!(
                    "run {run_id} is not complete: {} of {shards} shards have not finished; run them (again) with --shard {list} --run-id {run_id}",
                    missing.len()
                ),
            });
        }
        let manifests: Vec<ShardManifest> = by_index.into_values().collect();
        let bases: BTreeSet<(u64, u64)> = manifests
            .iter()
            .map(|m| (m.base.chunks, m.base.documents))
            .collect();
        // Shards that found no collection each create it: their versions may
        // differ by empty commits, and what they staged holds either way.
        let all_empty = manifests.iter().all(|m| m.base_empty);
        if bases.len() > 1 && !all_empty {
            let newest = *bases.last().expect("not empty");
            let stale = manifests
                .iter()
                .filter(|m| (m.base.chunks, m.base.documents) != newest)
                .map(|m| m.shard().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::Collection {
                collection: self.name.clone(),
                reason: format!(
                    "the shards of run {run_id} read different versions of the collection (it changed while they ran); rerun shards {stale}"
                ),
            });
        }
        Ok(manifests)
    }

    /// Make a staged run visible: each table in one transaction (chunks first,
    /// as a run writes them). Harmless when the run is already in.
    pub async fn commit_staged(
        &self,
        run_id: &str,
        manifests: &[ShardManifest],
    ) -> Result<Committed> {
        if manifests.is_empty() {
            return Err(Error::Collection {
                collection: self.name.clone(),
                reason: format!("run {run_id} has no shard to commit"),
            });
        }
        let base = run_base(manifests);
        // Lance's cleanup removes unreferenced files a week old: a run committed
        // that late may have lost some. Never commit a reference to a missing file.
        let chunks_ds = dataset(&self.name, &self.table).await?;
        let docs_ds = dataset(&self.name, &self.documents()?.table).await?;
        let mut lost = Vec::new();
        for m in manifests {
            for (ds, fragments) in [
                (&chunks_ds, &m.chunk_fragments),
                (&docs_ds, &m.document_fragments),
            ] {
                let store = ds.object_store(None).await.map_err(lance_err(&self.name))?;
                let data = ds.data_dir();
                let mut missing = false;
                for file in fragments.iter().flat_map(|f| &f.files) {
                    let path = data.clone().join(file.path.as_str());
                    if !store.exists(&path).await.map_err(lance_err(&self.name))? {
                        missing = true;
                        break;
                    }
                }
                if missing {
                    lost.push(m.shard().to_string());
                    break;
                }
            }
        }
        if !lost.is_empty()
            && committed_version(&self.name, &chunks_ds, base.chunks, run_id)
                .await?
                .is_none()
        {
            return Err(Error::Collection {
                collection: self.name.clone(),
                reason: format!(
                    "data files staged by shards {} of run {run_id} are gone (Lance's cleanup removes unreferenced files after 7 days): run them again with --shard {} --run-id {run_id}",
                    lost.join(", "),
                    lost.join(", ")
                ),
            });
        }
        let remove: BTreeSet<&str> = manifests
            .iter()
            .flat_map(|m| m.replaced.iter().chain(&m.deleted))
            .map(String::as_str)
            .collect();
        let remove: Vec<&str> = remove.into_iter().collect();
        let chunk_fragments = manifests
            .iter()
            .flat_map(|m| m.chunk_fragments.iter().cloned())
            .collect();
        let document_fragments = manifests
            .iter()
            .flat_map(|m| m.document_fragments.iter().cloned())
            .collect();
        let chunks = commit_table(
            &self.name,
            &self.table,
            base.chunks,
            run_id,
            chunk_fragments,
            &remove,
            "chunk_id",
        )
        .await?;
        if std::env::var_os(FAIL_BETWEEN_TABLES).is_some() {
            // A kill between the two tables' commits, at a chosen moment (tests).
            std::process::abort();
        }
        let documents = commit_table(
            &self.name,
            &self.documents()?.table,
            base.documents,
            run_id,
            document_fragments,
            &remove,
            "document_id",
        )
        .await?;
        self.table.checkout_latest().await.map_err(self.err())?;
        self.documents()?
            .table
            .checkout_latest()
            .await
            .map_err(self.err())?;
        Ok(match (chunks, documents) {
            (TableCommit::Already, TableCommit::Already) => Committed::Already,
            _ => Committed::Now(self.versions().await?),
        })
    }
}

/// How long a committed run's manifests stay: a second commit racing the one
/// that went through still reads them, then finds the run in.
pub const COMMITTED_GRACE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// How long an uncommitted run's manifests stay after its last write: Lance's
/// cleanup removes data files no version references at this age (its
/// unverified-file threshold), so the run could not be committed any more.
pub const ABANDONED_AFTER: chrono::TimeDelta = chrono::TimeDelta::days(7);

impl Collection {
    /// Remove the staging folders of runs committed more than
    /// [`COMMITTED_GRACE`] ago and of runs nothing has written to for
    /// [`ABANDONED_AFTER`]; a run whose shards are still writing keeps its
    /// manifests. Returns the runs removed.
    pub async fn expire_staging(
        &self,
        runs: &[super::RunRecord],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>> {
        let docs = dataset(&self.name, &self.documents()?.table).await?;
        let (store, dir) = staging_root(&self.name, &docs).await?;
        let depth = dir.parts().count();
        let listed: Vec<_> = store
            .list(Some(dir.clone()))
            .try_collect()
            .await
            .map_err(lance_err(&self.name))?;
        // The newest write under each run's folder.
        let mut newest: BTreeMap<String, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
        for meta in listed {
            let Some(run) = meta.location.parts().nth(depth) else {
                continue;
            };
            let at = newest
                .entry(run.as_ref().to_string())
                .or_insert(meta.last_modified);
            *at = (*at).max(meta.last_modified);
        }
        let committed: HashMap<&str, chrono::DateTime<chrono::Utc>> = runs
            .iter()
            .filter(|r| r.status == super::RunStatus::Complete)
            .filter_map(|r| {
                let at = chrono::DateTime::parse_from_rfc3339(r.finished_at.as_deref()?).ok()?;
                Some((r.run_id.as_str(), at.to_utc()))
            })
            .collect();
        let mut removed = Vec::new();
        for (run, written) in newest {
            let expired = match committed.get(run.as_str()) {
                Some(at) => now - *at > COMMITTED_GRACE,
                None => now - written > ABANDONED_AFTER,
            };
            if expired {
                store
                    .remove_dir_all(dir.clone().join(run.as_str()))
                    .await
                    .map_err(lance_err(&self.name))?;
                removed.push(run);
            }
        }
        Ok(removed)
    }
}

impl Collection {
    /// A sharded run whose commit stopped before its end: its transaction is
    /// in the chunks table (and perhaps the documents table) but the run is
    /// not recorded. Until its commit is rerun the two tables disagree, so
    /// every other writer refuses to start ([`Collection::check_no_half_commit`]).
    pub async fn half_committed_run(&self, runs: &[super::RunRecord]) -> Result<Option<String>> {
        let recorded: BTreeSet<&str> = runs
            .iter()
            .filter(|r| r.status == super::RunStatus::Complete)
            .map(|r| r.run_id.as_str())
            .collect();
        // Only versions after the last recorded run can hold an unrecorded commit.
        let since = runs
            .iter()
            .filter_map(|r| r.chunks_after)
            .max()
            .unwrap_or(0);
        let chunks = dataset(&self.name, &self.table).await?;
        let latest = chunks.version().version;
        for version in (since + 1..=latest).rev().take(HALF_COMMIT_SCAN) {
            // A version pruned since has no transaction to read: nothing there.
            let Ok(Some(transaction)) = chunks.read_transaction_by_version(version).await else {
                continue;
            };
            let run = transaction
                .transaction_properties
                .and_then(|p| p.get(RUN_PROPERTY).cloned());
            if let Some(run) = run.filter(|r| !recorded.contains(r.as_str())) {
                return Ok(Some(run));
            }
        }
        Ok(None)
    }

    /// Refuse to write while a sharded run's commit is half done (except to
    /// finish that run's commit): saying which command finishes it.
    pub async fn check_no_half_commit(
        &self,
        runs: &[super::RunRecord],
        finishing: Option<&str>,
    ) -> Result<()> {
        match self.half_committed_run(runs).await? {
            Some(run) if Some(run.as_str()) != finishing => Err(Error::Collection {
                collection: self.name.clone(),
                reason: format!(
                    "the commit of sharded run {run} stopped before its end (its chunks are in, its documents or its record not): finish it with `moulin commit {run} PIPELINE` first"
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// How many of the latest versions [`Collection::half_committed_run`] reads.
const HALF_COMMIT_SCAN: usize = 64;

/// The versions a run's commit reads: those its shards read (the latest of
/// each table, when they found it empty, see [`Collection::staged_run`]).
pub fn run_base(manifests: &[ShardManifest]) -> Versions {
    Versions {
        chunks: manifests.iter().map(|m| m.base.chunks).max().unwrap_or(0),
        documents: manifests
            .iter()
            .map(|m| m.base.documents)
            .max()
            .unwrap_or(0),
    }
}

enum TableCommit {
    Now,
    Already,
}

/// The version at which run `run_id` was committed to this table after `base`, if it was.
async fn committed_version(
    collection: &str,
    dataset: &Dataset,
    base: u64,
    run_id: &str,
) -> Result<Option<u64>> {
    let latest = dataset.version().version;
    for version in base + 1..=latest {
        let transaction = dataset
            .read_transaction_by_version(version)
            .await
            .map_err(lance_err(collection))?;
        let ours = transaction
            .and_then(|t| t.transaction_properties)
            .is_some_and(|p| p.get(RUN_PROPERTY).is_some_and(|r| r == run_id));
        if ours {
            return Ok(Some(version));
        }
    }
    Ok(None)
}

/// One table's part of a run's commit: the rows of `remove` deleted and the
/// staged fragments added, in one transaction read at `base`.
async fn commit_table(
    collection: &str,
    table: &lancedb::Table,
    base: u64,
    run_id: &str,
    mut fragments: Vec<Fragment>,
    remove: &[&str],
    key: &str,
) -> Result<TableCommit> {
    let err = lance_err(collection);
    let latest = dataset(collection, table).await?;
    if committed_version(collection, &latest, base, run_id)
        .await?
        .is_some()
    {
        return Ok(TableCommit::Already);
    }
    let current = latest.version().version;
    if current != base {
        return Err(Error::Collection {
            collection: collection.to_string(),
            reason: format!(
                "it changed since the shards of run {run_id} read it (version {base}, now {current}): rerun every shard of the run"
            ),
        });
    }
    let (removed_fragment_ids, updated_fragments) = if remove.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let staged = DeleteBuilder::new(latest.clone(), id_filter("document_id", remove))
            .execute_uncommitted()
            .await
            .map_err(&err)?;
        match staged.transaction.operation {
            Operation::Delete {
                updated_fragments,
                deleted_fragment_ids,
                ..
            } => (deleted_fragment_ids, updated_fragments),
            other => {
                return Err(Error::Collection {
                    collection: collection.to_string(),
                    reason: format!("Lance staged an unexpected {other} for a delete"),
                });
            }
        }
    };
    // Staged fragments carry no id until the commit gives them one.
    for f in &mut fragments {
        f.id = 0;
    }
    let schema = latest.schema();
    let key_field = schema
        .field(key)
        .map(|f| f.id)
        .ok_or_else(|| Error::Collection {
            collection: collection.to_string(),
            reason: format!("no {key} column"),
        })?;
    // A key only this run inserts: Lance refuses to rebase this update over
    // another update, so that two commits of one run cannot both apply.
    let mut keys = KeyExistenceFilterBuilder::new(vec![key_field]);
    keys.insert(KeyValue::String(format!("moulin-run:{run_id}")))
        .map_err(&err)?;
    let operation = Operation::Update {
        removed_fragment_ids,
        updated_fragments,
        new_fragments: fragments,
        fields_modified: Vec::new(),
        compacted_sstables: Vec::new(),
        fields_for_preserving_frag_bitmap: schema.fields_pre_order().map(|f| f.id as u32).collect(),
        update_mode: Some(UpdateMode::RewriteRows),
        inserted_rows_filter: Some(keys.build()),
        updated_fragment_offsets: None,
    };
    let properties: HashMap<String, String> =
        HashMap::from([(RUN_PROPERTY.to_string(), run_id.to_string())]);
    let transaction = TransactionBuilder::new(base, operation)
        .transaction_properties(Some(Arc::new(properties)))
        .build();
    match CommitBuilder::new(latest.clone())
        .execute(transaction)
        .await
    {
        Ok(_) => Ok(TableCommit::Now),
        Err(e) => {
            // Lost a race: the run is in if the winner was another commit of it.
            let latest = dataset(collection, table).await?;
            if committed_version(collection, &latest, base, run_id)
                .await?
                .is_some()
            {
                Ok(TableCommit::Already)
            } else {
                Err(err(e))
            }
        }
    }
}
