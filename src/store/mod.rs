//! LanceDB collections: chunks to search, the documents they come from, the runs
//! that wrote them; writes that swap a document's chunks in one commit; versions,
//! rollback and upkeep.
//!
//! A collection is a LanceDB table of chunks (the one searched, named like the
//! collection) and, beside it in `{db}/_moulin/{name}/`, two bookkeeping tables:
//! `documents` (one row per document, with the text that was chunked, see
//! [`documents`]) and `runs` (see [`runs`]), plus the writers' lock ([`lock`]).
//! The chunks table's schema metadata records the embedding model (name,
//! dimension, hash), so that embedding into it with another model is refused.

pub mod documents;
pub mod lock;
mod rows;
pub mod runs;
pub mod schema;
pub mod search;
pub mod staging;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use lancedb::index::Index;
use lancedb::index::scalar::{BTreeIndexBuilder, FtsIndexBuilder};
use lancedb::index::vector::IvfPqIndexBuilder;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::table::OptimizeAction;
use serde::{Deserialize, Serialize};

use crate::document::{Chunk, Document};
use crate::embed::ModelInfo;
use crate::error::{Error, Result};
pub use documents::{DocumentRow, DocumentState};
pub use runs::{RunCounts, RunKind, RunRecord, RunStatus, Versions};
pub use schema::{CollectionInfo, chunk_schema};

/// The default database: `./data`.
pub const DEFAULT_DB: &str = "./data";

/// The longest collection name LanceDB accepts.
const MAX_NAME_CHARS: usize = 128;

/// Whether a collection name is one LanceDB accepts, with the reason if not.
pub fn check_collection_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("a collection needs a name".into());
    }
    if name == "." || name == ".." || name.len() > MAX_NAME_CHARS {
        return Err(format!(
            "{name:?} is not a valid collection name: 1 to {MAX_NAME_CHARS} characters, not \".\" or \"..\""
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "{name:?} is not a valid collection name: use ASCII letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

/// How a command uses its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only: the database must exist, and nothing is created.
    Read,
    /// Writing: a local folder is created when missing.
    Write,
}

/// The local folder a database URI names, or `None` for object storage.
fn local_folder(uri: &str) -> Option<&Path> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Some(Path::new(path));
    }
    (!crate::paths::has_scheme(uri)).then(|| Path::new(uri))
}

/// Whether `uri` can be used as a database the way `access` says, with the reason if not.
pub fn check_db(uri: &str, access: Access) -> std::result::Result<(), String> {
    if uri.trim().is_empty() {
        return Err("the database must not be empty".into());
    }
    let Some(folder) = local_folder(uri) else {
        return Ok(());
    };
    match std::fs::metadata(folder) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "{uri} is a file, not a LanceDB database (a folder)"
        )),
        Err(_) if access == Access::Read => {
            Err(format!("no database at {uri}: the folder does not exist"))
        }
        Err(_) => match folder.ancestors().skip(1).find(|a| a.exists()) {
            Some(a) if !a.as_os_str().is_empty() && !a.is_dir() => Err(format!(
                "{uri} cannot be created: {} is a file",
                a.display()
            )),
            _ => Ok(()),
        },
    }
}

/// A LanceDB error as one readable line: its own message without the source
/// locations inside LanceDB that it carries, and without repeating itself.
pub(crate) fn describe(e: &lancedb::Error) -> String {
    without_locations(&e.to_string())
}

fn without_locations(text: &str) -> String {
    static LOCATION: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let location = LOCATION.get_or_init(|| {
        regex::Regex::new(r",?\s*(at\s+)?[^\s,]*\.rs:\d+(:\d+)?").expect("a valid pattern")
    });
    let text = location.replace_all(text, "");
    text.trim().trim_end_matches([',', ':']).trim().to_string()
}

pub struct Store {
    db: lancedb::Connection,
    uri: String,
    /// Object store settings given to LanceDB besides the environment's.
    storage: Storage,
}

/// Object store settings (`aws_endpoint`, `aws_region`, `allow_http`…), as Lance
/// names them; credentials too (`aws_secret_access_key`…), or from the
/// environment (`AWS_ACCESS_KEY_ID`…).
pub type Storage = std::collections::BTreeMap<String, String>;

/// Whether a storage setting is a credential (a key, a secret, a token): it
/// may be given in a pipeline file, and is never recorded ([`without_credentials`]).
pub fn is_credential(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "access_key",
        "account_key",
        "master_key",
        "sas",
        "credential",
        "bearer",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// The settings without their credentials: what run records and reports keep.
pub fn without_credentials(storage: &Storage) -> Storage {
    storage
        .iter()
        .filter(|(k, _)| !is_credential(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `{db}/_moulin/{name}`: where a collection's bookkeeping tables live.
fn sidecar_uri(db: &str, name: &str) -> String {
    format!("{}/_moulin/{name}", db.trim_end_matches('/'))
}

/// A LanceDB connection to `uri`, as a folder when it is one.
async fn connect_uri(
    uri: &str,
    storage: &Storage,
) -> std::result::Result<lancedb::Connection, lancedb::Error> {
    // LanceDB takes any URI starting with "db" for its cloud: a folder named
    // `db` or `dbs/prod` is given as `./db`.
    let target = match local_folder(uri) {
        Some(folder) if folder.is_relative() && !uri.starts_with('.') => format!("./{uri}"),
        _ => uri.to_string(),
    };
    lancedb::connect(&target)
        .storage_options(storage.iter().map(|(k, v)| (k.clone(), v.clone())))
        .execute()
        .await
}

impl Store {
    /// Connect to a database, after checking that it can be used as `access` says:
    /// a read never creates a folder, and a file is never taken for a database.
    pub async fn connect(uri: &str, access: Access) -> Result<Store> {
        Store::connect_with(uri, access, &Storage::new()).await
    }

    /// [`Store::connect`], with object store settings besides the environment's.
    pub async fn connect_with(uri: &str, access: Access, storage: &Storage) -> Result<Store> {
        check_db(uri, access).map_err(|reason| Error::Store {
            uri: uri.to_string(),
            reason,
        })?;
        let db = connect_uri(uri, storage).await.map_err(|e| Error::Store {
            uri: uri.to_string(),
            reason: describe(&e),
        })?;
        Ok(Store {
            db,
            uri: uri.to_string(),
            storage: storage.clone(),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn store_err(&self) -> impl Fn(lancedb::Error) -> Error + '_ {
        |e| Error::Store {
            uri: self.uri.clone(),
            reason: describe(&e),
        }
    }

    pub async fn collections(&self) -> Result<Vec<String>> {
        self.db
            .table_names()
            .execute()
            .await
            .map_err(self.store_err())
    }

    /// The file whose lock makes one writer at a time (local databases).
    pub fn lock_path(&self, name: &str) -> Option<PathBuf> {
        local_folder(&self.uri).map(|f| f.join("_moulin").join(format!("{name}.lock")))
    }

    /// Take the writer lock of collection `name` (local databases; see [`lock`]).
    pub fn lock(
        &self,
        name: &str,
        run_id: &str,
        wait: Option<std::time::Duration>,
    ) -> Result<Option<lock::WriterLock>> {
        self.lock_path(name)
            .map(|path| lock::WriterLock::acquire(&path, name, run_id, wait))
            .transpose()
    }

    /// Bring collection `name` back to its state after run `run_id`, as new
    /// versions, and record that as a run of its own (so it can be undone).
    pub async fn rollback(
        &self,
        name: &str,
        run_id: &str,
        wait: Option<std::time::Duration>,
    ) -> Result<RunRecord> {
        let mut record = RunRecord::start(
            RunKind::Rollback,
            &Versions::default(),
            &serde_json::Value::Null,
        );
        let _lock = self.lock(name, &record.run_id, wait)?;
        let collection = self.open(name).await?;
        let runs = collection.run_summaries().await?;
        collection.check_no_half_commit(&runs, None).await?;
        let target = runs
            .iter()
            .find(|r| r.run_id == run_id)
            .ok_or_else(|| Error::Collection {
                collection: name.to_string(),
                reason: format!(
                    "no run {run_id}; `moulin collections runs -c {name}` lists the runs kept"
                ),
            })?;
        let versions = target.after().ok_or_else(|| Error::Collection {
            collection: name.to_string(),
            reason: format!(
                "run {run_id} did not complete: there is no state after it to go back to"
            ),
        })?;
        record.set_before(&collection.versions().await?);
        record.config = target.config.clone();
        collection.restore(&versions).await.map_err(|e| Error::Collection {
            collection: name.to_string(),
            reason: format!(
                "cannot go back to run {run_id} (its versions may have been pruned by upkeep): {e}"
            ),
        })?;
        record.complete(&collection.versions().await?);
        record.note = Some(format!("back to the state after run {run_id}"));
        collection.put_run(&record).await?;
        collection.tag_run(&record).await?;
        Ok(record)
    }

    /// Replace collection `name`'s chunks and documents by those of `scratch`
    /// (made with another embedding model), as new versions of its tables (so a
    /// rollback can bring the old model back), record it as a run, then delete
    /// `scratch`. The chunks go in one commit, with the new model's identity in
    /// the table's metadata; the documents follow.
    pub async fn replace_with(
        &self,
        name: &str,
        scratch: &str,
        upkeep: &Upkeep,
        wait: Option<std::time::Duration>,
    ) -> Result<RunRecord> {
        use lancedb::table::AddDataMode;
        let mut record = RunRecord::start(
            RunKind::Reindex,
            &Versions::default(),
            &serde_json::Value::Null,
        );
        let _lock = self.lock(name, &record.run_id, wait)?;
        let target = self.open(name).await?;
        let from = self.open(scratch).await?;
        record.set_before(&target.versions().await?);
        if let Some(last) = from.run_summaries().await?.into_iter().last() {
            record.config = last.config;
            record.counts = last.counts;
        }
        let copy = |from: &lancedb::Table,
                    to: &lancedb::Table,
                    metadata: Option<HashMap<String, String>>| {
            let (from, to) = (from.clone(), to.clone());
            async move {
                let stream = from.query().execute().await?;
                let mut schema = (*stream.schema()).clone();
                if let Some(m) = metadata {
                    schema = schema.with_metadata(m);
                }
                let schema = Arc::new(schema);
                let batches = {
                    let schema = schema.clone();
                    futures::StreamExt::map(stream, move |b| {
                        b.and_then(|b| {
                            b.with_schema(schema.clone())
                                .map_err(|e| lancedb::Error::Runtime {
                                    message: e.to_string(),
                                })
                        })
                    })
                };
                let stream: lancedb::arrow::SendableRecordBatchStream = Box::pin(
                    lancedb::arrow::SimpleRecordBatchStream::new(batches, schema),
                );
                to.add(stream)
                    .mode(AddDataMode::Overwrite)
                    .execute()
                    .await?;
                Ok::<_, lancedb::Error>(())
            }
        };
        copy(&from.table, &target.table, Some(from.info.to_metadata()))
            .await
            .map_err(target.err())?;
        copy(&from.documents()?.table, &target.documents()?.table, None)
            .await
            .map_err(target.err())?;
        let target = self.open(name).await?;
        target.refresh(upkeep).await?;
        record.complete(&target.versions().await?);
        record.note = Some(format!(
            "embedding model replaced: {} (was {})",
            from.info.model, target.info.model
        ));
        target.put_run(&record).await?;
        target.tag_run(&record).await?;
        self.delete_collection(scratch).await?;
        Ok(record)
    }

    /// Open an existing collection. A collection written before moulin kept its
    /// documents opens for reading only.
    pub async fn open(&self, name: &str) -> Result<Collection> {
        let table = self
            .db
            .open_table(name)
            .execute()
            .await
            .map_err(|e| match e {
                lancedb::Error::TableNotFound { .. } => Error::CollectionNotFound {
                    collection: name.to_string(),
                    db: self.uri.clone(),
                },
                other => Error::Store {
                    uri: self.uri.clone(),
                    reason: describe(&other),
                },
            })?;
        let schema = table.schema().await.map_err(self.store_err())?;
        let info = CollectionInfo::from_schema(&schema).ok_or_else(|| Error::Collection {
            collection: name.to_string(),
            reason: "this table was not written by moulin (no moulin metadata in its schema)"
                .into(),
        })?;
        let mut collection = Collection {
            name: name.to_string(),
            table,
            info,
            documents: None,
            runs: None,
        };
        if collection.info.schema_version >= schema::SCHEMA_VERSION {
            let sidecar = sidecar_uri(&self.uri, name);
            // Reading never creates: a missing folder is a collection not finished.
            let exists = local_folder(&sidecar).is_none_or(Path::is_dir);
            if exists {
                let db = connect_uri(&sidecar, &self.storage)
                    .await
                    .map_err(self.store_err())?;
                let open = |table: &'static str| {
                    let db = db.clone();
                    async move { db.open_table(table).execute().await }
                };
                if let (Ok(d), Ok(r)) = (open(documents::TABLE).await, open(runs::TABLE).await) {
                    collection.documents = Some(documents::Documents { table: d });
                    collection.runs = Some(runs::Runs { table: r });
                }
            }
        }
        Ok(collection)
    }

    /// Open an existing collection for writing with the model whose files hash
    /// to `model_hash`; `None` when there is no such collection. Refuse one made
    /// with another model, or by a moulin that kept no documents.
    pub async fn open_existing_for_writing(
        &self,
        name: &str,
        model: &str,
        model_hash: &str,
    ) -> Result<Option<Collection>> {
        if !self.collections().await?.iter().any(|n| n == name) {
            return Ok(None);
        }
        let collection = self.open(name).await?;
        collection.info.check_model_hash(name, model, model_hash)?;
        if collection.documents.is_none() {
            return Err(Error::Collection {
                collection: name.to_string(),
                reason: format!(
                    "it was written by an earlier moulin that kept no documents, so it cannot \
                     be updated; ingest into a new collection, or delete this one first \
                     (moulin collections delete -c {name} --db {})",
                    self.uri
                ),
            });
        }
        Ok(Some(collection))
    }

    /// Open a collection for writing with `model`, creating it if needed.
    pub async fn open_for_writing(&self, name: &str, model: &ModelInfo) -> Result<Collection> {
        if let Some(c) = self
            .open_existing_for_writing(name, &model.name, &model.hash)
            .await?
        {
            c.info.check_model(name, model)?;
            return Ok(c);
        }
        // The bookkeeping tables first: a collection whose chunks table exists is complete.
        let sidecar = connect_uri(&sidecar_uri(&self.uri, name), &self.storage)
            .await
            .map_err(self.store_err())?;
        let create = |table: &'static str, schema: arrow_schema::SchemaRef| {
            let db = sidecar.clone();
            async move {
                match db.open_table(table).execute().await {
                    Ok(t) => Ok(t),
                    Err(_) => db.create_empty_table(table, schema).execute().await,
                }
            }
        };
        let documents = create(documents::TABLE, documents::schema())
            .await
            .map_err(self.store_err())?;
        let runs = create(runs::TABLE, runs::schema())
            .await
            .map_err(self.store_err())?;
        let info = CollectionInfo::new(model);
        let schema = Arc::new(chunk_schema(model.dimension).with_metadata(info.to_metadata()));
        let table = self
            .db
            .create_empty_table(name, schema)
            .execute()
            .await
            .map_err(self.store_err())?;
        Ok(Collection {
            name: name.to_string(),
            table,
            info,
            documents: Some(documents::Documents { table: documents }),
            runs: Some(runs::Runs { table: runs }),
        })
    }

    /// Delete a collection: its chunks, its documents and its history.
    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        self.db
            .drop_table(name, &[])
            .await
            .map_err(self.store_err())?;
        let sidecar = sidecar_uri(&self.uri, name);
        match local_folder(&sidecar) {
            Some(folder) if folder.exists() => {
                std::fs::remove_dir_all(folder).map_err(|e| Error::io(folder, e))?
            }
            Some(_) => {}
            None => {
                let db = connect_uri(&sidecar, &self.storage)
                    .await
                    .map_err(self.store_err())?;
                db.drop_all_tables(&[]).await.map_err(self.store_err())?;
            }
        }
        if let Some(lock) = self.lock_path(name) {
            let _ = std::fs::remove_file(lock);
        }
        Ok(())
    }
}

/// Why upkeep stopped: preempted by another writer's commit (try again), or not.
enum RefreshError {
    Preempted(lancedb::Error),
    Other(Error),
}

pub struct Collection {
    pub name: String,
    /// The chunks, searched.
    pub table: lancedb::Table,
    pub info: CollectionInfo,
    documents: Option<documents::Documents>,
    runs: Option<runs::Runs>,
}

/// A document's chunks with their vectors, ready to write.
pub struct EmbeddedDocument<'a> {
    pub document: &'a Document,
    pub chunks: &'a [Chunk],
    pub vectors: &'a [Vec<f32>],
}

/// What `moulin collections show` says of a collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionStats {
    pub name: String,
    pub documents: usize,
    pub chunks: usize,
    /// The chunks table's current version.
    pub version: u64,
    /// Bytes on disk, for a database in a local folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub model: ModelSummary,
    /// The configuration of the last complete run.
    pub config: serde_json::Value,
    pub moulin_version: String,
    pub created_at: String,
    /// The last runs, newest first.
    pub runs: Vec<RunSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub dimension: usize,
    pub hash: String,
    pub passage_prefix: String,
    pub query_prefix: String,
}

/// A run, without its configuration and report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub kind: RunKind,
    pub status: RunStatus,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(flatten)]
    pub counts: RunCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl From<&RunRecord> for RunSummary {
    fn from(r: &RunRecord) -> Self {
        RunSummary {
            run_id: r.run_id.clone(),
            kind: r.kind,
            status: r.status,
            started_at: r.started_at.clone(),
            finished_at: r.finished_at.clone(),
            counts: r.counts.clone(),
            version: r.chunks_after,
            note: r.note.clone(),
        }
    }
}

/// How long versions are kept, and when a vector index is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Upkeep {
    /// Keep the versions of this many last runs, whatever their age (rollback targets).
    pub keep_runs: usize,
    /// Keep every version younger than this many days.
    pub keep_days: u64,
    /// Build a vector index (IVF-PQ) once the collection has this many chunks;
    /// below it, vector search is exact.
    pub vector_index_min_chunks: usize,
}

impl Default for Upkeep {
    fn default() -> Self {
        Upkeep {
            keep_runs: 10,
            keep_days: 30,
            vector_index_min_chunks: 100_000,
        }
    }
}

/// The tag that keeps the versions a run left.
fn run_tag(run_id: &str) -> String {
    format!("run-{run_id}")
}

/// `column IN ('a', 'b')`.
pub(crate) fn id_filter(column: &str, ids: &[&str]) -> String {
    let list = ids
        .iter()
        .map(|id| format!("'{}'", sql_string(id)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{column} IN ({list})")
}

impl Collection {
    fn err(&self) -> impl Fn(lancedb::Error) -> Error + '_ {
        |e| Error::Collection {
            collection: self.name.clone(),
            reason: describe(&e),
        }
    }

    fn documents(&self) -> Result<&documents::Documents> {
        self.documents.as_ref().ok_or_else(|| Error::Collection {
            collection: self.name.clone(),
            reason: "it keeps no documents (written by an earlier moulin)".into(),
        })
    }

    fn runs_table(&self) -> Result<&runs::Runs> {
        self.runs.as_ref().ok_or_else(|| Error::Collection {
            collection: self.name.clone(),
            reason: "it keeps no history of runs (written by an earlier moulin)".into(),
        })
    }

    /// The current versions of the chunks and documents tables.
    pub async fn versions(&self) -> Result<Versions> {
        Ok(Versions {
            chunks: self.table.version().await.map_err(self.err())?,
            documents: self
                .documents()?
                .table
                .version()
                .await
                .map_err(self.err())?,
        })
    }

    /// Every stored document's state, by id.
    pub async fn document_states(&self) -> Result<HashMap<String, DocumentState>> {
        self.documents()?.states().await
    }

    /// The stored rows of these documents, with their text.
    pub async fn load_documents(&self, ids: &[&str]) -> Result<Vec<DocumentRow>> {
        self.documents()?.load(ids).await
    }

    /// The stored vector of every chunk of these documents, by chunk id.
    pub async fn stored_vectors(&self, ids: &[&str]) -> Result<HashMap<String, Vec<f32>>> {
        let mut out = HashMap::new();
        for group in ids.chunks(500).filter(|g| !g.is_empty()) {
            let batches: Vec<RecordBatch> = self
                .table
                .query()
                .only_if(id_filter("document_id", group))
                .select(Select::columns(&["chunk_id", "vector"]))
                .execute()
                .await
                .map_err(self.err())?
                .try_collect()
                .await
                .map_err(self.err())?;
            for batch in batches {
                let ids = string_column(&batch, "chunk_id");
                let vectors = batch
                    .column_by_name("vector")
                    .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>());
                let (Some(ids), Some(vectors)) = (ids, vectors) else {
                    continue;
                };
                for i in 0..batch.num_rows() {
                    let v = vectors.value(i);
                    if let Some(v) = v.as_any().downcast_ref::<Float32Array>() {
                        out.insert(ids.value(i).to_string(), v.values().to_vec());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Swap these documents' chunks for the given ones, in one commit: a reader
    /// sees each document either as it was or as it is now, never missing or
    /// doubled. Chunks whose id did not change are rewritten in place.
    pub async fn swap_chunks(&self, docs: &[EmbeddedDocument<'_>], run_id: &str) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = docs.iter().map(|d| d.document.id.as_str()).collect();
        let batch = schema::to_record_batch(docs, self.info.dimension, run_id)?;
        let schema = batch.schema();
        let reader = arrow_array::RecordBatchIterator::new([Ok(batch)], schema);
        let mut merge = self.table.merge_insert(&["chunk_id"]);
        merge
            .when_matched_update_all(None)
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(Some(id_filter("document_id", &ids)));
        merge.execute(Box::new(reader)).await.map_err(self.err())?;
        Ok(())
    }

    /// Record these documents (after their chunks: a run killed in between finds
    /// them changed and writes them again).
    pub async fn put_documents(&self, rows: &[DocumentRow]) -> Result<()> {
        self.documents()?.put(rows).await
    }

    /// Delete these documents: their chunks first, then their rows.
    pub async fn delete_documents(&self, ids: &[&str]) -> Result<()> {
        for group in ids.chunks(500).filter(|g| !g.is_empty()) {
            self.table
                .delete(&id_filter("document_id", group))
                .await
                .map_err(self.err())?;
        }
        self.documents()?.delete(ids).await
    }

    /// Delete chunks whose document is not recorded: what a run killed between
    /// writing a new document's chunks and its row leaves when the source is gone.
    pub async fn remove_orphan_chunks(&self) -> Result<usize> {
        let known: HashSet<String> = self.document_states().await?.into_keys().collect();
        let batches: Vec<RecordBatch> = self
            .table
            .query()
            .select(Select::columns(&["document_id"]))
            .execute()
            .await
            .map_err(self.err())?
            .try_collect()
            .await
            .map_err(self.err())?;
        let mut orphans = HashSet::new();
        for batch in &batches {
            if let Some(ids) = string_column(batch, "document_id") {
                for i in 0..batch.num_rows() {
                    if !known.contains(ids.value(i)) {
                        orphans.insert(ids.value(i).to_string());
                    }
                }
            }
        }
        let orphans: Vec<&str> = orphans.iter().map(String::as_str).collect();
        for group in orphans.chunks(500).filter(|g| !g.is_empty()) {
            self.table
                .delete(&id_filter("document_id", group))
                .await
                .map_err(self.err())?;
        }
        Ok(orphans.len())
    }

    /// Every run recorded, oldest first, with their reports.
    pub async fn runs(&self) -> Result<Vec<RunRecord>> {
        self.runs_table()?.list(true).await
    }

    /// Every run recorded, oldest first, without their reports.
    pub async fn run_summaries(&self) -> Result<Vec<RunRecord>> {
        self.runs_table()?.list(false).await
    }

    pub async fn put_run(&self, run: &RunRecord) -> Result<()> {
        self.runs_table()?.put(run).await
    }

    /// Tag the versions a run left, so that upkeep keeps them for rollback.
    pub async fn tag_run(&self, run: &RunRecord) -> Result<()> {
        let Some(after) = run.after() else {
            return Ok(());
        };
        let tag = run_tag(&run.run_id);
        // Idempotent: a second commit of the same run moves the tag, if anything.
        for (table, version) in [
            (&self.table, after.chunks),
            (&self.documents()?.table, after.documents),
        ] {
            let mut tags = table.tags().await.map_err(self.err())?;
            if tags.create(&tag, version).await.is_err() {
                tags.update(&tag, version).await.map_err(self.err())?;
            }
        }
        Ok(())
    }

    /// Bring both tables back to `versions`, as new versions (a rollback can be undone).
    pub async fn restore(&self, versions: &Versions) -> Result<()> {
        let restore = |table: &lancedb::Table, version: u64| {
            let table = table.clone();
            async move {
                table.checkout(version).await?;
                table.restore().await?;
                table.checkout_latest().await
            }
        };
        // Chunks first, as a run writes them: a reader never sees documents
        // whose chunks are not there.
        restore(&self.table, versions.chunks)
            .await
            .map_err(self.err())?;
        restore(&self.documents()?.table, versions.documents)
            .await
            .map_err(self.err())?;
        Ok(())
    }

    /// After a run's writes: indexes brought up to date (built once, then
    /// refreshed with the new rows), and small files merged. Another writer's
    /// upkeep at the same moment (two commits of one run) preempts one of them:
    /// it starts again from the latest versions.
    pub async fn refresh(&self, policy: &Upkeep) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self.refresh_once(policy).await {
                Err(RefreshError::Preempted(e)) if attempt < 5 => {
                    attempt += 1;
                    tracing::info!(
                        "index upkeep preempted by another writer ({}); again",
                        describe(&e)
                    );
                    for table in [
                        &self.table,
                        &self.documents()?.table,
                        &self.runs_table()?.table,
                    ] {
                        table.checkout_latest().await.map_err(self.err())?;
                    }
                }
                Err(RefreshError::Preempted(e)) => return Err(self.err()(e)),
                Err(RefreshError::Other(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }

    async fn refresh_once(&self, policy: &Upkeep) -> std::result::Result<(), RefreshError> {
        let fail = |e: lancedb::Error| match &e {
            lancedb::Error::Lance {
                source:
                    lance::Error::RetryableCommitConflict { .. } | lance::Error::CommitConflict { .. },
            } => RefreshError::Preempted(e),
            _ => RefreshError::Other(self.err()(e)),
        };
        let rows = self.table.count_rows(None).await.map_err(&fail)?;
        if rows > 0 {
            let existing: HashSet<String> = self
                .table
                .list_indices()
                .await
                .map_err(&fail)?
                .into_iter()
                .flat_map(|i| i.columns)
                .collect();
            for column in ["chunk_id", "document_id"] {
                if !existing.contains(column) {
                    self.table
                        .create_index(&[column], Index::BTree(BTreeIndexBuilder::default()))
                        .execute()
                        .await
                        .map_err(&fail)?;
                }
            }
            if !existing.contains("text") {
                self.table
                    .create_index(
                        &["text"],
                        Index::FTS(french_fts().map_err(RefreshError::Other)?),
                    )
                    .execute()
                    .await
                    .map_err(&fail)?;
            }
            if !existing.contains("vector") && rows >= policy.vector_index_min_chunks.max(256) {
                let partitions = ((rows as f64).sqrt() as u32).clamp(1, 4096);
                self.table
                    .create_index(
                        &["vector"],
                        Index::IvfPq(
                            IvfPqIndexBuilder::default()
                                .distance_type(lancedb::DistanceType::Cosine)
                                .num_partitions(partitions),
                        ),
                    )
                    .execute()
                    .await
                    .map_err(&fail)?;
            }
        }
        let tables = [
            &self.table,
            &self.documents().map_err(RefreshError::Other)?.table,
            &self.runs_table().map_err(RefreshError::Other)?.table,
        ];
        for table in tables {
            table
                .optimize(OptimizeAction::Compact {
                    options: Default::default(),
                    remap_options: None,
                })
                .await
                .map_err(&fail)?;
            table
                .optimize(OptimizeAction::Index(Default::default()))
                .await
                .map_err(&fail)?;
        }
        Ok(())
    }

    /// Versions pruned by the upkeep policy: those older than `keep_days`, except
    /// the ones the last `keep_runs` runs left (they stay tagged for rollback);
    /// then the staging folders of sharded runs that expired
    /// ([`Collection::expire_staging`]).
    pub async fn prune_versions(&self, policy: &Upkeep) -> Result<()> {
        let tables = [
            &self.table,
            &self.documents()?.table,
            &self.runs_table()?.table,
        ];
        let runs = self.run_summaries().await?;
        let keep: HashSet<String> = runs
            .iter()
            .rev()
            .filter(|r| r.after().is_some())
            .take(policy.keep_runs)
            .map(|r| run_tag(&r.run_id))
            .collect();
        for table in [&self.table, &self.documents()?.table] {
            let mut tags = table.tags().await.map_err(self.err())?;
            for tag in tags.list().await.map_err(self.err())?.into_keys() {
                if tag.starts_with("run-") && !keep.contains(&tag) {
                    tags.delete(&tag).await.map_err(self.err())?;
                }
            }
        }
        let older_than = chrono::TimeDelta::days(policy.keep_days.min(365_000) as i64);
        for table in tables {
            table
                .optimize(OptimizeAction::Prune {
                    older_than: Some(older_than),
                    delete_unverified: Some(false),
                    error_if_tagged_old_versions: Some(false),
                })
                .await
                .map_err(self.err())?;
        }
        self.expire_staging(&runs, chrono::Utc::now()).await?;
        Ok(())
    }

    /// Whether a SQL filter reads against this collection's columns, checked on
    /// one row before anything expensive (loading a model) happens.
    pub async fn check_filter(&self, filter: &str) -> Result<()> {
        let fail = |e: lancedb::Error| Error::Collection {
            collection: self.name.clone(),
            reason: format!("filter {filter:?}: {}", describe(&e)),
        };
        let batches: Vec<RecordBatch> = self
            .table
            .query()
            .only_if(filter)
            .select(Select::columns(&["chunk_id"]))
            .limit(1)
            .execute()
            .await
            .map_err(fail)?
            .try_collect()
            .await
            .map_err(fail)?;
        drop(batches);
        Ok(())
    }

    pub async fn stats(&self) -> Result<CollectionStats> {
        let chunks = self.table.count_rows(None).await.map_err(self.err())?;
        let documents = match &self.documents {
            Some(d) => d.table.count_rows(None).await.map_err(self.err())?,
            None => 0,
        };
        let version = self.table.version().await.map_err(self.err())?;
        let uri = self.table.uri().await.map_err(self.err())?;
        let size_bytes = local_folder(&uri).map(folder_size);
        let runs = match &self.runs {
            Some(r) => r.list(false).await?,
            None => Vec::new(),
        };
        let config = runs
            .iter()
            .rev()
            .find(|r| r.status == RunStatus::Complete)
            .and_then(|r| serde_json::from_str(&r.config).ok())
            .unwrap_or(serde_json::Value::Null);
        let info = &self.info;
        Ok(CollectionStats {
            name: self.name.clone(),
            documents,
            chunks,
            version,
            size_bytes,
            model: ModelSummary {
                name: info.model.clone(),
                dimension: info.dimension,
                hash: info.model_hash.clone(),
                passage_prefix: info.passage_prefix.clone(),
                query_prefix: info.query_prefix.clone(),
            },
            config,
            moulin_version: info.moulin_version.clone(),
            created_at: info.created_at.clone(),
            runs: runs.iter().rev().take(5).map(RunSummary::from).collect(),
        })
    }
}

/// The full-text index's analysis: French stemming, stop words, accents folded.
fn french_fts() -> Result<FtsIndexBuilder> {
    Ok(FtsIndexBuilder::default()
        .language("French")
        .map_err(|e| Error::Collection {
            collection: String::new(),
            reason: without_locations(&e.to_string()),
        })?
        .stem(true)
        .remove_stop_words(true)
        .ascii_folding(true)
        .lower_case(true))
}

/// The bytes of the files under `folder`.
fn folder_size(folder: &Path) -> u64 {
    walkdir::WalkDir::new(folder)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

pub(crate) fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
}

/// Escape a value for a single-quoted SQL string.
pub fn sql_string(s: &str) -> String {
    s.replace('\'', "''")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_follow_lancedb() {
        assert!(check_collection_name("demo-2024_v1.0").is_ok());
        for bad in ["", ".", "..", "a b", "été", "a/b"] {
            assert!(check_collection_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_collection_name(&"x".repeat(129)).is_err());
    }

    #[test]
    fn a_database_is_a_folder_and_reads_create_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let file = file.to_str().unwrap();
        assert!(
            check_db(file, Access::Write)
                .unwrap_err()
                .contains("is a file")
        );
        assert!(
            check_db(file, Access::Read)
                .unwrap_err()
                .contains("is a file")
        );
        let missing = tmp.path().join("missing");
        let missing = missing.to_str().unwrap();
        assert!(
            check_db(missing, Access::Read)
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(check_db(missing, Access::Write).is_ok());
        let under_file = format!("{file}/db");
        assert!(
            check_db(&under_file, Access::Write)
                .unwrap_err()
                .contains("is a file")
        );
        assert!(check_db("s3://bucket/prefix", Access::Read).is_ok());
    }

    #[test]
    fn lancedb_messages_lose_their_source_locations() {
        let raw = "lance error: Dataset at path x was not found: Not found: /tmp/x/_versions, \
                   /root/.cargo/registry/src/index-1/lance-table-1.0.0/src/io/commit.rs:364:20";
        assert_eq!(
            without_locations(raw),
            "lance error: Dataset at path x was not found: Not found: /tmp/x/_versions"
        );
    }
}
