//! The arguments that several commands share, defined once so that each has one
//! name, one form and one help line everywhere (see the README's command reference).

use std::path::PathBuf;

use clap::Args;
use moulin::pipeline::config::Overrides;
use moulin::shard::{Shard, ShardChoice};
use moulin::store::DEFAULT_DB;

/// `--db`: the database, for commands that read or write one.
#[derive(Args, Debug, Clone)]
pub struct Db {
    /// LanceDB database: a folder, or a LanceDB URI.
    #[arg(long, value_name = "URI", env = "MOULIN_DB", hide_env_values = true, default_value = DEFAULT_DB)]
    pub db: String,
}

/// `-c/--collection` and `--db`, for commands that work in one collection.
#[derive(Args, Debug, Clone)]
pub struct Collection {
    /// The collection: a table of the database, named with letters, digits, '_', '-' and '.'.
    #[arg(short, long, value_name = "NAME")]
    pub collection: String,
    #[command(flatten)]
    pub db: Db,
}

/// The settings `ingest` and `run` share: where to write, how to cut and embed, the report.
#[derive(Args, Debug, Clone)]
pub struct Pipeline {
    /// The collection to write: a table of the database, named with letters, digits, '_', '-' and '.'.
    #[arg(short, long, value_name = "NAME")]
    pub collection: Option<String>,
    /// LanceDB database: a folder, or a LanceDB URI [default: ./data].
    #[arg(long, value_name = "URI", env = "MOULIN_DB", hide_env_values = true)]
    pub db: Option<String>,
    #[command(flatten)]
    pub stages: Stages,
    /// Password of encrypted PDFs and xlsx/xlsb workbooks; never stored or logged.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "MOULIN_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Delete the documents of earlier runs whose source is no longer listed.
    #[arg(long)]
    pub prune: bool,
    /// Write the run report (JSON) to this file; a folder when `run` gets several pipeline files.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub wait: Wait,
    /// Say what would be added, updated, re-chunked and deleted, without writing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--shard` and `--run-id`: one shard of a run over many workers.
#[derive(Args, Debug, Clone)]
pub struct Sharding {
    /// Run shard I of N (from 0) of a run over many workers: the inputs whose id hashes to I, staged for `moulin commit`. `auto`: from a Slurm job array or a Kubernetes Indexed Job.
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<ShardChoice>,
    /// The id the shards of one run share (a Slurm array's job id by default).
    #[arg(long, value_name = "ID", env = "MOULIN_RUN_ID", hide_env_values = true)]
    pub run_id: Option<String>,
}

impl Sharding {
    /// The shard and run id, when sharded; an error says what is missing.
    pub fn resolve(&self, pipelines: usize) -> anyhow::Result<Option<(Shard, String)>> {
        let Some(choice) = self.shard else {
            return Ok(None);
        };
        if pipelines != 1 {
            anyhow::bail!("--shard runs one pipeline file, not {pipelines}");
        }
        let shard = choice
            .resolve()
            .map_err(|e| anyhow::anyhow!("--shard: {e}"))?;
        let run_id = self
            .run_id
            .clone()
            .or_else(|| Shard::run_id_from_env(|k| std::env::var(k).ok()))
            .ok_or_else(|| {
                anyhow::anyhow!("--shard needs the run's id, the same for every shard: --run-id ID or MOULIN_RUN_ID")
            })?;
        moulin::pipeline::check_run_id(&run_id).map_err(|e| anyhow::anyhow!("--run-id: {e}"))?;
        Ok(Some((shard, run_id)))
    }
}

/// `--wait [SECONDS]` for commands that write a collection.
#[derive(Args, Debug, Clone)]
pub struct Wait {
    /// When another run is writing the collection, wait for it (at most SECONDS, default an hour) instead of stopping.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "3600")]
    pub wait: Option<u64>,
}

impl Wait {
    pub fn duration(&self) -> Option<std::time::Duration> {
        self.wait.map(std::time::Duration::from_secs)
    }
}

/// How documents are cut and embedded: shared by `ingest`, `run` and `reindex`.
#[derive(Args, Debug, Clone)]
pub struct Stages {
    /// Embedding model: a model name in moulin's cache, or a folder with model.onnx and tokenizer.json.
    #[arg(
        long,
        value_name = "NAME|DIR",
        env = "MOULIN_EMBEDDING_MODEL",
        hide_env_values = true
    )]
    pub embedding_model: Option<String>,
    /// Largest chunk, in characters (or in tokens with --tokens).
    #[arg(long, value_name = "N")]
    pub chunk_size: Option<usize>,
    /// Text repeated between consecutive chunks, in the same unit as --chunk-size.
    #[arg(long, value_name = "N")]
    pub overlap: Option<usize>,
    /// Size chunks in the embedding model's tokens (400 with 40 of overlap unless given).
    #[arg(long)]
    pub tokens: bool,
}

impl Stages {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            embedding_model: self.embedding_model.clone(),
            chunk_size: self.chunk_size,
            overlap: self.overlap,
            tokens: self.tokens,
            ..Default::default()
        }
    }
}

impl Pipeline {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            collection: self.collection.clone(),
            db: self.db.clone(),
            password: self.password.clone(),
            prune: self.prune,
            ..self.stages.overrides()
        }
    }
}

/// `--embedding-model` for commands that embed queries.
#[derive(Args, Debug, Clone)]
pub struct EmbeddingModel {
    /// Embedding model, when it is not the one the collection records: a model name in moulin's cache, or a folder.
    #[arg(
        long,
        value_name = "NAME|DIR",
        env = "MOULIN_EMBEDDING_MODEL",
        hide_env_values = true
    )]
    pub embedding_model: Option<String>,
}

/// `--json`: machine-readable output on stdout.
#[derive(Args, Debug, Clone, Copy)]
pub struct Json {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
