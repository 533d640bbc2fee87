//! The forward pass on the CPU, in the host's memory, without burn's
//! operations: the projections on the quantized blocks ([`moulin_quant`]) or
//! the f16/f32 kernel ([`crate::llm::cpu`]), and RMSNorm, the biases, Q/K
//! norms, the rotary embedding, the KV cache, attention and SwiGLU as plain
//! loops over each token's row, fused where one pass over the row does.
//!
//! One [`team`] of threads runs the whole pass: each operation is a phase in
//! which each thread takes its share (rows of tokens for the per-token work,
//! output columns for the projections, (sequence, head) pairs for attention),
//! and a barrier separates phases. The numerics follow the burn pass (and
//! llama.cpp): f32 activations, RMSNorm's sum of squares in f64, softmax in
//! f32, inputs of quantized projections quantized per block as llama.cpp does.

use half::f16;
use moulin_quant::layout::padded;
use moulin_quant::{
    ActivationRow, Aligned, Kernel, Product, Scheme, Scratch, aligned, quantize_into, shift_into,
};

use super::{Embedding, KvCache, KvStore, LayerHost, Linear, Llama, ModelHost, StepInput};
use crate::error::{Error, Result};
use crate::llm::cpu::{self, Weights};
use crate::llm::phases::{Clock, Phase};
use crate::llm::team::{self, Member, Shared};

/// The input schemes, in the order of [`Acts`]' buffers.
const SCHEMES: [Scheme; 3] = [Scheme::Q8_0, Scheme::Q8_1, Scheme::Q8K];

fn scheme_index(s: Scheme) -> usize {
    SCHEMES
        .iter()
        .position(|&x| x == s)
        .expect("a known scheme")
}

/// Query tokens per attention task in a prompt pass.
const ATTENTION_TOKENS: usize = 16;

/// Keys and values of one layer in the host's memory, `[rows, kv_heads,
/// capacity, head_dim]`, in f16 (half the bytes each step reads, as llama.cpp
/// keeps them) or f32.
pub enum KvBuffer {
    F32(Aligned<f32>),
    F16(Aligned<f16>),
}

impl KvBuffer {
    pub fn zeros(len: usize, dtype: super::KvDtype) -> Self {
        match dtype {
            super::KvDtype::F32 => KvBuffer::F32(aligned(0.0, len)),
            super::KvDtype::F16 => KvBuffer::F16(aligned(f16::ZERO, len)),
        }
    }

    fn share(&mut self) -> KvShared<'_> {
        match self {
            KvBuffer::F32(v) => KvShared::F32(Shared::new(v)),
            KvBuffer::F16(v) => KvShared::F16(Shared::new(v)),
        }
    }
}

enum KvShared<'a> {
    F32(Shared<'a, f32>),
    F16(Shared<'a, f16>),
}

impl KvShared<'_> {
    /// Store `values` at `at`.
    ///
    /// # Safety
    /// No other thread touches `at..at + values.len()` in this phase.
    unsafe fn store(&self, at: usize, values: &[f32]) {
        let range = at..at + values.len();
        // SAFETY: the caller's.
        unsafe {
            match self {
                KvShared::F32(s) => s.get_mut(range).copy_from_slice(values),
                KvShared::F16(s) => {
                    use half::slice::HalfFloatSliceExt;
                    s.get_mut(range).convert_from_f32_slice(values)
                }
            }
        }
    }
}

/// A projection's weights as this pass reads them.
enum Weight<'a> {
    Blocks(&'a [std::sync::Arc<moulin_quant::QuantMatrix>]),
    Dense(Weights<'a>, usize),
}

impl Linear {
    fn host(&self) -> Option<Weight<'_>> {
        match self {
            Linear::Blocks(parts) => Some(Weight::Blocks(parts)),
            Linear::Dense {
                host: Some(t),
                weight,
                ..
            } => {
                let cols = weight.dims()[0];
                Some(Weight::Dense(cpu::host_weights(t)?, cols))
            }
            Linear::Dense { .. } => None,
        }
    }
}

impl Weight<'_> {
    fn columns(&self) -> usize {
        match self {
            Weight::Blocks(parts) => parts.iter().map(|p| p.rows()).sum(),
            Weight::Dense(_, cols) => *cols,
        }
    }

    /// What its parts want of their input in each scheme.
    fn schemes(&self) -> [Want; 3] {
        let mut want = [Want::default(); 3];
        if let Weight::Blocks(parts) = self {
            for p in parts.iter() {
                let want = &mut want[scheme_index(Scheme::for_weights(p.kind()))];
                want.quantized = true;
                want.shifted |= Kernel::detect().shifts(p.kind());
            }
        }
        want
    }
}

/// What a projection wants of its input in one of [`SCHEMES`]: quantized,
/// and also shifted ([`ActivationRow::shifted`]) for the kernel.
#[derive(Clone, Copy, Default)]
struct Want {
    quantized: bool,
    shifted: bool,
}

impl Want {
    fn or(self, other: Want) -> Want {
        Want {
            quantized: self.quantized | other.quantized,
            shifted: self.shifted | other.shifted,
        }
    }
}

/// A projection's input: `rows` rows of `width` f32 values, and the same rows
/// quantized in each scheme asked for.
struct Input<'a> {
    rows: usize,
    width: usize,
    x: Shared<'a, f32>,
    acts: [Acts<'a>; 3],
}

struct Acts<'a> {
    q: Shared<'a, i8>,
    scale: Shared<'a, f32>,
    group_sum: Shared<'a, f32>,
    shifted: Shared<'a, u8>,
}

/// One scheme's quantized rows: bytes, scales, group sums, shifted bytes.
type ActsBuffers = (Aligned<i8>, Aligned<f32>, Aligned<f32>, Aligned<u8>);

/// The buffers behind an [`Input`].
struct InputBuffers {
    rows: usize,
    width: usize,
    x: Vec<f32>,
    acts: [ActsBuffers; 3],
}

impl InputBuffers {
    /// Buffers for `rows` rows of `width`, quantized in the schemes that
    /// `readers` want (the others left empty: they would take memory).
    /// Cache-line aligned, as the kernels' loads want them.
    fn new<'w>(
        rows: usize,
        width: usize,
        readers: impl IntoIterator<Item = &'w Weight<'w>>,
    ) -> Self {
        let mut want = [Want::default(); 3];
        for w in readers {
            for (want, wanted) in want.iter_mut().zip(w.schemes()) {
                *want = want.or(wanted);
            }
        }
        let (n, p) = (rows * width, rows * padded(width));
        let acts = |i: usize| {
            let k = usize::from(want[i].quantized);
            (
                aligned(0i8, k * p),
                aligned(0f32, k * p / 16),
                aligned(0f32, k * n / 16),
                aligned(0u8, usize::from(want[i].shifted) * p),
            )
        };
        InputBuffers {
            rows,
            width,
            x: vec![0.0; n],
            acts: [acts(0), acts(1), acts(2)],
        }
    }

    fn share(&mut self) -> Input<'_> {
        let [a, b, c] = &mut self.acts;
        fn acts(buffers: &mut ActsBuffers) -> Acts<'_> {
            let (q, s, g, shifted) = buffers;
            Acts {
                q: Shared::new(q),
                scale: Shared::new(s),
                group_sum: Shared::new(g),
                shifted: Shared::new(shifted),
            }
        }
        Input {
            rows: self.rows,
            width: self.width,
            x: Shared::new(&mut self.x),
            acts: [acts(a), acts(b), acts(c)],
        }
    }
}

impl Input<'_> {
    /// Row `r`'s f32 values, for writing.
    ///
    /// # Safety
    /// This thread alone touches row `r` in this phase.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_mut(&self, r: usize) -> &mut [f32] {
        // SAFETY: the caller's.
        unsafe { self.x.get_mut(r * self.width..(r + 1) * self.width) }
    }

    /// Quantize row `r` in each scheme of `want`.
    ///
    /// # Safety
    /// This thread alone touches row `r` in this phase.
    unsafe fn quantize_row(&self, r: usize, want: [Want; 3]) {
        let (w, p) = (self.width, padded(self.width));
        // SAFETY: the caller's.
        let x = unsafe { self.x.get(r * w..(r + 1) * w) };
        for (i, acts) in self.acts.iter().enumerate() {
            if want[i].quantized {
                // SAFETY: the caller's.
                unsafe {
                    let q = acts.q.get_mut(r * p..(r + 1) * p);
                    quantize_into(
                        x,
                        SCHEMES[i],
                        q,
                        acts.scale.get_mut(r * p / 16..(r + 1) * p / 16),
                        acts.group_sum.get_mut(r * w / 16..(r + 1) * w / 16),
                    );
                    if want[i].shifted {
                        shift_into(q, acts.shifted.get_mut(r * p..(r + 1) * p));
                    }
                }
            }
        }
    }

    /// Row `r` quantized in `scheme`.
    ///
    /// # Safety
    /// No thread writes row `r` in this phase.
    unsafe fn quantized(&self, scheme: Scheme, r: usize) -> ActivationRow<'_> {
        let (w, a) = (self.width, &self.acts[scheme_index(scheme)]);
        let p = padded(w);
        // SAFETY: the caller's.
        unsafe {
            ActivationRow {
                q: a.q.get(r * p..(r + 1) * p),
                scale: a.scale.get(r * p / 16..(r + 1) * p / 16),
                group_sum: a.group_sum.get(r * w / 16..(r + 1) * w / 16),
                shifted: if a.shifted.is_empty() {
                    &[]
                } else {
                    a.shifted.get(r * p..(r + 1) * p)
                },
            }
        }
    }
}

/// What a thread keeps from one projection to the next.
#[derive(Default)]
struct Local {
    scratch: Scratch,
    dense: Vec<f32>,
    scores: Vec<f32>,
    /// A query chunk's queries, gathered.
    queries: Vec<f32>,
    /// The softmax sums of a query chunk's rows.
    totals: Vec<f32>,
    /// Eight keys as columns ([`cpu::scores`]).
    columns: Vec<f32>,
}

/// `out[r, c] (+)= input[r] · weight[c]` for every input row, the columns
/// shared out over the team. Every member calls it.
///
/// # Safety
/// `out` holds `input.rows` rows of `stride >= weight.columns()`; in this
/// phase nothing else touches them and nothing writes `input`.
#[allow(clippy::too_many_arguments)]
unsafe fn project(
    m: &Member<'_>,
    kernel: Kernel,
    weight: &Weight<'_>,
    input: &Input<'_>,
    out: &Shared<'_, f32>,
    stride: usize,
    add: bool,
    local: &mut Local,
) {
    let (rows, cols) = (input.rows, weight.columns());
    assert!(out.len() >= rows * stride && stride >= cols);
    match weight {
        Weight::Blocks(parts) => {
            let product = Product::new(kernel, parts.iter().map(|p| p.as_ref()), rows, |s, r| {
                // SAFETY: the caller's: `input` is not written in this phase.
                unsafe { input.quantized(s, r) }
            });
            let per = product.task_columns(m.threads);
            for t in m.tasks(cols.div_ceil(per)) {
                let range = t * per..((t + 1) * per).min(cols);
                // SAFETY: the caller's; task `t` alone writes these columns.
                unsafe { product.compute(range, out.ptr(), stride, add, &mut local.scratch) };
            }
        }
        Weight::Dense(w, _) => {
            let inner = input.width;
            // SAFETY: the caller's.
            let x = unsafe { input.x.get(0..rows * inner) };
            const PER: usize = 48;
            for t in m.tasks(cols.div_ceil(PER)) {
                let (o0, o1) = (t * PER, ((t + 1) * PER).min(cols));
                let n = o1 - o0;
                local.dense.resize(rows * n, 0.0);
                cpu::outputs(x, rows, inner, w.rows(o0..o1, inner), n, &mut local.dense);
                for r in 0..rows {
                    // SAFETY: the caller's; task `t` alone writes these columns.
                    let o = unsafe { out.get_mut(r * stride + o0..r * stride + o1) };
                    let y = &local.dense[r * n..(r + 1) * n];
                    if add {
                        o.iter_mut().zip(y).for_each(|(o, y)| *o += y);
                    } else {
                        o.copy_from_slice(y);
                    }
                }
            }
        }
    }
}

/// RMSNorm of `rows` rows of `x` (every `step`-th row, ending on the last:
/// 1 for every token, the sequence length for each sequence's last token) into
/// the rows of `out`, quantized for `next`; each member its share of the rows.
///
/// # Safety
/// No thread writes `x` or touches `out` otherwise in this phase.
#[allow(clippy::too_many_arguments)]
unsafe fn norm_rows(
    m: &Member<'_>,
    x: &Shared<'_, f32>,
    rows: usize,
    step: usize,
    weight: &[f32],
    eps: f64,
    out: &Input<'_>,
    next: &Weight<'_>,
) {
    let w = out.width;
    for i in m.share(rows) {
        let r = i * step + step - 1;
        // SAFETY: the caller's: row `i` of `out` is this member's.
        unsafe {
            cpu::rms_norm(x.get(r * w..(r + 1) * w), weight, eps, out.row_mut(i));
            out.quantize_row(i, next.schemes());
        }
    }
}

/// The softmax's numerators from the first slot attended on (the masked
/// slots before it, a left-padded prompt's padding, become 0), and their sum.
/// Starting there, a sequence's exponentials and sum are computed in the same
/// lanes and order whether or not it was padded to share a prompt pass, so
/// batching never changes an answer.
fn softmax_from_first_slot(scores: &mut [f32], max: f32) -> f32 {
    let from = scores
        .iter()
        .position(|s| s.is_finite())
        .unwrap_or(scores.len());
    scores[..from].fill(0.0);
    cpu::softmax_exp(&mut scores[from..], max)
}

/// What makes a token's projected queries, keys and values attention's
/// inputs: biases, Q/K norms, the rotary embedding; keys and values into
/// the cache.
struct Prepare<'a> {
    pass: &'a PassShape,
    layer: &'a LayerHost,
    model: &'a ModelHost,
    input: &'a StepInput<'a>,
    starts: &'a [usize],
    capacity: usize,
    eps: f64,
    qkv: &'a Shared<'a, f32>,
    keys: &'a KvShared<'a>,
    values: &'a KvShared<'a>,
}

impl Prepare<'_> {
    /// Token `i`'s heads of the KV groups `groups` (a group: a KV head and
    /// the query heads that share it).
    ///
    /// # Safety
    /// Nothing else touches these heads of row `i` in this phase, nor their
    /// slots in the cache.
    unsafe fn heads(&self, i: usize, groups: std::ops::Range<usize>) {
        let PassShape {
            heads,
            kv_heads: kvh,
            head_dim: hd,
            seq_len: s,
            ..
        } = *self.pass;
        let group = heads / kvh;
        let row = i * (heads + 2 * kvh) * hd;
        // Where the groups' query, key and value heads lie in the row.
        let q = groups.start * group * hd..groups.end * group * hd;
        let k = (heads + groups.start) * hd..(heads + groups.end) * hd;
        let v = (heads + kvh + groups.start) * hd..(heads + kvh + groups.end) * hd;
        // SAFETY: the caller's; the three ranges are disjoint.
        let [(q, qs), (k, ks), (v, vs)] =
            [q, k, v].map(|r| (unsafe { self.qkv.get_mut(row + r.start..row + r.end) }, r));
        if let Some(bias) = &self.layer.qkv_bias {
            for (x, r) in [(&mut *q, qs), (&mut *k, ks), (&mut *v, vs)] {
                x.iter_mut().zip(&bias[r]).for_each(|(x, b)| *x += b);
            }
        }
        let p = self.input.positions[i];
        let (cos, sin) = (
            &self.model.cos[p * hd..(p + 1) * hd],
            &self.model.sin[p * hd..(p + 1) * hd],
        );
        let norms = self.layer.qk_norm.as_ref();
        for (x, norm) in [
            (&mut *q, norms.map(|n| &n.0)),
            (&mut *k, norms.map(|n| &n.1)),
        ] {
            for x in x.chunks_exact_mut(hd) {
                if let Some(norm) = norm {
                    cpu::rms_norm_in_place(x, norm, self.eps);
                }
                cpu::rope(x, cos, sin);
            }
        }
        let (seq, t) = (i / s, i % s);
        let slot = self.starts[seq] + t;
        for (g, (k, v)) in groups.zip(k.chunks_exact(hd).zip(v.chunks_exact(hd))) {
            let at = ((self.input.rows[seq] * kvh + g) * self.capacity + slot) * hd;
            // SAFETY: the caller's: slot `slot` of this sequence's row is
            // this token's alone (rows are distinct per sequence).
            unsafe {
                self.keys.store(at, k);
                self.values.store(at, v);
            }
        }
    }
}

/// The queries of a pass's tokens `tokens` (up to 16 of a prompt, or a
/// decoding step's one) of sequence `seq` whose heads share KV head
/// `kv_head`.
struct QueryChunk<'a> {
    pass: &'a PassShape,
    seq: usize,
    kv_head: usize,
    tokens: std::ops::Range<usize>,
    /// The sequence's first new slot.
    start: usize,
    /// Where the KV head's slots start in the cache.
    base: usize,
    valid: &'a [bool],
}

/// What every attention task of a pass shares.
#[derive(Clone, Copy)]
struct PassShape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Tokens per sequence in this pass.
    seq_len: usize,
    window: Option<usize>,
}

impl QueryChunk<'_> {
    /// Attention of every query of the chunk: their scores against the slots
    /// any of them sees in one product (each key read once for all of them,
    /// by [`cpu::scores`]), then each query's causal slots through the
    /// softmax and its weighted values into `out`.
    ///
    /// # Safety
    /// Nothing writes this chunk's heads of its rows of `qkv` or its KV
    /// head's slots of the cache in this phase (it reads nothing else of
    /// them), and nothing else touches its heads of its rows of `out`.
    unsafe fn attend(
        &self,
        qkv: &Shared<'_, f32>,
        keys: &KvShared<'_>,
        values: &KvShared<'_>,
        out: &Shared<'_, f32>,
        local: &mut Local,
    ) {
        let PassShape {
            heads,
            kv_heads: kvh,
            head_dim: hd,
            seq_len: s,
            window,
        } = *self.pass;
        let group = heads / kvh;
        let width = (heads + 2 * kvh) * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let count = self.tokens.len();
        let rows = group * count;
        // Row `m * count + k`: head `kv_head * group + m`, token `tokens.start + k`.
        local.queries.clear();
        for m in 0..group {
            let head = self.kv_head * group + m;
            for t in self.tokens.clone() {
                let i = self.seq * s + t;
                // SAFETY: the caller's.
                local.queries.extend_from_slice(unsafe {
                    qkv.get(i * width + head * hd..i * width + (head + 1) * hd)
                });
            }
        }
        // The slots from the first token's first to the last token's own.
        let last = self.start + self.tokens.end;
        let lo = window.map_or(0, |w| {
            (self.start + self.tokens.start + 1).saturating_sub(w)
        });
        let n = last - lo;
        let range = self.base + lo * hd..self.base + last * hd;
        // SAFETY: the caller's.
        let (k, v) = unsafe {
            match (keys, values) {
                (KvShared::F32(k), KvShared::F32(v)) => (
                    Weights::F32(k.get(range.clone())),
                    cpu::Slots::F32(v.get(range)),
                ),
                (KvShared::F16(k), KvShared::F16(v)) => (
                    Weights::F16(k.get(range.clone())),
                    cpu::Slots::F16(v.get(range)),
                ),
                _ => unreachable!("keys and values share a precision"),
            }
        };
        local.scores.resize(rows * n, 0.0);
        cpu::scores(
            &local.queries,
            rows,
            hd,
            k,
            n,
            &mut local.scores,
            &mut local.columns,
        );
        local.totals.clear();
        for (r, scores) in local.scores.chunks_exact_mut(n).enumerate() {
            let t = self.tokens.start + r % count;
            let limit = self.start + t + 1;
            let first = window.map_or(0, |w| limit.saturating_sub(w));
            // Slots `lo + a..lo + b` are the token's to see (those of them
            // that hold real tokens); the others are masked.
            let (a, b) = (first.max(lo) - lo, limit - lo);
            scores[..a].fill(f32::NEG_INFINITY);
            scores[b..].fill(f32::NEG_INFINITY);
            let seen = &mut scores[a..b];
            for (score, &valid) in seen.iter_mut().zip(&self.valid[lo + a..lo + b]) {
                *score = if valid {
                    *score * scale
                } else {
                    f32::NEG_INFINITY
                };
            }
            let max = cpu::max(seen);
            local.totals.push(if max == f32::NEG_INFINITY {
                // Nothing to attend (a padding position): zeros.
                scores.fill(0.0);
                1.0
            } else {
                softmax_from_first_slot(scores, max)
            });
        }
        // The weighted values of every row at once, each slot's read once
        // for four rows.
        local.dense.clear();
        local.dense.resize(rows * hd, 0.0);
        cpu::weighted_rows(&mut local.scores, &local.totals, v, &mut local.dense);
        for (r, row) in local.dense.chunks_exact(hd).enumerate() {
            let (m, t) = (r / count, self.tokens.start + r % count);
            let i = self.seq * s + t;
            let head = self.kv_head * group + m;
            // SAFETY: the caller's: this head of row `i` is this task's.
            unsafe {
                out.get_mut(i * heads * hd + head * hd..i * heads * hd + (head + 1) * hd)
                    .copy_from_slice(row)
            };
        }
    }
}

impl Llama {
    /// Whether [`Llama::forward_host`] can run this model: on the CPU, with
    /// every projection in blocks or in the host kernel's layout.
    pub(super) fn host_ready(&self) -> bool {
        self.cpu_kernel
            && self.layers.iter().all(|l| {
                l.qkv.host().is_some()
                    && l.o.host().is_some()
                    && l.gate_up.host().is_some()
                    && l.down.host().is_some()
            })
            && self.head.host().is_some()
            && match &self.embed {
                Embedding::Blocks(_) => true,
                Embedding::Dense(_, host) => host.is_some(),
            }
    }

    /// The embeddings of `tokens` into `out`, `[tokens, hidden]`.
    fn embed_host(&self, tokens: &[u32], out: &mut [f32]) -> Result<()> {
        let hidden = self.config.hidden_size;
        let vocab = self.config.vocab_size;
        for (row, &id) in out.chunks_exact_mut(hidden).zip(tokens) {
            let id = id as usize;
            if id >= vocab {
                return Err(Error::Llm {
                    model: self.config.architecture.clone(),
                    reason: format!("token id {id} is outside the vocabulary of {vocab}"),
                });
            }
            match &self.embed {
                Embedding::Blocks(table) => table.dequantize_row(id, row),
                Embedding::Dense(_, host) => {
                    let w = cpu::host_weights(host.as_ref().expect("checked by host_ready"))
                        .expect("checked by host_ready");
                    w.rows(id..id + 1, hidden).widen_into(row);
                }
            }
        }
        Ok(())
    }

    /// [`Llama::forward`] on the host (see the module's documentation);
    /// `starts` are the sequences' first new slots in their cache rows.
    pub(super) fn forward_host(
        &self,
        input: &StepInput<'_>,
        starts: &[usize],
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (b, s) = (input.batch, input.seq);
        let n = b * s;
        let (heads, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let (hidden, f, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let qkv_width = (heads + 2 * kvh) * hd;
        let eps = c.rms_norm_eps;
        let window = c.sliding_window;
        let capacity = cache.capacity;
        let KvStore::Host { keys, values } = &mut cache.store else {
            unreachable!("a host pass gets a host cache")
        };

        let mut x = vec![0f32; n * hidden];
        self.embed_host(input.tokens, &mut x)?;
        let mut qkv = vec![0f32; n * qkv_width];
        let mut gu = vec![0f32; n * 2 * f];
        let mut logits = vec![0f32; b * vocab];
        let weights: Vec<[Weight<'_>; 4]> = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.o, &l.gate_up, &l.down]
                    .map(|lin| lin.host().expect("checked by host_ready"))
            })
            .collect();
        let head = self.head.host().expect("checked by host_ready");
        let (mut h, mut att, mut mlp, mut last) = (
            InputBuffers::new(
                n,
                hidden,
                weights.iter().flat_map(|[qkv, _, gu, _]| [qkv, gu]),
            ),
            InputBuffers::new(n, heads * hd, weights.iter().map(|[_, o, _, _]| o)),
            InputBuffers::new(n, f, weights.iter().map(|[_, _, _, down]| down)),
            InputBuffers::new(b, hidden, [&head]),
        );
        let (x, qkv, gu, out) = (
            Shared::new(&mut x),
            Shared::new(&mut qkv),
            Shared::new(&mut gu),
            Shared::new(&mut logits),
        );
        let (h, att, mlp, last) = (h.share(), att.share(), mlp.share(), last.share());
        let keys: Vec<KvShared<'_>> = keys.iter_mut().map(KvBuffer::share).collect();
        let values: Vec<KvShared<'_>> = values.iter_mut().map(KvBuffer::share).collect();
        let kernel = Kernel::detect();
        let chunks = s.div_ceil(ATTENTION_TOKENS);
        let pass = PassShape {
            heads,
            kv_heads: kvh,
            head_dim: hd,
            seq_len: s,
            window,
        };

        team::run(rayon::current_num_threads(), |m| {
            let mut local = Local::default();
            let mut clock = Clock::start();
            for (l, (layer, [w_qkv, w_o, w_gate_up, w_down])) in
                self.layers.iter().zip(&weights).enumerate()
            {
                // Attention norm, each thread its rows of tokens.
                // SAFETY: nothing else touches `x` or `h` in this phase.
                unsafe { norm_rows(m, &x, n, 1, &layer.host.attn_norm, eps, &h, w_qkv) };
                clock.sync(m, Phase::AttentionNorm);
                // SAFETY: `qkv` is this phase's output, `h` its input.
                unsafe { project(m, kernel, w_qkv, &h, &qkv, qkv_width, false, &mut local) };
                clock.sync(m, Phase::Qkv);
                let prepare = Prepare {
                    pass: &pass,
                    layer: &layer.host,
                    model: &self.host,
                    input,
                    starts,
                    capacity,
                    eps,
                    qkv: &qkv,
                    keys: &keys[l],
                    values: &values[l],
                };
                // One chunk per sequence (a decoding step, a short prompt):
                // each attention task prepares its own heads first, sharing
                // that work out and saving a phase.
                let fused = chunks == 1;
                if !fused {
                    for i in m.share(n) {
                        // SAFETY: row `i` is this thread's in this phase.
                        unsafe { prepare.heads(i, 0..kvh) };
                    }
                    clock.sync(m, Phase::Prepare);
                }
                // Tasks of (sequence, KV head, up to 16 tokens), every query
                // head of the group at once: each key and value is read once
                // for the group's heads (a decoding step's too).
                for task in m.tasks(b * kvh * chunks) {
                    let (seq, g, chunk) =
                        (task / (kvh * chunks), (task / chunks) % kvh, task % chunks);
                    let tokens = chunk * ATTENTION_TOKENS..((chunk + 1) * ATTENTION_TOKENS).min(s);
                    if fused {
                        for t in tokens.clone() {
                            // SAFETY: this task alone touches KV head `g`'s
                            // heads of its sequence's rows in this phase.
                            unsafe { prepare.heads(seq * s + t, g..g + 1) };
                        }
                    }
                    let chunk = QueryChunk {
                        pass: &pass,
                        seq,
                        kv_head: g,
                        tokens,
                        start: starts[seq],
                        base: (input.rows[seq] * kvh + g) * capacity * hd,
                        valid: &input.valid[seq],
                    };
                    // SAFETY: this task alone touches its heads of its rows
                    // of `qkv` and `att` and its KV head's slots in this
                    // phase (other tasks' heads and slots are elsewhere).
                    unsafe { chunk.attend(&qkv, &keys[l], &values[l], &att.x, &mut local) };
                }
                clock.sync(m, Phase::Attention);
                for r in m.share(n) {
                    // SAFETY: row `r` is this thread's in this phase.
                    unsafe { att.quantize_row(r, w_o.schemes()) };
                }
                clock.sync(m, Phase::AttentionQuantize);
                // SAFETY: `x` is this phase's output (added to), `att` its input.
                unsafe { project(m, kernel, w_o, &att, &x, hidden, true, &mut local) };
                clock.sync(m, Phase::Output);
                // SAFETY: as for the attention norm.
                unsafe { norm_rows(m, &x, n, 1, &layer.host.mlp_norm, eps, &h, w_gate_up) };
                clock.sync(m, Phase::MlpNorm);
                // SAFETY: `gu` is this phase's output, `h` its input.
                unsafe { project(m, kernel, w_gate_up, &h, &gu, 2 * f, false, &mut local) };
                clock.sync(m, Phase::GateUp);
                for r in m.share(n) {
                    // SAFETY: row `r` is this thread's in this phase.
                    unsafe {
                        let g = gu.get(r * 2 * f..(r + 1) * 2 * f);
                        let (gate, up) = g.split_at(f);
                        cpu::silu_mul(gate, up, mlp.row_mut(r));
                        mlp.quantize_row(r, w_down.schemes());
                    }
                }
                clock.sync(m, Phase::SiluQuantize);
                // SAFETY: `x` is this phase's output (added to), `mlp` its input.
                unsafe { project(m, kernel, w_down, &mlp, &x, hidden, true, &mut local) };
                clock.sync(m, Phase::Down);
            }
            // Each sequence's last token through the final norm and the head.
            // SAFETY: as for the attention norm.
            unsafe { norm_rows(m, &x, b, s, &self.host.norm, eps, &last, &head) };
            clock.sync(m, Phase::FinalNorm);
            // SAFETY: `out` is this phase's output, `last` its input.
            unsafe { project(m, kernel, &head, &last, &out, vocab, false, &mut local) };
            clock.end(Phase::Head);
        });
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Bool, Tensor, TensorData};

    use super::*;

    /// [`QueryChunk::attend`] against burn's attention with the mask the burn
    /// pass builds: a chunk after earlier tokens, a left-padded sequence, the whole
    /// context and a sliding window, keys and values in f32 and in f16.
    #[test]
    fn attention_matches_the_masked_product() {
        let device = crate::llm::DeviceKind::Cpu.device().unwrap();
        let (b, kvh, group, s, start, capacity, hd) = (2, 2, 3, 5, 3, 11, 32);
        let value = |i: usize, m: usize| ((i * m % 97) as f32 - 48.0) / 50.0;
        let q: Vec<f32> = (0..b * kvh * group * s * hd).map(|i| value(i, 7)).collect();
        let k: Vec<f32> = (0..b * kvh * capacity * hd).map(|i| value(i, 13)).collect();
        let v: Vec<f32> = (0..b * kvh * capacity * hd).map(|i| value(i, 29)).collect();
        let valid = [
            vec![true; capacity],
            (0..capacity).map(|j| j >= 2).collect::<Vec<_>>(),
        ];
        for window in [None, Some(4)] {
            let mut mask = Vec::new();
            for row in &valid {
                for _ in 0..group {
                    for t in 0..s {
                        let first = window.map_or(0, |w: usize| (start + t + 1).saturating_sub(w));
                        mask.extend((0..capacity).map(|j| j > start + t || j < first || !row[j]));
                    }
                }
            }
            let tensor = |v: &[f32], shape: [usize; 4]| {
                Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape), &device)
            };
            let mask: Tensor<4, Bool> =
                Tensor::from_data(TensorData::new(mask, [b, 1, group * s, capacity]), &device);
            let want = burn::tensor::module::attention(
                tensor(&q, [b, kvh, group * s, hd]),
                tensor(&k, [b, kvh, capacity, hd]),
                tensor(&v, [b, kvh, capacity, hd]),
                Some(mask),
                None,
                burn::tensor::ops::AttentionModuleOptions {
                    scale: Some(1.0 / (hd as f64).sqrt()),
                    ..Default::default()
                },
            )
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
            for (dtype, tolerance) in [
                (super::super::KvDtype::F32, 1e-5),
                (super::super::KvDtype::F16, 2e-3),
            ] {
                let (mut keys, mut values) = (
                    KvBuffer::zeros(k.len(), dtype),
                    KvBuffer::zeros(v.len(), dtype),
                );
                let (ks, vs) = (keys.share(), values.share());
                // SAFETY: one thread.
                unsafe {
                    ks.store(0, &k);
                    vs.store(0, &v);
                }
                // The prompt path: each (sequence, KV head) in chunks of 2
                // tokens, from a Q/K/V buffer laid out as the pass lays it out.
                let heads = kvh * group;
                let width = (heads + 2 * kvh) * hd;
                let mut qkv = vec![0f32; b * s * width];
                // Reference row `row`: (sequence, KV head, head in its group, token).
                let place = |row: usize| {
                    (
                        row / (kvh * group * s),
                        (row / (group * s)) % kvh,
                        (row / s) % group,
                        row % s,
                    )
                };
                let pass = PassShape {
                    heads,
                    kv_heads: kvh,
                    head_dim: hd,
                    seq_len: s,
                    window,
                };
                for (row, q) in q.chunks_exact(hd).enumerate() {
                    let (seq, g, m, t) = place(row);
                    let at = (seq * s + t) * width + (g * group + m) * hd;
                    qkv[at..at + hd].copy_from_slice(q);
                }
                // Chunks of one token (a decoding step's) and of two.
                for size in [1, 2] {
                    let mut att = vec![0f32; b * s * heads * hd];
                    {
                        let (qkv, out) = (Shared::new(&mut qkv), Shared::new(&mut att));
                        let mut local = Local::default();
                        for (seq, valid) in valid.iter().enumerate() {
                            for g in 0..kvh {
                                for t0 in (0..s).step_by(size) {
                                    let chunk = QueryChunk {
                                        pass: &pass,
                                        seq,
                                        kv_head: g,
                                        tokens: t0..(t0 + size).min(s),
                                        start,
                                        base: (seq * kvh + g) * capacity * hd,
                                        valid,
                                    };
                                    // SAFETY: one thread.
                                    unsafe { chunk.attend(&qkv, &ks, &vs, &out, &mut local) };
                                }
                            }
                        }
                    }
                    for (row, want) in want.chunks_exact(hd).enumerate() {
                        let (seq, g, m, t) = place(row);
                        let at = (seq * s + t) * heads * hd + (g * group + m) * hd;
                        for (g, w) in att[at..at + hd].iter().zip(want) {
                            assert!(
                                (g - w).abs() < tolerance,
                                "chunks of {size}, {dtype:?}, window {window:?}, row {row}: {g} != {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
