//! `moulin reindex`: chunk and embed a collection again from its stored
//! documents, in place or into a new collection; no source file is read.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use moulin::config::{Origins, Problem, Problems};
use moulin::embed::EmbedderConfig;
use moulin::pipeline::config::{self, Loaded, PipelineConfig};
use moulin::pipeline::{Isolation, Pipeline, RunOptions};
use moulin::progress::Reporter;
use moulin::store::{Access, Store};

use super::{args, ingest, paths, progress};

#[derive(Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    collection: args::Collection,
    /// Write into this new collection of the same database instead of in place.
    #[arg(long, value_name = "NAME")]
    into: Option<String>,
    /// Allow a new embedding model in place: every vector is made again, as a new version.
    #[arg(long)]
    replace_model: bool,
    /// Take the chunker, embedder and upkeep settings from this pipeline file.
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
    #[command(flatten)]
    stages: args::Stages,
    /// Write the run report (JSON) to this file.
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    #[command(flatten)]
    wait: args::Wait,
}

pub async fn command(args: ReindexArgs, quiet: bool) -> Result<u8> {
    let (name, db) = (&args.collection.collection, &args.collection.db.db);
    let mut problems = Problems::new("moulin reindex");
    if let Err(m) = moulin::store::check_collection_name(name) {
        problems.list.push(Problem::flag("--collection", m));
    }
    if let Err(m) = moulin::store::check_db(db, Access::Read) {
        problems.list.push(Problem::flag("--db", m));
    }
    if let Some(Err(m)) = args
        .into
        .as_deref()
        .map(moulin::store::check_collection_name)
    {
        problems.list.push(Problem::flag("--into", m));
    }
    if args.into.as_deref() == Some(name.as_str()) {
        problems.list.push(Problem::flag(
            "--into",
            "names the collection itself: leave it out to reindex in place",
        ));
    }
    if let Some(path) = &args.report
        && let Err(m) = paths::check_writable(path)
    {
        problems.list.push(Problem::flag("--report", m));
    }
    let file = match &args.pipeline {
        Some(path) => match config::load(path) {
            Ok(loaded) => Some(loaded),
            Err(p) => {
                problems.list.extend(p.list);
                None
            }
        },
        None => None,
    };
    problems.into_result()?;

    // The settings: the collection's last run's, then the file's stages, then the options.
    let store = Store::connect(db, Access::Read).await?;
    let source = store.open(name).await?;
    let recorded = source.stats().await?.config;
    let mut base: PipelineConfig = serde_json::from_value(recorded).map_err(|_| {
        anyhow::anyhow!(
            "collection {name} records no complete run to take its settings from; run its pipeline first"
        )
    })?;
    let mut origins = Origins::default();
    if let Some(file) = file {
        base.chunker = file.config.chunker;
        base.embedder = file.config.embedder;
        base.upkeep = file.config.upkeep;
        origins = file.origins;
    }
    base.collection.name = args.into.clone().unwrap_or_else(|| name.clone());
    base.collection.db = db.clone();
    let mut loaded = Loaded {
        config: base,
        origins,
    };
    args.stages.overrides().apply(&mut loaded);
    let mut problems = Problems::new("moulin reindex");
    problems.list.extend(
        loaded
            .config
            .check(&loaded.origins)
            .into_iter()
            // Reindexing reads no source: they need not be there any more.
            .filter(|p| !p.key.starts_with("sources")),
    );
    problems.into_result()?;
    let EmbedderConfig::Onnx(onnx) = &loaded.config.embedder;
    let (hash, _) = onnx.identity()?;
    let new_model = !source.info.model_hash.is_empty() && source.info.model_hash != hash;
    if new_model && args.into.is_none() {
        if !args.replace_model {
            return Err(Problems {
                subject: "moulin reindex".into(),
                list: vec![Problem::flag(
                    "--embedding-model",
                    format!(
                        "{} is not the model of {name} ({}): reindex into a new collection with --into NAME, or replace the model in place with --replace-model",
                        onnx.model, source.info.model
                    ),
                )],
            }
            .into());
        }
        return replace_model(&store, source, loaded.config, &args, quiet).await;
    }

    let pipeline = Pipeline::new(loaded.config, Isolation::InProcess);
    let options = RunOptions {
        wait: args.wait.duration(),
    };
    let bars = progress::Bars::new(quiet);
    let reporter: &dyn Reporter = match &bars {
        Some(b) => b,
        None => &progress::Plain,
    };
    let report = pipeline.reindex(&source, &options, reporter).await?;
    ingest::finish(&report, args.report.as_deref())
}

/// A new model in place: everything is embedded again into a scratch collection
/// beside this one, which then replaces it as a new version of its tables.
async fn replace_model(
    store: &Store,
    source: moulin::store::Collection,
    config: PipelineConfig,
    args: &ReindexArgs,
    quiet: bool,
) -> Result<u8> {
    let name = source.name.clone();
    let scratch = format!("{name}.reindex");
    let mut scratch_config = config;
    scratch_config.collection.name = scratch.clone();
    let pipeline = Pipeline::new(scratch_config, Isolation::InProcess);
    let options = RunOptions {
        wait: args.wait.duration(),
    };
    let bars = progress::Bars::new(quiet);
    let reporter: &dyn Reporter = match &bars {
        Some(b) => b,
        None => &progress::Plain,
    };
    let mut report = pipeline.reindex(&source, &options, reporter).await?;
    let run = store
        .replace_with(&name, &scratch, &pipeline.config.upkeep, options.wait)
        .await?;
    eprintln!(
        "{name} now holds the vectors of {} (recorded as run {}, chunks version {})",
        report
            .model
            .as_ref()
            .map_or("the new model", |m| m.name.as_str()),
        run.run_id,
        run.chunks_after.unwrap_or_default()
    );
    // The report speaks of the collection replaced, and of the run that replaced it.
    report.collection = name;
    report.run_id = run.run_id.clone();
    report.versions_before = moulin::store::Versions {
        chunks: run.chunks_before,
        documents: run.documents_before,
    };
    report.versions_after = run.after().unwrap_or_default();
    ingest::finish(&report, args.report.as_deref())
}
