//! A local LLM runner on burn: Llama-family models from a GGUF file or a
//! Hugging Face folder, batched generation on the CPU (burn's `flex` backend)
//! or, with the `wgpu`/`cuda` cargo features, on a GPU.
//!
//! [`gguf`] and [`weights`] read model files, [`config`] their sizes,
//! [`tokenizer`] the tokenizer and chat template, [`model`] is the decoder and
//! [`generate`] the batched decoding loop; [`batch`] runs JSONL prompt files.

pub mod batch;
pub mod config;
pub mod cpu;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod phases;
pub mod team;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

pub use config::LlamaConfig;
pub use generate::{Completion, Finish, Request, Sampling, Timings};
pub use model::{KvDtype, WeightDtype};
pub use tokenizer::{Message, TextTokenizer};

use crate::error::{Error, Result};
use model::Llama;
use weights::{SafeTensorFiles, WeightSource};

/// Environment variable naming the default model file or folder.
pub const MODEL_ENV: &str = "MOULIN_LLM";
/// The default model's file name under `$MOULIN_HOME/models/`.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Positions the runner prepares for when the model allows more: longer
/// requests are refused, not truncated.
pub const DEFAULT_CONTEXT: usize = 8192;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// burn's flex backend, on every core.
    #[default]
    Cpu,
    /// burn's wgpu backend (Vulkan, Metal, DX12); needs the `wgpu` feature.
    Wgpu,
    /// burn's CUDA backend; needs the `cuda` feature.
    Cuda,
}

impl DeviceKind {
    pub fn device(self) -> Result<Device> {
        #[allow(unused_variables)] // with every GPU feature enabled
        let unavailable = |feature: &str| Error::Llm {
            model: format!("device {}", format!("{self:?}").to_lowercase()),
            reason: format!("needs moulin built with `--features {feature}`"),
        };
        match self {
            DeviceKind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            DeviceKind::Wgpu => Err(unavailable("wgpu")),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(Device::cuda(0)),
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => Err(unavailable("cuda")),
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: DeviceKind,
    /// Weight precision on the device. `None`: on the CPU, quantized weights
    /// stay in their file's blocks (a quarter to a half of f16's bytes to read
    /// per token, which is what decoding waits on) and float weights become
    /// f16; on a GPU, everything is f16. `Some`: every weight in that precision.
    pub dtype: Option<WeightDtype>,
    /// Longest prompt + answer to prepare for.
    pub context: usize,
    /// The KV cache's precision on the CPU.
    pub kv_cache: KvDtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: DeviceKind::Cpu,
            dtype: None,
            context: DEFAULT_CONTEXT,
            kv_cache: KvDtype::default(),
        }
    }
}

/// What was loaded, for the user.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub model: String,
    pub architecture: String,
    pub parameters: usize,
    /// The tensor types in the file.
    pub file_dtype: String,
    pub device: DeviceKind,
    pub weight_dtype: String,
    pub weight_bytes: usize,
    pub context: usize,
    pub seconds: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loaded {} ({}, {:.1} M parameters, {} in the file, {} on {:?}: {:.0} MB) in {:.1} s",
            self.model,
            self.architecture,
            self.parameters as f64 / 1e6,
            self.file_dtype,
            self.weight_dtype,
            self.device,
            self.weight_bytes as f64 / 1e6,
            self.seconds
        )
    }
}

/// A model with its tokenizer, ready to generate.
pub struct Llm {
    pub name: String,
    pub model: Llama,
    pub tokenizer: TextTokenizer,
    pub report: LoadReport,
    /// Longest prompt + answer this instance accepts.
    pub context: usize,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm").field("report", &self.report).finish()
    }
}

impl Llm {
    /// Load a GGUF file or a Hugging Face folder (`config.json`,
    /// `*.safetensors`, `tokenizer.json`).
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        let started = Instant::now();
        let name = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let (config, source, tokenizer) = if meta.is_dir() {
            let config_path = path.join("config.json");
            let json =
                std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let config = LlamaConfig::from_hf_json(&name, &json)?;
            let source = WeightSource::SafeTensors(SafeTensorFiles::open(path)?);
            (config, source, TextTokenizer::from_hf_dir(path)?)
        } else {
            let gguf = gguf::Gguf::open(path)?;
            let config = LlamaConfig::from_gguf(&gguf)?;
            let tokenizer = TextTokenizer::from_gguf(&gguf)?;
            (config, WeightSource::Gguf(gguf), tokenizer)
        };
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::Llm {
                model: name,
                reason: format!(
                    "the tokenizer has {} tokens but the model only {}",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        let device = options.device.device()?;
        let dtype = options.dtype.unwrap_or(WeightDtype::F16);
        let context = options.context.min(config.max_position_embeddings);
        let file_dtype = source.describe_dtype();
        // `MOULIN_LLM_KERNEL=0` keeps burn's own operations on the CPU too: to
        // compare, or to rule the kernels out when something looks wrong.
        let cpu_kernel = options.device == DeviceKind::Cpu
            && std::env::var("MOULIN_LLM_KERNEL").as_deref() != Ok("0");
        let keep_blocks = options.dtype.is_none();
        let model = Llama::load(
            config.clone(),
            &source,
            &device,
            dtype,
            context,
            cpu_kernel,
            keep_blocks,
            options.kv_cache,
        )?;
        drop(source);
        let weight_dtype = if model.uses_blocks() {
            format!(
                "{} blocks ({} kernel)",
                file_dtype,
                moulin_quant::Kernel::detect().name()
            )
        } else {
            format!("{dtype:?}").to_lowercase()
        };
        let report = LoadReport {
            model: display_name(path),
            architecture: config.architecture.clone(),
            parameters: config.parameters(),
            file_dtype,
            device: options.device,
            weight_dtype,
            weight_bytes: model.weight_bytes(),
            context,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok(Llm {
            name,
            model,
            tokenizer,
            report,
            context,
        })
    }

    /// Token ids of a conversation through the chat template, or of a raw
    /// prompt when the model has no template or `raw` is asked.
    pub fn prompt_ids(&self, messages: &[Message], raw: bool) -> Result<Vec<u32>> {
        if raw || !self.tokenizer.has_chat_template() {
            let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
            self.tokenizer.encode(&text.join("\n"))
        } else {
            self.tokenizer.encode_chat(messages)
        }
    }
}

impl Llm {
    /// Feed `ids` as one sequence, `chunk` tokens per forward pass, and return
    /// the logits after each pass (with `chunk == 1`, the logits at every
    /// position, computed through the KV cache).
    pub fn logits_by_chunks(&self, ids: &[u32], chunk: usize) -> Result<Vec<Vec<f32>>> {
        let mut cache = self.model.cache(1, ids.len())?;
        let valid = vec![vec![true; ids.len()]];
        let mut out = Vec::new();
        for (i, piece) in ids.chunks(chunk.max(1)).enumerate() {
            let start = i * chunk.max(1);
            let positions: Vec<usize> = (start..start + piece.len()).collect();
            let logits = self.model.forward(
                model::StepInput {
                    tokens: piece,
                    batch: 1,
                    seq: piece.len(),
                    positions: &positions,
                    rows: &[0],
                    valid: &valid,
                },
                &mut cache,
            )?;
            out.push(logits);
        }
        Ok(out)
    }
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The model `moulin generate` uses without `--model`: `$MOULIN_LLM`, else the
/// default model that `scripts/setup.sh` installs.
pub fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os(MODEL_ENV) {
        return PathBuf::from(p);
    }
    crate::paths::moulin_home()
        .join("models")
        .join(DEFAULT_MODEL)
}
