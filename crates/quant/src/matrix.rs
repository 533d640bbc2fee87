//! A weight matrix kept in its file's blocks, and the product `x @ Wᵀ`
//! computed on them: each weight row is unpacked once (in cache) per product
//! and multiplied with every input row, on every core.

use std::sync::Arc;

use rayon::prelude::*;

use crate::activations::{ActivationRow, Activations, Scheme};
use crate::formats::{GgmlType, dequantize};
use crate::kernels::{Kernel, OutBlock, weight_rows};
use crate::unpack::Unpacked;

/// Bytes shared with their owner: a memory-mapped model file (the blocks are
/// used where they lie, never copied) or a vector.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// `[rows, cols]` weights (one row per output, `cols` inputs) in ggml blocks.
#[derive(Clone)]
pub struct QuantMatrix {
    kind: GgmlType,
    rows: usize,
    cols: usize,
    source: SharedBytes,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix({} [{}, {}])",
            self.kind.name(),
            self.rows,
            self.cols
        )
    }
}

impl QuantMatrix {
    /// Rows of `cols` values of a quantized `kind`, each a whole number of blocks.
    pub fn new(kind: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, String> {
        let len = data.len();
        QuantMatrix::shared(kind, rows, cols, Arc::new(data), 0, len)
    }

    /// The blocks at `source[start..start + len]`, kept where they are.
    pub fn shared(
        kind: GgmlType,
        rows: usize,
        cols: usize,
        source: SharedBytes,
        start: usize,
        len: usize,
    ) -> Result<Self, String> {
        if start
            .checked_add(len)
            .is_none_or(|end| end > (*source).as_ref().len())
        {
            return Err(format!(
                "bytes {start}..{} are outside the {} bytes given",
                start.saturating_add(len),
                (*source).as_ref().len()
            ));
        }
        if !kind.is_quantized() {
            return Err(format!("{} is not a quantized type", kind.name()));
        }
        if !cols.is_multiple_of(32) {
            return Err(format!("rows of {cols} values are not whole blocks of 32"));
        }
        let row_bytes = kind.bytes_for(cols)?;
        if Some(len) != row_bytes.checked_mul(rows) {
            return Err(format!(
                "{len} bytes for {rows} rows of {cols} {} values, which need {}",
                kind.name(),
                row_bytes.saturating_mul(rows)
            ));
        }
        Ok(QuantMatrix {
            kind,
            rows,
            cols,
            source,
            start,
            len,
        })
    }

    pub fn kind(&self) -> GgmlType {
        self.kind
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the blocks take.
    pub fn bytes(&self) -> usize {
        self.len
    }

    /// The blocks, row after row.
    pub fn data(&self) -> &[u8] {
        &(*self.source).as_ref()[self.start..self.start + self.len]
    }

    fn row_bytes(&self) -> usize {
        self.len / self.rows.max(1)
    }

    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data()[r * n..(r + 1) * n]
    }

    /// Reorder the rows (into a copy of their own): row `i` of the result is
    /// row `from(i)` of `self`.
    pub fn permute_rows(&mut self, from: impl Fn(usize) -> usize) {
        let n = self.row_bytes();
        let mut out = vec![0u8; self.len];
        for (i, row) in out.chunks_exact_mut(n).enumerate() {
            row.copy_from_slice(self.row(from(i)));
        }
        self.source = Arc::new(out);
        self.start = 0;
    }

    /// Row `r` as f32, bit-exact with ggml.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize(self.kind, self.row(r), out).expect("row length checked at construction");
    }
}

/// The output's address, shared by the tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: tasks write disjoint columns (see `matmul_with`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Tasks per thread: enough to even out the work, few enough that a task's
/// fixed cost stays small next to its products.
const TASKS_PER_THREAD: usize = 4;

/// `x @ Wᵀ` for `x`, `rows` rows of f32, and the weights `parts` stacked
/// along their rows (all as wide as `x`): `[rows, Σ parts' rows]`, row-major.
/// The inputs are quantized once per scheme the parts' types ask for.
pub fn matmul(x: &[f32], rows: usize, parts: &[&QuantMatrix]) -> Vec<f32> {
    matmul_with(Kernel::detect(), x, rows, parts)
}

/// [`matmul`] with a chosen kernel (one of [`Kernel::supported`]).
pub fn matmul_with(kernel: Kernel, x: &[f32], rows: usize, parts: &[&QuantMatrix]) -> Vec<f32> {
    assert!(
        Kernel::supported().contains(&kernel),
        "{} is not supported on this CPU",
        kernel.name()
    );
    let len = x.len() / rows.max(1);
    assert_eq!(x.len(), rows * len, "input shape");
    let mut inputs: Vec<(Scheme, Activations)> = Vec::new();
    for p in parts {
        assert_eq!(p.cols, len, "weight columns and input width");
        let scheme = Scheme::for_weights(p.kind);
        if !inputs.iter().any(|(s, _)| *s == scheme) {
            inputs.push((scheme, Activations::quantize(x, rows, len, scheme)));
        }
    }
    let input_rows: Vec<Vec<ActivationRow<'_>>> = parts
        .iter()
        .map(|p| {
            let scheme = Scheme::for_weights(p.kind);
            let (_, act) = inputs
                .iter()
                .find(|(s, _)| *s == scheme)
                .expect("quantized above");
            (0..rows).map(|r| act.row(r)).collect()
        })
        .collect();
    let total: usize = parts.iter().map(|p| p.rows).sum();
    // Many inputs: tasks of at most 32 weight rows, unpacked together (see
    // `weight_rows`), which keeps them in the second-level cache.
    let per_task = total
        .div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD)
        .max(4);
    let per_task = if rows > 8 { per_task.min(32) } else { per_task };
    // Tasks: (part, first row, last row, first output column). Each writes its
    // own columns of every output row, straight into `out`.
    let mut out = vec![0f32; rows * total];
    let mut tasks = Vec::new();
    let mut col = 0;
    for (i, p) in parts.iter().enumerate() {
        for r0 in (0..p.rows).step_by(per_task) {
            let r1 = (r0 + per_task).min(p.rows);
            tasks.push((i, r0, r1, col + r0));
        }
        col += p.rows;
    }
    let base = SendPtr(out.as_mut_ptr());
    tasks.into_par_iter().for_each_init(
        || vec![Unpacked::with_len(len)],
        |scratch, (part, r0, r1, col0)| {
            let p = parts[part];
            let n = p.row_bytes();
            let weights = &p.data()[r0 * n..r1 * n];
            let block = OutBlock {
                // SAFETY: `col0 < total`, inside the first output row.
                ptr: unsafe { base.get().add(col0) },
                stride: total,
            };
            // SAFETY: `out` has `rows` rows of `total`; this task alone writes
            // columns `col0..col0 + r1 - r0` (tasks cover disjoint rows of
            // disjoint parts).
            unsafe {
                weight_rows(
                    kernel,
                    p.kind,
                    weights,
                    n,
                    &input_rows[part],
                    scratch,
                    &block,
                )
            };
        },
    );
    out
}
