//! A Llama-family model's sizes, read from its own metadata: a Hugging Face
//! `config.json` or a GGUF file's `{arch}.*` keys.

use serde::Deserialize;

use super::gguf::{Gguf, Value};
use crate::error::{Error, Result};

/// Architectures with the Llama layout (RMSNorm, RoPE, grouped-query attention,
/// SwiGLU): Llama and Mistral (no biases), Qwen2 (biases on Q, K and V) and
/// Qwen3 (an RMSNorm on each head of Q and K). Mistral's sliding window (each
/// token attends to the last `sliding_window` positions, itself included) is
/// applied where the config (`sliding_window`) or the GGUF file
/// (`{arch}.attention.sliding_window`) gives one; Qwen's per-layer windows
/// (`use_sliding_window`) are refused.
const HF_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
];
const GGUF_ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the Q, K and V projections (Qwen2).
    pub qkv_bias: bool,
    /// An RMSNorm over each head of Q and K, before the rotary embedding (Qwen3).
    pub qk_norm: bool,
    /// The file stores Q and K rows permuted for llama.cpp's interleaved rotary
    /// embedding (GGUF files of the `llama` family; Qwen's are not).
    pub qk_rows_permuted: bool,
    /// Each token attends to at most this many positions, its own included
    /// (Mistral's sliding window); `None`: the whole context.
    pub sliding_window: Option<usize>,
}

/// Llama 3.1's long-context frequency scaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
}

fn default_theta() -> f64 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_positions() -> usize {
    2048
}

impl LlamaConfig {
    /// From a Hugging Face `config.json`.
    pub fn from_hf_json(model: &str, json: &str) -> Result<Self> {
        let fail = |reason: String| Error::Llm {
            model: model.to_string(),
            reason,
        };
        let hf: HfConfig =
            serde_json::from_str(json).map_err(|e| fail(format!("config.json: {e}")))?;
        let arch = hf
            .architectures
            .first()
            .cloned()
            .or(hf.model_type.clone())
            .unwrap_or_else(|| "(none)".into());
        if !HF_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(fail(format!(
                "unsupported architecture {arch}: moulin runs {}",
                HF_ARCHITECTURES.join(", ")
            )));
        }
        let qwen2 = arch == "Qwen2ForCausalLM";
        let qwen3 = arch == "Qwen3ForCausalLM";
        if hf.mlp_bias || (hf.attention_bias && !qwen3) {
            return Err(fail(format!(
                "{arch} with biases in attention or MLP is not supported"
            )));
        }
        if let Some(act) = hf.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(fail(format!(
                "activation {act} is not supported (SwiGLU with silu is)"
            )));
        }
        let rope_scaling = match hf.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                match kind {
                    "llama3" => Some(
                        serde_json::from_value(v)
                            .map_err(|e| fail(format!("config.json rope_scaling: {e}")))?,
                    ),
                    "default" => None,
                    other => {
                        return Err(fail(format!("rope scaling {other:?} is not supported")));
                    }
                }
            }
        };
        // Mistral's window applies to every layer; Qwen's (off in released
        // Qwen2.5 and Qwen3 models) only to some, which moulin does not run.
        let sliding_window = match arch.as_str() {
            "MistralForCausalLM" => hf.sliding_window,
            _ if hf.use_sliding_window == Some(true) => {
                return Err(fail(format!(
                    "{arch} with use_sliding_window is not supported"
                )));
            }
            _ => None,
        };
        let heads = hf.num_attention_heads;
        let config = LlamaConfig {
            architecture: arch,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / heads.max(1)),
            rope_theta: hf.rope_theta,
            rope_scaling,
            rms_norm_eps: hf.rms_norm_eps,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            qkv_bias: qwen2 || (qwen3 && hf.attention_bias),
            qk_norm: qwen3,
            qk_rows_permuted: false,
            sliding_window,
        };
        config.check().map_err(fail)?;
        Ok(config)
    }

    /// From a GGUF file's metadata. Whether the output head is tied is read from
    /// the tensor table (no `output.weight` means tied).
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let model = gguf.path().display().to_string();
        let fail = |reason: String| Error::Llm {
            model: model.clone(),
            reason,
        };
        let arch = gguf
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("general.architecture is missing".into()))?
            .to_string();
        if !GGUF_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(fail(format!(
                "unsupported architecture {arch}: moulin runs {}",
                GGUF_ARCHITECTURES.join(", ")
            )));
        }
        let uint = |key: &str| -> std::result::Result<usize, String> {
            gguf.get(&format!("{arch}.{key}"))
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("{arch}.{key} is missing"))
        };
        let float = |key: &str| gguf.get(&format!("{arch}.{key}")).and_then(Value::as_f64);
        let hidden = uint("embedding_length").map_err(&fail)?;
        let heads = uint("attention.head_count").map_err(&fail)?;
        let vocab = match uint("vocab_size") {
            Ok(v) => v,
            Err(_) => gguf
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(<[Value]>::len)
                .ok_or_else(|| fail("no vocabulary size".into()))?,
        };
        let head_dim = uint("attention.key_length")
            .or_else(|_| uint("rope.dimension_count"))
            .unwrap_or(hidden / heads.max(1));
        let rope_scaling = match gguf
            .get(&format!("{arch}.rope.scaling.type"))
            .and_then(Value::as_str)
        {
            None | Some("none") => None,
            // Llama 3.1 files carry the scaled frequencies as the `rope_freqs.weight`
            // tensor; the model reads them from there.
            Some(other) if gguf.tensors.contains_key("rope_freqs.weight") => {
                tracing::debug!("rope scaling {other} given by rope_freqs.weight");
                None
            }
            Some(other) => return Err(fail(format!("rope scaling {other:?} is not supported"))),
        };
        let config = LlamaConfig {
            architecture: arch.clone(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: uint("feed_forward_length").map_err(&fail)?,
            num_layers: uint("block_count").map_err(&fail)?,
            num_heads: heads,
            num_kv_heads: uint("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            max_position_embeddings: uint("context_length").unwrap_or(2048),
            tie_word_embeddings: !gguf.tensors.contains_key("output.weight"),
            qkv_bias: gguf.tensors.contains_key("blk.0.attn_q.bias"),
            qk_norm: gguf.tensors.contains_key("blk.0.attn_q_norm.weight"),
            // llama.cpp's converter permutes Q and K for the architectures it
            // runs with the interleaved ("normal") rotary embedding.
            qk_rows_permuted: matches!(arch.as_str(), "llama" | "mistral"),
            sliding_window: uint("attention.sliding_window").ok().filter(|&w| w > 0),
        };
        config.check().map_err(fail)?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let sizes = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_layers,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
        ];
        if sizes.contains(&0) {
            return Err(format!("a size is zero: {self:?}"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "{} attention heads cannot share {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.sliding_window == Some(0) {
            return Err("a sliding window of 0 positions".into());
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head size {} is odd", self.head_dim));
        }
        Ok(())
    }

    /// Parameters of the model these sizes describe.
    pub fn parameters(&self) -> usize {
        let q = self.hidden_size * self.num_heads * self.head_dim;
        let kv = 2 * self.hidden_size * self.num_kv_heads * self.head_dim;
        let o = self.num_heads * self.head_dim * self.hidden_size;
        let mlp = 3 * self.hidden_size * self.intermediate_size;
        let norms = 2 * self.hidden_size;
        let bias = if self.qkv_bias {
            (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        } else {
            0
        };
        let qk_norm = if self.qk_norm { 2 * self.head_dim } else { 0 };
        let embed = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        self.num_layers * (q + kv + o + mlp + norms + bias + qk_norm)
            + embed
            + head
            + self.hidden_size
    }

    /// The rotary inverse frequencies, one per pair of dimensions, with Llama 3
    /// scaling applied when the model has it.
    pub fn inverse_frequencies(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| {
                let inv = self.rope_theta.powf(-((2 * i) as f64) / d);
                match &self.rope_scaling {
                    None => inv,
                    Some(s) => llama3_scale(inv, s),
                }
            })
            .collect()
    }
}

fn llama3_scale(inv: f64, s: &RopeScaling) -> f64 {
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / inv;
    if wavelen < high_wavelen {
        inv
    } else if wavelen > low_wavelen {
        inv / s.factor
    } else {
        let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv / s.factor + smooth * inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "rope_theta": 100000, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
        "tie_word_embeddings": true, "hidden_act": "silu"
    }"#;

    #[test]
    fn smollm2_config_gives_its_parameter_count() {
        let c = LlamaConfig::from_hf_json("smollm2", SMOLLM2).unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.parameters(), 134_515_008);
    }

    #[test]
    fn llama3_and_mistral_configs_load() {
        let llama = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
            "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
            "head_dim": 64, "tie_word_embeddings": true, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
              "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;
        let c = LlamaConfig::from_hf_json("llama-3.2-1b", llama).unwrap();
        let inv = c.inverse_frequencies();
        // High frequencies are kept, the lowest are divided by the factor.
        assert_eq!(inv[0], 1.0);
        let plain = 500000f64.powf(-62.0 / 64.0);
        assert!((inv[31] - plain / 32.0).abs() < 1e-15);

        let mistral = r#"{"architectures": ["MistralForCausalLM"], "vocab_size": 32000,
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "sliding_window": 4096}"#;
        let c = LlamaConfig::from_hf_json("mistral-7b", mistral).unwrap();
        assert_eq!((c.head_dim, c.num_kv_heads), (128, 8));
        assert_eq!(c.sliding_window, Some(4096));
        // Mistral configs without a window (Mistral Small) attend to everything.
        let plain = mistral.replace(", \"sliding_window\": 4096", "");
        let c = LlamaConfig::from_hf_json("mistral-small", &plain).unwrap();
        assert_eq!(c.sliding_window, None);
    }

    #[test]
    fn qwen_configs_say_biases_and_head_norms() {
        let qwen2 = SMOLLM2.replace("LlamaForCausalLM", "Qwen2ForCausalLM");
        let c = LlamaConfig::from_hf_json("qwen2", &qwen2).unwrap();
        assert!(c.qkv_bias && !c.qk_norm && !c.qk_rows_permuted);
        let qwen3 = SMOLLM2.replace("LlamaForCausalLM", "Qwen3ForCausalLM");
        let c = LlamaConfig::from_hf_json("qwen3", &qwen3).unwrap();
        assert!(!c.qkv_bias && c.qk_norm && c.sliding_window.is_none());
        let windowed = qwen2.replacen(
            '{',
            r#"{"use_sliding_window": true, "sliding_window": 4096, "#,
            1,
        );
        let err = LlamaConfig::from_hf_json("qwen2", &windowed).unwrap_err();
        assert!(err.to_string().contains("use_sliding_window"), "{err}");
    }

    #[test]
    fn other_architectures_are_refused_by_name() {
        let gemma = SMOLLM2.replace("LlamaForCausalLM", "Gemma3ForCausalLM");
        let err = LlamaConfig::from_hf_json("gemma", &gemma)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported architecture Gemma3ForCausalLM"),
            "{err}"
        );
        assert!(err.contains("Qwen3ForCausalLM"), "{err}");
    }
}
