//! Pipeline files: `pipelines/*.toml`, one table per stage, checked before a run.
//!
//! The JSON Schema is generated from these types (`moulin schema`, committed in
//! `schemas/pipeline.schema.json`). [`load`] reports every problem of a file at
//! once, each with its line and key path: the file's shape against the schema
//! first, then what only the program can check (an overlap larger than the
//! chunk size, a source folder that does not exist, a model that is not
//! installed), for every stage whose shape is right. `moulin ingest` builds the
//! same configuration from its options ([`PipelineConfig::quick`],
//! [`Overrides`]), and the same checks name the option at fault.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkerConfig, SizeUnit};
use crate::config::{Origins, Problem, Problems, file};
use crate::embed::EmbedderConfig;
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
    /// How long versions are kept, and when indexes are built.
    #[serde(default)]
    pub upkeep: crate::store::Upkeep,
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
    /// Object storage settings for a database on `s3://…` (and other stores), as
    /// Lance names them: `aws_endpoint`, `aws_region`, `allow_http`,
    /// `aws_virtual_hosted_style_request`, `azure_storage_account_name`… The
    /// environment's `AWS_*` and `AZURE_*` variables apply too. Credentials
    /// (`aws_secret_access_key`, `azure_storage_account_key`…) are best kept in
    /// the environment; given here, they are used and never recorded.
    #[serde(default, skip_serializing_if = "crate::store::Storage::is_empty")]
    pub storage: crate::store::Storage,
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
        /// The name documents of this source are known by, with their path relative
        /// to the source's root (the folder, or a glob's folder): it does not change
        /// when the folder is mounted elsewhere. Default: the name of the root folder.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Relative paths are read from the current directory.
        path: String,
        /// Keep only files matching one of these globs (relative to `path`), e.g. `**/*.pdf`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        include: Vec<String>,
        /// Leave out files matching any of these globs.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
    },
    /// Web pages fetched over HTTP(S); a page is known by its URL.
    Urls {
        /// A name for the source, shown in reports.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        urls: Vec<String>,
    },
}

/// The JSON Schema of pipeline files.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PipelineConfig)).expect("serializable schema")
}

/// A pipeline, checked, with where each of its settings came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: PipelineConfig,
    pub origins: Origins,
}

impl Loaded {
    /// The inputs the sources list now, with warnings for sources that list nothing.
    pub fn list(&self) -> Result<super::sources::Listing, Vec<Problem>> {
        super::sources::expand(&self.config.sources).map_err(|problems| {
            problems
                .into_iter()
                .map(|(key, message)| self.origins.problem(key, message))
                .collect()
        })
    }
}

/// Read and check a pipeline file: the configuration, or every problem found.
pub fn load(path: &Path) -> Result<Loaded, Problems> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) => Err(Problems {
            subject: path.display().to_string(),
            list: vec![Problem::argument(format!(
                "cannot read {}: {e}",
                path.display()
            ))],
        }),
    }
}

/// Check the text of the pipeline file `path`.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, Problems> {
    let subject = path.display().to_string();
    let read = file::read(path, text, &json_schema());
    let origins = read.origins;
    let mut list = read.problems;
    let Some(json) = read.value else {
        return Err(Problems { subject, list });
    };
    // What only the program can check runs on every part whose shape is right:
    // values with a problem of shape are left out (defaults stand in for them),
    // and a stage that still does not read as its type is skipped.
    let mut sound = json;
    for p in &list {
        remove(&mut sound, &p.key);
    }
    let (config, checks) = match serde_json::from_value::<PipelineConfig>(sound.clone()) {
        Ok(config) => {
            let checks = config.check(&origins);
            (list.is_empty().then_some(config), checks)
        }
        Err(_) => (None, check_sections(&sound, &origins)),
    };
    let shape: Vec<String> = list.iter().map(|p| p.key.clone()).collect();
    list.extend(checks.into_iter().filter(|p| !shape.contains(&p.key)));
    file::sort_by_position(&mut list);
    match config {
        Some(config) if list.is_empty() => Ok(Loaded { config, origins }),
        _ => Err(Problems { subject, list }),
    }
}

/// Remove the value at a key path (`sources[1].path`) from a JSON value.
pub(crate) fn remove(json: &mut serde_json::Value, key: &str) {
    let mut parts: Vec<String> = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        while let Some(open) = rest.find('[') {
            if open > 0 {
                parts.push(rest[..open].to_string());
            }
            let close = rest[open..].find(']').map_or(rest.len(), |c| open + c);
            parts.push(rest[open + 1..close].to_string());
            rest = rest.get(close + 1..).unwrap_or("");
        }
        if !rest.is_empty() {
            parts.push(rest.to_string());
        }
    }
    let Some((last, path)) = parts.split_last() else {
        return;
    };
    let mut value = json;
    for p in path {
        let next = match value {
            serde_json::Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            serde_json::Value::Object(o) => o.get_mut(p),
            _ => None,
        };
        match next {
            Some(v) => value = v,
            None => return,
        }
    }
    if let serde_json::Value::Object(o) = value {
        o.remove(last);
    }
}

/// The checks of every stage of `json` that reads as its type.
fn check_sections(json: &serde_json::Value, origins: &Origins) -> Vec<Problem> {
    fn section<T: DeserializeOwned + Default>(json: &serde_json::Value, key: &str) -> Option<T> {
        match json.get(key) {
            Some(v) => serde_json::from_value(v.clone()).ok(),
            None => Some(T::default()),
        }
    }
    let mut out = Vec::new();
    if let Some(c) = json
        .get("collection")
        .and_then(|v| serde_json::from_value::<CollectionConfig>(v.clone()).ok())
    {
        out.extend(prefixed("collection", c.problems()));
    }
    if let Some(sources) = json.get("sources").and_then(|v| v.as_array()) {
        if sources.is_empty() {
            out.push(("sources".into(), "list at least one source".into()));
        }
        for (i, s) in sources.iter().enumerate() {
            if let Ok(source) = serde_json::from_value::<SourceConfig>(s.clone()) {
                out.extend(prefixed(&format!("sources[{i}]"), source.problems()));
            }
        }
    }
    if let Some(e) = section::<ExtractOptions>(json, "extract") {
        out.extend(prefixed("extract", e.problems()));
    }
    if let Some(c) = section::<ChunkerConfig>(json, "chunker") {
        out.extend(prefixed("chunker", c.problems()));
    }
    if let Some(e) = section::<EmbedderConfig>(json, "embedder") {
        out.extend(prefixed("embedder", e.problems()));
    }
    out.into_iter()
        .map(|(key, message)| origins.problem(key, message))
        .collect()
}

fn prefixed(prefix: &str, problems: Vec<(String, String)>) -> Vec<(String, String)> {
    problems
        .into_iter()
        .map(|(k, m)| (crate::config::join_key(prefix, &k), m))
        .collect()
}

impl CollectionConfig {
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err(m) = crate::store::check_collection_name(&self.name) {
            out.push(("name".into(), m));
        }
        if let Err(m) = crate::store::check_db(&self.db, crate::store::Access::Write) {
            out.push(("db".into(), m));
        }
        out
    }
}

impl SourceConfig {
    /// Problems of this source, with keys relative to it.
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match self {
            SourceConfig::Files {
                name,
                path,
                include,
                exclude,
            } => {
                if let Some(Err(m)) = name.as_deref().map(super::sources::check_name) {
                    out.push(("name".into(), m));
                }
                if let Err(m) = super::sources::check_path(path) {
                    out.push(("path".into(), m));
                }
                for (key, globs) in [("include", include), ("exclude", exclude)] {
                    for (j, g) in globs.iter().enumerate() {
                        if let Err(e) = globset::Glob::new(g) {
                            out.push((format!("{key}[{j}]"), format!("bad glob {g:?}: {e}")));
                        }
                    }
                }
            }
            SourceConfig::Urls { name, urls } => {
                if let Some(Err(m)) = name.as_deref().map(super::sources::check_name) {
                    out.push(("name".into(), m));
                }
                if urls.is_empty() {
                    out.push(("urls".into(), "list at least one URL".into()));
                }
                for (j, u) in urls.iter().enumerate() {
                    if let Err(m) = super::sources::check_url(u) {
                        out.push((format!("urls[{j}]"), m));
                    }
                }
            }
        }
        out
    }
}

impl PipelineConfig {
    /// Every problem that the schema cannot see, each with its origin.
    pub fn check(&self, origins: &Origins) -> Vec<Problem> {
        let mut out = prefixed("collection", self.collection.problems());
        if self.sources.is_empty() {
            out.push(("sources".into(), "list at least one source".into()));
        }
        for (i, source) in self.sources.iter().enumerate() {
            out.extend(prefixed(&format!("sources[{i}]"), source.problems()));
        }
        out.extend(prefixed("extract", self.extract.problems()));
        out.extend(prefixed("chunker", self.chunker.problems()));
        out.extend(prefixed("embedder", self.embedder.problems()));
        out.into_iter()
            .map(|(key, message)| origins.problem(key, message))
            .collect()
    }

    /// The configuration as recorded in collections and reports: no secrets.
    pub fn recorded(&self) -> serde_json::Value {
        let mut config = self.clone();
        config.extract.password = None;
        config.collection.storage = crate::store::without_credentials(&config.collection.storage);
        for source in &mut config.sources {
            if let SourceConfig::Urls { urls, .. } = source {
                for url in urls {
                    *url = crate::paths::redact_url(url);
                }
            }
        }
        serde_json::to_value(config).expect("serializable")
    }

    /// A pipeline for `moulin ingest`: the given inputs with default stages.
    /// Anything with a URL scheme is a URL (so that `ftp://…` is refused as a URL).
    pub fn quick(collection: &str, db: &str, inputs: &[String]) -> Loaded {
        let (urls, paths): (Vec<&String>, Vec<&String>) =
            inputs.iter().partition(|i| crate::paths::has_scheme(i));
        let mut sources: Vec<SourceConfig> = paths
            .into_iter()
            .map(|p| SourceConfig::Files {
                name: None,
                path: p.clone(),
                include: Vec::new(),
                exclude: Vec::new(),
            })
            .collect();
        if !urls.is_empty() {
            sources.push(SourceConfig::Urls {
                name: None,
                urls: urls.into_iter().cloned().collect(),
            });
        }
        let mut origins = Origins::default();
        origins.set_argument("sources");
        origins.set_flag("collection.name", "--collection");
        origins.set_flag("collection.db", "--db");
        Loaded {
            config: PipelineConfig {
                collection: CollectionConfig {
                    name: collection.to_string(),
                    db: db.to_string(),
                    prune: false,
                    storage: Default::default(),
                },
                sources,
                extract: ExtractOptions::default(),
                chunker: ChunkerConfig::default(),
                embedder: EmbedderConfig::default(),
                upkeep: Default::default(),
            },
            origins,
        }
    }
}

/// Settings given on the command line, over a pipeline file's (`moulin run`) or
/// over the defaults (`moulin ingest`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub collection: Option<String>,
    pub db: Option<String>,
    pub embedding_model: Option<String>,
    pub chunk_size: Option<usize>,
    pub overlap: Option<usize>,
    /// Size chunks in the embedding model's tokens (400 with 40 of overlap unless given).
    pub tokens: bool,
    pub password: Option<String>,
    pub prune: bool,
}

impl Overrides {
    /// Apply these settings, recording the flag each one came from.
    pub fn apply(&self, loaded: &mut Loaded) {
        let (config, origins) = (&mut loaded.config, &mut loaded.origins);
        if let Some(c) = &self.collection {
            config.collection.name = c.clone();
            origins.set_flag("collection.name", "--collection");
        }
        if let Some(db) = &self.db {
            config.collection.db = db.clone();
            origins.set_flag("collection.db", "--db");
        }
        if self.prune {
            config.collection.prune = true;
            origins.set_flag("collection.prune", "--prune");
        }
        if let Some(p) = &self.password {
            config.extract.password = Some(p.clone());
            origins.set_flag("extract.password", "--password");
        }
        if let Some(model) = &self.embedding_model {
            let EmbedderConfig::Onnx(onnx) = &mut config.embedder;
            onnx.model = model.clone();
            origins.set_flag("embedder.model", "--embedding-model");
        }
        let split = config.chunker.split_mut();
        if self.tokens {
            split.unit = SizeUnit::Tokens;
            split.size = 400;
            split.overlap = 40;
            origins.set_flag("chunker.unit", "--tokens");
        }
        if let Some(size) = self.chunk_size {
            split.size = size;
            split.overlap = split.overlap.min(size / 2);
            origins.set_flag("chunker.size", "--chunk-size");
            origins.set_flag("chunker.overlap", "--chunk-size");
        }
        if let Some(overlap) = self.overlap {
            split.overlap = overlap;
            origins.set_flag("chunker.overlap", "--overlap");
        }
    }
}

/// The folder holding the committed schemas.
pub fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/pipeline.schema.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse(Path::new("p.toml"), text) {
            Ok(_) => Vec::new(),
            Err(p) => p.list.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// The issue's example, and more: one pass lists every mistake of a file,
    /// whatever its kind, each with its line and key path.
    #[test]
    fn a_dozen_mistakes_are_all_listed_at_once() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pipelines/mistakes.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let got = problems(&text);
        let expected = [
            "p.toml:3:1: collection.name: \"mes documents\" is not a valid collection name: use ASCII letters, digits, '_', '-' and '.'",
            "p.toml:4:1: collection.colour: unknown key (known keys: name, db, prune, storage)",
            "p.toml:5:1: collection.prnue: unknown key; did you mean `prune`?",
            "p.toml:7:1: sources[0].path: missing: this key is required",
            "p.toml:9:1: sources[0].pth: unknown key; did you mean `path`?",
            "p.toml:13:9: sources[1].urls[0]: ftp://example.org/a: only http and https URLs are fetched",
            "p.toml:13:32: sources[1].urls[1]: notaurl: not a URL (relative URL without a base)",
            "p.toml:16:1: sources[2].type: \"ftp\" is not one of \"files\", \"urls\"",
            "p.toml:21:12: sources[3].include[0]: bad glob \"**/*.{pdf\": ",
            "p.toml:24:1: extract.timeout_seconds: must be at least 1",
            "p.toml:25:1: extract.max_pages: must not be negative",
            "p.toml:30:1: chunker.overlap: must be smaller than size (100)",
            "p.toml:31:1: chunker.unit: \"token\" is not one of \"characters\", \"tokens\"; did you mean \"tokens\"?",
            "p.toml:35:1: embedder.model: embedding model no-such-model not found: no such folder ",
            "p.toml:36:1: embedder.batch_size: expected a whole number, found the string \"big\"",
            "p.toml:38:2: report: unknown key (known keys: collection, sources, extract, chunker, embedder, upkeep)",
        ];
        for (got, expected) in got.iter().zip(expected) {
            assert!(
                got.starts_with(expected),
                "expected {expected:?}\n     got {got:?}"
            );
        }
        assert_eq!(got.len(), expected.len(), "{}", got.join("\n"));
    }

    #[test]
    fn cross_field_checks_run_beside_unknown_keys() {
        // The issue's complaint: an unknown key hid five other problems.
        let text = r#"[collection]
name = "a b"
[[sources]]
type = "files"
pth = "x"
[[sources]]
type = "urls"
urls = ["ftp://a", "gopher://b"]
[chunker]
type = "text"
size = 100
overlap = 200
"#;
        let got = problems(text);
        assert_eq!(got.len(), 6, "{}", got.join("\n"));
        assert!(
            got.iter()
                .any(|g| g.contains("chunker.overlap: must be smaller than size (100)"))
        );
    }

    #[test]
    fn syntax_errors_name_the_line_and_column() {
        let got = problems("[collection]\nname = \"demo\"\n[[sources]\ntype = 'files'\n");
        assert!(got[0].starts_with("p.toml:3:"), "{got:?}");
        assert!(got[0].contains("not valid TOML"), "{got:?}");
    }

    #[test]
    fn the_demo_pipeline_is_valid_and_records_no_password() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo.toml");
        let mut loaded = load(&path).unwrap_or_else(|p| panic!("{p}"));
        Overrides {
            password: Some("s3cret".into()),
            ..Default::default()
        }
        .apply(&mut loaded);
        assert_eq!(loaded.config.extract.password.as_deref(), Some("s3cret"));
        assert!(!loaded.config.recorded().to_string().contains("s3cret"));
        // Nor an object store's credentials; its other settings stay.
        let storage = &mut loaded.config.collection.storage;
        storage.insert("aws_secret_access_key".into(), "s3cret".into());
        storage.insert("AZURE_STORAGE_SAS_KEY".into(), "s3cret".into());
        storage.insert("aws_region".into(), "fr-par".into());
        let recorded = loaded.config.recorded().to_string();
        assert!(
            !recorded.contains("s3cret") && recorded.contains("fr-par"),
            "{recorded}"
        );
    }

    #[test]
    fn overrides_are_blamed_on_their_flag() {
        let mut loaded = PipelineConfig::quick("ok", "./data", &["ftp://x/y".into()]);
        Overrides {
            collection: Some("é".into()),
            chunk_size: Some(0),
            ..Default::default()
        }
        .apply(&mut loaded);
        let got: Vec<String> = loaded
            .config
            .check(&loaded.origins)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(got.contains(&"--collection: \"é\" is not a valid collection name: use ASCII letters, digits, '_', '-' and '.'".to_string()), "{got:?}");
        assert!(
            got.contains(&"ftp://x/y: only http and https URLs are fetched".to_string()),
            "{got:?}"
        );
        assert!(
            got.contains(&"--chunk-size: must be at least 1".to_string()),
            "{got:?}"
        );
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
