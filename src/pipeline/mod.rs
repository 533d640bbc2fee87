//! The orchestrator: sources → read → extract → chunk → embed → store, with a report.
//!
//! [`config::Loaded::list`] expands the sources into inputs before any work, so that a
//! command can report every problem of its settings at once. [`Pipeline::run`]
//! then goes through the inputs in windows. In each window, every input is read
//! and hashed; one whose bytes match the stored document is left alone without
//! being parsed. The others are extracted on every core (in child processes by
//! default, see [`crate::extract::isolate`]), their chunks embedded longest
//! first so that batches hold texts of similar length, and every document of
//! the window written in one append. Stages do not overlap, so ONNX Runtime's
//! threads never compete with the extractors for the cores. A document's rows
//! are replaced as a whole, and an input that fails keeps the version an
//! earlier run stored: a run killed at any point and started again ends as if
//! it had run once.

pub mod config;
pub mod report;
pub mod sources;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use rayon::prelude::*;

use crate::chunk::{Chunker, SizeUnit};
use crate::document::{Chunk, Document};
use crate::embed::{Embedder, EmbedderConfig, OnnxEmbedder};
use crate::error::{Error, Result};
use crate::extract::{self, ExtractOptions};
use crate::progress::Reporter;
use crate::store::{Access, Collection, EmbeddedDocument, Store};
pub use config::PipelineConfig;
use report::{InputReport, RunReport, Seconds, Status};
use sources::{Input, Listed, Listing};

/// Where extraction runs.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// In this process (panics are still caught).
    InProcess,
    /// In child processes of this executable (`moulin __extract`), under limits.
    Subprocess(PathBuf),
}

/// Inputs per window: bounded so that memory stays flat on large corpora.
const WINDOW_INPUTS: usize = 64;

pub struct Pipeline {
    pub config: PipelineConfig,
    pub isolation: Isolation,
}

/// What became of one input before chunking.
enum Outcome {
    /// Its bytes are those of the stored document.
    Unchanged,
    Extracted(Document),
    Rejected(Error),
}

impl Pipeline {
    pub fn new(config: PipelineConfig, isolation: Isolation) -> Self {
        Pipeline { config, isolation }
    }

    pub async fn run(&self, listing: Listing, reporter: &dyn Reporter) -> Result<RunReport> {
        let started = Instant::now();
        let cfg = &self.config;
        let mut report = RunReport {
            moulin_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: chrono::Utc::now().to_rfc3339(),
            collection: cfg.collection.name.clone(),
            db: cfg.collection.db.clone(),
            model: None,
            config: cfg.recorded(),
            totals: Default::default(),
            seconds: Seconds::default(),
            warnings: listing.warnings.clone(),
            inputs: Vec::new(),
        };
        reporter.start(listing.inputs.len());

        let t = Instant::now();
        reporter.note("loading the embedding model");
        let EmbedderConfig::Onnx(onnx) = cfg.embedder.clone();
        let embedder = tokio::task::spawn_blocking(move || OnnxEmbedder::load(&onnx))
            .await
            .expect("model loading does not panic")?;
        let embedder = Arc::new(embedder);
        report.seconds.model_load = t.elapsed().as_secs_f64();
        report.model = Some(embedder.info().clone());

        let tokenizer =
            (cfg.chunker.split().unit == SizeUnit::Tokens).then(|| embedder.tokenizer().clone());
        let chunker = Chunker::new(cfg.chunker.clone(), tokenizer)?;

        let store = Store::connect(&cfg.collection.db, Access::Write).await?;
        let collection = store
            .open_or_create(
                &cfg.collection.name,
                embedder.info(),
                &cfg.recorded().to_string(),
            )
            .await?;
        let known = collection.document_hashes().await?;
        let client = extract::fetch::client(&cfg.extract)?;
        let concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());

        for window in listing.inputs.chunks(WINDOW_INPUTS) {
            // Read, and extract what changed.
            let t = Instant::now();
            let outcomes: Vec<Outcome> = futures::stream::iter(window)
                .map(|listed| self.read_and_extract(&listed.input, &known, &client))
                .buffered(concurrency)
                .collect()
                .await;
            report.seconds.extract += t.elapsed().as_secs_f64();

            let mut docs: Vec<(&Listed, Document)> = Vec::new();
            for (listed, outcome) in window.iter().zip(outcomes) {
                match outcome {
                    Outcome::Extracted(doc) => docs.push((listed, doc)),
                    Outcome::Unchanged => {
                        let input = InputReport {
                            path: listed.input.source(),
                            status: Status::Unchanged,
                            reason: Some("same content as the stored version".into()),
                            format: None,
                            pages: 0,
                            chunks: 0,
                            named: listed.named,
                            warnings: Vec::new(),
                        };
                        reporter.input_done(&input);
                        report.inputs.push(input);
                    }
                    Outcome::Rejected(err) => {
                        let input = rejected(listed, err, &known);
                        reporter.input_done(&input);
                        report.inputs.push(input);
                    }
                }
            }

            // Chunk.
            let t = Instant::now();
            let chunks: Vec<Vec<Chunk>> = docs.par_iter().map(|(_, d)| chunker.chunk(d)).collect();
            report.seconds.chunk += t.elapsed().as_secs_f64();

            let t = Instant::now();
            let vectors = embed_window(&embedder, &chunks, &cfg.embedder, reporter).await?;
            report.seconds.embed += t.elapsed().as_secs_f64();

            let t = Instant::now();
            write_window(&collection, &docs, &chunks, &vectors).await?;
            report.seconds.write += t.elapsed().as_secs_f64();
            for ((listed, doc), cs) in docs.into_iter().zip(&chunks) {
                let input = InputReport {
                    path: doc.source,
                    status: Status::Ingested,
                    reason: None,
                    format: Some(doc.format.as_str().into()),
                    pages: doc.pages,
                    chunks: cs.len(),
                    named: listed.named,
                    warnings: doc.warnings,
                };
                reporter.input_done(&input);
                report.inputs.push(input);
            }
        }

        if cfg.collection.prune {
            let listed: HashSet<String> = listing
                .inputs
                .iter()
                .map(|i| Document::id_for(&i.input.source()))
                .collect();
            let gone: Vec<&str> = known
                .keys()
                .filter(|id| !listed.contains(*id))
                .map(String::as_str)
                .collect();
            collection.delete_documents(&gone).await?;
            report.totals.pruned = gone.len();
        }

        let t = Instant::now();
        reporter.note("building the full-text index");
        collection.index_text().await?;
        if report.inputs.iter().any(|i| i.status == Status::Ingested) {
            collection.compact().await?;
        }
        report.seconds.index = t.elapsed().as_secs_f64();
        report.seconds.total = started.elapsed().as_secs_f64();
        report.tally();
        reporter.finish();
        Ok(report)
    }

    /// Read an input, and extract it unless its bytes are those already stored.
    async fn read_and_extract(
        &self,
        input: &Input,
        known: &HashMap<String, String>,
        client: &reqwest::Client,
    ) -> Outcome {
        let options = &self.config.extract;
        let read = match read_input(input, client, options).await {
            Ok(read) => read,
            Err(e) => return Outcome::Rejected(e),
        };
        let id = Document::id_for(&input.source());
        if known.get(&id) == Some(&extract::content_hash(&read.bytes)) {
            return Outcome::Unchanged;
        }
        match extract_read(&self.isolation, input, read, options).await {
            Ok(doc) => Outcome::Extracted(doc),
            Err(e) => Outcome::Rejected(e),
        }
    }
}

/// The report of an input that was not ingested; a version stored before stays.
fn rejected(listed: &Listed, err: Error, known: &HashMap<String, String>) -> InputReport {
    let (status, reason) = match err {
        Error::Unsupported { what, .. } => (Status::Unsupported, what),
        Error::Extract { reason, .. } => (Status::Failed, reason),
        Error::Fetch { reason, .. } => (Status::Failed, reason),
        other => (Status::Failed, other.to_string()),
    };
    let source = listed.input.source();
    let kept = status == Status::Failed && known.contains_key(&Document::id_for(&source));
    InputReport {
        path: source,
        status,
        reason: Some(if kept {
            format!("{reason} (the version stored before is kept)")
        } else {
            reason
        }),
        format: None,
        pages: 0,
        chunks: 0,
        named: listed.named,
        warnings: Vec::new(),
    }
}

/// Embed a window's chunks, longest texts first across the whole window, and
/// return the vectors in the chunks' shape.
async fn embed_window(
    embedder: &Arc<OnnxEmbedder>,
    chunks: &[Vec<Chunk>],
    config: &EmbedderConfig,
    reporter: &dyn Reporter,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let mut flat: Vec<(usize, usize, usize)> = chunks
        .iter()
        .enumerate()
        .flat_map(|(d, cs)| {
            cs.iter()
                .enumerate()
                .map(move |(c, ch)| (ch.text.len(), d, c))
        })
        .collect();
    flat.sort_by_key(|c| std::cmp::Reverse(c.0));
    reporter.chunks_queued(flat.len());
    let mut vectors: Vec<Vec<Vec<f32>>> =
        chunks.iter().map(|cs| vec![Vec::new(); cs.len()]).collect();
    // Two batches per call, so that progress moves every few seconds.
    let EmbedderConfig::Onnx(onnx) = config;
    for group in flat.chunks(2 * onnx.batch_size.max(1)) {
        let texts: Vec<String> = group
            .iter()
            .map(|&(_, d, c)| chunks[d][c].text.clone())
            .collect();
        let e = embedder.clone();
        let out = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            e.embed_passages(&refs)
        })
        .await
        .expect("embedding does not panic")?;
        for (&(_, d, c), v) in group.iter().zip(out) {
            vectors[d][c] = v;
        }
        reporter.embedded(group.len());
    }
    Ok(vectors)
}

/// Write a window's documents, each replacing its earlier rows.
async fn write_window(
    collection: &Collection,
    docs: &[(&Listed, Document)],
    chunks: &[Vec<Chunk>],
    vectors: &[Vec<Vec<f32>>],
) -> Result<()> {
    let embedded: Vec<EmbeddedDocument> = docs
        .iter()
        .zip(chunks)
        .zip(vectors)
        .map(|(((_, document), chunks), vectors)| EmbeddedDocument {
            document,
            chunks,
            vectors,
        })
        .collect();
    collection.replace_documents(&embedded).await?;
    Ok(())
}

/// An input's bytes, as read from disk or fetched.
pub struct ReadInput {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

/// Read one input: a file (bounded by `max_file_bytes`) or a URL (fetched).
pub async fn read_input(
    input: &Input,
    client: &reqwest::Client,
    options: &ExtractOptions,
) -> Result<ReadInput> {
    match input {
        Input::Path(path) => {
            let path = path.clone();
            let max = options.max_file_bytes;
            let bytes = tokio::task::spawn_blocking(move || extract::read_bounded(&path, max))
                .await
                .expect("reading does not panic")?;
            Ok(ReadInput {
                bytes,
                content_type: None,
            })
        }
        Input::Url(url) => {
            let fetched = extract::fetch::fetch(client, url, options).await?;
            Ok(ReadInput {
                bytes: fetched.bytes,
                content_type: fetched.content_type,
            })
        }
    }
}

/// Read one input and extract it where `isolation` says.
pub async fn extract_input(
    isolation: &Isolation,
    input: &Input,
    client: &reqwest::Client,
    options: &ExtractOptions,
) -> Result<Document> {
    let read = read_input(input, client, options).await?;
    extract_read(isolation, input, read, options).await
}

/// Extract an input already read, where `isolation` says.
async fn extract_read(
    isolation: &Isolation,
    input: &Input,
    read: ReadInput,
    options: &ExtractOptions,
) -> Result<Document> {
    let source = input.source();
    let ReadInput {
        bytes,
        content_type,
    } = read;
    match isolation {
        Isolation::Subprocess(exe) => {
            let request = extract::isolate::Request {
                source: source.clone(),
                name: input.name(),
                content_type,
                options: options.clone(),
            };
            extract::isolate::extract(exe, request, &bytes).await
        }
        Isolation::InProcess => {
            let name = input.name();
            let options = options.clone();
            tokio::task::spawn_blocking(move || {
                extract::extract(&source, &name, &bytes, content_type.as_deref(), &options)
            })
            .await
            .expect("extract catches panics")
        }
    }
}
