//! Rows of the small bookkeeping tables (documents, runs) to and from Arrow,
//! through serde: the types are the schema's documentation.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

fn fail(table: &str, e: impl std::fmt::Display) -> Error {
    Error::Collection {
        collection: table.to_string(),
        reason: e.to_string(),
    }
}

/// `rows` as one record batch of `schema`.
pub(crate) fn to_batch<T: Serialize>(
    table: &str,
    schema: SchemaRef,
    rows: &[T],
) -> Result<RecordBatch> {
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(|e| fail(table, e))?;
    decoder.serialize(rows).map_err(|e| fail(table, e))?;
    Ok(decoder
        .flush()
        .map_err(|e| fail(table, e))?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// Every row of `batches`, as `T`.
pub(crate) fn from_batches<T: DeserializeOwned>(
    table: &str,
    batches: &[RecordBatch],
) -> Result<Vec<T>> {
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    writer.write_batches(&refs).map_err(|e| fail(table, e))?;
    writer.finish().map_err(|e| fail(table, e))?;
    serde_json::from_slice(&writer.into_inner()).map_err(|e| fail(table, e))
}
