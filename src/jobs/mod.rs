//! Batch jobs over a collection with the local language model: summaries of its
//! documents ([`summarize`]), answers to questions with their citations
//! ([`answer`]), and evaluation sets scored on those answers (`crate::eval`).
//!
//! A job is a file (`jobs/*.toml`, [`JobConfig`], its JSON Schema in
//! `schemas/job.schema.json`) or a quick command (`moulin ask`, `moulin
//! summarize`). Prompts are files ([`prompts`]). Results are JSON Lines keyed by
//! everything they depend on ([`output`]): a rerun skips what is done and redoes
//! what changed. Every job reports its usage: tokens, time, energy ([`usage`]).

pub mod answer;
pub mod config;
pub mod output;
pub mod prompts;
pub mod summarize;
pub mod usage;

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A language model's identity in results: its name and the hash of its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    /// sha256 of the GGUF file, or of a folder's files in name order.
    pub hash: String,
}

impl ModelIdentity {
    /// Hash the model's files (a few hundred MB/s: read once per job).
    pub fn of(path: &Path) -> Result<ModelIdentity> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let mut files = Vec::new();
        if path.is_dir() {
            for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
                let entry = entry.map_err(|e| Error::io(path, e))?;
                if entry.path().is_file() {
                    files.push(entry.path());
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut buffer = vec![0u8; 1 << 20];
        for file in &files {
            let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
            if path.is_dir() {
                hasher.update(file.file_name().unwrap_or_default().as_encoded_bytes());
            }
            loop {
                let n = f.read(&mut buffer).map_err(|e| Error::io(file, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
            }
        }
        Ok(ModelIdentity {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| path.display().to_string()),
            hash: hex::encode(hasher.finalize()),
        })
    }
}

/// Run a blocking computation (the model) from async code without stalling
/// the runtime's other tasks.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

use std::time::Instant;

use answer::{AnswerLine, Answerer, Question};
use config::{JobConfig, Kind};
use prompts::{Prompt, PromptId};
use summarize::{Summarizer, SummaryLine};
use usage::{Meter, Usage};

use crate::llm::{Llm, LoadOptions};
use crate::store::search::{Mode, Searcher};
use crate::store::{Access, Store};

/// What a job did: settings, model, prompt, counts, usage (and scores, for evaluations).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobReport {
    pub kind: Kind,
    pub collection: String,
    pub output: String,
    pub model: ModelIdentity,
    pub prompt: PromptId,
    pub settings: JobConfig,
    pub usage: Usage,
    /// Retrieval and answer scores, for evaluate jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<serde_json::Value>,
}

/// A job's model, loaded, with its identity.
pub struct LoadedModel {
    pub llm: Llm,
    pub identity: ModelIdentity,
    pub seconds: f64,
}

/// Load the language model a job names (hashing its files for the results' keys).
pub fn load_model(config: &config::ModelConfig) -> Result<LoadedModel> {
    let started = Instant::now();
    let path = config.path();
    let identity = ModelIdentity::of(&path)?;
    let options = LoadOptions {
        context: config.context,
        ..LoadOptions::default()
    };
    let llm = blocking(|| Llm::load(&path, &options))?;
    Ok(LoadedModel {
        llm,
        identity,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn prompt_for(config: &JobConfig) -> Result<Prompt> {
    let name = match config.kind {
        Kind::Summarize => "summarize",
        Kind::Answer | Kind::Evaluate => "answer",
    };
    let dir = prompts::override_dir(config.prompt.dir.as_deref());
    Prompt::load(name, config.prompt.language, dir.as_deref())
}

fn report(config: &JobConfig, model: &LoadedModel, prompt: &Prompt, usage: Usage) -> JobReport {
    JobReport {
        kind: config.kind,
        collection: config.collection.clone(),
        output: config.output.clone(),
        model: model.identity.clone(),
        prompt: prompt.id(),
        settings: config.clone(),
        usage,
        scores: None,
    }
}

/// Answer questions from a collection: the answers, in question order, and the report.
pub async fn run_answers(
    config: &JobConfig,
    questions: &[Question],
    output: Option<&Path>,
    progress: impl FnMut(usize, usize),
) -> Result<(Vec<AnswerLine>, JobReport)> {
    let meter = Meter::start(&config.energy);
    let prompt = prompt_for(config)?;
    let store = Store::connect(&config.db, Access::Read).await?;
    let collection = store.open(&config.collection).await?;
    let searcher = Searcher::open(
        collection,
        config.retrieval.embedding_model.clone(),
        config.retrieval.mode == Mode::Lexical,
    )
    .await?;
    let model = load_model(&config.model)?;
    let answerer = Answerer {
        llm: &model.llm,
        model: &model.identity,
        prompt: &prompt,
        generation: &config.model,
        retrieval: &config.retrieval,
    };
    let (lines, mut usage) = answerer.run(&searcher, questions, output, progress).await?;
    usage.seconds.load = model.seconds;
    usage.finish(meter.stop());
    let report = report(config, &model, &prompt, usage);
    Ok((lines, report))
}

/// Summarize a collection's documents (those of one shard, for a job over many
/// workers): the summaries, in source order, and the report.
pub async fn run_summaries(
    config: &JobConfig,
    shard: Option<crate::shard::Shard>,
    output: Option<&Path>,
    progress: impl FnMut(usize, usize),
) -> Result<(Vec<SummaryLine>, JobReport)> {
    let meter = Meter::start(&config.energy);
    let prompt = prompt_for(config)?;
    let store = Store::connect(&config.db, Access::Read).await?;
    let collection = store.open(&config.collection).await?;
    let model = load_model(&config.model)?;
    let summarizer = Summarizer {
        llm: &model.llm,
        model: &model.identity,
        prompt: &prompt,
        generation: &config.model,
    };
    let (lines, mut usage) = summarizer
        .run(
            &collection,
            config.source.as_deref(),
            shard,
            output,
            progress,
        )
        .await?;
    usage.seconds.load = model.seconds;
    usage.finish(meter.stop());
    let report = report(config, &model, &prompt, usage);
    Ok((lines, report))
}
