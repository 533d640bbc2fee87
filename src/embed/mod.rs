//! Embedding: chunk texts to vectors with a local ONNX model through fastembed.
//!
//! Models are folders on disk (`model.onnx`, `tokenizer.json`, and optionally
//! the Hugging Face tokenizer configuration and a `moulin-model.toml` that
//! names the model, its pooling and its query/passage prefixes). Nothing is
//! downloaded. Texts are sorted by length before batching, so a batch holds
//! texts of similar length and little compute goes to padding; ONNX Runtime
//! gets every core, and nothing else runs while it embeds.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The default model: multilingual (French first), set up by `scripts/setup.sh`.
pub const DEFAULT_MODEL: &str = "multilingual-e5-small";

/// Which embedding model, and how to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum EmbedderConfig {
    /// A local ONNX model run by fastembed and ONNX Runtime.
    Onnx(OnnxConfig),
}

impl EmbedderConfig {
    /// Problems with these settings, each with its key: numbers in range, the model installed.
    pub fn problems(&self) -> Vec<(String, String)> {
        let EmbedderConfig::Onnx(onnx) = self;
        let mut out = Vec::new();
        for (key, value) in [
            ("batch_size", onnx.batch_size),
            ("max_batch_tokens", onnx.max_batch_tokens),
            ("max_length", onnx.max_length),
        ] {
            if value == 0 {
                out.push((key.to_string(), "must be at least 1".to_string()));
            }
        }
        if let Err(m) = check_model(&onnx.model) {
            out.push(("model".into(), m));
        }
        out
    }
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        EmbedderConfig::Onnx(OnnxConfig::default())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxConfig {
    /// A model folder, or the name of a model in moulin's cache (`~/.cache/moulin/models`).
    pub model: String,
    /// Texts per ONNX Runtime call, at most.
    pub batch_size: usize,
    /// Tokens per ONNX Runtime call, at most (texts × longest text): long texts go in
    /// smaller batches, which bounds memory (attention grows with the square of the length).
    pub max_batch_tokens: usize,
    /// ONNX Runtime threads; 0 uses every core.
    pub threads: usize,
    /// Longest input in tokens; longer texts are truncated.
    pub max_length: usize,
    /// Prepended to every passage (E5 models want "passage: "); defaults to the model's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passage_prefix: Option<String>,
    /// Prepended to every query (E5 models want "query: "); defaults to the model's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_prefix: Option<String>,
}

impl Default for OnnxConfig {
    fn default() -> Self {
        OnnxConfig {
            model: DEFAULT_MODEL.into(),
            batch_size: 32,
            max_batch_tokens: 4096,
            threads: 0,
            max_length: 512,
            passage_prefix: None,
            query_prefix: None,
        }
    }
}

/// What a model folder says about itself in `moulin-model.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct ModelCard {
    name: Option<String>,
    pooling: Option<String>,
    passage_prefix: Option<String>,
    query_prefix: Option<String>,
}

/// The identity of an embedding model, recorded in every collection it fills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub dimension: usize,
    /// sha256 of the ONNX graph and the tokenizer.
    pub hash: String,
    pub passage_prefix: String,
    pub query_prefix: String,
}

/// Turns texts into vectors. Batch-first: one call embeds many texts.
pub trait Embedder: Send + Sync {
    fn info(&self) -> &ModelInfo;
    /// Embed passages (the prefix is added here), in input order.
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
    fn embed_query(&self, query: &str) -> Result<Vec<f32>>;
    /// Embed many queries at once (the query prefix is added here), in input order.
    fn embed_queries(&self, queries: &[&str]) -> Result<Vec<Vec<f32>>> {
        queries.iter().map(|q| self.embed_query(q)).collect()
    }
}

/// The path of the ONNX Runtime library: `ORT_DYLIB_PATH`, else the one setup installed.
pub fn onnxruntime_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::paths::moulin_home().join("onnxruntime/libonnxruntime.so"))
}

/// Load ONNX Runtime once per process; the environment lives as long as the process.
pub fn runtime() -> Result<ort::environment::Environment> {
    static INIT: OnceLock<std::result::Result<ort::environment::Environment, String>> =
        OnceLock::new();
    INIT.get_or_init(|| {
        let lib = onnxruntime_library();
        if !lib.exists() {
            return Err(format!(
                "the ONNX Runtime library is missing at {} (run scripts/setup.sh, or set ORT_DYLIB_PATH)",
                lib.display()
            ));
        }
        let builder = ort::init_from(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        builder.with_name("moulin").build().map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|reason| Error::Model {
        model: "onnxruntime".into(),
        reason,
    })
}

/// sha256 of a model's ONNX graph and tokenizer: its identity in collections.
fn model_hash(onnx: &[u8], tokenizer_json: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(onnx);
    h.update(tokenizer_json);
    hex::encode(h.finalize())
}

impl OnnxConfig {
    /// What a collection's chunks depend on besides their text: the model (its
    /// hash), the passage prefix and the longest input. Read from the files,
    /// without loading the model.
    pub fn fingerprint(&self, model_hash: &str, passage_prefix: &str) -> String {
        let text = format!("{model_hash}\0{passage_prefix}\0{}", self.max_length);
        crate::extract::content_hash(text.as_bytes())[..16].to_string()
    }

    /// The model's hash and passage prefix, read from its folder without loading it.
    pub fn identity(&self) -> Result<(String, String)> {
        let dir = check_model(&self.model).map_err(|reason| Error::Model {
            model: self.model.clone(),
            reason,
        })?;
        let read =
            |name: &str| std::fs::read(dir.join(name)).map_err(|e| Error::io(dir.join(name), e));
        let hash = model_hash(&read("model.onnx")?, &read("tokenizer.json")?);
        let card: ModelCard = std::fs::read_to_string(dir.join("moulin-model.toml"))
            .ok()
            .and_then(|s| toml::from_str(&s).ok())
            .unwrap_or_default();
        let prefix = self
            .passage_prefix
            .clone()
            .or(card.passage_prefix)
            .unwrap_or_default();
        Ok((hash, prefix))
    }
}

/// The folder of an embedding model, once it is known to hold the files a model needs.
pub fn check_model(model: &str) -> std::result::Result<PathBuf, String> {
    let dir = model_folder(model);
    let missing: Vec<&str> = ["model.onnx", "tokenizer.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(dir);
    }
    let place = if dir.is_dir() {
        format!("no {} in {}", missing.join(" or "), dir.display())
    } else {
        format!("no such folder {}", dir.display())
    };
    let hint = if model == DEFAULT_MODEL {
        "run scripts/setup.sh to install the default model"
    } else {
        "give a model name installed in moulin's cache, or a folder with model.onnx and tokenizer.json"
    };
    Err(format!(
        "embedding model {model} not found: {place}; {hint}"
    ))
}

/// Resolve a model name or path to its folder.
pub fn model_folder(model: &str) -> PathBuf {
    let path = Path::new(model);
    if path.is_dir() || model.contains('/') || model.starts_with('.') {
        path.to_path_buf()
    } else {
        crate::paths::model_dir(model)
    }
}

pub struct OnnxEmbedder {
    model: Mutex<TextEmbedding>,
    info: ModelInfo,
    batch_size: usize,
    max_batch_tokens: usize,
    max_length: usize,
    /// The model's tokenizer without padding or truncation: it measures texts.
    tokenizer: tokenizers::Tokenizer,
}

impl OnnxEmbedder {
    pub fn load(config: &OnnxConfig) -> Result<Self> {
        let dir = check_model(&config.model).map_err(|reason| Error::Model {
            model: config.model.clone(),
            reason,
        })?;
        let fail = |reason: String| Error::Model {
            model: dir.display().to_string(),
            reason,
        };
        let environment = runtime()?;
        let read =
            |name: &str| std::fs::read(dir.join(name)).map_err(|e| Error::io(dir.join(name), e));
        let onnx = read("model.onnx")?;
        let tokenizer_json = read("tokenizer.json")?;
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(&tokenizer_json)
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        let card: ModelCard = match std::fs::read_to_string(dir.join("moulin-model.toml")) {
            Ok(s) => toml::from_str(&s).map_err(|e| fail(format!("moulin-model.toml: {e}")))?,
            Err(_) => ModelCard::default(),
        };
        let pad_token = ["<pad>", "[PAD]", "<|padding|>", "</s>"]
            .into_iter()
            .find(|t| tokenizer.token_to_id(t).is_some())
            .unwrap_or("[PAD]");
        let optional = |name: &str, default: serde_json::Value| {
            std::fs::read(dir.join(name)).unwrap_or_else(|_| default.to_string().into_bytes())
        };
        let files = TokenizerFiles {
            tokenizer_file: tokenizer_json.clone(),
            config_file: optional("config.json", serde_json::json!({})),
            special_tokens_map_file: optional(
                "special_tokens_map.json",
                serde_json::json!({ "pad_token": pad_token }),
            ),
            tokenizer_config_file: optional(
                "tokenizer_config.json",
                serde_json::json!({ "model_max_length": config.max_length, "pad_token": pad_token }),
            ),
        };
        let pooling = match card.pooling.as_deref() {
            Some("cls") => Pooling::Cls,
            _ => Pooling::Mean,
        };
        let hash = model_hash(&onnx, &tokenizer_json);
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let user_model = UserDefinedEmbeddingModel::new(onnx, files).with_pooling(pooling);
        let options = InitOptionsUserDefined::new()
            .with_environment(environment)
            .with_max_length(config.max_length)
            .with_intra_threads(threads);
        let mut model = TextEmbedding::try_new_from_user_defined(user_model, options)
            .map_err(|e| fail(format!("cannot load the ONNX model: {e}")))?;
        let probe = model
            .embed(vec!["a"], Some(1))
            .map_err(|e| fail(format!("the model does not run: {e}")))?;
        let dimension = probe.first().map_or(0, Vec::len);
        let name = card.name.clone().unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| config.model.clone())
        });
        let info = ModelInfo {
            name,
            dimension,
            hash,
            passage_prefix: config
                .passage_prefix
                .clone()
                .or(card.passage_prefix)
                .unwrap_or_default(),
            query_prefix: config
                .query_prefix
                .clone()
                .or(card.query_prefix)
                .unwrap_or_default(),
        };
        Ok(OnnxEmbedder {
            model: Mutex::new(model),
            info,
            batch_size: config.batch_size.max(1),
            max_batch_tokens: config.max_batch_tokens.max(1),
            max_length: config.max_length.max(1),
            tokenizer,
        })
    }

    /// The model's tokenizer, for sizing chunks in tokens.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn run(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let fail = |reason: String| Error::Model {
            model: self.info.name.clone(),
            reason,
        };
        // Similar lengths in a batch: less padding, less wasted compute.
        let tokens: Vec<usize> = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| fail(e.to_string()))?
            .iter()
            .map(|e| e.len().min(self.max_length))
            .collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i]));
        let mut out = vec![Vec::new(); texts.len()];
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let mut start = 0;
        while start < order.len() {
            // The first text of a batch is its longest: it sets the padded length.
            let longest = tokens[order[start]].max(1);
            let size = (self.max_batch_tokens / longest).clamp(1, self.batch_size);
            let batch = &order[start..(start + size).min(order.len())];
            let batch_texts: Vec<&str> = batch.iter().map(|&i| texts[i].as_str()).collect();
            let vectors = model
                .embed(batch_texts, Some(batch.len()))
                .map_err(|e| fail(e.to_string()))?;
            for (&slot, v) in batch.iter().zip(vectors) {
                out[slot] = v;
            }
            start += batch.len();
        }
        Ok(out)
    }
}

impl Embedder for OnnxEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let prefixed = texts
            .iter()
            .map(|t| format!("{}{t}", self.info.passage_prefix))
            .collect();
        self.run(prefixed)
    }

    fn embed_query(&self, query: &str) -> Result<Vec<f32>> {
        let mut v = self.embed_queries(&[query])?;
        Ok(v.pop().unwrap_or_default())
    }

    fn embed_queries(&self, queries: &[&str]) -> Result<Vec<Vec<f32>>> {
        let prefixed = queries
            .iter()
            .map(|q| format!("{}{q}", self.info.query_prefix))
            .collect();
        self.run(prefixed)
    }
}
