//! Job files: `jobs/*.toml`, checked before a job runs, like pipeline files.
//!
//! ```toml
//! kind = "answer"                 # summarize | answer | evaluate
//! collection = "demo"
//! questions = "jobs/demo-questions.jsonl"
//! output = "answers.jsonl"
//!
//! [model]                         # the language model and its sampling
//! max_new_tokens = 200
//!
//! [retrieval]                     # answer and evaluate
//! mode = "hybrid"
//! top_k = 5
//! ```
//!
//! Relative paths are read from the current directory, as in pipeline files.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::prompts::Language;
use super::usage::EnergySettings;
use crate::config::{Origins, Problem, Problems, file};
use crate::llm::Sampling;
use crate::store::search::Mode;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One summary per document of the collection (or of those whose source matches `source`).
    Summarize,
    /// An answer with its cited passages for each question of `questions`.
    Answer,
    /// Answers to an evaluation set, scored against its references and relevance judgments.
    Evaluate,
}

/// A moulin job: model work in batch over a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub kind: Kind,
    /// The collection to work on.
    pub collection: String,
    /// LanceDB database: a folder or any LanceDB URI.
    #[serde(default = "default_db")]
    pub db: String,
    /// Questions (answer) or the evaluation set (evaluate): JSON Lines with
    /// `question` (or `user_input`, `query`) and an optional `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub questions: Option<String>,
    /// Summarize only documents whose source matches this pattern (`*` wildcards;
    /// a plain string matches a substring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Results, JSON Lines: one line per item, kept across runs (done items are skipped).
    pub output: String,
    /// The job's report (JSON): counts, scores, usage and energy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub retrieval: RetrievalConfig,
    #[serde(default)]
    pub prompt: PromptConfig,
    #[serde(default)]
    pub energy: EnergySettings,
}

fn default_db() -> String {
    crate::store::DEFAULT_DB.to_string()
}

/// The language model and how it generates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A GGUF file or a Hugging Face folder [default: the model setup.sh installs, or MOULIN_LLM].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<String>,
    /// Longest prompt + answer, in tokens (at most the model's own context).
    pub context: usize,
    /// Most tokens generated per answer or summary.
    pub max_new_tokens: usize,
    /// 0 is greedy decoding.
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    /// Sequences decoded together; as one ends, the next takes its place.
    pub batch_size: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            llm: None,
            context: 4096,
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            batch_size: 8,
        }
    }
}

impl ModelConfig {
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }

    /// The model file or folder.
    pub fn path(&self) -> PathBuf {
        self.llm
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(crate::llm::default_model_path)
    }

    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let path = self.path();
        if !path.exists() {
            out.push((
                "llm".into(),
                format!(
                    "no language model at {}: run scripts/setup.sh to install the default one, \
                     or give a GGUF file or a Hugging Face folder",
                    path.display()
                ),
            ));
        }
        if self.context < 256 {
            out.push(("context".into(), "must be at least 256".into()));
        }
        if self.max_new_tokens == 0 {
            out.push(("max_new_tokens".into(), "must be at least 1".into()));
        } else if self.max_new_tokens * 2 > self.context {
            out.push((
                "max_new_tokens".into(),
                format!(
                    "must leave at least half of the context ({}) to the prompt",
                    self.context
                ),
            ));
        }
        if self.batch_size == 0 {
            out.push(("batch_size".into(), "must be at least 1".into()));
        }
        out.extend(self.sampling().problems());
        out
    }
}

/// How answers find their passages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    pub mode: Mode,
    /// Passages given to the model per question (fewer when they do not fit its context).
    pub top_k: usize,
    /// The embedding model, when it is not the one the collection records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        RetrievalConfig {
            mode: Mode::Hybrid,
            top_k: 5,
            embedding_model: None,
        }
    }
}

/// Which prompt, in which language.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    pub language: Language,
    /// A folder whose `{answer,summarize}.{fr,en}.toml` replace the built-in
    /// prompts [default: MOULIN_PROMPTS, if set].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// The JSON Schema of job files.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(JobConfig)).expect("serializable schema")
}

pub fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/job.schema.json")
}

/// A job, checked, with where each of its settings came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: JobConfig,
    pub origins: Origins,
}

/// Whether a settings file is a job file (it says what kind of job) rather than a pipeline.
pub fn is_job(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("kind") && !t.contains_key("sources"))
}

/// Read and check a job file: every problem at once.
pub fn load(path: &Path) -> Result<Loaded, Problems> {
    let subject = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Problems {
        subject: subject.clone(),
        list: vec![Problem::argument(format!(
            "cannot read {}: {e}",
            path.display()
        ))],
    })?;
    let read = file::read(path, &text, &json_schema());
    let origins = read.origins;
    let mut list = read.problems;
    let Some(mut json) = read.value else {
        return Err(Problems { subject, list });
    };
    // What only the program can check runs on the parts whose shape is right:
    // values with a problem of shape are left out, defaults stand in for them.
    for p in &list {
        crate::pipeline::config::remove(&mut json, &p.key);
    }
    let shape: Vec<String> = list.iter().map(|p| p.key.clone()).collect();
    let config = match serde_json::from_value::<JobConfig>(json) {
        Ok(config) => {
            let checks = config.check(&origins);
            list.extend(checks.into_iter().filter(|p| !shape.contains(&p.key)));
            Some(config)
        }
        Err(_) => None,
    };
    file::sort_by_position(&mut list);
    match config {
        Some(config) if list.is_empty() => Ok(Loaded { config, origins }),
        _ => Err(Problems { subject, list }),
    }
}

impl JobConfig {
    /// Every problem the schema cannot see, each with its origin.
    pub fn check(&self, origins: &Origins) -> Vec<Problem> {
        let mut out: Vec<(String, String)> = Vec::new();
        if let Err(m) = crate::store::check_collection_name(&self.collection) {
            out.push(("collection".into(), m));
        }
        match (&self.kind, &self.questions) {
            (Kind::Answer | Kind::Evaluate, None) => out.push((
                "questions".into(),
                "an answer or evaluate job needs questions".into(),
            )),
            (Kind::Answer | Kind::Evaluate, Some(q)) if !Path::new(q).is_file() => {
                out.push(("questions".into(), format!("no such file {q}")))
            }
            (Kind::Summarize, Some(_)) => out.push((
                "questions".into(),
                "a summarize job has no questions (did you mean kind = \"answer\"?)".into(),
            )),
            _ => {}
        }
        if self.source.is_some() && self.kind != Kind::Summarize {
            out.push((
                "source".into(),
                "only summarize jobs filter by source".into(),
            ));
        }
        if self.output.trim().is_empty() {
            out.push(("output".into(), "name the results file".into()));
        }
        for (key, m) in self.model.problems() {
            out.push((format!("model.{key}"), m));
        }
        if self.retrieval.top_k == 0 {
            out.push(("retrieval.top_k".into(), "must be at least 1".into()));
        }
        if let Some(model) = &self.retrieval.embedding_model
            && let Err(m) = crate::embed::check_model(model)
        {
            out.push(("retrieval.embedding_model".into(), m));
        }
        if let Some(dir) = &self.prompt.dir
            && !Path::new(dir).is_dir()
        {
            out.push(("prompt.dir".into(), format!("no such folder {dir}")));
        }
        for (key, m) in self.energy.problems() {
            out.push((format!("energy.{key}"), m));
        }
        out.into_iter()
            .map(|(key, message)| origins.problem(key, message))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schema_is_current() {
        let committed = std::fs::read_to_string(schema_path()).expect("schemas/job.schema.json");
        let current = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
        assert!(
            committed == current,
            "schemas/job.schema.json is stale: run `moulin schema job > schemas/job.schema.json`"
        );
    }

    #[test]
    fn the_committed_jobs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(cwd, dir, "tests run from the package root");
        let mut n = 0;
        for entry in std::fs::read_dir(dir.join("jobs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(is_job(&text), "{}", path.display());
                // Tests run after setup, which installs the default model.
                if let Err(p) = load(&path) {
                    panic!("{}: {p}", path.display());
                }
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn mistakes_are_all_listed_with_their_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.toml");
        std::fs::write(
            &path,
            "kind = \"answer\"\ncollection = \"a b\"\noutput = \"\"\n\n[model]\nmax_new_tokens = 0\nbatch_size = 0\ntemperature = -1.0\n\n[retrieval]\ntop_k = 0\n",
        )
        .unwrap();
        let p = load(&path).unwrap_err();
        let keys: Vec<&str> = p.list.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "collection",
            "questions",
            "output",
            "model.max_new_tokens",
            "model.batch_size",
            "model.temperature",
            "retrieval.top_k",
        ] {
            assert!(keys.contains(&key), "{key} missing from {p}");
        }
    }
}
