//! Where a model's weights come from: a GGUF file or a Hugging Face folder of
//! safetensors. Both give f32 matrices in the Hugging Face layout
//! (`[out_features, in_features]`, Q/K rows in "rotate half" order).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use moulin_quant::QuantMatrix;
use safetensors::{Dtype, SafeTensors};

use super::config::LlamaConfig;
use super::gguf::Gguf;
use crate::error::{Error, Result};

/// One weight of a Llama model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    Embed,
    FinalNorm,
    /// The output projection; absent when tied to the embeddings.
    Head,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    MlpNorm(usize),
    /// Qwen2's projection biases.
    QBias(usize),
    KBias(usize),
    VBias(usize),
    /// Qwen3's per-head norms of Q and K.
    QNorm(usize),
    KNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

impl Weight {
    fn hf_name(self) -> String {
        match self {
            Weight::Embed => "model.embed_tokens.weight".into(),
            Weight::FinalNorm => "model.norm.weight".into(),
            Weight::Head => "lm_head.weight".into(),
            Weight::AttnNorm(i) => format!("model.layers.{i}.input_layernorm.weight"),
            Weight::Q(i) => format!("model.layers.{i}.self_attn.q_proj.weight"),
            Weight::K(i) => format!("model.layers.{i}.self_attn.k_proj.weight"),
            Weight::V(i) => format!("model.layers.{i}.self_attn.v_proj.weight"),
            Weight::O(i) => format!("model.layers.{i}.self_attn.o_proj.weight"),
            Weight::MlpNorm(i) => format!("model.layers.{i}.post_attention_layernorm.weight"),
            Weight::QBias(i) => format!("model.layers.{i}.self_attn.q_proj.bias"),
            Weight::KBias(i) => format!("model.layers.{i}.self_attn.k_proj.bias"),
            Weight::VBias(i) => format!("model.layers.{i}.self_attn.v_proj.bias"),
            Weight::QNorm(i) => format!("model.layers.{i}.self_attn.q_norm.weight"),
            Weight::KNorm(i) => format!("model.layers.{i}.self_attn.k_norm.weight"),
            Weight::Gate(i) => format!("model.layers.{i}.mlp.gate_proj.weight"),
            Weight::Up(i) => format!("model.layers.{i}.mlp.up_proj.weight"),
            Weight::Down(i) => format!("model.layers.{i}.mlp.down_proj.weight"),
        }
    }

    fn gguf_name(self) -> String {
        match self {
            Weight::Embed => "token_embd.weight".into(),
            Weight::FinalNorm => "output_norm.weight".into(),
            Weight::Head => "output.weight".into(),
            Weight::AttnNorm(i) => format!("blk.{i}.attn_norm.weight"),
            Weight::Q(i) => format!("blk.{i}.attn_q.weight"),
            Weight::K(i) => format!("blk.{i}.attn_k.weight"),
            Weight::V(i) => format!("blk.{i}.attn_v.weight"),
            Weight::O(i) => format!("blk.{i}.attn_output.weight"),
            Weight::MlpNorm(i) => format!("blk.{i}.ffn_norm.weight"),
            Weight::QBias(i) => format!("blk.{i}.attn_q.bias"),
            Weight::KBias(i) => format!("blk.{i}.attn_k.bias"),
            Weight::VBias(i) => format!("blk.{i}.attn_v.bias"),
            Weight::QNorm(i) => format!("blk.{i}.attn_q_norm.weight"),
            Weight::KNorm(i) => format!("blk.{i}.attn_k_norm.weight"),
            Weight::Gate(i) => format!("blk.{i}.ffn_gate.weight"),
            Weight::Up(i) => format!("blk.{i}.ffn_up.weight"),
            Weight::Down(i) => format!("blk.{i}.ffn_down.weight"),
        }
    }
}

/// A tensor read from a model file, as f32 in row-major order.
#[derive(Debug)]
pub struct HostTensor {
    pub values: Vec<f32>,
    pub shape: Vec<usize>,
}

/// The weight files of one model.
pub enum WeightSource {
    Gguf(Gguf),
    SafeTensors(SafeTensorFiles),
}

impl WeightSource {
    pub fn describe_dtype(&self) -> String {
        match self {
            WeightSource::Gguf(g) => {
                let mut kinds: Vec<String> = g
                    .tensors
                    .values()
                    .map(|t| t.kind.name().to_string())
                    .collect();
                kinds.sort();
                kinds.dedup();
                kinds.join("+")
            }
            WeightSource::SafeTensors(s) => s.dtypes(),
        }
    }

    /// A weight, checked against the shape the configuration expects.
    pub fn get(
        &self,
        config: &LlamaConfig,
        weight: Weight,
        expected: &[usize],
    ) -> Result<HostTensor> {
        let (mut tensor, model) = match self {
            WeightSource::Gguf(g) => {
                let (values, shape) = g.tensor_f32(&weight.gguf_name())?;
                (HostTensor { values, shape }, g.path().display().to_string())
            }
            WeightSource::SafeTensors(s) => {
                (s.tensor(&weight.hf_name())?, s.dir.display().to_string())
            }
        };
        if tensor.shape != expected {
            return Err(Error::Llm {
                model,
                reason: format!(
                    "{weight:?} has shape {:?}, the configuration gives {expected:?}",
                    tensor.shape
                ),
            });
        }
        // llama.cpp stores Q and K rows permuted for its interleaved rotary
        // embedding: put them back in the "rotate half" order the model uses
        // (biases and per-head norms follow their rows).
        if matches!(self, WeightSource::Gguf(_)) && config.qk_rows_permuted {
            let (heads, kv, hd) = (config.num_heads, config.num_kv_heads, config.head_dim);
            match weight {
                Weight::Q(_) | Weight::QBias(_) => unpermute_rows(&mut tensor, heads, hd),
                Weight::K(_) | Weight::KBias(_) => unpermute_rows(&mut tensor, kv, hd),
                Weight::QNorm(_) | Weight::KNorm(_) => unpermute_rows(&mut tensor, 1, hd),
                _ => {}
            }
        }
        Ok(tensor)
    }

    /// A matrix weight kept in its file's blocks when the file quantizes it
    /// (GGUF), checked against the shape the configuration expects; `None`
    /// when it is stored as floats.
    pub fn get_blocks(
        &self,
        config: &LlamaConfig,
        weight: Weight,
        expected: &[usize],
    ) -> Result<Option<QuantMatrix>> {
        let WeightSource::Gguf(g) = self else {
            return Ok(None);
        };
        let name = weight.gguf_name();
        let info = g.tensor_info(&name)?;
        let (kind, shape) = (info.kind, info.shape());
        if !kind.is_quantized() {
            return Ok(None);
        }
        let fail = |reason: String| Error::Llm {
            model: g.path().display().to_string(),
            reason: format!("tensor {name}: {reason}"),
        };
        if shape != expected {
            return Err(fail(format!(
                "shape {shape:?}, the configuration gives {expected:?}"
            )));
        }
        // The blocks stay in the mapped file (counted once in resident memory,
        // shared with the page cache); only Q and K, whose rows move, are copied.
        let map: moulin_quant::SharedBytes = g.shared_map();
        let mut m = QuantMatrix::shared(kind, shape[0], shape[1], map, info.start, info.len)
            .map_err(fail)?;
        let (heads, hd) = match weight {
            Weight::Q(_) if config.qk_rows_permuted => (config.num_heads, config.head_dim),
            Weight::K(_) if config.qk_rows_permuted => (config.num_kv_heads, config.head_dim),
            _ => return Ok(Some(m)),
        };
        // Rows back in "rotate half" order, as `unpermute_rows` does for floats.
        m.permute_rows(|to| gguf_row(to, heads, hd));
        Ok(Some(m))
    }

    pub fn has(&self, weight: Weight) -> bool {
        match self {
            WeightSource::Gguf(g) => g.tensors.contains_key(&weight.gguf_name()),
            WeightSource::SafeTensors(s) => s.index.contains_key(&weight.hf_name()),
        }
    }
}

/// Row `h*hd + 2a + b` of a llama.cpp file is row `h*hd + b*hd/2 + a` of the
/// Hugging Face weight: the file row that holds Hugging Face row `to`.
fn gguf_row(to: usize, heads: usize, head_dim: usize) -> usize {
    debug_assert!(to < heads * head_dim);
    let (h, rest) = (to / head_dim, to % head_dim);
    let half = head_dim / 2;
    let (b, a) = (rest / half, rest % half);
    h * head_dim + 2 * a + b
}

fn unpermute_rows(t: &mut HostTensor, heads: usize, head_dim: usize) {
    // Vectors (biases, norms) are one column.
    let cols = t.shape.get(1).copied().unwrap_or(1);
    let half = head_dim / 2;
    let mut out = vec![0f32; t.values.len()];
    for h in 0..heads {
        for a in 0..half {
            for b in 0..2 {
                let from = (h * head_dim + 2 * a + b) * cols;
                let to = (h * head_dim + b * half + a) * cols;
                out[to..to + cols].copy_from_slice(&t.values[from..from + cols]);
            }
        }
    }
    t.values = out;
}

/// The `*.safetensors` files of a Hugging Face folder, memory-mapped.
pub struct SafeTensorFiles {
    dir: PathBuf,
    maps: Vec<(PathBuf, Mmap)>,
    /// Tensor name → index in `maps`.
    index: HashMap<String, usize>,
}

impl SafeTensorFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        let fail = |reason: String| Error::Llm {
            model: dir.display().to_string(),
            reason,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(fail("no *.safetensors file".into()));
        }
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only map of a model file kept alive with the mapping.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let names = SafeTensors::deserialize(&map)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?
                .names()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>();
            for name in names {
                index.insert(name, maps.len());
            }
            maps.push((path, map));
        }
        Ok(SafeTensorFiles {
            dir: dir.to_path_buf(),
            maps,
            index,
        })
    }

    fn dtypes(&self) -> String {
        let mut kinds = Vec::new();
        for (_, map) in &self.maps {
            if let Ok(st) = SafeTensors::deserialize(map) {
                for (_, view) in st.tensors() {
                    kinds.push(format!("{:?}", view.dtype()));
                }
            }
        }
        kinds.sort();
        kinds.dedup();
        kinds.join("+")
    }

    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let fail = |reason: String| Error::Llm {
            model: self.dir.display().to_string(),
            reason,
        };
        let &file = self
            .index
            .get(name)
            .ok_or_else(|| fail(format!("tensor {name} is missing")))?;
        let (path, map) = &self.maps[file];
        let st =
            SafeTensors::deserialize(map).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let view = st
            .tensor(name)
            .map_err(|e| fail(format!("{}: {name}: {e}", path.display())))?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => return Err(fail(format!("{name}: dtype {other:?} is not supported"))),
        };
        Ok(HostTensor {
            values,
            shape: view.shape().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_restores_rotate_half_order() {
        // One head of size 4, one column: llama.cpp order is [x0, x2, x1, x3].
        let mut t = HostTensor {
            values: vec![0.0, 2.0, 1.0, 3.0],
            shape: vec![4, 1],
        };
        unpermute_rows(&mut t, 1, 4);
        assert_eq!(t.values, vec![0.0, 1.0, 2.0, 3.0]);
        // The same mapping for quantized rows.
        let rows: Vec<usize> = (0..8).map(|to| gguf_row(to, 2, 4)).collect();
        assert_eq!(rows, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
