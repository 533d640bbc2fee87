//! moulin: turn an administration's documents into searchable LanceDB collections.
//!
//! The modules follow the pipeline: [`extract`] reads a file or URL into a
//! [`Document`] made of sections with provenance, [`chunk`] cuts it into
//! [`Chunk`]s that keep that provenance, [`embed`] turns chunk texts into vectors,
//! and [`store`] writes and searches LanceDB collections. [`pipeline`] runs the
//! stages over many inputs and reports on every one of them. [`llm`] runs
//! Llama-family language models locally on burn for generation jobs. [`jobs`]
//! runs it in batch over a collection (summaries, answers with citations), and
//! [`eval`] scores retrieval and answers on evaluation sets. [`shard`] splits a
//! run over many workers, whose staged writes one commit makes visible.

pub mod chunk;
pub mod config;
pub mod document;
pub mod embed;
pub mod error;
pub mod eval;
pub mod extract;
pub mod jobs;
pub mod llm;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod shard;
pub mod store;

pub use document::{Chunk, Document, Format, Location, Section};
pub use error::{Error, Result};
