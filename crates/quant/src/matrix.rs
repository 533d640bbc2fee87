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

/// Unpacked weight rows a thread reuses from one product to the next.
pub struct Scratch(Vec<Unpacked>);

impl Scratch {
    pub fn new() -> Self {
        Scratch(Vec::new())
    }

    /// At least one row of `len` values, as [`weight_rows`] wants.
    fn for_len(&mut self, len: usize) -> &mut Vec<Unpacked> {
        if self.0.first().is_none_or(|u| u.len != len) {
            self.0 = vec![Unpacked::with_len(len)];
        }
        &mut self.0
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// A product `x @ Wᵀ` ready to compute, the inputs quantized for the weights
/// `parts` (stacked along their rows, all as wide as `x`): output columns
/// `Σ parts' rows`. Any range of columns can be computed apart
/// ([`Product::compute`]), so that threads share the columns out.
pub struct Product<'a> {
    kernel: Kernel,
    parts: Vec<&'a QuantMatrix>,
    /// Per part, its input rows in the scheme it wants.
    inputs: Vec<Vec<ActivationRow<'a>>>,
    rows: usize,
}

impl<'a> Product<'a> {
    /// `rows` input rows; `input(scheme, r)` is row `r` quantized in `scheme`,
    /// asked for each scheme the parts want ([`Scheme::for_weights`]).
    pub fn new(
        kernel: Kernel,
        parts: impl IntoIterator<Item = &'a QuantMatrix>,
        rows: usize,
        input: impl Fn(Scheme, usize) -> ActivationRow<'a>,
    ) -> Self {
        assert!(
            Kernel::supported().contains(&kernel),
            "{} is not supported on this CPU",
            kernel.name()
        );
        let parts: Vec<&QuantMatrix> = parts.into_iter().collect();
        let inputs = parts
            .iter()
            .map(|p| {
                let scheme = Scheme::for_weights(p.kind);
                (0..rows)
                    .map(|r| {
                        let row = input(scheme, r);
                        assert_eq!(row.len(), p.cols, "weight columns and input width");
                        row
                    })
                    .collect()
            })
            .collect();
        Product {
            kernel,
            parts,
            inputs,
            rows,
        }
    }

    /// Output columns: the parts' rows together.
    pub fn columns(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// Columns `cols` of every output row: input `i` times weight row `j` at
    /// `out[i * stride + j]`, written, or added to what is there with `add`.
    ///
    /// # Safety
    /// `out` must hold `rows` rows of `stride >= self.columns()` values, and
    /// no other thread may touch columns `cols` of them meanwhile.
    pub unsafe fn compute(
        &self,
        cols: std::ops::Range<usize>,
        out: *mut f32,
        stride: usize,
        add: bool,
        scratch: &mut Scratch,
    ) {
        assert!(cols.end <= self.columns() && stride >= self.columns());
        let mut first = 0;
        for (part, p) in self.parts.iter().enumerate() {
            let (r0, r1) = (
                cols.start.max(first) - first,
                cols.end.min(first + p.rows).saturating_sub(first),
            );
            if r0 < r1 {
                let n = p.row_bytes();
                let block = OutBlock {
                    // SAFETY: column `first + r0` of the first output row.
                    ptr: unsafe { out.add(first + r0) },
                    stride,
                    add,
                };
                // SAFETY: the caller's: these columns are this call's alone.
                unsafe {
                    weight_rows(
                        self.kernel,
                        p.kind,
                        &p.data()[r0 * n..r1 * n],
                        n,
                        &self.inputs[part],
                        scratch.for_len(p.cols),
                        &block,
                        // As many rows after these: the next task of a
                        // thread that works through a contiguous share of
                        // the columns (the CPU pass's teams, rayon's
                        // splits).
                        &p.data()[r1 * n..(2 * r1 - r0).min(p.rows) * n],
                    )
                };
            }
            first += p.rows;
        }
    }

    /// Columns per task that keep unpacked rows in cache and share `threads`
    /// cores out evenly.
    pub fn task_columns(&self, threads: usize) -> usize {
        let per_task = self
            .columns()
            .div_ceil(threads.max(1) * TASKS_PER_THREAD)
            .max(4);
        // Many inputs: tasks of at most 32 weight rows, unpacked together
        // (see `weight_rows`), which keeps them in the second-level cache.
        if self.rows > 8 {
            per_task.min(32)
        } else {
            per_task
        }
    }
}

/// `x` quantized once for every scheme `parts` want.
pub fn quantize_for(x: &[f32], rows: usize, parts: &[&QuantMatrix]) -> Vec<(Scheme, Activations)> {
    let len = x.len() / rows.max(1);
    assert_eq!(x.len(), rows * len, "input shape");
    let mut inputs: Vec<(Scheme, Activations)> = Vec::new();
    for p in parts {
        let scheme = Scheme::for_weights(p.kind);
        if !inputs.iter().any(|(s, _)| *s == scheme) {
            inputs.push((scheme, Activations::quantize(x, rows, len, scheme)));
        }
    }
    inputs
}

/// `x @ Wᵀ` for `x`, `rows` rows of f32, and the weights `parts` stacked
/// along their rows (all as wide as `x`): `[rows, Σ parts' rows]`, row-major.
/// The inputs are quantized once per scheme the parts' types ask for.
pub fn matmul(x: &[f32], rows: usize, parts: &[&QuantMatrix]) -> Vec<f32> {
    matmul_with(Kernel::detect(), x, rows, parts)
}

/// [`matmul`] with a chosen kernel (one of [`Kernel::supported`]), its
/// columns shared out over rayon's threads.
pub fn matmul_with(kernel: Kernel, x: &[f32], rows: usize, parts: &[&QuantMatrix]) -> Vec<f32> {
    let inputs = quantize_for(x, rows, parts);
    let product = Product::new(kernel, parts.iter().copied(), rows, |scheme, r| {
        let (_, act) = inputs
            .iter()
            .find(|(s, _)| *s == scheme)
            .expect("quantized for every part");
        act.row(r)
    });
    let total = product.columns();
    let per_task = product.task_columns(rayon::current_num_threads());
    let mut out = vec![0f32; rows * total];
    let base = SendPtr(out.as_mut_ptr());
    (0..total.div_ceil(per_task))
        .into_par_iter()
        .for_each_init(Scratch::new, |scratch, t| {
            let cols = t * per_task..((t + 1) * per_task).min(total);
            // SAFETY: `out` has `rows` rows of `total`; this task alone
            // writes columns `cols`.
            unsafe { product.compute(cols, base.get(), total, false, scratch) };
        });
    out
}
