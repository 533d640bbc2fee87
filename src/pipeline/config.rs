//! Pipeline files: `pipelines/*.toml`, one table per stage, checked against a JSON Schema.
//!
//! The schema is generated from these types (`moulin schema`, committed in
//! `schemas/pipeline.schema.json`), and `moulin validate` reports every problem
//! of a file at once, each with its key path: schema violations first, then
//! what only the program can check (an overlap larger than the chunk size, a
//! source folder that does not exist).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkerConfig;
use crate::embed::EmbedderConfig;
use crate::error::{Error, Result};
use crate::extract::ExtractOptions;

/// A moulin pipeline: where documents come from, how they are cut and embedded,
/// and which LanceDB collection receives them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub collection: CollectionConfig,
    /// Inputs: folders, files, globs and URLs.
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub extract: ExtractOptions,
    #[serde(default)]
    pub chunker: ChunkerConfig,
    #[serde(default)]
    pub embedder: EmbedderConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// Name of the LanceDB table.
    pub name: String,
    /// LanceDB database: a folder or any LanceDB URI.
    #[serde(default = "default_db")]
    pub db: String,
    /// Delete the documents of earlier runs whose source is no longer listed.
    #[serde(default)]
    pub prune: bool,
}

fn default_db() -> String {
    crate::store::DEFAULT_DB.to_string()
}

/// One kind of input, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Local files: a file, a folder (walked recursively) or a glob pattern.
    Files {
        /// Relative paths are read from the current directory.
        path: String,
        /// Keep only files matching one of these globs (relative to `path`), e.g. `**/*.pdf`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        include: Vec<String>,
        /// Leave out files matching any of these globs.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
    },
    /// Web pages fetched over HTTP(S).
    Urls { urls: Vec<String> },
}

/// A problem in a pipeline file, with its key path (`chunker.overlap`, `sources[1].path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The JSON Schema of pipeline files.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PipelineConfig)).expect("serializable schema")
}

/// Parse and check a pipeline file, returning it or every problem found.
pub fn load(path: &Path) -> std::result::Result<PipelineConfig, Vec<Problem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            path: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    parse(&text)
}

pub fn parse(text: &str) -> std::result::Result<PipelineConfig, Vec<Problem>> {
    let value: toml::Value = toml::from_str(text).map_err(|e| {
        vec![Problem {
            path: String::new(),
            message: format!("not valid TOML: {}", e.message()),
        }]
    })?;
    let json = serde_json::to_value(&value).expect("TOML is JSON-representable");
    let schema = json_schema();
    let validator = jsonschema::validator_for(&schema).expect("our schema is valid");
    let mut problems: Vec<Problem> = validator
        .iter_errors(&json)
        .map(|e| Problem {
            path: key_path(&e.instance_path().to_string()),
            message: e.to_string(),
        })
        .collect();
    if !problems.is_empty() {
        for p in &mut problems {
            refine(p, &json);
        }
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        problems.dedup();
        return Err(problems);
    }
    let config: PipelineConfig = serde_json::from_value(json).map_err(|e| {
        vec![Problem {
            path: String::new(),
            message: e.to_string(),
        }]
    })?;
    problems.extend(config.semantic_problems());
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// A value tagged by `type` that matches no variant gets the schema's vague
/// "not valid under any of the schemas" message; serde says what is wrong with it.
fn refine(problem: &mut Problem, json: &serde_json::Value) {
    if !problem.message.contains("oneOf") && !problem.message.contains("anyOf") {
        return;
    }
    let mut value = json;
    let path = problem.path.replace('[', ".").replace(']', "");
    for key in path.split('.').filter(|k| !k.is_empty()) {
        value = match key.parse::<usize>() {
            Ok(i) => &value[i],
            Err(_) => &value[key],
        };
    }
    let error = if problem.path == "chunker" {
        serde_json::from_value::<ChunkerConfig>(value.clone()).err()
    } else if problem.path == "embedder" {
        serde_json::from_value::<EmbedderConfig>(value.clone()).err()
    } else if problem.path.starts_with("sources[") {
        serde_json::from_value::<SourceConfig>(value.clone()).err()
    } else {
        None
    };
    if let Some(e) = error {
        problem.message = e.to_string();
    }
}

/// `/sources/1/path` as `sources[1].path`.
fn key_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if part.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

impl PipelineConfig {
    /// What the schema cannot say.
    fn semantic_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |path: String, message: String| out.push(Problem { path, message });
        if self.collection.name.trim().is_empty() {
            push("collection.name".into(), "must not be empty".into());
        }
        if !self
            .collection
            .name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            push(
                "collection.name".into(),
                "use letters, digits, '_', '-' and '.' only".into(),
            );
        }
        if self.sources.is_empty() {
            push("sources".into(), "list at least one source".into());
        }
        for (i, source) in self.sources.iter().enumerate() {
            match source {
                SourceConfig::Files {
                    path,
                    include,
                    exclude,
                } => {
                    let is_glob = path.contains(['*', '?', '[']);
                    if !is_glob && !Path::new(path).exists() {
                        push(
                            format!("sources[{i}].path"),
                            format!("{path} does not exist"),
                        );
                    }
                    for (key, globs) in [("include", include), ("exclude", exclude)] {
                        for (j, g) in globs.iter().enumerate() {
                            if let Err(e) = globset::Glob::new(g) {
                                push(format!("sources[{i}].{key}[{j}]"), e.to_string());
                            }
                        }
                    }
                }
                SourceConfig::Urls { urls } => {
                    for (j, u) in urls.iter().enumerate() {
                        match url::Url::parse(u) {
                            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                            Ok(_) => push(
                                format!("sources[{i}].urls[{j}]"),
                                "only http and https URLs are fetched".into(),
                            ),
                            Err(e) => push(format!("sources[{i}].urls[{j}]"), e.to_string()),
                        }
                    }
                }
            }
        }
        for (key, problem) in self.chunker.problems() {
            push(format!("chunker.{key}"), problem);
        }
        let crate::embed::EmbedderConfig::Onnx(onnx) = &self.embedder;
        if onnx.batch_size == 0 {
            push("embedder.batch_size".into(), "must be at least 1".into());
        }
        out
    }

    /// The configuration as JSON, recorded in collections and reports.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }

    /// A pipeline for `moulin ingest`: the given inputs with default stages.
    pub fn quick(collection: &str, db: &str, inputs: &[String]) -> PipelineConfig {
        let (urls, paths): (Vec<&String>, Vec<&String>) =
            inputs.iter().partition(|i| crate::paths::is_url(i));
        let mut sources: Vec<SourceConfig> = paths
            .into_iter()
            .map(|p| SourceConfig::Files {
                path: p.clone(),
                include: Vec::new(),
                exclude: Vec::new(),
            })
            .collect();
        if !urls.is_empty() {
            sources.push(SourceConfig::Urls {
                urls: urls.into_iter().cloned().collect(),
            });
        }
        PipelineConfig {
            collection: CollectionConfig {
                name: collection.to_string(),
                db: db.to_string(),
                prune: false,
            },
            sources,
            extract: ExtractOptions::default(),
            chunker: ChunkerConfig::default(),
            embedder: EmbedderConfig::default(),
        }
    }
}

/// Read a pipeline file or fail with every problem in one error.
pub fn load_or_error(path: &Path) -> Result<PipelineConfig> {
    load(path).map_err(|problems| Error::Config {
        path: path.display().to_string(),
        reason: problems
            .iter()
            .map(|p| format!("\n  - {p}"))
            .collect::<String>(),
    })
}

/// The folder holding the committed schemas.
pub fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/pipeline.schema.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_with_its_key_path() {
        let text = r#"
            [collection]
            name = ""
            colour = "blue"

            [[sources]]
            type = "files"
            path = "/nonexistent/folder"

            [[sources]]
            type = "ftp"

            [chunker]
            type = "markdown"
            size = "big"
        "#;
        let problems = parse(text).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"collection"), "{problems:?}");
        assert!(paths.contains(&"sources[1]"), "{problems:?}");
        let chunker = problems
            .iter()
            .find(|p| p.path == "chunker")
            .expect("a chunker problem");
        assert!(chunker.message.contains("expected usize"), "{chunker}");
        let source = problems
            .iter()
            .find(|p| p.path == "sources[1]")
            .expect("a source problem");
        assert!(source.message.contains("unknown variant `ftp`"), "{source}");
        assert!(problems.len() >= 3);
    }

    #[test]
    fn semantic_problems_come_after_the_schema_passes() {
        let text = r#"
            [collection]
            name = "ok"
            [[sources]]
            type = "files"
            path = "/nonexistent/folder"
            [chunker]
            type = "text"
            size = 100
            overlap = 100
        "#;
        let problems = parse(text).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, vec!["sources[0].path", "chunker.overlap"]);
    }

    #[test]
    fn committed_schema_is_current() {
        let committed =
            std::fs::read_to_string(schema_path()).expect("schemas/pipeline.schema.json");
        let current = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
        assert!(
            committed == current,
            "schemas/pipeline.schema.json is stale: run `moulin schema > schemas/pipeline.schema.json`"
        );
    }
}
