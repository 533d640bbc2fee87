//! The collection's Arrow schema (documented in `schemas/collection.md`) and row building.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    FixedSizeListBuilder, Float32Builder, StringBuilder, TimestampMicrosecondBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::embed::ModelInfo;
use crate::error::{Error, Result};
use crate::store::EmbeddedDocument;

/// The version of the layout described in `schemas/collection.md`: 2 added the
/// documents and runs tables, stable ids, `uri` and `run_id`.
pub const SCHEMA_VERSION: u32 = 2;

/// The columns of a collection's chunks table, in order.
pub fn chunk_schema(dimension: usize) -> Schema {
    Schema::new(vec![
        Field::new("chunk_id", DataType::Utf8, false),
        Field::new("document_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("uri", DataType::Utf8, false),
        Field::new("chunk_index", DataType::UInt32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("format", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
        Field::new("page_start", DataType::UInt32, true),
        Field::new("page_end", DataType::UInt32, true),
        Field::new("sheet", DataType::Utf8, true),
        Field::new("row_start", DataType::UInt32, true),
        Field::new("row_end", DataType::UInt32, true),
        Field::new("headings", DataType::Utf8, true),
        Field::new("byte_start", DataType::UInt64, false),
        Field::new("byte_end", DataType::UInt64, false),
        Field::new("metadata", DataType::Utf8, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                dimension as i32,
            ),
            false,
        ),
        Field::new("run_id", DataType::Utf8, false),
        Field::new(
            "ingested_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ])
}

/// The identity of a collection's embedding model, kept in the chunks table's
/// schema metadata under `moulin.*` keys. The configuration of each run is in
/// the runs table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionInfo {
    pub model: String,
    pub dimension: usize,
    pub model_hash: String,
    pub passage_prefix: String,
    pub query_prefix: String,
    pub moulin_version: String,
    pub created_at: String,
    /// [`SCHEMA_VERSION`] when it was created; 0 for collections older than it.
    #[serde(default)]
    pub schema_version: u32,
}

impl CollectionInfo {
    pub fn new(model: &ModelInfo) -> Self {
        CollectionInfo {
            model: model.name.clone(),
            dimension: model.dimension,
            model_hash: model.hash.clone(),
            passage_prefix: model.passage_prefix.clone(),
            query_prefix: model.query_prefix.clone(),
            moulin_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            schema_version: SCHEMA_VERSION,
        }
    }

    pub fn to_metadata(&self) -> HashMap<String, String> {
        let json = serde_json::to_value(self).expect("serializable");
        json.as_object()
            .expect("an object")
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (format!("moulin.{k}"), v)
            })
            .collect()
    }

    pub fn from_schema(schema: &Schema) -> Option<Self> {
        let meta = schema.metadata();
        let get = |k: &str| meta.get(&format!("moulin.{k}")).cloned();
        Some(CollectionInfo {
            model: get("model")?,
            dimension: get("dimension")?.parse().ok()?,
            model_hash: get("model_hash").unwrap_or_default(),
            passage_prefix: get("passage_prefix").unwrap_or_default(),
            query_prefix: get("query_prefix").unwrap_or_default(),
            moulin_version: get("moulin_version").unwrap_or_default(),
            created_at: get("created_at").unwrap_or_default(),
            schema_version: get("schema_version")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }

    /// Refuse to mix vectors of two models in one collection.
    pub fn check_model(&self, collection: &str, model: &ModelInfo) -> Result<()> {
        if self.dimension != model.dimension {
            return Err(refuse_model(
                collection,
                format!(
                    "it holds {}-dimensional vectors of {}, and {} makes {}-dimensional ones",
                    self.dimension, self.model, model.name, model.dimension
                ),
            ));
        }
        self.check_model_hash(collection, &model.name, &model.hash)
    }

    /// Refuse a model whose files hash otherwise than the collection's.
    pub fn check_model_hash(&self, collection: &str, name: &str, hash: &str) -> Result<()> {
        if !self.model_hash.is_empty() && self.model_hash != hash {
            return Err(refuse_model(
                collection,
                format!(
                    "it was embedded with {} (hash {}), not with {name} (hash {})",
                    self.model,
                    short(&self.model_hash),
                    short(hash)
                ),
            ));
        }
        Ok(())
    }

    /// The model as far as the collection knows it.
    pub fn model_info(&self) -> ModelInfo {
        ModelInfo {
            name: self.model.clone(),
            dimension: self.dimension,
            hash: self.model_hash.clone(),
            passage_prefix: self.passage_prefix.clone(),
            query_prefix: self.query_prefix.clone(),
        }
    }
}

fn refuse_model(collection: &str, what: String) -> Error {
    Error::Collection {
        collection: collection.to_string(),
        reason: format!(
            "{what}; embed into a new collection, or delete this one first \
             (moulin collections delete -c {collection})"
        ),
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

pub fn to_record_batch(
    docs: &[EmbeddedDocument<'_>],
    dimension: usize,
    run_id: &str,
) -> Result<RecordBatch> {
    let rows: usize = docs.iter().map(|d| d.chunks.len()).sum();
    let mut chunk_id = StringBuilder::new();
    let mut document_id = StringBuilder::new();
    let mut source = StringBuilder::new();
    let mut uri = StringBuilder::new();
    let mut chunk_index = UInt32Builder::with_capacity(rows);
    let mut text = StringBuilder::new();
    let mut format = StringBuilder::new();
    let mut title = StringBuilder::new();
    let mut page_start = UInt32Builder::with_capacity(rows);
    let mut page_end = UInt32Builder::with_capacity(rows);
    let mut sheet = StringBuilder::new();
    let mut row_start = UInt32Builder::with_capacity(rows);
    let mut row_end = UInt32Builder::with_capacity(rows);
    let mut headings = StringBuilder::new();
    let mut byte_start = UInt64Builder::with_capacity(rows);
    let mut byte_end = UInt64Builder::with_capacity(rows);
    let mut metadata = StringBuilder::new();
    let mut vector = FixedSizeListBuilder::with_capacity(
        Float32Builder::with_capacity(rows * dimension),
        dimension as i32,
        rows,
    )
    .with_field(Arc::new(Field::new("item", DataType::Float32, true)));
    let mut run = StringBuilder::new();
    let mut ingested_at = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
    let now = chrono::Utc::now().timestamp_micros();
    for d in docs {
        let doc = d.document;
        let meta = serde_json::to_string(&doc.metadata).expect("serializable");
        if d.chunks.len() != d.vectors.len() {
            return Err(Error::Collection {
                collection: String::new(),
                reason: format!(
                    "{}: {} chunks but {} vectors",
                    doc.source,
                    d.chunks.len(),
                    d.vectors.len()
                ),
            });
        }
        for (chunk, v) in d.chunks.iter().zip(d.vectors) {
            if v.len() != dimension {
                return Err(Error::Collection {
                    collection: String::new(),
                    reason: format!(
                        "a vector has {} dimensions, the collection {dimension}",
                        v.len()
                    ),
                });
            }
            chunk_id.append_value(&chunk.id);
            document_id.append_value(&doc.id);
            source.append_value(&doc.source);
            uri.append_value(&doc.uri);
            chunk_index.append_value(chunk.index);
            text.append_value(&chunk.text);
            format.append_value(doc.format.as_str());
            title.append_option(doc.title.as_deref());
            page_start.append_option(chunk.page_start);
            page_end.append_option(chunk.page_end);
            sheet.append_option(chunk.sheet.as_deref());
            row_start.append_option(chunk.row_start);
            row_end.append_option(chunk.row_end);
            headings
                .append_option((!chunk.headings.is_empty()).then(|| chunk.headings.join(" > ")));
            byte_start.append_value(chunk.start as u64);
            byte_end.append_value(chunk.end as u64);
            metadata.append_value(&meta);
            vector.values().append_slice(v);
            vector.append(true);
            run.append_value(run_id);
            ingested_at.append_value(now);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(chunk_id.finish()),
        Arc::new(document_id.finish()),
        Arc::new(source.finish()),
        Arc::new(uri.finish()),
        Arc::new(chunk_index.finish()),
        Arc::new(text.finish()),
        Arc::new(format.finish()),
        Arc::new(title.finish()),
        Arc::new(page_start.finish()),
        Arc::new(page_end.finish()),
        Arc::new(sheet.finish()),
        Arc::new(row_start.finish()),
        Arc::new(row_end.finish()),
        Arc::new(headings.finish()),
        Arc::new(byte_start.finish()),
        Arc::new(byte_end.finish()),
        Arc::new(metadata.finish()),
        Arc::new(vector.finish()),
        Arc::new(run.finish()),
        Arc::new(ingested_at.finish()),
    ];
    RecordBatch::try_new(Arc::new(chunk_schema(dimension)), columns).map_err(|e| {
        Error::Collection {
            collection: String::new(),
            reason: e.to_string(),
        }
    })
}
