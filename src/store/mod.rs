//! LanceDB collections: the Arrow schema, writes in large batches, and search.
//!
//! A collection is a LanceDB table of chunks. Its Arrow schema metadata records
//! the embedding model (name, dimension, hash), the pipeline configuration and
//! the moulin version that created it, so that it can always say how it was
//! made, and so that embedding into it with another model is refused.

pub mod schema;
pub mod search;

use std::collections::HashMap;
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

pub struct Store {
    db: lancedb::Connection,
    uri: String,
}

impl Store {
    pub async fn connect(uri: &str) -> Result<Store> {
        let db = lancedb::connect(uri)
            .execute()
            .await
            .map_err(|source| Error::Store {
                uri: uri.to_string(),
                source,
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
        |source| Error::Store {
            uri: self.uri.clone(),
            source,
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
                lancedb::Error::TableNotFound { .. } => Error::Collection {
                    collection: name.to_string(),
                    reason: format!("no such collection in {}", self.uri),
                },
                source => Error::Store {
                    uri: self.uri.clone(),
                    source,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionStats {
    pub name: String,
    pub chunks: usize,
    pub documents: usize,
    pub info: CollectionInfo,
}

impl Collection {
    fn err(&self) -> impl Fn(lancedb::Error) -> Error + '_ {
        |e| Error::Collection {
            collection: self.name.clone(),
            reason: e.to_string(),
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

    /// (Re)build the full-text index on `text`: French stemming, stop words and accent folding.
    pub async fn index_text(&self) -> Result<()> {
        if self.table.count_rows(None).await.map_err(self.err())? == 0 {
            return Ok(());
        }
        let params = FtsIndexBuilder::default()
            .language("French")
            .map_err(|e| Error::Collection {
                collection: self.name.clone(),
                reason: e.to_string(),
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
                reason: format!("compaction: {e}"),
            })
    }

    pub async fn stats(&self) -> Result<CollectionStats> {
        let chunks = self.table.count_rows(None).await.map_err(self.err())?;
        let documents = self.document_hashes().await?.len();
        Ok(CollectionStats {
            name: self.name.clone(),
            chunks,
            documents,
            info: self.info.clone(),
        })
    }
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
