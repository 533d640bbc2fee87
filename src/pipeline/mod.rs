//! The orchestrator: sources → extract → chunk → embed → store, with a report.
//!
//! Inputs go through in windows. In each window, extraction runs on every core
//! (in child processes by default, see [`crate::extract::isolate`]), then the
//! window's chunks are embedded longest first so that batches hold texts of
//! similar length, then every document of the window is written in one append.
//! Stages do not overlap, so ONNX Runtime's threads never compete with the
//! extractors for the cores. A document's rows are replaced as a whole, and an
//! unchanged input (same content hash) is skipped: a run killed at any point
//! and started again ends as if it had run once.

pub mod config;
pub mod report;
pub mod sources;

use std::collections::HashSet;
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
use crate::store::{EmbeddedDocument, Store};
pub use config::PipelineConfig;
use report::{InputReport, RunReport, Seconds, Status};
use sources::Input;

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

struct Extracted {
    input: Input,
    result: Result<Document>,
}

impl Pipeline {
    pub fn new(config: PipelineConfig, isolation: Isolation) -> Self {
        Pipeline { config, isolation }
    }

    pub async fn run(&self, reporter: &dyn Reporter) -> Result<RunReport> {
        let started = Instant::now();
        let cfg = &self.config;
        let mut report = RunReport {
            moulin_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: chrono::Utc::now().to_rfc3339(),
            collection: cfg.collection.name.clone(),
            db: cfg.collection.db.clone(),
            model: None,
            config: serde_json::to_value(cfg).expect("serializable"),
            totals: Default::default(),
            seconds: Seconds::default(),
            inputs: Vec::new(),
        };
        let (inputs, problems) = sources::expand(&cfg.sources);
        if !problems.is_empty() {
            return Err(Error::Config {
                path: "sources".into(),
                reason: problems.join("; "),
            });
        }
        reporter.start(inputs.len());

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

        let store = Store::connect(&cfg.collection.db).await?;
        let collection = store
            .open_or_create(&cfg.collection.name, embedder.info(), &cfg.to_json())
            .await?;
        let known = collection.document_hashes().await?;
        let client = extract::fetch::client(&cfg.extract)?;
        let concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());

        for window in inputs.chunks(WINDOW_INPUTS) {
            // Extract.
            let t = Instant::now();
            let extracted: Vec<Extracted> = futures::stream::iter(window.iter().cloned())
                .map(|input| self.extract_one(input, &client, &cfg.extract))
                .buffered(concurrency)
                .collect()
                .await;
            report.seconds.extract += t.elapsed().as_secs_f64();

            // Sort out what to ingest; failed documents leave nothing behind.
            let mut docs: Vec<Document> = Vec::new();
            let mut failed_ids: Vec<String> = Vec::new();
            for e in extracted {
                let source = e.input.source();
                match e.result {
                    Ok(doc) => {
                        if known.get(&doc.id) == Some(&doc.content_hash) {
                            reporter.input_done(&source, doc.pages, None);
                            report.inputs.push(InputReport {
                                path: source,
                                status: Status::Skipped,
                                reason: Some("unchanged since the last run".into()),
                                format: Some(doc.format.as_str().into()),
                                pages: doc.pages,
                                chunks: 0,
                            });
                        } else {
                            reporter.input_done(&source, doc.pages, None);
                            docs.push(doc);
                        }
                    }
                    Err(err) => {
                        let reason = match &err {
                            Error::Extract { reason, .. } => reason.clone(),
                            other => other.to_string(),
                        };
                        let unsupported = reason.starts_with("unsupported format");
                        reporter.input_done(&source, 0, (!unsupported).then_some(reason.as_str()));
                        let id = Document::id_for(&source);
                        if known.contains_key(&id) {
                            failed_ids.push(id);
                        }
                        report.inputs.push(InputReport {
                            path: source,
                            status: if unsupported {
                                Status::Skipped
                            } else {
                                Status::Failed
                            },
                            reason: Some(reason),
                            format: None,
                            pages: 0,
                            chunks: 0,
                        });
                    }
                }
            }

            // Chunk.
            let t = Instant::now();
            let chunks: Vec<Vec<Chunk>> = docs.par_iter().map(|d| chunker.chunk(d)).collect();
            report.seconds.chunk += t.elapsed().as_secs_f64();

            // Embed, longest texts first across the whole window.
            let t = Instant::now();
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
            let EmbedderConfig::Onnx(onnx) = &cfg.embedder;
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
            report.seconds.embed += t.elapsed().as_secs_f64();

            // Write.
            let t = Instant::now();
            let embedded: Vec<EmbeddedDocument> = docs
                .iter()
                .zip(&chunks)
                .zip(&vectors)
                .map(|((document, chunks), vectors)| EmbeddedDocument {
                    document,
                    chunks,
                    vectors,
                })
                .collect();
            collection.replace_documents(&embedded).await?;
            let failed: Vec<&str> = failed_ids.iter().map(String::as_str).collect();
            collection.delete_documents(&failed).await?;
            report.seconds.write += t.elapsed().as_secs_f64();
            for (doc, cs) in docs.iter().zip(&chunks) {
                report.inputs.push(InputReport {
                    path: doc.source.clone(),
                    status: Status::Ingested,
                    reason: None,
                    format: Some(doc.format.as_str().into()),
                    pages: doc.pages,
                    chunks: cs.len(),
                });
            }
        }

        if cfg.collection.prune {
            let listed: HashSet<String> = inputs
                .iter()
                .map(|i| Document::id_for(&i.source()))
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

    async fn extract_one(
        &self,
        input: Input,
        client: &reqwest::Client,
        options: &ExtractOptions,
    ) -> Extracted {
        let result = extract_input(&self.isolation, &input, client, options).await;
        Extracted { input, result }
    }
}

/// Read one input (a file, bounded, or a URL, fetched) and extract it where `isolation` says.
pub async fn extract_input(
    isolation: &Isolation,
    input: &Input,
    client: &reqwest::Client,
    options: &ExtractOptions,
) -> Result<Document> {
    let source = input.source();
    let (bytes, content_type) = match input {
        Input::Path(path) => {
            let path = path.clone();
            let max = options.max_file_bytes;
            let bytes = tokio::task::spawn_blocking(move || extract::read_bounded(&path, max))
                .await
                .expect("reading does not panic")?;
            (bytes, None)
        }
        Input::Url(url) => {
            let fetched = extract::fetch::fetch(client, url, options).await?;
            (fetched.bytes, fetched.content_type)
        }
    };
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
