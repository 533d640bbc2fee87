//! The Llama decoder in burn: RMSNorm, rotary position embeddings ("rotate
//! half"), grouped-query attention over a KV cache, SwiGLU feed-forward, tied or
//! separate output head.
//!
//! Tensors are laid out for batched decoding: activations are `[batch * seq,
//! hidden]` matrices, projection weights are stored `[in, out]` and fused (Q, K
//! and V in one matrix, gate and up in another) so each layer runs four matrix
//! products. Each sequence has a row of the KV cache with its own length, so
//! sequences join and leave a running batch; prompts prefilled together are
//! left-padded to a common length, a mask hiding the padding from attention
//! while positions count from each sequence's own start.

use std::sync::Arc;

use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use moulin_quant::QuantMatrix;
use rayon::prelude::*;

use super::config::LlamaConfig;
use super::weights::{HostTensor, Weight, WeightSource};
use crate::error::{Error, Result};
use host::KvBuffer;

mod host;

/// The precision of the KV cache on the CPU: f16 halves what each decoding
/// step reads and what a batch's cache takes (llama.cpp's default); f32 keeps
/// keys and values exactly (what the reference outputs of the tests assume).
/// GPUs keep f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    #[default]
    F16,
    F32,
}

/// The precision weights are kept in on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    #[default]
    F32,
    F16,
}

impl WeightDtype {
    fn bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 => 2,
        }
    }

    fn burn(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F16 => DType::F16,
        }
    }
}

/// A layer's vectors on the host, for the CPU pass.
struct LayerHost {
    attn_norm: Vec<f32>,
    mlp_norm: Vec<f32>,
    qkv_bias: Option<Vec<f32>>,
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
}

struct Layer {
    host: LayerHost,
    attn_norm: Tensor<1>,
    /// `[hidden, (heads + 2 * kv_heads) * head_dim]`.
    qkv: Linear,
    /// Q, K and V biases, concatenated (Qwen2).
    qkv_bias: Option<Tensor<1>>,
    /// RMSNorm weights over each head of Q and of K, `[head_dim]` (Qwen3).
    qk_norm: Option<(Tensor<1>, Tensor<1>)>,
    /// `[heads * head_dim, hidden]`.
    o: Linear,
    mlp_norm: Tensor<1>,
    /// `[hidden, 2 * intermediate]`: gate then up.
    gate_up: Linear,
    /// `[intermediate, hidden]`.
    down: Linear,
}

/// A projection `x @ Wᵀ`.
// Four per layer: the size of a burn tensor handle inline costs nothing.
#[allow(clippy::large_enum_variant)]
enum Linear {
    /// Float weights. On the CPU the weight keeps the file layout `[out, in]`
    /// and the CPU pass ([`host`]) streams it through
    /// [`cpu::outputs`](super::cpu::outputs). Elsewhere it is stored
    /// `[in, out]` for burn's matrix product.
    Dense {
        weight: Tensor<2>,
        dtype: WeightDtype,
        /// `weight` is `[out, in]`, for the CPU kernel.
        cpu_kernel: bool,
        /// The same storage, as the CPU pass reads it (with `cpu_kernel`).
        host: Option<burn_flex::FlexTensor>,
    },
    /// Weights kept in their file's quantized blocks (CPU only), parts stacked
    /// along the outputs; the inputs are quantized to 8 bits per block as
    /// llama.cpp quantizes them and the products are integer dot products
    /// ([`moulin_quant::matmul`]).
    Blocks(Vec<Arc<QuantMatrix>>),
}

impl Linear {
    /// `parts`: `[out_i, in]` weights, stacked along `out`.
    fn dense(parts: &[&HostTensor], device: &Device, dtype: WeightDtype, cpu_kernel: bool) -> Self {
        let m = if cpu_kernel {
            stack(parts)
        } else {
            transpose(parts)
        };
        let weight = upload_matrix(m, device, dtype);
        Linear::Dense {
            host: cpu_kernel.then(|| host_tensor(&weight)).flatten(),
            weight,
            dtype,
            cpu_kernel,
        }
    }

    /// burn's product, for the burn pass (GPUs, `MOULIN_LLM_KERNEL=0`); the
    /// CPU pass computes the other layouts itself.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Linear::Blocks(_)
            | Linear::Dense {
                cpu_kernel: true, ..
            } => unreachable!("weights laid out for the CPU pass"),
            Linear::Dense { weight, dtype, .. } => match dtype {
                WeightDtype::F32 => x.matmul(weight.clone()),
                WeightDtype::F16 => x.cast(DType::F16).matmul(weight.clone()).cast(DType::F32),
            },
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Linear::Blocks(parts) => parts.iter().map(|p| p.bytes()).sum(),
            Linear::Dense { weight, dtype, .. } => {
                weight.dims().iter().product::<usize>() * dtype.bytes()
            }
        }
    }
}

/// The token embeddings: rows looked up by token id.
#[allow(clippy::large_enum_variant)] // one per model
enum Embedding {
    /// `[vocab, hidden]` on the device (and its storage, on the CPU).
    Dense(Tensor<2>, Option<burn_flex::FlexTensor>),
    /// Quantized rows (CPU), dequantized as they are looked up.
    Blocks(Arc<QuantMatrix>),
}

pub struct Llama {
    pub config: LlamaConfig,
    device: Device,
    /// Rows looked up by token id (and the output head when tied, on the CPU).
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor<1>,
    head: Linear,
    head_is_embedding: bool,
    /// Projections and decoding attention through [`super::cpu`].
    cpu_kernel: bool,
    /// `[positions, head_dim]` tables of the rotary embedding.
    cos: Tensor<2>,
    sin: Tensor<2>,
    /// `[head_dim, head_dim]`: `x @ rotate == rotate_half(x)`.
    rotate: Tensor<2>,
    /// The rotary tables and final norm on the host.
    host: ModelHost,
    kv_dtype: KvDtype,
}

struct ModelHost {
    cos: Vec<f32>,
    sin: Vec<f32>,
    norm: Vec<f32>,
}

/// Keys and values of every layer for up to `rows` sequences, each in a row of
/// its own with its own length: a sequence can end and another take its row
/// while the others go on (continuous batching), and nothing is re-padded.
pub struct KvCache {
    store: KvStore,
    rows: usize,
    capacity: usize,
    /// Slots filled in each row.
    lens: Vec<usize>,
}

impl KvCache {
    /// Slots filled in `row`.
    pub fn len_of(&self, row: usize) -> usize {
        self.lens[row]
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Empty `row` for a new sequence (its old slots are simply overwritten).
    pub fn reset(&mut self, row: usize) {
        self.lens[row] = 0;
    }
}

/// Per layer, `[rows, kv_heads, capacity, head_dim]`.
enum KvStore {
    /// burn tensors, f32 (GPUs; the CPU without its kernels).
    Burn {
        keys: Vec<Option<Tensor<4>>>,
        values: Vec<Option<Tensor<4>>>,
    },
    /// The CPU pass's buffers.
    Host {
        keys: Vec<KvBuffer>,
        values: Vec<KvBuffer>,
    },
}

fn int_tensor(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// What one forward pass needs besides the token ids.
pub struct StepInput<'a> {
    /// `batch * seq` token ids, row by row.
    pub tokens: &'a [u32],
    pub batch: usize,
    pub seq: usize,
    /// Position of every token in its own sequence (`batch * seq`).
    pub positions: &'a [usize],
    /// The cache row of each sequence (distinct); its tokens go in the slots
    /// after the row's current length.
    pub rows: &'a [usize],
    /// For every sequence, which slots of its row (after this step, its
    /// length + `seq` of them) hold real tokens rather than padding.
    pub valid: &'a [Vec<bool>],
}

impl Llama {
    /// Build the model from its weights on `device`; `cpu_kernel` sends the
    /// projections to [`super::cpu`] (flex backend only); `keep_blocks` keeps
    /// quantized weights in their blocks (CPU only), `dtype` being then the
    /// precision of the file's float weights.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        config: LlamaConfig,
        source: &WeightSource,
        device: &Device,
        dtype: WeightDtype,
        max_positions: usize,
        cpu_kernel: bool,
        keep_blocks: bool,
        kv_dtype: KvDtype,
    ) -> Result<Self> {
        let keep_blocks = keep_blocks && cpu_kernel;
        let c = &config;
        let (hidden, hd) = (c.hidden_size, c.head_dim);
        let q_out = c.num_heads * hd;
        let kv_out = c.num_kv_heads * hd;
        let get = |w: Weight, shape: &[usize]| source.get(c, w, shape);
        let vector = |t: &HostTensor| -> Tensor<1> {
            let n = t.values.len();
            Tensor::from_data(TensorData::new(t.values.clone(), [n]), device)
        };

        // A projection from its parts: kept in blocks when every part is
        // quantized in the file, else dequantized to `dtype`.
        let linear = |parts: &[(Weight, [usize; 2])]| -> Result<Linear> {
            if keep_blocks {
                let mut blocks = Vec::with_capacity(parts.len());
                for (w, shape) in parts {
                    match source.get_blocks(c, *w, shape)? {
                        Some(m) => blocks.push(Arc::new(m)),
                        None => break,
                    }
                }
                if blocks.len() == parts.len() {
                    return Ok(Linear::Blocks(blocks));
                }
            }
            let hosts = parts
                .iter()
                .map(|(w, shape)| get(*w, shape))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&HostTensor> = hosts.iter().collect();
            Ok(Linear::dense(&refs, device, dtype, cpu_kernel))
        };
        let vocab = [c.vocab_size, hidden];
        let embed_blocks = if keep_blocks {
            source.get_blocks(c, Weight::Embed, &vocab)?.map(Arc::new)
        } else {
            None
        };
        let separate_head = if source.has(Weight::Head) {
            Some(linear(&[(Weight::Head, vocab)])?)
        } else {
            None
        };
        let (embed, head, head_is_embedding) = match (embed_blocks, separate_head) {
            // A tied head reads the quantized table itself.
            (Some(table), None) => (
                Embedding::Blocks(table.clone()),
                Linear::Blocks(vec![table]),
                true,
            ),
            (Some(table), Some(head)) => (Embedding::Blocks(table), head, false),
            (None, separate_head) => {
                let embed_host = get(Weight::Embed, &vocab)?;
                // On the CPU, a tied head reads the embedding table itself,
                // kept in the weights' precision; elsewhere the table is
                // gathered in f32 and the head has its own `[in, out]` copy.
                let tied_copy = (separate_head.is_none() && !cpu_kernel)
                    .then(|| Linear::dense(&[&embed_host], device, dtype, cpu_kernel));
                let embed_dtype = if cpu_kernel { dtype } else { WeightDtype::F32 };
                let embed = upload_matrix(stack(&[&embed_host]), device, embed_dtype);
                drop(embed_host);
                let head_is_embedding = separate_head.is_none() && tied_copy.is_none();
                let host = cpu_kernel.then(|| host_tensor(&embed)).flatten();
                let head = separate_head
                    .or(tied_copy)
                    .unwrap_or_else(|| Linear::Dense {
                        weight: embed.clone(),
                        dtype,
                        cpu_kernel: true,
                        host: host.clone(),
                    });
                (Embedding::Dense(embed, host), head, head_is_embedding)
            }
        };

        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let f = c.intermediate_size;
            let qkv_bias = if c.qkv_bias {
                let mut values = get(Weight::QBias(i), &[q_out])?.values;
                values.extend(get(Weight::KBias(i), &[kv_out])?.values);
                values.extend(get(Weight::VBias(i), &[kv_out])?.values);
                let n = values.len();
                Some(HostTensor {
                    values,
                    shape: vec![n],
                })
            } else {
                None
            };
            let qk_norm = if c.qk_norm {
                Some((get(Weight::QNorm(i), &[hd])?, get(Weight::KNorm(i), &[hd])?))
            } else {
                None
            };
            let attn_norm = get(Weight::AttnNorm(i), &[hidden])?;
            let mlp_norm = get(Weight::MlpNorm(i), &[hidden])?;
            layers.push(Layer {
                qkv_bias: qkv_bias.as_ref().map(vector),
                qk_norm: qk_norm.as_ref().map(|(q, k)| (vector(q), vector(k))),
                attn_norm: vector(&attn_norm),
                mlp_norm: vector(&mlp_norm),
                host: LayerHost {
                    attn_norm: attn_norm.values,
                    mlp_norm: mlp_norm.values,
                    qkv_bias: qkv_bias.map(|b| b.values),
                    qk_norm: qk_norm.map(|(q, k)| (q.values, k.values)),
                },
                qkv: linear(&[
                    (Weight::Q(i), [q_out, hidden]),
                    (Weight::K(i), [kv_out, hidden]),
                    (Weight::V(i), [kv_out, hidden]),
                ])?,
                o: linear(&[(Weight::O(i), [hidden, q_out])])?,
                gate_up: linear(&[(Weight::Gate(i), [f, hidden]), (Weight::Up(i), [f, hidden])])?,
                down: linear(&[(Weight::Down(i), [hidden, f])])?,
            });
        }
        let norm_host = get(Weight::FinalNorm, &[hidden])?;
        let norm = vector(&norm_host);

        let inv = config.inverse_frequencies();
        let positions = max_positions.max(1);
        let mut cos = Vec::with_capacity(positions * hd);
        let mut sin = Vec::with_capacity(positions * hd);
        for p in 0..positions {
            // "Rotate half": the same frequencies for both halves of a head.
            for _ in 0..2 {
                for f in &inv {
                    let angle = p as f64 * f;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let mut rotate = vec![0f32; hd * hd];
        let half = hd / 2;
        for i in 0..half {
            rotate[(i + half) * hd + i] = -1.0;
            rotate[i * hd + i + half] = 1.0;
        }
        let model = Llama {
            cos: Tensor::from_data(TensorData::new(cos.clone(), [positions, hd]), device),
            sin: Tensor::from_data(TensorData::new(sin.clone(), [positions, hd]), device),
            rotate: Tensor::from_data(TensorData::new(rotate, [hd, hd]), device),
            config,
            device: device.clone(),
            embed,
            layers,
            norm,
            head,
            head_is_embedding,
            cpu_kernel,
            host: ModelHost {
                cos,
                sin,
                norm: norm_host.values,
            },
            kv_dtype,
        };
        // With the CPU kernels, every pass runs on the host ([`host`]).
        if cpu_kernel && !model.host_ready() {
            return Err(Error::Llm {
                model: model.config.architecture.clone(),
                reason: "weights not laid out for the CPU pass (a bug)".into(),
            });
        }
        Ok(model)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes the weights take on the device.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.bytes()
                    + l.o.bytes()
                    + l.gate_up.bytes()
                    + l.down.bytes()
                    + 4 * (l.attn_norm.dims()[0] + l.mlp_norm.dims()[0])
                    + l.qkv_bias.as_ref().map_or(0, |b| 4 * b.dims()[0])
                    + l.qk_norm
                        .as_ref()
                        .map_or(0, |(q, k)| 4 * (q.dims()[0] + k.dims()[0]))
            })
            .sum();
        // A tied head on the CPU is the embedding table itself.
        let head = if self.head_is_embedding {
            0
        } else {
            self.head.bytes()
        };
        let embed = match &self.embed {
            Embedding::Blocks(m) => m.bytes(),
            Embedding::Dense(t, _) => {
                t.dims().iter().product::<usize>() * if t.dtype() == DType::F16 { 2 } else { 4 }
            }
        };
        embed + layers + head + 4 * self.norm.dims()[0]
    }

    /// Whether any projection computes on quantized blocks.
    pub fn uses_blocks(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(l.qkv, Linear::Blocks(_)))
    }

    /// An empty cache for `rows` sequences of up to `capacity` tokens each.
    pub fn cache(&self, rows: usize, capacity: usize) -> Result<KvCache> {
        let c = &self.config;
        if capacity > self.cos.dims()[0] {
            return Err(Error::Llm {
                model: c.architecture.clone(),
                reason: format!(
                    "{capacity} tokens do not fit the model's context of {} positions",
                    self.cos.dims()[0]
                ),
            });
        }
        let shape = [rows, c.num_kv_heads, capacity, c.head_dim];
        let store = if self.cpu_kernel {
            let len = shape.iter().product();
            let zeros = || KvBuffer::zeros(len, self.kv_dtype);
            KvStore::Host {
                keys: (0..c.num_layers).map(|_| zeros()).collect(),
                values: (0..c.num_layers).map(|_| zeros()).collect(),
            }
        } else {
            let zeros = || Some(Tensor::<4>::zeros(shape, &self.device));
            KvStore::Burn {
                keys: (0..c.num_layers).map(|_| zeros()).collect(),
                values: (0..c.num_layers).map(|_| zeros()).collect(),
            }
        };
        Ok(KvCache {
            store,
            rows,
            capacity,
            lens: vec![0; rows],
        })
    }

    /// Run `input` through the model, append its keys and values to `cache`,
    /// and return the logits of each sequence's last token, `[batch, vocab]`
    /// row after row.
    pub fn forward(&self, input: StepInput<'_>, cache: &mut KvCache) -> Result<Vec<f32>> {
        let c = &self.config;
        let (b, s) = (input.batch, input.seq);
        let n = b * s;
        let (heads, kv_heads, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let group = heads / kv_heads;
        assert_eq!(input.rows.len(), b, "one cache row per sequence");
        assert_eq!(input.positions.len(), n, "one position per token");
        // Where each sequence's new slots start, in its own row.
        let starts: Vec<usize> = input.rows.iter().map(|&r| cache.lens[r]).collect();
        if let Some(end) = starts.iter().map(|st| st + s).find(|&e| e > cache.capacity) {
            return Err(Error::Llm {
                model: c.architecture.clone(),
                reason: format!(
                    "KV cache overflow: {end} tokens in a cache sized for {}",
                    cache.capacity
                ),
            });
        }
        if let KvStore::Host { .. } = cache.store {
            let logits = self.forward_host(&input, &starts, cache)?;
            for (&r, &st) in input.rows.iter().zip(&starts) {
                cache.lens[r] = st + s;
            }
            return Ok(logits);
        }
        let KvStore::Burn {
            keys: cache_keys,
            values: cache_values,
        } = &mut cache.store
        else {
            unreachable!("matched above")
        };
        // Every row of the cache in order, at one length: one write per layer.
        let aligned = b == cache.rows
            && input.rows.iter().enumerate().all(|(i, &r)| i == r)
            && starts.iter().all(|&st| st == starts[0]);
        let row_index = int_tensor(input.rows.iter().map(|&r| r as i64).collect(), &self.device);

        // Rotary tables for each token's own position, broadcast over heads.
        let pos = int_tensor(
            input.positions.iter().map(|&p| p as i64).collect(),
            &self.device,
        );
        let cos = self
            .cos
            .clone()
            .select(0, pos.clone())
            .reshape([b, s, 1, hd]);
        let sin = self.sin.clone().select(0, pos).reshape([b, s, 1, hd]);
        let rope = |x: Tensor<4>, nh: usize| -> Tensor<4> {
            let rotated = x.clone().reshape([n * nh, hd]).matmul(self.rotate.clone());
            x * cos.clone() + rotated.reshape([b, s, nh, hd]) * sin.clone()
        };

        // Attention mask, `true` where a query must not look: padding slots and
        // slots after the query (causal). Queries are grouped by key/value head:
        // rows are (group member, token).
        // Attention reads the whole cache, contiguous as it is (a slice of it
        // would be copied for every layer); the mask hides the slots not filled.
        // Built only when the backend's attention runs (the CPU kernel needs none).
        let span = cache.capacity;
        let window = c.sliding_window;
        let build_mask = || -> Tensor<4, Bool> {
            let mut mask = Vec::with_capacity(b * group * s * span);
            for (row, &start) in input.valid.iter().take(b).zip(&starts) {
                for _ in 0..group {
                    for t in 0..s {
                        let limit = start + t;
                        // Slots and positions differ by the row's padding only,
                        // so the window is a distance in slots.
                        let first = window.map_or(0, |w| (limit + 1).saturating_sub(w));
                        mask.extend((0..span).map(|j| {
                            j > limit || j < first || !row.get(j).copied().unwrap_or(false)
                        }));
                    }
                }
            }
            Tensor::from_data(TensorData::new(mask, [b, 1, group * s, span]), &self.device)
        };
        let mut mask: Option<Tensor<4, Bool>> = None;
        let options = AttentionModuleOptions {
            scale: Some(1.0 / (hd as f64).sqrt()),
            ..Default::default()
        };

        let tokens = int_tensor(
            input.tokens.iter().map(|&t| i64::from(t)).collect(),
            &self.device,
        );
        let mut x = self.embed(tokens); // [n, hidden]
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(x.clone(), &layer.attn_norm, c.rms_norm_eps);
            let mut qkv = layer.qkv.forward(h);
            if let Some(bias) = &layer.qkv_bias {
                qkv = qkv + bias.clone().unsqueeze::<2>();
            }
            let q = qkv
                .clone()
                .slice([0..n, 0..heads * hd])
                .reshape([b, s, heads, hd]);
            let k = qkv
                .clone()
                .slice([0..n, heads * hd..(heads + kv_heads) * hd])
                .reshape([b, s, kv_heads, hd]);
            let v = qkv
                .slice([0..n, (heads + kv_heads) * hd..(heads + 2 * kv_heads) * hd])
                .reshape([b, s, kv_heads, hd]);
            let (q, k) = match &layer.qk_norm {
                Some((qn, kn)) => {
                    let per_head = |x: Tensor<4>, nh: usize, w: &Tensor<1>| {
                        rms_norm(x.reshape([n * nh, hd]), w, c.rms_norm_eps).reshape([b, s, nh, hd])
                    };
                    (per_head(q, heads, qn), per_head(k, kv_heads, kn))
                }
                None => (q, k),
            };
            let q = rope(q, heads)
                .swap_dims(1, 2)
                .reshape([b, kv_heads, group * s, hd]);
            let k = rope(k, kv_heads).swap_dims(1, 2);
            let v = v.swap_dims(1, 2);

            let mut keys = cache_keys[l].take().expect("cache");
            let mut values = cache_values[l].take().expect("cache");
            if aligned {
                let slots = [0..b, 0..kv_heads, starts[0]..starts[0] + s, 0..hd];
                keys = keys.slice_assign(slots.clone(), k);
                values = values.slice_assign(slots, v);
            } else {
                for (e, (&r, &st)) in input.rows.iter().zip(&starts).enumerate() {
                    let slots = [r..r + 1, 0..kv_heads, st..st + s, 0..hd];
                    let new = [e..e + 1, 0..kv_heads, 0..s, 0..hd];
                    keys = keys.slice_assign(slots.clone(), k.clone().slice(new.clone()));
                    values = values.slice_assign(slots, v.clone().slice(new));
                }
            }
            let mask = mask.get_or_insert_with(build_mask).clone();
            // The rows of this batch, in its order.
            let (k, v) = if aligned {
                (keys.clone(), values.clone())
            } else {
                (
                    keys.clone().select(0, row_index.clone()),
                    values.clone().select(0, row_index.clone()),
                )
            };
            let attn = attention(q, k, v, Some(mask), None, options);
            cache_keys[l] = Some(keys);
            cache_values[l] = Some(values);

            let attn = attn
                .reshape([b, heads, s, hd])
                .swap_dims(1, 2)
                .reshape([n, heads * hd]);
            x = x + layer.o.forward(attn);

            let h = rms_norm(x.clone(), &layer.mlp_norm, c.rms_norm_eps);
            let gu = layer.gate_up.forward(h);
            let f = c.intermediate_size;
            let gate = gu.clone().slice([0..n, 0..f]);
            let up = gu.slice([0..n, f..2 * f]);
            x = x + layer.down.forward(silu(gate) * up);
        }
        for (&r, &st) in input.rows.iter().zip(&starts) {
            cache.lens[r] = st + s;
        }

        let last = x
            .reshape([b, s, c.hidden_size])
            .slice([0..b, s - 1..s, 0..c.hidden_size])
            .reshape([b, c.hidden_size]);
        let last = rms_norm(last, &self.norm, c.rms_norm_eps);
        Ok(self.head.forward(last).into_data().iter::<f32>().collect())
    }
}

impl Llama {
    /// The embeddings of `tokens`, `[n, hidden]` in f32.
    fn embed(&self, tokens: Tensor<1, Int>) -> Tensor<2> {
        match &self.embed {
            Embedding::Dense(table, _) => table.clone().select(0, tokens).cast(DType::F32),
            Embedding::Blocks(_) => unreachable!("a table in blocks is read by the CPU pass"),
        }
    }
}

/// A CPU tensor's storage, shared (no copy).
fn host_tensor(t: &Tensor<2>) -> Option<burn_flex::FlexTensor> {
    t.clone().try_into_primitive::<burn_flex::Flex>().ok()
}

fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    let scale = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    x * scale * weight.clone().unsqueeze::<2>()
}

/// `[out, in]` weights stacked along `out`, as they are.
fn stack(parts: &[&HostTensor]) -> Matrix {
    let cols = parts[0].shape[1];
    let values: Vec<f32> = parts
        .iter()
        .flat_map(|p| p.values.iter().copied())
        .collect();
    Matrix {
        rows: values.len() / cols,
        values,
        cols,
    }
}

struct Matrix {
    values: Vec<f32>,
    rows: usize,
    cols: usize,
}

/// `[out, in]` weights stacked along `out`, transposed to `[in, out_total]`.
fn transpose(parts: &[&HostTensor]) -> Matrix {
    let cols_in = parts[0].shape[1];
    let rows_out: usize = parts.iter().map(|p| p.shape[0]).sum();
    let mut values = vec![0f32; cols_in * rows_out];
    // Each output row `i` gathers column `i` of every part.
    values
        .par_chunks_mut(rows_out)
        .enumerate()
        .for_each(|(i, row)| {
            let mut o = 0;
            for p in parts {
                for r in 0..p.shape[0] {
                    row[o] = p.values[r * cols_in + i];
                    o += 1;
                }
            }
        });
    Matrix {
        values,
        rows: cols_in,
        cols: rows_out,
    }
}

fn upload_matrix(m: Matrix, device: &Device, dtype: WeightDtype) -> Tensor<2> {
    match dtype {
        WeightDtype::F32 => Tensor::from_data(
            TensorData::new(m.values, [m.rows, m.cols]),
            (device, DType::F32),
        ),
        WeightDtype::F16 => {
            let halves: Vec<half::f16> = m
                .values
                .par_iter()
                .map(|&v| half::f16::from_f32(v))
                .collect();
            // The dtype must be named: without it the data is converted to the
            // device's default float type.
            let t: Tensor<2> = Tensor::from_data(
                TensorData::new(halves, [m.rows, m.cols]),
                (device, DType::F16),
            );
            assert_eq!(t.dtype(), dtype.burn());
            t
        }
    }
}
