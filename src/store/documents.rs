//! The documents table: one row per document of a collection, with the text that
//! was chunked (its sections and their provenance), so that chunks can be rebuilt
//! without reading the sources again. Described in `schemas/collection.md`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use serde::{Deserialize, Serialize};

use super::rows;
use crate::document::{Document, Format};
use crate::error::{Error, Result};

pub(crate) const TABLE: &str = "documents";

/// One stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRow {
    pub document_id: String,
    /// The name of the pipeline source it came from: `prune` only removes documents
    /// of the sources it runs, so that two pipelines can share a collection.
    pub origin: String,
    /// `{source name}/{relative path}`, or the URL.
    pub source: String,
    /// Where it was read: the absolute path or URL at the last run that read it.
    pub uri: String,
    /// sha256 of the bytes read.
    pub content_hash: String,
    pub format: String,
    #[serde(default)]
    pub title: Option<String>,
    pub pages: u32,
    /// The document's metadata, a JSON object of strings.
    pub metadata: String,
    /// The extracted sections with their provenance, a JSON array: the document's
    /// text is their texts joined by a blank line.
    pub sections: String,
    /// The version of moulin's extraction that read it ([`crate::extract::VERSION`]).
    pub extractor: u32,
    /// Fingerprints of the chunker settings and of the embedding model and
    /// settings its chunks were made with.
    pub chunking: String,
    pub embedding: String,
    pub chunks: u32,
    /// The run that first stored it, and the last run that wrote it.
    pub first_run: String,
    pub last_run: String,
    pub updated_at: String,
}

/// What a run needs to know of a stored document to decide what to do with it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DocumentState {
    pub document_id: String,
    pub origin: String,
    pub source: String,
    pub uri: String,
    pub content_hash: String,
    pub extractor: u32,
    pub chunking: String,
    pub embedding: String,
    pub first_run: String,
}

const STATE_COLUMNS: &[&str] = &[
    "document_id",
    "origin",
    "source",
    "uri",
    "content_hash",
    "extractor",
    "chunking",
    "embedding",
    "first_run",
];

pub fn schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("document_id"),
        s("origin"),
        s("source"),
        s("uri"),
        s("content_hash"),
        s("format"),
        Field::new("title", DataType::Utf8, true),
        Field::new("pages", DataType::UInt32, false),
        s("metadata"),
        s("sections"),
        Field::new("extractor", DataType::UInt32, false),
        s("chunking"),
        s("embedding"),
        Field::new("chunks", DataType::UInt32, false),
        s("first_run"),
        s("last_run"),
        s("updated_at"),
    ]))
}

impl DocumentRow {
    pub fn document(&self) -> Result<Document> {
        let bad = |what: &str, e: serde_json::Error| Error::Collection {
            collection: TABLE.into(),
            reason: format!("{}: stored {what} unreadable: {e}", self.source),
        };
        let format: Format = serde_json::from_value(serde_json::Value::String(self.format.clone()))
            .map_err(|e| bad("format", e))?;
        Ok(Document {
            id: self.document_id.clone(),
            source: self.source.clone(),
            uri: self.uri.clone(),
            format,
            content_hash: self.content_hash.clone(),
            title: self.title.clone(),
            metadata: serde_json::from_str(&self.metadata).map_err(|e| bad("metadata", e))?,
            pages: self.pages,
            sections: serde_json::from_str(&self.sections).map_err(|e| bad("sections", e))?,
            warnings: Vec::new(),
        })
    }
}

pub(crate) struct Documents {
    pub table: lancedb::Table,
}

impl Documents {
    fn err(&self) -> impl Fn(lancedb::Error) -> Error + '_ {
        |e| Error::Collection {
            collection: TABLE.into(),
            reason: super::describe(&e),
        }
    }

    async fn query(
        &self,
        columns: Option<&[&str]>,
        filter: Option<String>,
    ) -> Result<Vec<RecordBatch>> {
        let mut q = self.table.query();
        if let Some(columns) = columns {
            q = q.select(Select::columns(columns));
        }
        if let Some(f) = filter {
            q = q.only_if(f);
        }
        q.execute()
            .await
            .map_err(self.err())?
            .try_collect()
            .await
            .map_err(self.err())
    }

    /// Every stored document's state, by id.
    pub async fn states(&self) -> Result<HashMap<String, DocumentState>> {
        let batches = self.query(Some(STATE_COLUMNS), None).await?;
        let states: Vec<DocumentState> = rows::from_batches(TABLE, &batches)?;
        Ok(states
            .into_iter()
            .map(|s| (s.document_id.clone(), s))
            .collect())
    }

    /// The stored rows of these documents.
    pub async fn load(&self, ids: &[&str]) -> Result<Vec<DocumentRow>> {
        let mut out = Vec::new();
        for group in ids.chunks(500) {
            let batches = self
                .query(None, Some(super::id_filter("document_id", group)))
                .await?;
            out.extend(rows::from_batches::<DocumentRow>(TABLE, &batches)?);
        }
        Ok(out)
    }

    /// Insert or replace these rows, in one commit.
    pub async fn put(&self, rows: &[DocumentRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = rows::to_batch(TABLE, schema(), rows)?;
        let reader = arrow_array::RecordBatchIterator::new([Ok(batch)], schema());
        let mut merge = self.table.merge_insert(&["document_id"]);
        merge
            .when_matched_update_all(None)
            .when_not_matched_insert_all();
        merge.execute(Box::new(reader)).await.map_err(self.err())?;
        Ok(())
    }

    pub async fn delete(&self, ids: &[&str]) -> Result<()> {
        for group in ids.chunks(500) {
            if !group.is_empty() {
                self.table
                    .delete(&super::id_filter("document_id", group))
                    .await
                    .map_err(self.err())?;
            }
        }
        Ok(())
    }
}
