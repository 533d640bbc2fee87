//! The orchestrator: sources → read → extract → chunk → embed → store, with a report.
//!
//! [`config::Loaded::list`] expands the sources into inputs before any work, so that a
//! command can report every problem of its settings at once. [`Pipeline::run`]
//! then takes the collection's writer lock, records a run, and goes through the
//! inputs in windows. In each window every input is read and hashed, and the
//! stored state of its document decides: the same bytes, extractor and
//! settings are left alone without being parsed; the same bytes under a new
//! chunker or embedding settings are chunked again from the stored text; the
//! rest is extracted ([`read`]), on every core, in child processes by default.
//! Chunks are embedded longest first (those whose id and embedding did not
//! change keep their stored vectors), then each window's documents swap their
//! chunks in one commit, and their rows follow. A failed input keeps what an
//! earlier run stored. A run killed at any point leaves every document either
//! as it was or as it is now, and the next run finishes the work.

pub mod config;
pub mod read;
pub mod report;
mod sharded;
pub mod sources;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rayon::prelude::*;

use crate::chunk::{Chunker, ChunkerConfig, SizeUnit};
use crate::document::{Chunk, Document};
use crate::embed::{Embedder, EmbedderConfig, OnnxEmbedder};
use crate::error::{Error, Result};
use crate::extract;
use crate::progress::Reporter;
use crate::store::runs::now;
use crate::store::{
    Access, Collection, DocumentRow, DocumentState, EmbeddedDocument, RunKind, RunRecord,
    RunStatus, Store,
};
pub use config::PipelineConfig;
pub use read::{Isolation, extract_input};
use report::{Change, InputReport, RunReport, Seconds, Status};
pub use sharded::{CommitOutcome, check_run_id};
use sources::{Listed, Listing};

/// Inputs per window: bounded so that memory stays flat on large corpora.
const WINDOW_INPUTS: usize = 64;

pub struct Pipeline {
    pub config: PipelineConfig,
    pub isolation: Isolation,
}

/// How a run behaves towards other writers.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Wait this long for another writer of the collection to finish, instead of stopping.
    pub wait: Option<Duration>,
}

/// What a collection's chunks depend on besides the documents' text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    pub chunking: String,
    pub embedding: String,
}

impl Fingerprints {
    pub fn chunking(config: &ChunkerConfig) -> String {
        let json = serde_json::to_string(config).expect("serializable");
        extract::content_hash(json.as_bytes())[..16].to_string()
    }

    /// What to do with an input whose bytes hash to `hash`, given what is stored.
    fn plan(&self, stored: Option<&DocumentState>, hash: &str) -> Plan {
        match stored {
            Some(s) if s.content_hash == hash && s.extractor == extract::VERSION => {
                if s.chunking == self.chunking && s.embedding == self.embedding {
                    Plan::Unchanged
                } else {
                    Plan::Rechunk
                }
            }
            _ => Plan::Extract,
        }
    }
}

/// What the stored state and the bytes read say to do with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The same bytes, extractor and settings: nothing to do.
    Unchanged,
    /// The same bytes under other chunker or embedding settings: chunk the stored text.
    Rechunk,
    /// New or changed (or read by an older extractor): extract it.
    Extract,
}

/// What became of one input before chunking.
enum Outcome {
    Planned(Plan),
    Extracted(Document),
    Rejected(Error),
}

/// A document ready to chunk, and what it is to the collection.
struct Ready {
    doc: Document,
    change: Change,
    /// The pipeline source it came from.
    origin: String,
    /// The input as the report names it: its path or URL.
    path: String,
    named: bool,
}

impl Ready {
    fn new(listed: &Listed, doc: Document, change: Change) -> Self {
        Ready {
            doc,
            change,
            origin: listed.origin.clone(),
            path: listed.input.source(),
            named: listed.named,
        }
    }
}

/// The embedding model and the chunker, loaded the first time a run has
/// something to chunk: a rerun with nothing to do never loads the model.
struct Stages {
    embedder: Arc<OnnxEmbedder>,
    chunker: Chunker,
    /// Seconds spent loading the model.
    load_seconds: f64,
}

impl Stages {
    async fn load(config: &PipelineConfig) -> Result<Stages> {
        let t = Instant::now();
        let EmbedderConfig::Onnx(onnx) = config.embedder.clone();
        let embedder = tokio::task::spawn_blocking(move || OnnxEmbedder::load(&onnx))
            .await
            .expect("model loading does not panic")?;
        let tokenizer =
            (config.chunker.split().unit == SizeUnit::Tokens).then(|| embedder.tokenizer().clone());
        let chunker = Chunker::new(config.chunker.clone(), tokenizer)?;
        Ok(Stages {
            embedder: Arc::new(embedder),
            chunker,
            load_seconds: t.elapsed().as_secs_f64(),
        })
    }
}

/// A run writing one collection: its lock held, its run recorded, its model's
/// identity known (the model itself loads when first needed).
struct Session {
    collection: Collection,
    stages: tokio::sync::OnceCell<Stages>,
    fingerprints: Fingerprints,
    run: RunRecord,
    _lock: Option<crate::store::lock::WriterLock>,
    started: Instant,
}

/// What a run works with once its settings are loaded.
struct Context<'a> {
    config: &'a PipelineConfig,
    /// Where stored documents and vectors are read: the collection written, or
    /// the one a reindex reads from.
    source: &'a Collection,
    collection: &'a Collection,
    stages: &'a tokio::sync::OnceCell<Stages>,
    fingerprints: &'a Fingerprints,
    /// The written collection's documents.
    states: HashMap<String, DocumentState>,
    /// Documents whose vectors in `source` were made as this run makes them.
    reuse: HashSet<String>,
    client: reqwest::Client,
    run_id: String,
    output: Output,
}

/// Where a run's writes go.
enum Output {
    /// Into the collection, committed window by window (one process holds the lock).
    Direct,
    /// Staged for the run's one commit: a shard of a run over many workers.
    Staged {
        writes: Box<tokio::sync::Mutex<crate::store::staging::StagedWrites>>,
        shard: crate::shard::Shard,
    },
}

impl Output {
    /// Of these documents, those this run is in charge of: all, or its shard's.
    fn owned(&self, ids: Vec<String>) -> Vec<String> {
        match self {
            Output::Direct => ids,
            Output::Staged { shard, .. } => {
                ids.into_iter().filter(|id| shard.contains(id)).collect()
            }
        }
    }
}

impl Context<'_> {
    async fn stages(&self, reporter: &dyn Reporter) -> Result<&Stages> {
        self.stages
            .get_or_try_init(|| async {
                reporter.note("loading the embedding model");
                let stages = Stages::load(self.config).await?;
                // The files were hashed to check the collection; this is the model that ran.
                self.collection
                    .info
                    .check_model(&self.collection.name, stages.embedder.info())?;
                Ok(stages)
            })
            .await
    }
}

impl Pipeline {
    pub fn new(config: PipelineConfig, isolation: Isolation) -> Self {
        Pipeline { config, isolation }
    }

    fn new_report(&self, warnings: Vec<String>) -> RunReport {
        let cfg = &self.config;
        RunReport {
            moulin_version: env!("CARGO_PKG_VERSION").to_string(),
            run_id: crate::store::runs::new_run_id(),
            started_at: now(),
            collection: cfg.collection.name.clone(),
            db: cfg.collection.db.clone(),
            model: None,
            config: cfg.recorded(),
            versions_before: Default::default(),
            versions_after: Default::default(),
            shards: None,
            totals: Default::default(),
            seconds: Seconds::default(),
            warnings,
            inputs: Vec::new(),
        }
    }

    /// Take the collection's lock, open it (or create it, loading the model for
    /// its dimension), mark runs a killed process left as failed, record this run.
    async fn begin(
        &self,
        kind: RunKind,
        report: &mut RunReport,
        options: &RunOptions,
        reporter: &dyn Reporter,
    ) -> Result<Session> {
        let started = Instant::now();
        let cfg = &self.config;
        // One writer at a time, from before anything is created.
        let store =
            Store::connect_with(&cfg.collection.db, Access::Write, &cfg.collection.storage).await?;
        let name = &cfg.collection.name;
        let lock = store.lock(name, &report.run_id, options.wait)?;
        if let Some(holder) = lock.as_ref().and_then(|l| l.took_over.as_ref()) {
            report.warnings.push(format!(
                "took over the lock left by {holder}, which stopped before the end of its run"
            ));
        }
        let (collection, stages, fingerprints) = self.open_collection(&store, reporter).await?;
        report.versions_before = collection.versions().await?;
        let mut run = RunRecord::start(kind, &report.versions_before, &report.config);
        run.run_id = report.run_id.clone();
        run.started_at = report.started_at.clone();
        finish_interrupted_runs(&collection).await?;
        collection.put_run(&run).await?;
        Ok(Session {
            collection,
            stages,
            fingerprints,
            run,
            _lock: lock,
            started,
        })
    }

    /// Open the collection to write (or create it, loading the model for its
    /// dimension), with what its documents are compared with.
    async fn open_collection(
        &self,
        store: &Store,
        reporter: &dyn Reporter,
    ) -> Result<(Collection, tokio::sync::OnceCell<Stages>, Fingerprints)> {
        let cfg = &self.config;
        let name = &cfg.collection.name;
        // The model's identity from its files; the model itself loads when needed.
        let EmbedderConfig::Onnx(onnx) = &cfg.embedder;
        let (model_hash, passage_prefix) = onnx.identity()?;
        let fingerprints = Fingerprints {
            chunking: Fingerprints::chunking(&cfg.chunker),
            embedding: onnx.fingerprint(&model_hash, &passage_prefix),
        };
        Ok(
            match store
                .open_existing_for_writing(name, &onnx.model, &model_hash)
                .await?
            {
                Some(c) => (c, tokio::sync::OnceCell::new(), fingerprints),
                None => {
                    // A new collection records the model's dimension: load it now.
                    reporter.note("loading the embedding model");
                    let stages = Stages::load(cfg).await?;
                    let c = store.open_for_writing(name, stages.embedder.info()).await?;
                    (
                        c,
                        tokio::sync::OnceCell::new_with(Some(stages)),
                        fingerprints,
                    )
                }
            },
        )
    }

    /// Record how the run ended; when it went through, bring indexes up to date,
    /// tag its versions and prune old ones.
    async fn end(
        &self,
        mut session: Session,
        report: &mut RunReport,
        outcome: Result<()>,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let collection = &session.collection;
        let run = &mut session.run;
        if let Err(e) = outcome {
            run.fail(e.to_string());
            let _ = collection.put_run(run).await;
            return Err(e);
        }
        let loaded = session.stages.get();
        report.seconds.model_load = loaded.map_or(0.0, |s| s.load_seconds);
        report.model = Some(loaded.map_or_else(
            || collection.info.model_info(),
            |s| s.embedder.info().clone(),
        ));
        self.record_run(collection, run, report, session.started, reporter)
            .await
    }

    /// A run's writes are in: indexes brought up to date, the run recorded as
    /// complete with its report, its versions tagged, old ones pruned.
    async fn record_run(
        &self,
        collection: &Collection,
        run: &mut RunRecord,
        report: &mut RunReport,
        started: Instant,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let t = Instant::now();
        reporter.note("updating the indexes");
        let upkeep = &self.config.upkeep;
        collection.refresh(upkeep).await?;
        report.versions_after = collection.versions().await?;
        report.seconds.index = t.elapsed().as_secs_f64();
        report.seconds.total = started.elapsed().as_secs_f64();
        report.tally();
        run.complete(&report.versions_after);
        let t = &report.totals;
        run.counts = crate::store::RunCounts {
            added: t.added as u64,
            updated: t.updated as u64,
            rechunked: t.rechunked as u64,
            unchanged: t.unchanged as u64,
            deleted: t.pruned as u64,
            failed: t.failed as u64,
        };
        run.report = Some(serde_json::to_string(&report).expect("serializable"));
        collection.put_run(run).await?;
        collection.tag_run(run).await?;
        collection.prune_versions(upkeep).await?;
        reporter.finish();
        Ok(())
    }

    pub async fn run(
        &self,
        listing: Listing,
        options: &RunOptions,
        reporter: &dyn Reporter,
    ) -> Result<RunReport> {
        let mut report = self.new_report(listing.warnings.clone());
        reporter.start(listing.inputs.len());
        let session = self
            .begin(RunKind::Ingest, &mut report, options, reporter)
            .await?;
        let states = session.collection.document_states().await?;
        let ctx = Context {
            config: &self.config,
            source: &session.collection,
            collection: &session.collection,
            stages: &session.stages,
            fingerprints: &session.fingerprints,
            reuse: reusable(&states, &session.fingerprints),
            states,
            client: extract::fetch::client(&self.config.extract)?,
            run_id: session.run.run_id.clone(),
            output: Output::Direct,
        };
        let outcome = self.write(&ctx, &listing, &mut report, reporter).await;
        drop(ctx);
        self.end(session, &mut report, outcome, reporter).await?;
        Ok(report)
    }

    /// Chunk and embed again the documents stored in `source` (no source file is
    /// read), into this pipeline's collection: `source` itself (in place, a new
    /// version) or another one. Documents already made with these settings are
    /// left alone, so that a killed reindex resumes where it stopped.
    pub async fn reindex(
        &self,
        source: &Collection,
        options: &RunOptions,
        reporter: &dyn Reporter,
    ) -> Result<RunReport> {
        let mut report = self.new_report(Vec::new());
        let session = self
            .begin(RunKind::Reindex, &mut report, options, reporter)
            .await?;
        let in_place = source.table.uri().await.ok() == session.collection.table.uri().await.ok();
        let stored = source.document_states().await?;
        let states = if in_place {
            stored.clone()
        } else {
            session.collection.document_states().await?
        };
        reporter.start(stored.len());
        let ctx = Context {
            config: &self.config,
            source,
            collection: &session.collection,
            stages: &session.stages,
            fingerprints: &session.fingerprints,
            reuse: reusable(&stored, &session.fingerprints),
            states,
            client: extract::fetch::client(&self.config.extract)?,
            run_id: session.run.run_id.clone(),
            output: Output::Direct,
        };
        let outcome = async {
            let mut ids: Vec<&DocumentState> = stored.values().collect();
            ids.sort_by(|a, b| a.document_id.cmp(&b.document_id));
            for window in ids.chunks(WINDOW_INPUTS) {
                let mut todo = Vec::new();
                for s in window {
                    let done = ctx.states.get(&s.document_id).is_some_and(|t| {
                        t.content_hash == s.content_hash
                            && t.chunking == ctx.fingerprints.chunking
                            && t.embedding == ctx.fingerprints.embedding
                    });
                    if done {
                        let input = InputReport {
                            path: s.uri.clone(),
                            status: Status::Unchanged,
                            change: None,
                            reason: Some("already made with these settings".into()),
                            format: None,
                            pages: 0,
                            chunks: 0,
                            named: false,
                            warnings: Vec::new(),
                        };
                        reporter.input_done(&input);
                        report.inputs.push(input);
                    } else {
                        todo.push(s.document_id.as_str());
                    }
                }
                let t = Instant::now();
                let mut ready = Vec::new();
                for row in source.load_documents(&todo).await? {
                    let change = if ctx.states.contains_key(&row.document_id) {
                        Change::Rechunked
                    } else {
                        Change::Added
                    };
                    ready.push(Ready {
                        doc: row.document()?,
                        change,
                        origin: row.origin.clone(),
                        path: row.uri.clone(),
                        named: false,
                    });
                }
                report.seconds.extract += t.elapsed().as_secs_f64();
                self.write_ready(&ctx, ready, &mut report, reporter).await?;
            }
            Ok(())
        }
        .await;
        drop(ctx);
        self.end(session, &mut report, outcome, reporter).await?;
        Ok(report)
    }

    /// Every window, then `prune`.
    async fn write(
        &self,
        ctx: &Context<'_>,
        listing: &Listing,
        report: &mut RunReport,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());
        for window in listing.inputs.chunks(WINDOW_INPUTS) {
            // Read, and extract what changed.
            let t = Instant::now();
            let outcomes: Vec<Outcome> = futures::stream::iter(window)
                .map(|listed| self.read(ctx, listed))
                .buffered(concurrency)
                .collect()
                .await;
            let mut ready: Vec<Ready> = Vec::new();
            let mut rechunk: Vec<&Listed> = Vec::new();
            for (listed, outcome) in window.iter().zip(outcomes) {
                let stored = ctx.states.get(&listed.document_id());
                match outcome {
                    Outcome::Planned(Plan::Unchanged) => {
                        let input = InputReport {
                            status: Status::Unchanged,
                            reason: Some("same content and settings as the stored version".into()),
                            ..input_report(listed)
                        };
                        reporter.input_done(&input);
                        report.inputs.push(input);
                    }
                    Outcome::Planned(_) => rechunk.push(listed),
                    Outcome::Extracted(mut doc) => {
                        doc.id = listed.document_id();
                        doc.source = listed.source.clone();
                        doc.uri = listed.input.source();
                        let change = if stored.is_some() {
                            Change::Updated
                        } else {
                            Change::Added
                        };
                        ready.push(Ready::new(listed, doc, change));
                    }
                    Outcome::Rejected(err) => {
                        let input = rejected(listed, err, stored.is_some());
                        reporter.input_done(&input);
                        report.inputs.push(input);
                    }
                }
            }
            // The same bytes under new settings: the stored text, chunked again.
            let ids: Vec<String> = rechunk.iter().map(|l| l.document_id()).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let rows: HashMap<String, DocumentRow> = ctx
                .collection
                .load_documents(&ids)
                .await?
                .into_iter()
                .map(|r| (r.document_id.clone(), r))
                .collect();
            for listed in rechunk {
                let Some(row) = rows.get(&listed.document_id()) else {
                    let missing = Error::Collection {
                        collection: ctx.collection.name.clone(),
                        reason: "its stored text is missing".into(),
                    };
                    let input = rejected(listed, missing, true);
                    reporter.input_done(&input);
                    report.inputs.push(input);
                    continue;
                };
                let mut doc = row.document()?;
                doc.uri = listed.input.source();
                ready.push(Ready::new(listed, doc, Change::Rechunked));
            }
            report.seconds.extract += t.elapsed().as_secs_f64();
            self.write_ready(ctx, ready, report, reporter).await?;
        }

        if self.config.collection.prune {
            let gone = gone(listing, &ctx.states);
            let gone = ctx.output.owned(gone);
            report.totals.pruned = gone.len();
            match &ctx.output {
                Output::Direct => {
                    let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
                    ctx.collection.delete_documents(&gone).await?;
                }
                Output::Staged { writes, .. } => writes.lock().await.delete(gone),
            }
        }
        Ok(())
    }

    /// Chunk, embed and write one window's documents, and report them: their
    /// chunks swap in one commit, then their rows follow.
    async fn write_ready(
        &self,
        ctx: &Context<'_>,
        ready: Vec<Ready>,
        report: &mut RunReport,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        if ready.is_empty() {
            return Ok(());
        }
        let stages = ctx.stages(reporter).await?;
        let t = Instant::now();
        let chunks: Vec<Vec<Chunk>> = ready
            .par_iter()
            .map(|r| stages.chunker.chunk(&r.doc))
            .collect();
        report.seconds.chunk += t.elapsed().as_secs_f64();

        // Chunks that did not change keep their vectors, when the embedding did not change.
        let t = Instant::now();
        let reusable: Vec<&str> = ready
            .iter()
            .filter(|r| ctx.reuse.contains(&r.doc.id))
            .map(|r| r.doc.id.as_str())
            .collect();
        let stored = ctx.source.stored_vectors(&reusable).await?;
        let (vectors, embedded) = embed_window(
            &stages.embedder,
            &chunks,
            &stored,
            &self.config.embedder,
            reporter,
        )
        .await?;
        report.totals.embedded += embedded;
        report.seconds.embed += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let embedded: Vec<EmbeddedDocument> = ready
            .iter()
            .zip(&chunks)
            .zip(&vectors)
            .map(|((r, chunks), vectors)| EmbeddedDocument {
                document: &r.doc,
                chunks,
                vectors,
            })
            .collect();
        let rows: Vec<DocumentRow> = ready
            .iter()
            .zip(&chunks)
            .map(|(r, cs)| document_row(ctx, r, cs.len()))
            .collect();
        match &ctx.output {
            Output::Direct => {
                ctx.collection.swap_chunks(&embedded, &ctx.run_id).await?;
                ctx.collection.put_documents(&rows).await?;
            }
            Output::Staged { writes, .. } => {
                let stored = ready
                    .iter()
                    .filter(|r| ctx.states.contains_key(&r.doc.id))
                    .map(|r| r.doc.id.clone());
                writes
                    .lock()
                    .await
                    .write(&embedded, &rows, &ctx.run_id, stored)
                    .await?;
            }
        }
        report.seconds.write += t.elapsed().as_secs_f64();
        for (r, cs) in ready.into_iter().zip(&chunks) {
            let input = InputReport {
                path: r.path,
                status: Status::Ingested,
                change: Some(r.change),
                reason: None,
                format: Some(r.doc.format.as_str().into()),
                pages: r.doc.pages,
                chunks: cs.len(),
                named: r.named,
                warnings: r.doc.warnings,
            };
            reporter.input_done(&input);
            report.inputs.push(input);
        }
        Ok(())
    }

    /// Read an input, and extract it unless the stored document says not to.
    async fn read(&self, ctx: &Context<'_>, listed: &Listed) -> Outcome {
        let options = &self.config.extract;
        let read = match read::read_input(&listed.input, &ctx.client, options).await {
            Ok(read) => read,
            Err(e) => return Outcome::Rejected(e),
        };
        let hash = extract::content_hash(&read.bytes);
        match ctx
            .fingerprints
            .plan(ctx.states.get(&listed.document_id()), &hash)
        {
            Plan::Extract => {}
            plan => return Outcome::Planned(plan),
        }
        match read::extract_read(&self.isolation, &listed.input, read, options).await {
            Ok(doc) => Outcome::Extracted(doc),
            Err(e) => Outcome::Rejected(e),
        }
    }
}

/// What a run would do, found by reading and hashing the inputs, without
/// extracting, loading a model or writing anything.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DryRun {
    pub add: Vec<String>,
    pub update: Vec<String>,
    pub rechunk: Vec<String>,
    pub unchanged: Vec<String>,
    /// Stored documents `prune` would delete (their stable source).
    pub delete: Vec<String>,
    /// Inputs that could not be read, with the reason.
    pub unreadable: Vec<(String, String)>,
}

impl Pipeline {
    pub async fn dry_run(&self, listing: &Listing) -> Result<DryRun> {
        let cfg = &self.config;
        let db = &cfg.collection.db;
        let states = if crate::store::check_db(db, Access::Read).is_err() {
            HashMap::new()
        } else {
            let store = Store::connect_with(db, Access::Read, &cfg.collection.storage).await?;
            match store.open(&cfg.collection.name).await {
                Ok(c) => c.document_states().await?,
                Err(Error::CollectionNotFound { .. }) => HashMap::new(),
                Err(e) => return Err(e),
            }
        };
        let EmbedderConfig::Onnx(onnx) = &cfg.embedder;
        let (hash, prefix) = onnx.identity()?;
        let fingerprints = Fingerprints {
            chunking: Fingerprints::chunking(&cfg.chunker),
            embedding: onnx.fingerprint(&hash, &prefix),
        };
        let client = extract::fetch::client(&cfg.extract)?;
        let concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());
        let plans: Vec<(&Listed, Result<Plan>)> = futures::stream::iter(&listing.inputs)
            .map(|listed| {
                let (client, states, fingerprints) = (&client, &states, &fingerprints);
                async move {
                    let plan = read::read_input(&listed.input, client, &cfg.extract)
                        .await
                        .map(|read| {
                            let hash = extract::content_hash(&read.bytes);
                            fingerprints.plan(states.get(&listed.document_id()), &hash)
                        });
                    (listed, plan)
                }
            })
            .buffered(concurrency)
            .collect()
            .await;
        let mut out = DryRun::default();
        for (listed, plan) in plans {
            let uri = listed.input.source();
            match plan {
                Ok(Plan::Unchanged) => out.unchanged.push(uri),
                Ok(Plan::Rechunk) => out.rechunk.push(uri),
                Ok(Plan::Extract) if states.contains_key(&listed.document_id()) => {
                    out.update.push(uri)
                }
                Ok(Plan::Extract) => out.add.push(uri),
                Err(e) => out.unreadable.push((uri, e.to_string())),
            }
        }
        let gone = if cfg.collection.prune {
            gone(listing, &states)
        } else {
            Vec::new()
        };
        if !gone.is_empty() {
            let store = Store::connect_with(db, Access::Read, &cfg.collection.storage).await?;
            let collection = store.open(&cfg.collection.name).await?;
            let ids: Vec<&str> = gone.iter().map(String::as_str).collect();
            out.delete = collection
                .load_documents(&ids)
                .await?
                .into_iter()
                .map(|r| r.source)
                .collect();
            out.delete.sort();
        }
        Ok(out)
    }
}

/// Runs still marked running are runs whose process stopped (the lock is ours):
/// the chunks of new documents they wrote without a row are removed, and they
/// are marked failed. A sharded run's commit stopped half way is refused instead.
async fn finish_interrupted_runs(collection: &Collection) -> Result<()> {
    let runs = collection.run_summaries().await?;
    // A sharded run's commit cut between its tables is finished by its commit,
    // not undone here: its chunks would look like orphans.
    collection.check_no_half_commit(&runs, None).await?;
    let interrupted: Vec<RunRecord> = runs
        .into_iter()
        .filter(|r| r.status == RunStatus::Running)
        .collect();
    if interrupted.is_empty() {
        return Ok(());
    }
    let orphans = collection.remove_orphan_chunks().await?;
    for mut run in interrupted {
        run.fail(format!(
            "interrupted before its end; the next run removed the chunks of {orphans} document(s) it had not recorded"
        ));
        collection.put_run(&run).await?;
    }
    Ok(())
}

/// Documents whose stored vectors were made as a run with `fingerprints` makes them.
fn reusable(
    states: &HashMap<String, DocumentState>,
    fingerprints: &Fingerprints,
) -> HashSet<String> {
    states
        .values()
        .filter(|s| s.embedding == fingerprints.embedding)
        .map(|s| s.document_id.clone())
        .collect()
}

/// Stored documents of the pruned sources that were not listed.
fn gone(listing: &Listing, states: &HashMap<String, DocumentState>) -> Vec<String> {
    let listed: HashSet<String> = listing.inputs.iter().map(Listed::document_id).collect();
    states
        .values()
        .filter(|s| listing.prune_scope.contains(&s.origin) && !listed.contains(&s.document_id))
        .map(|s| s.document_id.clone())
        .collect()
}

/// The report of an input, before its status is known.
fn input_report(listed: &Listed) -> InputReport {
    InputReport {
        path: listed.input.source(),
        status: Status::Unchanged,
        change: None,
        reason: None,
        format: None,
        pages: 0,
        chunks: 0,
        named: listed.named,
        warnings: Vec::new(),
    }
}

/// The report of an input that was not ingested; a version stored before stays.
fn rejected(listed: &Listed, err: Error, stored: bool) -> InputReport {
    let (status, reason) = match err {
        Error::Unsupported { what, .. } => (Status::Unsupported, what),
        Error::Extract { reason, .. } => (Status::Failed, reason),
        Error::Fetch { reason, .. } => (Status::Failed, reason),
        other => (Status::Failed, other.to_string()),
    };
    let kept = status == Status::Failed && stored;
    InputReport {
        status,
        reason: Some(if kept {
            format!("{reason} (the version stored before is kept)")
        } else {
            reason
        }),
        ..input_report(listed)
    }
}

fn document_row(ctx: &Context<'_>, r: &Ready, chunks: usize) -> DocumentRow {
    let doc = &r.doc;
    DocumentRow {
        document_id: doc.id.clone(),
        origin: r.origin.clone(),
        source: doc.source.clone(),
        uri: doc.uri.clone(),
        content_hash: doc.content_hash.clone(),
        format: doc.format.as_str().into(),
        title: doc.title.clone(),
        pages: doc.pages,
        metadata: serde_json::to_string(&doc.metadata).expect("serializable"),
        sections: serde_json::to_string(&doc.sections).expect("serializable"),
        extractor: extract::VERSION,
        chunking: ctx.fingerprints.chunking.clone(),
        embedding: ctx.fingerprints.embedding.clone(),
        chunks: chunks as u32,
        first_run: ctx
            .states
            .get(&doc.id)
            .map_or_else(|| ctx.run_id.clone(), |s| s.first_run.clone()),
        last_run: ctx.run_id.clone(),
        updated_at: now(),
    }
}

/// Vectors for a window's chunks: stored ones by chunk id where given, the rest
/// embedded longest first across the whole window; in the chunks' shape, with
/// the number of chunks embedded.
async fn embed_window(
    embedder: &Arc<OnnxEmbedder>,
    chunks: &[Vec<Chunk>],
    stored: &HashMap<String, Vec<f32>>,
    config: &EmbedderConfig,
    reporter: &dyn Reporter,
) -> Result<(Vec<Vec<Vec<f32>>>, usize)> {
    let mut vectors: Vec<Vec<Vec<f32>>> = chunks
        .iter()
        .map(|cs| {
            cs.iter()
                .map(|c| stored.get(&c.id).cloned().unwrap_or_default())
                .collect()
        })
        .collect();
    let mut flat: Vec<(usize, usize, usize)> = chunks
        .iter()
        .enumerate()
        .flat_map(|(d, cs)| {
            cs.iter()
                .enumerate()
                .map(move |(c, ch)| (ch.text.len(), d, c))
        })
        .filter(|&(_, d, c)| vectors[d][c].is_empty())
        .collect();
    flat.sort_by_key(|c| std::cmp::Reverse(c.0));
    reporter.chunks_queued(flat.len());
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
    Ok((vectors, flat.len()))
}
