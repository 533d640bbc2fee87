//! LanceDB collections: the Arrow schema, writes in large batches, and search.
//!
//! A collection is a LanceDB table of chunks. Its Arrow schema metadata records
//! the embedding model (name, dimension, hash), the pipeline configuration and
//! the moulin version that created it, so that it can always say how it was
//! made, and so that embedding into it with another model is refused.

pub mod schema;
pub mod search;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use lancedb::index::Index;
use lancedb::index::scalar::FtsIndexBuilder;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use serde::{Deserialize, Serialize};

use crate::document::{Chunk, Document};
use crate::embed::ModelInfo;
use crate::error::{Error, Result};

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
}

impl Store {
    /// Connect to a database, after checking that it can be used as `access` says:
    /// a read never creates a folder, and a file is never taken for a database.
    pub async fn connect(uri: &str, access: Access) -> Result<Store> {
        check_db(uri, access).map_err(|reason| Error::Store {
            uri: uri.to_string(),
            reason,
        })?;
        // LanceDB takes any URI starting with "db" for its cloud: a folder named
        // `db` or `dbs/prod` is given as `./db`.
        let local;
        let target = match local_folder(uri) {
            Some(folder) if folder.is_relative() && !uri.starts_with('.') => {
                local = format!("./{uri}");
                &local
            }
            _ => uri,
        };
        let db = lancedb::connect(target)
            .execute()
            .await
            .map_err(|e| Error::Store {
                uri: uri.to_string(),
                reason: describe(&e),
            })?;
        Ok(Store {
            db,
            uri: uri.to_string(),
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

    /// Open an existing collection.
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
        Ok(Collection {
            name: name.to_string(),
            table,
            info,
        })
    }

    /// Open a collection for writing with `model`, creating it if needed; refuse
    /// a collection made with another model.
    pub async fn open_or_create(
        &self,
        name: &str,
        model: &ModelInfo,
        config_json: &str,
    ) -> Result<Collection> {
        if self.collections().await?.iter().any(|n| n == name) {
            let collection = self.open(name).await?;
            collection.info.check_model(name, model)?;
            return Ok(collection);
        }
        let info = CollectionInfo::new(model, config_json);
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
        })
    }

    pub async fn drop_collection(&self, name: &str) -> Result<()> {
        self.db
            .drop_table(name, &[])
            .await
            .map_err(self.store_err())
    }
}

pub struct Collection {
    pub name: String,
    pub table: lancedb::Table,
    pub info: CollectionInfo,
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
    /// The table's current version.
    pub version: u64,
    /// Bytes on disk, for a database in a local folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub model: ModelSummary,
    /// The pipeline configuration that made the collection.
    pub config: serde_json::Value,
    pub moulin_version: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub dimension: usize,
    pub hash: String,
    pub passage_prefix: String,
    pub query_prefix: String,
}

impl Collection {
    fn err(&self) -> impl Fn(lancedb::Error) -> Error + '_ {
        |e| Error::Collection {
            collection: self.name.clone(),
            reason: describe(&e),
        }
    }

    /// The content hash of every document in the collection, by document id.
    pub async fn document_hashes(&self) -> Result<HashMap<String, String>> {
        let batches: Vec<RecordBatch> = self
            .table
            .query()
            .select(Select::columns(&["document_id", "content_hash"]))
            .execute()
            .await
            .map_err(self.err())?
            .try_collect()
            .await
            .map_err(self.err())?;
        let mut out = HashMap::new();
        for batch in batches {
            let ids = string_column(&batch, "document_id");
            let hashes = string_column(&batch, "content_hash");
            if let (Some(ids), Some(hashes)) = (ids, hashes) {
                for i in 0..batch.num_rows() {
                    out.entry(ids.value(i).to_string())
                        .or_insert_with(|| hashes.value(i).to_string());
                }
            }
        }
        Ok(out)
    }

    /// Replace the rows of these documents by their new chunks, in one write.
    ///
    /// Old rows go first and new rows come in one append: a run killed in
    /// between leaves the documents absent, and the next run writes them again.
    pub async fn replace_documents(&self, docs: &[EmbeddedDocument<'_>]) -> Result<usize> {
        let ids: Vec<&str> = docs.iter().map(|d| d.document.id.as_str()).collect();
        self.delete_documents(&ids).await?;
        let batch = schema::to_record_batch(docs, self.info.dimension)?;
        let rows = batch.num_rows();
        if rows > 0 {
            self.table.add(batch).execute().await.map_err(self.err())?;
        }
        Ok(rows)
    }

    pub async fn delete_documents(&self, ids: &[&str]) -> Result<()> {
        for group in ids.chunks(500) {
            if group.is_empty() {
                continue;
            }
            let list = group
                .iter()
                .map(|id| format!("'{}'", sql_string(id)))
                .collect::<Vec<_>>()
                .join(", ");
            self.table
                .delete(format!("document_id IN ({list})").as_str())
                .await
                .map_err(self.err())?;
        }
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

    /// (Re)build the full-text index on `text`: French stemming, stop words and accent folding.
    pub async fn index_text(&self) -> Result<()> {
        if self.table.count_rows(None).await.map_err(self.err())? == 0 {
            return Ok(());
        }
        let params = FtsIndexBuilder::default()
            .language("French")
            .map_err(|e| Error::Collection {
                collection: self.name.clone(),
                reason: without_locations(&e.to_string()),
            })?
            .stem(true)
            .remove_stop_words(true)
            .ascii_folding(true)
            .lower_case(true);
        self.table
            .create_index(&["text"], Index::FTS(params))
            .replace(true)
            .execute()
            .await
            .map_err(self.err())
    }

    /// Merge the small files of many appends and drop old versions' data.
    pub async fn compact(&self) -> Result<()> {
        self.table
            .optimize(lancedb::table::OptimizeAction::All)
            .await
            .map(drop)
            .map_err(|e| Error::Collection {
                collection: self.name.clone(),
                reason: format!("compaction: {}", describe(&e)),
            })
    }

    pub async fn stats(&self) -> Result<CollectionStats> {
        let chunks = self.table.count_rows(None).await.map_err(self.err())?;
        let documents = self.document_hashes().await?.len();
        let version = self.table.version().await.map_err(self.err())?;
        let uri = self.table.uri().await.map_err(self.err())?;
        let size_bytes = local_folder(&uri).map(folder_size);
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
            config: serde_json::from_str(&info.config).unwrap_or(serde_json::Value::Null),
            moulin_version: info.moulin_version.clone(),
            created_at: info.created_at.clone(),
        })
    }
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
