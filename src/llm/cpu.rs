//! The CPU kernels of the float-weight projections and of attention, used by
//! the CPU forward pass (`model/host.rs`).
//!
//! A decoding step multiplies one row per sequence by every weight matrix: the
//! time goes to reading the weights, once per step. The backend's general
//! matrix product takes a single-threaded vector path for one row, which reads
//! about 8 GB/s here, and burn has no fast f16 product on the CPU. This kernel
//! streams the weights in their file layout (`[out, in]`, one contiguous row
//! per output, f16 by default: half the bytes) on every core, each weight
//! vector loaded (and widened) once for up to 8 rows of the input, with AVX-512
//! when the CPU has it (checked at run time). It serves every float
//! projection on the CPU, prompts included; quantized weights go through
//! `moulin_quant` instead.

use burn::tensor::DType;
use half::f16;
use rayon::prelude::*;

/// Weights as the kernel reads them: `[out, in]`, f32 or f16.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> Weights<'a> {
    fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::F16(w) => w.len(),
        }
    }

    /// Rows `rows` of `[_, inner]` weights.
    pub fn rows(&self, rows: std::ops::Range<usize>, inner: usize) -> Weights<'a> {
        let range = rows.start * inner..rows.end * inner;
        match self {
            Weights::F32(w) => Weights::F32(&w[range]),
            Weights::F16(w) => Weights::F16(&w[range]),
        }
    }

    /// The values as f32, into `out` (as long).
    pub fn widen_into(&self, out: &mut [f32]) {
        match self {
            Weights::F32(w) => out.copy_from_slice(w),
            Weights::F16(w) => {
                use half::slice::HalfFloatSliceExt;
                w.convert_to_f32_slice(out)
            }
        }
    }
}

/// A flex tensor's values as the kernel reads them: contiguous from its
/// start, f32 or f16; `None` otherwise.
pub fn host_weights(t: &burn_flex::FlexTensor) -> Option<Weights<'_>> {
    if !t.is_contiguous() || t.layout().start_offset() != 0 {
        return None;
    }
    let n = t.layout().shape().num_elements();
    match t.dtype() {
        DType::F32 => Some(Weights::F32(&t.storage::<f32>()[..n])),
        DType::F16 => Some(Weights::F16(&t.storage::<f16>()[..n])),
        _ => None,
    }
}

/// Weight rows per task: enough to stream, small enough to share the work out.
const OUTPUTS_PER_TASK: usize = 48;

/// `x` is `[rows, inner]` f32, `w` is `[cols, inner]` (one row per output, as
/// model files store them), both row-major; returns `x @ wᵀ`, `[rows, cols]`.
pub fn matmul_rows(x: &[f32], rows: usize, inner: usize, w: Weights<'_>, cols: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * inner);
    assert_eq!(w.len(), inner * cols);
    // Each task streams a contiguous block of weight rows.
    let tasks: Vec<(usize, Vec<f32>)> = (0..cols.div_ceil(OUTPUTS_PER_TASK))
        .into_par_iter()
        .map(|t| {
            let o0 = t * OUTPUTS_PER_TASK;
            let o1 = (o0 + OUTPUTS_PER_TASK).min(cols);
            let mut acc = vec![0f32; rows * (o1 - o0)];
            let block = match w {
                Weights::F32(w) => Weights::F32(&w[o0 * inner..o1 * inner]),
                Weights::F16(w) => Weights::F16(&w[o0 * inner..o1 * inner]),
            };
            outputs(x, rows, inner, block, o1 - o0, &mut acc);
            (o0, acc)
        })
        .collect();
    let mut out = vec![0f32; rows * cols];
    for (o0, acc) in tasks {
        let width = acc.len() / rows;
        for r in 0..rows {
            out[r * cols + o0..r * cols + o0 + width]
                .copy_from_slice(&acc[r * width..(r + 1) * width]);
        }
    }
    out
}

/// Whether the CPU has what the AVX-512 kernels need. They need the
/// vector-length extension too: without it the compiler keeps accumulators
/// out of zmm16–31 (their 256- and 128-bit halves, used by the final sums,
/// would need VL) and spills them to the stack.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Whether the CPU has what the AVX2 kernels need (FMA, and F16C for f16
/// values).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// Outputs of a block of `n` weight rows for every row of `x`, into `acc`
/// (`[rows, n]`).
pub fn outputs(x: &[f32], rows: usize, inner: usize, w: Weights<'_>, n: usize, acc: &mut [f32]) {
    // SAFETY: the CPU has the level it reports.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match (Level::now(), w) {
            (Level::Avx512, Weights::F32(w)) => {
                return avx512_f32::outputs(x, rows, inner, w, n, acc);
            }
            (Level::Avx512, Weights::F16(w)) => {
                return avx512_f16::outputs(x, rows, inner, w, n, acc);
            }
            (Level::Avx2, Weights::F32(w)) => return avx2::outputs(x, rows, inner, w, n, acc),
            (Level::Avx2, Weights::F16(w)) => return avx2::outputs(x, rows, inner, w, n, acc),
            (Level::Portable, _) => {}
        }
    }
    // Elsewhere, plain loops (vectorized by the compiler where it can).
    for r in 0..rows {
        let xr = &x[r * inner..(r + 1) * inner];
        for o in 0..n {
            acc[r * n + o] = match w {
                Weights::F32(w) => xr
                    .iter()
                    .zip(&w[o * inner..(o + 1) * inner])
                    .map(|(a, b)| a * b)
                    .sum(),
                Weights::F16(w) => xr
                    .iter()
                    .zip(&w[o * inner..(o + 1) * inner])
                    .map(|(a, b)| a * f32::from(*b))
                    .sum(),
            };
        }
    }
}

// The AVX-512 kernels use explicit intrinsics and keep their accumulators in
// fixed-size arrays that the compiler unrolls into registers, so they stay fast
// at the crate's debug optimisation level
// (opt-level 1; the dev profile turns debug assertions off for this crate,
// see Cargo.toml). Pointer offsets are `wrapping_add`: no overflow check in
// the inner loop (the bounds are asserted once, up front). With 8 rows or
// more, tiles of 8 rows of `x` by 3 weight rows keep 24 accumulators in
// registers (each weight vector loaded serves 8 rows, each input vector 3
// outputs); with fewer rows, tiles of 4 by 4.

/// 16 weights at `$p` as f32: loaded, or loaded and widened.
#[cfg(target_arch = "x86_64")]
macro_rules! load16 {
    (f32, $p:expr) => {
        _mm512_loadu_ps($p)
    };
    (f16, $p:expr) => {
        _mm512_cvtph_ps(_mm256_loadu_si256($p as *const __m256i))
    };
}

/// The two kernels, one per weight type: they differ only in how 16 weights
/// are loaded and how far ahead to prefetch.
macro_rules! avx512_kernel {
    ($(#[$doc:meta])* $name:ident, $w:ty, $kind:ident, prefetch = $prefetch:expr) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use std::arch::x86_64::*;

            type W = $w;
            /// Weights to prefetch ahead of the loads, per weight row.
            const PREFETCH: usize = $prefetch;

            /// # Safety
            /// The CPU must have AVX-512F and VL; `x` is `[rows, inner]`, `w` `[n, inner]`, `acc` `[rows, n]`.
            #[target_feature(enable = "avx512f,avx512vl")]
            pub unsafe fn outputs(
                x: &[f32],
                rows: usize,
                inner: usize,
                w: &[W],
                n: usize,
                acc: &mut [f32],
            ) {
                assert!(x.len() >= rows * inner && w.len() >= n * inner && acc.len() >= rows * n);
                let (xp, wp, op) = (x.as_ptr(), w.as_ptr(), acc.as_mut_ptr());
                // SAFETY: every tile reads rows `r..r + R` of `x`, rows `o..o + O` of `w`
                // (16 values at a time, below `inner`) and writes `acc[r.., o..]`, all
                // inside the bounds asserted above.
                unsafe {
                    let mut o = 0;
                    if rows >= 8 {
                        // Many rows: 8 rows by 3 outputs, each weight vector widened
                        // once for 8 rows.
                        while o + 3 <= n {
                            let mut r = 0;
                            while r + 8 <= rows {
                                tile::<8, 3>(
                                    xp.wrapping_add(r * inner),
                                    wp.wrapping_add(o * inner),
                                    inner,
                                    op.wrapping_add(r * n + o),
                                    n,
                                );
                                r += 8;
                            }
                            while r + 4 <= rows {
                                tile::<4, 3>(
                                    xp.wrapping_add(r * inner),
                                    wp.wrapping_add(o * inner),
                                    inner,
                                    op.wrapping_add(r * n + o),
                                    n,
                                );
                                r += 4;
                            }
                            while r < rows {
                                tile::<1, 3>(
                                    xp.wrapping_add(r * inner),
                                    wp.wrapping_add(o * inner),
                                    inner,
                                    op.wrapping_add(r * n + o),
                                    n,
                                );
                                r += 1;
                            }
                            o += 3;
                        }
                    } else {
                        while o + 4 <= n {
                            let mut r = 0;
                            while r + 4 <= rows {
                                tile::<4, 4>(
                                    xp.wrapping_add(r * inner),
                                    wp.wrapping_add(o * inner),
                                    inner,
                                    op.wrapping_add(r * n + o),
                                    n,
                                );
                                r += 4;
                            }
                            // The last rows together (attention's queries of a
                            // group of 3 heads, say), each weight vector widened
                            // once for them: a row's sums are the same whichever
                            // tile it is in.
                            let (x, w, out) = (
                                xp.wrapping_add(r * inner),
                                wp.wrapping_add(o * inner),
                                op.wrapping_add(r * n + o),
                            );
                            match rows - r {
                                3 => tile::<3, 4>(x, w, inner, out, n),
                                2 => tile::<2, 4>(x, w, inner, out, n),
                                1 => tile::<1, 4>(x, w, inner, out, n),
                                _ => {}
                            }
                            o += 4;
                        }
                    }
                    while o < n {
                        for r in 0..rows {
                            tile::<1, 1>(
                                xp.wrapping_add(r * inner),
                                wp.wrapping_add(o * inner),
                                inner,
                                op.wrapping_add(r * n + o),
                                n,
                            );
                        }
                        o += 1;
                    }
                }
            }

            /// The sum of an accumulator, plus the products past the last whole vector.
            #[target_feature(enable = "avx512f,avx512vl")]
            #[inline]
            #[allow(clippy::useless_conversion)] // f32::from widens f16, and is the identity for f32
            unsafe fn finish(s: __m512, x: *const f32, w: *const W, full: usize, inner: usize) -> f32 {
                let mut sum = _mm512_reduce_add_ps(s);
                for k in full..inner {
                    // SAFETY: `k < inner`, inside the rows the caller gives.
                    sum += unsafe { *x.wrapping_add(k) * f32::from(*w.wrapping_add(k)) };
                }
                sum
            }

            /// `R` rows of `x` against `O` weight rows: `R × O` accumulators, kept in
            /// registers (the loops over `R` and `O` have constant bounds and unroll;
            /// the row pointers are computed once, outside the inner loop).
            #[target_feature(enable = "avx512f,avx512vl")]
            unsafe fn tile<const R: usize, const O: usize>(
                x: *const f32,
                w: *const W,
                inner: usize,
                out: *mut f32,
                out_stride: usize,
            ) {
                let wp: [*const W; O] = std::array::from_fn(|o| w.wrapping_add(o * inner));
                let xp: [*const f32; R] = std::array::from_fn(|r| x.wrapping_add(r * inner));
                let mut s = [[_mm512_setzero_ps(); O]; R];
                let full = inner / 16 * 16;
                let mut k = 0;
                while k < full {
                    let mut wv = [_mm512_setzero_ps(); O];
                    for o in 0..O {
                        // SAFETY: `k + 16 <= inner`: inside weight row `o`.
                        wv[o] = unsafe { load16!($kind, wp[o].wrapping_add(k)) };
                        _mm_prefetch::<_MM_HINT_T0>(
                            wp[o].wrapping_add(k).wrapping_add(PREFETCH) as *const i8,
                        );
                    }
                    for r in 0..R {
                        // SAFETY: as above, inside row `r` of `x`.
                        let xv = unsafe { _mm512_loadu_ps(xp[r].wrapping_add(k)) };
                        for o in 0..O {
                            s[r][o] = _mm512_fmadd_ps(xv, wv[o], s[r][o]);
                        }
                    }
                    k = k.wrapping_add(16);
                }
                for r in 0..R {
                    for o in 0..O {
                        // SAFETY: the caller's tile of `out` is `R` rows of `out_stride`.
                        unsafe {
                            *out.wrapping_add(r * out_stride + o) =
                                finish(s[r][o], xp[r], wp[o], full, inner);
                        }
                    }
                }
            }
        }
    };
}

avx512_kernel!(
    /// f32 weights.
    avx512_f32, f32, f32, prefetch = 256
);

avx512_kernel!(
    /// f16 weights, widened to f32 as they are loaded (half the bytes to read).
    avx512_f16, half::f16, f16, prefetch = 512
);

/// Keys or values of one cache row, `[slots, head_dim]`, as stored.
#[derive(Clone, Copy)]
pub enum Slots<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// Cephes' `expf` for the vector softmaxes: ln 2 in two parts (the reduced
/// argument `x - n ln 2` without rounding error), and the degree-5 polynomial
/// on `[-ln 2 / 2, ln 2 / 2]`, highest power first.
#[cfg(target_arch = "x86_64")]
const LN2_HI: f32 = 0.693_359_4;
#[cfg(target_arch = "x86_64")]
const LN2_LO: f32 = -2.121_944_4e-4;
#[cfg(target_arch = "x86_64")]
const EXP_POLY: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `scores[j] = exp(scores[j] - max)`, and their sum: a softmax's numerators
/// (a score of -∞, a masked slot, becomes 0).
pub fn softmax_exp(scores: &mut [f32], max: f32) -> f32 {
    // SAFETY: the CPU has the level it reports.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match Level::now() {
            Level::Avx512 => return avx512_att::softmax_exp(scores, max),
            Level::Avx2 => return avx2::softmax_exp(scores, max),
            Level::Portable => {}
        }
    }
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    total
}

/// `out = x / rms(x) × weight`, RMSNorm of one row. The squares are summed
/// in f64 (each exact there), in eight lanes (value `i` in lane `i % 8`)
/// added up in a fixed order at the end, whatever the vector width: the
/// AVX-512, AVX2 and portable versions give the same bits, and a row's
/// result never depends on what else is in the batch.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f64, out: &mut [f32]) {
    assert!(weight.len() == x.len() && out.len() == x.len());
    // SAFETY: `x` and `out` hold `x.len()` values (asserted).
    unsafe { rms_norm_raw(Level::now(), x.as_ptr(), out.as_mut_ptr(), weight, eps) }
}

/// [`rms_norm`] of a row in place.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f64) {
    assert_eq!(weight.len(), x.len());
    let p = x.as_mut_ptr();
    // SAFETY: `x` holds `x.len()` values; each is read before it is written.
    unsafe { rms_norm_raw(Level::now(), p, p, weight, eps) }
}

/// Which vector code a kernel of this module runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Avx512,
    Avx2,
    Portable,
}

impl Level {
    /// The best level the CPU has ([`has_avx512`], [`has_avx2`]) that
    /// `MOULIN_QUANT_KERNEL` does not rule out (`avx2` or `portable`): one
    /// variable makes the whole pass run as on a CPU without AVX-512, to
    /// compare or to measure how such a machine fares
    /// ([`moulin_quant::Kernel::asked`]).
    fn now() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            use moulin_quant::Kernel;
            let asked = Kernel::asked();
            if has_avx512() && asked.is_none() {
                return Level::Avx512;
            } else if has_avx2() && asked != Some(Kernel::Portable) {
                return Level::Avx2;
            }
        }
        Level::Portable
    }

    /// How many of `n` values (or pairs) this level's vector code takes:
    /// whole groups of 8, none without vectors; the rest are done one by one.
    fn vector_len(self, n: usize) -> usize {
        if self == Level::Portable {
            0
        } else {
            n / 8 * 8
        }
    }
}

/// [`rms_norm`] from `src` into `dst` (which may be `src`) at `level`.
///
/// # Safety
/// `src` and `dst` hold as many values as `weight`; the CPU has `level`'s
/// instructions.
unsafe fn rms_norm_raw(level: Level, src: *const f32, dst: *mut f32, weight: &[f32], eps: f64) {
    let n = weight.len();
    let full = level.vector_len(n);
    let mut lanes = [0f64; 8];
    // SAFETY: the caller's.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match level {
            Level::Avx512 => avx512_att::square_lanes(src, full, &mut lanes),
            Level::Avx2 => avx2::square_lanes(src, full, &mut lanes),
            Level::Portable => {}
        }
    }
    for i in full..n {
        // SAFETY: the caller's.
        let v = f64::from(unsafe { *src.add(i) });
        lanes[i % 8] += v * v;
    }
    let sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
    let scale = 1.0 / ((sum / n as f64) as f32 + eps as f32).sqrt();
    // SAFETY: the caller's.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match level {
            Level::Avx512 => avx512_att::scale_by(src, dst, full, scale, weight),
            Level::Avx2 => avx2::scale_by(src, dst, full, scale, weight),
            Level::Portable => {}
        }
    }
    for (i, &w) in weight.iter().enumerate().skip(full) {
        // SAFETY: the caller's.
        unsafe { *dst.add(i) = *src.add(i) * scale * w };
    }
}

/// "Rotate half" rotary embedding of one head, in place: `x[i]` and
/// `x[i + half]` turned by the angle whose cosines and sines are `cos[i]`
/// (`cos[i + half]`) and `sin[i]` (`sin[i + half]`), with the same bits at
/// every level (a product, a product, then their sum; nothing fused).
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    // SAFETY: the CPU has the level it reports.
    unsafe { rope_at(Level::now(), x, cos, sin) }
}

/// [`rope`] at `level`.
///
/// # Safety
/// The CPU has `level`'s instructions.
unsafe fn rope_at(level: Level, x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    assert!(x.len() == 2 * half && cos.len() == x.len() && sin.len() == x.len());
    let full = level.vector_len(half);
    // SAFETY: the caller's; lengths asserted.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match level {
            Level::Avx512 => avx512_att::rope(x.as_mut_ptr(), half, full, cos, sin),
            Level::Avx2 => avx2::rope(x.as_mut_ptr(), half, full, cos, sin),
            Level::Portable => {}
        }
    }
    for i in full..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/// The largest of `values` (-∞ for none); NaNs are passed over, as
/// `f32::max` passes them over.
pub fn max(values: &[f32]) -> f32 {
    // SAFETY: the CPU has the level it reports.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match Level::now() {
            Level::Avx512 => return avx512_att::max(values),
            Level::Avx2 => return avx2::max(values),
            Level::Portable => {}
        }
    }
    values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// `out[i] = silu(gate[i]) × up[i]`, SwiGLU's product, with `silu(g) =
/// g / (1 + e^-g)` computed as `(g ≥ 0 ? g : g e) / (1 + e)`, `e = e^-|g|`
/// (no overflow for any `g`). The vector versions use the softmax's `exp`
/// (16 or 8 at a time, the same bits): libm's scalar `expf` was a
/// sixtieth of a decoding step, and at batch 1 ran on one thread while
/// the other waited.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && out.len() == gate.len());
    // SAFETY: the CPU has the level it reports; lengths asserted.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match Level::now() {
            Level::Avx512 => return avx512_att::silu_mul(gate, up, out),
            Level::Avx2 => return avx2::silu_mul(gate, up, out),
            Level::Portable => {}
        }
    }
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let e = (-g.abs()).exp();
        let top = if g < 0.0 { g * e } else { g };
        *o = top / (1.0 + e) * u;
    }
}

/// Attention scores: row `r` of `out` (`[rows, n]`) gets query row `r` of
/// `x` (`[rows, head_dim]`) dotted with each of the `n` keys (`[n,
/// head_dim]`), with [`outputs`]' very bits. With many rows (a prompt's
/// chunk of queries) on AVX2, eight keys at a time are turned into columns
/// once (`columns`, reused between calls) and each row's products run down
/// them, eight keys to a vector, so that no dot product ends in a horizontal
/// sum; the sums are [`outputs`]' (its lanes' partial sums, then their tree),
/// only across vectors instead of within one.
pub fn scores(
    x: &[f32],
    rows: usize,
    head_dim: usize,
    keys: Weights<'_>,
    n: usize,
    out: &mut [f32],
    columns: &mut Vec<f32>,
) {
    // Fewer rows would not repay turning the keys (a decoding step's few
    // query heads).
    #[cfg(target_arch = "x86_64")]
    if rows >= COLUMN_ROWS && head_dim.is_multiple_of(16) && Level::now() == Level::Avx2 {
        columns.resize(8 * head_dim, 0.0);
        // SAFETY: the CPU has AVX2, FMA and F16C; lengths checked inside.
        unsafe {
            match keys {
                Weights::F32(k) => avx2::scores(x, rows, head_dim, k, n, out, columns),
                Weights::F16(k) => avx2::scores(x, rows, head_dim, k, n, out, columns),
            }
        }
        return;
    }
    let _ = columns;
    outputs(x, rows, head_dim, keys, n, out)
}

/// Rows from which [`scores`] turns the keys into columns.
const COLUMN_ROWS: usize = 8;

/// Attention's weighted values: row `r` of `out` (`[rows, head_dim]`, zeros
/// in) gets `Σ_j (p[r, j] / total[r]) × slot j` over the slots with a weight
/// above 0, in slot order (`p` is `[rows, slots]`, divided by the totals in
/// place). Each slot's values are read once for every four rows (the queries
/// of a chunk see the same slots); a row's result does not depend on which
/// rows share its call.
pub fn weighted_rows(p: &mut [f32], totals: &[f32], slots: Slots<'_>, out: &mut [f32]) {
    let rows = totals.len();
    let (n, hd) = (p.len() / rows.max(1), out.len() / rows.max(1));
    assert!(p.len() == rows * n && out.len() == rows * hd);
    // SAFETY: the CPU has the level it reports; lengths checked inside.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match (Level::now(), slots) {
            (Level::Avx512, Slots::F32(v)) if hd.is_multiple_of(16) => {
                return avx512_att::weighted_rows(p, totals, v, out);
            }
            (Level::Avx512, Slots::F16(v)) if hd.is_multiple_of(16) => {
                return avx512_att::weighted_rows(p, totals, v, out);
            }
            (Level::Avx2, Slots::F32(v)) if hd.is_multiple_of(8) => {
                return avx2::weighted_rows(p, totals, v, out);
            }
            (Level::Avx2, Slots::F16(v)) if hd.is_multiple_of(8) => {
                return avx2::weighted_rows(p, totals, v, out);
            }
            _ => {}
        }
    }
    for ((p, &total), out) in p.chunks_exact(n).zip(totals).zip(out.chunks_exact_mut(hd)) {
        for (j, &p) in p.iter().enumerate() {
            if p > 0.0 {
                let (a, at) = (p / total, j * hd..(j + 1) * hd);
                match slots {
                    Slots::F32(v) => out.iter_mut().zip(&v[at]).for_each(|(o, v)| *o += a * v),
                    Slots::F16(v) => out
                        .iter_mut()
                        .zip(&v[at])
                        .for_each(|(o, v)| *o += a * v.to_f32()),
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512_att {
    use std::arch::x86_64::*;

    /// [`super::weighted_rows`]: the divisions 16 at a time, then up to four
    /// rows against each slot's values, loaded once.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn weighted_rows<T: Lanes>(
        p: &mut [f32],
        totals: &[f32],
        slots: &[T],
        out: &mut [f32],
    ) {
        let rows = totals.len();
        let (n, hd) = (p.len() / rows, out.len() / rows);
        assert!(slots.len() >= n * hd && hd.is_multiple_of(16));
        for (p, &total) in p.chunks_exact_mut(n).zip(totals) {
            let t = _mm512_set1_ps(total);
            let mut chunks = p.chunks_exact_mut(16);
            for c in &mut chunks {
                // SAFETY: 16 values.
                unsafe {
                    _mm512_storeu_ps(
                        c.as_mut_ptr(),
                        _mm512_div_ps(_mm512_loadu_ps(c.as_ptr()), t),
                    )
                };
            }
            for v in chunks.into_remainder() {
                *v /= total;
            }
        }
        let mut r = 0;
        while r < rows {
            let take = (rows - r).min(4);
            let mut at = 0;
            while at < hd {
                let width = (hd - at).min(64) / 16;
                let (p, out) = (&p[r * n..], &mut out[r * hd..]);
                // SAFETY: the caller's: the CPU has the instructions; rows
                // `r..r + take` of `p` and `out` are whole, and outputs
                // `at..at + 16 width` inside them.
                unsafe {
                    macro_rules! by_rows {
                        ($w:literal) => {
                            match take {
                                1 => weighted_block::<T, 1, $w>(p, n, slots, hd, at, out),
                                2 => weighted_block::<T, 2, $w>(p, n, slots, hd, at, out),
                                3 => weighted_block::<T, 3, $w>(p, n, slots, hd, at, out),
                                _ => weighted_block::<T, 4, $w>(p, n, slots, hd, at, out),
                            }
                        };
                    }
                    match width {
                        4 => by_rows!(4),
                        3 => by_rows!(3),
                        2 => by_rows!(2),
                        _ => by_rows!(1),
                    }
                }
                at += 16 * width;
            }
            r += take;
        }
    }

    /// `R` rows of [`weighted_rows`], outputs `at..at + 16W` in registers:
    /// constant sizes, as this crate is built at opt-level 1 (with a width
    /// known only at run time, the accumulators lived on the stack, each
    /// multiply-add a load and a store, and weighted values were 6% of a
    /// batch-16 decoding step). Each row's multiply-adds in slot order, the
    /// same whatever `R`.
    ///
    /// # Safety
    /// `p` holds `R` rows of `n`, `out` `R` rows of `hd`, `slots` `n` of
    /// `hd`; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn weighted_block<T: Lanes, const R: usize, const W: usize>(
        p: &[f32],
        n: usize,
        slots: &[T],
        hd: usize,
        at: usize,
        out: &mut [f32],
    ) {
        assert!(p.len() >= R * n && out.len() >= R * hd && at + 16 * W <= hd);
        assert!(slots.len() >= n * hd);
        let mut acc = [[_mm512_setzero_ps(); W]; R];
        // Counted loops over constants, which opt-level 1 unrolls (not
        // iterators), so that the arrays stay in registers.
        for j in 0..n {
            let v = slots.as_ptr().wrapping_add(j * hd + at);
            let mut vals = [_mm512_setzero_ps(); W];
            #[allow(clippy::needless_range_loop)]
            for i in 0..W {
                // SAFETY: slot `j`'s values `at + 16i..at + 16i + 16` (asserted).
                vals[i] = unsafe { T::load16(v.wrapping_add(16 * i)) };
            }
            #[allow(clippy::needless_range_loop)]
            for r in 0..R {
                let a = p[r * n + j];
                if a > 0.0 {
                    let a = _mm512_set1_ps(a);
                    for i in 0..W {
                        acc[r][i] = _mm512_fmadd_ps(a, vals[i], acc[r][i]);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: row `r`'s outputs `at + 16i..at + 16i + 16` (asserted).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(r * hd + at + 16 * i), *acc) };
            }
        }
    }

    /// [`super::softmax_exp`]: 16 at a time, `exp` as Cephes computes it
    /// (a degree-5 polynomial on `[-ln 2 / 2, ln 2 / 2]`, scaled by `2^n`).
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn softmax_exp(scores: &mut [f32], max: f32) -> f32 {
        let m = _mm512_set1_ps(max);
        let mut total = _mm512_setzero_ps();
        // Every value through the same polynomial, the last few too (masked
        // loads and stores): a value's exponential and the lane it is summed
        // in depend only on its index, not on how long the row is.
        for at in (0..scores.len()).step_by(16) {
            let n = (scores.len() - at).min(16);
            let lanes: __mmask16 = if n == 16 { !0 } else { (1 << n) - 1 };
            let p = scores.as_mut_ptr().wrapping_add(at);
            // SAFETY: the `n` values at `p`, masked.
            let x = _mm512_sub_ps(unsafe { _mm512_maskz_loadu_ps(lanes, p) }, m);
            let e = _mm512_maskz_mov_ps(lanes, exp_le0(x));
            // SAFETY: as above.
            unsafe { _mm512_mask_storeu_ps(p, lanes, e) };
            total = _mm512_add_ps(total, e);
        }
        _mm512_reduce_add_ps(total)
    }

    /// `exp(x)` for `x ≤ 0` (0 below -88, and for -∞), as Cephes computes it
    /// (a degree-5 polynomial on `[-ln 2 / 2, ln 2 / 2]`, scaled by `2^n`).
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    fn exp_le0(x: __m512) -> __m512 {
        let log2e = _mm512_set1_ps(std::f32::consts::LOG2_E);
        let (c1, c2) = (_mm512_set1_ps(super::LN2_HI), _mm512_set1_ps(super::LN2_LO));
        // exp(x) is 0 in f32 below -103 (and for -inf, a masked slot).
        let live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-88.0), _CMP_GE_OQ);
        let n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT);
        let r = _mm512_fnmadd_ps(n, c2, _mm512_fnmadd_ps(n, c1, x));
        let mut y = _mm512_set1_ps(super::EXP_POLY[0]);
        for &c in &super::EXP_POLY[1..] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(
            _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r),
            _mm512_set1_ps(1.0),
        );
        _mm512_maskz_mov_ps(live, _mm512_scalef_ps(y, n))
    }

    /// [`super::silu_mul`], 16 at a time (the last few masked).
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = gate.len();
        assert!(up.len() == n && out.len() == n);
        let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0));
        for at in (0..n).step_by(16) {
            let len = (n - at).min(16);
            let lanes: __mmask16 = if len == 16 { !0 } else { (1 << len) - 1 };
            // SAFETY: the `len` values at `at` of each (asserted), masked.
            unsafe {
                let g = _mm512_maskz_loadu_ps(lanes, gate.as_ptr().add(at));
                let u = _mm512_maskz_loadu_ps(lanes, up.as_ptr().add(at));
                let e = exp_le0(_mm512_sub_ps(zero, _mm512_abs_ps(g)));
                let neg = _mm512_cmp_ps_mask(g, zero, _CMP_LT_OQ);
                let top = _mm512_mask_mul_ps(g, neg, g, e);
                let silu = _mm512_div_ps(top, _mm512_add_ps(one, e));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), lanes, _mm512_mul_ps(silu, u));
            }
        }
    }

    /// The squares of the first `full` (a multiple of 8) values at `src`
    /// added to `lanes`, value `i` to lane `i % 8`, in f64.
    ///
    /// # Safety
    /// `full` values at `src`.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn square_lanes(src: *const f32, full: usize, lanes: &mut [f64; 8]) {
        let mut acc = _mm512_setzero_pd();
        for at in (0..full).step_by(8) {
            // SAFETY: the caller's.
            let v = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(src.add(at)) });
            // The square is exact in f64: the same sum as a product then an add.
            acc = _mm512_fmadd_pd(v, v, acc);
        }
        let mut sums = [0f64; 8];
        // SAFETY: 8 values.
        unsafe { _mm512_storeu_pd(sums.as_mut_ptr(), acc) };
        for (lane, s) in lanes.iter_mut().zip(sums) {
            *lane += s;
        }
    }

    /// `dst[i] = src[i] × scale × weight[i]` for the first `n`, 16 at a
    /// time (the last few masked); `dst` may be `src`.
    ///
    /// # Safety
    /// `n` values at `src` and `dst`.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn scale_by(src: *const f32, dst: *mut f32, n: usize, scale: f32, weight: &[f32]) {
        assert!(weight.len() >= n);
        let s = _mm512_set1_ps(scale);
        for at in (0..n).step_by(16) {
            let len = (n - at).min(16);
            let lanes: __mmask16 = if len == 16 { !0 } else { (1 << len) - 1 };
            // SAFETY: the caller's, masked to the `len` values left.
            unsafe {
                let x = _mm512_maskz_loadu_ps(lanes, src.add(at));
                let w = _mm512_maskz_loadu_ps(lanes, weight.as_ptr().add(at));
                _mm512_mask_storeu_ps(dst.add(at), lanes, _mm512_mul_ps(_mm512_mul_ps(x, s), w));
            }
        }
    }

    /// [`super::rope`] of the first `n` pairs (a multiple of 8) of a head of
    /// `2 × half` values at `x`, 16 pairs at a time (the last 8 masked).
    ///
    /// # Safety
    /// `2 × half` values at `x`, and as many in `cos` and `sin`; `n <= half`.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn rope(x: *mut f32, half: usize, n: usize, cos: &[f32], sin: &[f32]) {
        assert!(n <= half && cos.len() >= 2 * half && sin.len() >= 2 * half);
        let (c, s) = (cos.as_ptr(), sin.as_ptr());
        for at in (0..n).step_by(16) {
            let len = (n - at).min(16);
            let m: __mmask16 = if len == 16 { !0 } else { (1 << len) - 1 };
            let (lo, hi) = (at, at + half);
            // SAFETY: the caller's, masked to the `len` pairs left.
            unsafe {
                let a = _mm512_maskz_loadu_ps(m, x.add(lo));
                let b = _mm512_maskz_loadu_ps(m, x.add(hi));
                let (c0, s0) = (
                    _mm512_maskz_loadu_ps(m, c.add(lo)),
                    _mm512_maskz_loadu_ps(m, s.add(lo)),
                );
                let (c1, s1) = (
                    _mm512_maskz_loadu_ps(m, c.add(hi)),
                    _mm512_maskz_loadu_ps(m, s.add(hi)),
                );
                let x0 = _mm512_sub_ps(_mm512_mul_ps(a, c0), _mm512_mul_ps(b, s0));
                let x1 = _mm512_add_ps(_mm512_mul_ps(b, c1), _mm512_mul_ps(a, s1));
                _mm512_mask_storeu_ps(x.add(lo), m, x0);
                _mm512_mask_storeu_ps(x.add(hi), m, x1);
            }
        }
    }

    /// [`super::max`], 16 at a time (the last few masked to -∞).
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn max(values: &[f32]) -> f32 {
        let low = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut m = low;
        for at in (0..values.len()).step_by(16) {
            let len = (values.len() - at).min(16);
            let lanes: __mmask16 = if len == 16 { !0 } else { (1 << len) - 1 };
            // SAFETY: the `len` values at `at`, masked.
            let v = unsafe { _mm512_mask_loadu_ps(low, lanes, values.as_ptr().add(at)) };
            // A NaN in `v` gives the second operand: passed over.
            m = _mm512_max_ps(v, m);
        }
        _mm512_reduce_max_ps(m)
    }

    /// Cache elements as 16 f32 lanes.
    pub trait Lanes: Copy {
        /// # Safety
        /// 16 values at `p`; the CPU has AVX-512F.
        unsafe fn load16(p: *const Self) -> __m512;
    }

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            // SAFETY: the caller's.
            unsafe { _mm512_loadu_ps(p) }
        }
    }

    impl Lanes for half::f16 {
        #[inline(always)]
        unsafe fn load16(p: *const half::f16) -> __m512 {
            // SAFETY: the caller's.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
        }
    }
}

/// The same kernels with AVX2 (8 lanes), for CPUs without AVX-512: each
/// row's sums in the same order whatever rows share its call.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Values widened to 8 f32 lanes.
    pub trait Lanes8: Copy {
        /// # Safety
        /// 8 values at `p`; the CPU has AVX2 and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
        fn to_f32(self) -> f32;
    }

    impl Lanes8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's.
            unsafe { _mm256_loadu_ps(p) }
        }
        fn to_f32(self) -> f32 {
            self
        }
    }

    impl Lanes8 for half::f16 {
        #[inline(always)]
        unsafe fn load8(p: *const half::f16) -> __m256 {
            // SAFETY: the caller's.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
        fn to_f32(self) -> f32 {
            half::f16::to_f32(self)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// [`hsum`] of four vectors at once, with its very sums (lane `i` plus
    /// lane `i + 4`, then the first two of those plus the last two, then
    /// those two): the halves gathered across the vectors instead of within
    /// each, 9 instructions instead of 24.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn hsum_4(v: [__m256; 4]) -> [f32; 4] {
        // Each vector's 4 sums of lanes `i`, `i + 4`: v0's | v1's, v2's | v3's.
        let p1 = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(v[0], v[1]),
            _mm256_permute2f128_ps::<0x31>(v[0], v[1]),
        );
        let p2 = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(v[2], v[3]),
            _mm256_permute2f128_ps::<0x31>(v[2], v[3]),
        );
        // Lanes 0, 1 of each half: sums 0 + 2 and 1 + 3.
        let q1 = _mm256_add_ps(p1, _mm256_permute_ps::<0b01_00_11_10>(p1));
        let q2 = _mm256_add_ps(p2, _mm256_permute_ps::<0b01_00_11_10>(p2));
        // Lane 0 of each half is its vector's (0 + 2) + (1 + 3).
        let h = _mm256_hadd_ps(q1, q2);
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), h) };
        [lanes[0], lanes[4], lanes[2], lanes[6]]
    }

    /// [`super::outputs`]: tiles of two rows of `x` by two weight rows, each
    /// weight vector loaded (and widened) once for both rows, each input
    /// vector once for both weight rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn outputs<T: Lanes8>(
        x: &[f32],
        rows: usize,
        inner: usize,
        w: &[T],
        n: usize,
        acc: &mut [f32],
    ) {
        assert!(x.len() >= rows * inner && w.len() >= n * inner && acc.len() >= rows * n);
        let mut o = 0;
        while o < n {
            let outs = (n - o).min(2);
            let mut r = 0;
            while r < rows {
                let take = (rows - r).min(2);
                // SAFETY: rows `r..r + take` of `x`, `o..o + outs` of `w`
                // (asserted lengths).
                unsafe {
                    match (take, outs) {
                        (2, 2) => tile::<T, 2, 2>(x, r, inner, w, o, n, acc),
                        (2, _) => tile::<T, 2, 1>(x, r, inner, w, o, n, acc),
                        (_, 2) => tile::<T, 1, 2>(x, r, inner, w, o, n, acc),
                        (_, _) => tile::<T, 1, 1>(x, r, inner, w, o, n, acc),
                    }
                }
                r += take;
            }
            o += outs;
        }
    }

    /// `R` rows of `x` from `r` by `C` weight rows from `o`, the sizes
    /// constant so that the sums stay in registers (this crate is built at
    /// opt-level 1). Each sum is the AVX-512 kernel's, bit for bit: 16 lanes
    /// (two vectors of 8) over the whole 16s, lane `i` plus lane `i + 8`,
    /// then `+ 4`, `+ 2`, `+ 1`, then the rest one by one. (Summed in 8 lanes
    /// instead, tests/quantized.rs's Q4_1 and Q5_K tiny models leave
    /// llama.cpp's greedy tokens.)
    ///
    /// # Safety
    /// Those rows exist; `acc` is `[rows, n]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<T: Lanes8, const R: usize, const C: usize>(
        x: &[f32],
        r: usize,
        inner: usize,
        w: &[T],
        o: usize,
        n: usize,
        acc: &mut [f32],
    ) {
        let full = inner / 16 * 16;
        let mut sums = [[[_mm256_setzero_ps(); 2]; C]; R];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for k in (0..full).step_by(16) {
            // SAFETY: values `k..k + 16` of those rows (the caller's).
            // Counted loops, which opt-level 1 unrolls (not iterators), so
            // that the sums stay in registers.
            unsafe {
                let mut wv = [[_mm256_setzero_ps(); 2]; C];
                #[allow(clippy::needless_range_loop)]
                for c in 0..C {
                    let at = wp.wrapping_add((o + c) * inner + k);
                    wv[c] = [T::load8(at), T::load8(at.wrapping_add(8))];
                }
                #[allow(clippy::needless_range_loop)]
                for i in 0..R {
                    let at = xp.wrapping_add((r + i) * inner + k);
                    let xv = [_mm256_loadu_ps(at), _mm256_loadu_ps(at.wrapping_add(8))];
                    for c in 0..C {
                        for h in 0..2 {
                            sums[i][c][h] = _mm256_fmadd_ps(xv[h], wv[c][h], sums[i][c][h]);
                        }
                    }
                }
            }
        }
        // Lane `i` plus lane `i + 8` of the 16, then the 8 lanes' sums, four
        // at a time in a whole tile.
        let mut totals = [[0f32; C]; R];
        if R * C == 4 {
            let v: [__m256; 4] = std::array::from_fn(|k| {
                let s = sums[k / C][k % C];
                _mm256_add_ps(s[0], s[1])
            });
            for (k, t) in hsum_4(v).into_iter().enumerate() {
                totals[k / C][k % C] = t;
            }
        } else {
            for (totals, sums) in totals.iter_mut().zip(&sums) {
                for (t, s) in totals.iter_mut().zip(sums) {
                    *t = hsum(_mm256_add_ps(s[0], s[1]));
                }
            }
        }
        for (i, totals) in totals.iter().enumerate() {
            let xr = &x[(r + i) * inner..(r + i + 1) * inner];
            for (c, &total) in totals.iter().enumerate() {
                let wr = &w[(o + c) * inner..(o + c + 1) * inner];
                let mut total = total;
                for k in full..inner {
                    total += xr[k] * wr[k].to_f32();
                }
                acc[(r + i) * n + o + c] = total;
            }
        }
    }

    /// [`super::scores`]: eight keys at a time turned into `columns`
    /// (`columns[8d + j]`: value `d` of key `j`), then each pair of rows
    /// against them.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores<T: Lanes8>(
        x: &[f32],
        rows: usize,
        hd: usize,
        keys: &[T],
        n: usize,
        out: &mut [f32],
        columns: &mut [f32],
    ) {
        assert!(hd.is_multiple_of(16) && columns.len() >= 8 * hd);
        assert!(x.len() >= rows * hd && keys.len() >= n * hd && out.len() >= rows * n);
        let (kp, cp) = (keys.as_ptr(), columns.as_mut_ptr());
        for k0 in (0..n).step_by(8) {
            let count = (n - k0).min(8);
            for d in (0..hd).step_by(8) {
                // SAFETY: keys `k0..k0 + count`, values `d..d + 8` (asserted
                // lengths); columns `d..d + 8`.
                unsafe {
                    let mut v = [_mm256_setzero_ps(); 8];
                    for (j, v) in v.iter_mut().enumerate().take(count) {
                        *v = T::load8(kp.add((k0 + j) * hd + d));
                    }
                    for (j, c) in transpose8(v).into_iter().enumerate() {
                        _mm256_storeu_ps(cp.add(8 * (d + j)), c);
                    }
                }
            }
            let mut r = 0;
            while r < rows {
                let take = (rows - r).min(2);
                // SAFETY: rows `r..r + take`, keys `k0..k0 + count`; the
                // columns hold `hd` values of eight keys.
                unsafe {
                    let at = out.as_mut_ptr().add(r * n + k0);
                    let xr = x.as_ptr().add(r * hd);
                    // The common head sizes' loops fully unrolled.
                    match (take, hd) {
                        (2, 64) => score_rows::<2, 4>(xr, hd, cp, at, n, count),
                        (2, 128) => score_rows::<2, 8>(xr, hd, cp, at, n, count),
                        (2, _) => score_rows::<2, 0>(xr, hd, cp, at, n, count),
                        (_, 64) => score_rows::<1, 4>(xr, hd, cp, at, n, count),
                        (_, 128) => score_rows::<1, 8>(xr, hd, cp, at, n, count),
                        _ => score_rows::<1, 0>(xr, hd, cp, at, n, count),
                    }
                }
                r += take;
            }
        }
    }

    /// `R` rows (from `x`, `hd` apart) against the eight keys in `columns`:
    /// lane `j` of sum `l` (0 to 15) is [`tile`]'s lane `l` of key `j`'s
    /// dot product (values `l`, `l + 16`, ... multiplied and added in
    /// order), and the sums are added as [`tile`] adds its lanes (`l` and
    /// `l + 8`, then `+ 4`, `+ 2`, `+ 1`), built in that tree's order so that
    /// few of them are alive at once. The first `count` scores of each row
    /// go to `out`, rows `n` apart. `B`: `hd / 16` where it is known (0
    /// where not), so that the loops unroll.
    ///
    /// # Safety
    /// As [`scores`]: those rows and outputs exist.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn score_rows<const R: usize, const B: usize>(
        x: *const f32,
        hd: usize,
        columns: *const f32,
        out: *mut f32,
        n: usize,
        count: usize,
    ) {
        // SAFETY: the caller's: values `l + 16b < hd` of each row and column.
        unsafe {
            // Sum `l` of every row. (Macros: at this crate's opt-level,
            // closures would stay calls, their vectors passed in memory.)
            macro_rules! lane {
                ($l:expr) => {{
                    let mut p = [_mm256_setzero_ps(); R];
                    // `B`: `hd / 16` known, for a counted loop.
                    let blocks = if B > 0 { B } else { hd / 16 };
                    for b in 0..blocks {
                        let d = $l + 16 * b;
                        let k = _mm256_loadu_ps(columns.add(8 * d));
                        // Counted loops, which opt-level 1 unrolls (not
                        // iterators), so that the sums stay in registers.
                        #[allow(clippy::needless_range_loop)]
                        for i in 0..R {
                            let xv = _mm256_broadcast_ss(&*x.add(i * hd + d));
                            p[i] = _mm256_fmadd_ps(xv, k, p[i]);
                        }
                    }
                    p
                }};
            }
            macro_rules! add {
                ($a:expr, $b:expr) => {{
                    let (mut a, b): ([__m256; R], [__m256; R]) = ($a, $b);
                    #[allow(clippy::needless_range_loop)]
                    for i in 0..R {
                        a[i] = _mm256_add_ps(a[i], b[i]);
                    }
                    a
                }};
            }
            // `l` plus `l + 8`, then `+ 4`, `+ 2`, `+ 1`.
            macro_rules! eights {
                ($l:expr) => {
                    add!(lane!($l), lane!($l + 8))
                };
            }
            macro_rules! fours {
                ($l:expr) => {
                    add!(eights!($l), eights!($l + 4))
                };
            }
            macro_rules! twos {
                ($l:expr) => {
                    add!(fours!($l), fours!($l + 2))
                };
            }
            let total = add!(twos!(0), twos!(1));
            #[allow(clippy::needless_range_loop)]
            for i in 0..R {
                if count == 8 {
                    _mm256_storeu_ps(out.add(i * n), total[i]);
                } else {
                    let mut v = [0f32; 8];
                    _mm256_storeu_ps(v.as_mut_ptr(), total[i]);
                    std::ptr::copy_nonoverlapping(v.as_ptr(), out.add(i * n), count);
                }
            }
        }
    }

    /// Eight vectors' lanes transposed: lane `j` of result `i` is lane `i`
    /// of `v[j]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
        let t: [__m256; 8] = [
            _mm256_unpacklo_ps(v[0], v[1]),
            _mm256_unpackhi_ps(v[0], v[1]),
            _mm256_unpacklo_ps(v[2], v[3]),
            _mm256_unpackhi_ps(v[2], v[3]),
            _mm256_unpacklo_ps(v[4], v[5]),
            _mm256_unpackhi_ps(v[4], v[5]),
            _mm256_unpacklo_ps(v[6], v[7]),
            _mm256_unpackhi_ps(v[6], v[7]),
        ];
        let u: [__m256; 8] = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ]
    }

    /// [`super::weighted_rows`]: the divisions 8 at a time, then up to four
    /// rows against each slot's values, 16 outputs at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_rows<T: Lanes8>(
        p: &mut [f32],
        totals: &[f32],
        slots: &[T],
        out: &mut [f32],
    ) {
        let rows = totals.len();
        let (n, hd) = (p.len() / rows, out.len() / rows);
        assert!(slots.len() >= n * hd && hd.is_multiple_of(8));
        for (p, &total) in p.chunks_exact_mut(n).zip(totals) {
            let t = _mm256_set1_ps(total);
            let mut chunks = p.chunks_exact_mut(8);
            for c in &mut chunks {
                // SAFETY: 8 values.
                unsafe {
                    _mm256_storeu_ps(
                        c.as_mut_ptr(),
                        _mm256_div_ps(_mm256_loadu_ps(c.as_ptr()), t),
                    )
                };
            }
            for v in chunks.into_remainder() {
                *v /= total;
            }
        }
        let mut r = 0;
        while r < rows {
            let take = (rows - r).min(4);
            let mut at = 0;
            while at < hd {
                let width = (hd - at).min(16) / 8;
                let (p, out) = (&p[r * n..], &mut out[r * hd..]);
                // SAFETY: rows `r..r + take` and outputs `at..at + 8 width`
                // (asserted lengths).
                unsafe {
                    match (take, width) {
                        (4, 2) => weighted_block::<T, 4, 2>(p, n, slots, hd, at, out),
                        (3, 2) => weighted_block::<T, 3, 2>(p, n, slots, hd, at, out),
                        (2, 2) => weighted_block::<T, 2, 2>(p, n, slots, hd, at, out),
                        (_, 2) => weighted_block::<T, 1, 2>(p, n, slots, hd, at, out),
                        (4, _) => weighted_block::<T, 4, 1>(p, n, slots, hd, at, out),
                        (3, _) => weighted_block::<T, 3, 1>(p, n, slots, hd, at, out),
                        (2, _) => weighted_block::<T, 2, 1>(p, n, slots, hd, at, out),
                        (_, _) => weighted_block::<T, 1, 1>(p, n, slots, hd, at, out),
                    }
                }
                at += 8 * width;
            }
            r += take;
        }
    }

    /// `R` rows of [`weighted_rows`], outputs `at..at + 8W` in registers
    /// (constant sizes: this crate is built at opt-level 1); each row's
    /// multiply-adds in slot order, the same whatever `R`.
    ///
    /// # Safety
    /// `p` holds `R` rows of `n`, `out` `R` rows of `hd`, `slots` `n` of `hd`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn weighted_block<T: Lanes8, const R: usize, const W: usize>(
        p: &[f32],
        n: usize,
        slots: &[T],
        hd: usize,
        at: usize,
        out: &mut [f32],
    ) {
        assert!(p.len() >= R * n && out.len() >= R * hd && at + 8 * W <= hd);
        let mut acc = [[_mm256_setzero_ps(); W]; R];
        // Counted loops over constants, which opt-level 1 unrolls (not
        // iterators), so that the arrays stay in registers.
        for j in 0..n {
            let v = slots.as_ptr().wrapping_add(j * hd + at);
            let mut vals = [_mm256_setzero_ps(); W];
            #[allow(clippy::needless_range_loop)]
            for i in 0..W {
                // SAFETY: slot `j`'s values `at + 8i..at + 8i + 8` (the caller's).
                vals[i] = unsafe { T::load8(v.wrapping_add(8 * i)) };
            }
            #[allow(clippy::needless_range_loop)]
            for r in 0..R {
                let a = p[r * n + j];
                if a > 0.0 {
                    let a = _mm256_set1_ps(a);
                    for i in 0..W {
                        acc[r][i] = _mm256_fmadd_ps(a, vals[i], acc[r][i]);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: row `r`'s outputs `at + 8i..at + 8i + 8` (asserted).
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(r * hd + at + 8 * i), *acc) };
            }
        }
    }

    /// [`super::softmax_exp`]: 8 at a time, with the AVX-512 version's bits:
    /// the same polynomial, `2^n` applied as one rounding (`y × 2^(n+1)`,
    /// exact, then halved), and the total summed in 16 lanes (value `i` in
    /// lane `i % 16`) reduced in its order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn softmax_exp(scores: &mut [f32], max: f32) -> f32 {
        let m = _mm256_set1_ps(max);
        let mut total = [_mm256_setzero_ps(); 2];
        // Every value through the same polynomial, the last few too (padded
        // with -∞): a value's exponential and the lane it is summed in depend
        // only on its index, not on how long the row is.
        for at in (0..scores.len()).step_by(8) {
            let len = (scores.len() - at).min(8);
            let mut lanes = [f32::NEG_INFINITY; 8];
            lanes[..len].copy_from_slice(&scores[at..at + len]);
            // SAFETY: 8 values.
            let x = _mm256_sub_ps(unsafe { _mm256_loadu_ps(lanes.as_ptr()) }, m);
            let e = exp_le0(x);
            // SAFETY: 8 values.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), e) };
            scores[at..at + len].copy_from_slice(&lanes[..len]);
            let half = (at / 8) % 2;
            total[half] = _mm256_add_ps(total[half], e);
        }
        hsum(_mm256_add_ps(total[0], total[1]))
    }

    /// `exp(x)` for `x ≤ 0` with the AVX-512 version's bits: the same
    /// polynomial, `2^n` applied as one rounding (`y × 2^(n+1)`, exact, then
    /// halved), 0 below -88 and for -∞.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp_le0(x: __m256) -> __m256 {
        let log2e = _mm256_set1_ps(std::f32::consts::LOG2_E);
        let (c1, c2) = (_mm256_set1_ps(super::LN2_HI), _mm256_set1_ps(super::LN2_LO));
        // exp(x) is 0 in f32 below -103 (and for -inf, a masked slot).
        let live = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(-88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, log2e),
        );
        let r = _mm256_fnmadd_ps(n, c2, _mm256_fnmadd_ps(n, c1, x));
        let mut y = _mm256_set1_ps(super::EXP_POLY[0]);
        for &c in &super::EXP_POLY[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        // 2^(n + 1) is a normal float for the live lanes (n >= -127).
        let twice = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(128),
        )));
        let e = _mm256_mul_ps(_mm256_mul_ps(y, twice), _mm256_set1_ps(0.5));
        _mm256_and_ps(e, live)
    }

    /// [`super::avx512_att::square_lanes`] with two vectors of 4 lanes.
    ///
    /// # Safety
    /// `full` (a multiple of 8) values at `src`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn square_lanes(src: *const f32, full: usize, lanes: &mut [f64; 8]) {
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for at in (0..full).step_by(8) {
            // SAFETY: the caller's.
            let (a, b) = unsafe {
                (
                    _mm256_cvtps_pd(_mm_loadu_ps(src.add(at))),
                    _mm256_cvtps_pd(_mm_loadu_ps(src.add(at + 4))),
                )
            };
            lo = _mm256_fmadd_pd(a, a, lo);
            hi = _mm256_fmadd_pd(b, b, hi);
        }
        let mut sums = [0f64; 8];
        // SAFETY: 4 values each.
        unsafe {
            _mm256_storeu_pd(sums.as_mut_ptr(), lo);
            _mm256_storeu_pd(sums.as_mut_ptr().add(4), hi);
        }
        for (lane, s) in lanes.iter_mut().zip(sums) {
            *lane += s;
        }
    }

    /// [`super::avx512_att::scale_by`] for the first `n`, a multiple of 8.
    ///
    /// # Safety
    /// `n` values at `src` and `dst`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scale_by(src: *const f32, dst: *mut f32, n: usize, scale: f32, weight: &[f32]) {
        assert!(weight.len() >= n && n.is_multiple_of(8));
        let s = _mm256_set1_ps(scale);
        for at in (0..n).step_by(8) {
            // SAFETY: the caller's.
            unsafe {
                let x = _mm256_loadu_ps(src.add(at));
                let w = _mm256_loadu_ps(weight.as_ptr().add(at));
                _mm256_storeu_ps(dst.add(at), _mm256_mul_ps(_mm256_mul_ps(x, s), w));
            }
        }
    }

    /// [`super::avx512_att::rope`], 8 pairs at a time.
    ///
    /// # Safety
    /// As there.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rope(x: *mut f32, half: usize, n: usize, cos: &[f32], sin: &[f32]) {
        assert!(n <= half && n.is_multiple_of(8) && cos.len() >= 2 * half && sin.len() >= 2 * half);
        let (c, s) = (cos.as_ptr(), sin.as_ptr());
        for lo in (0..n).step_by(8) {
            let hi = lo + half;
            // SAFETY: the caller's.
            unsafe {
                let (a, b) = (_mm256_loadu_ps(x.add(lo)), _mm256_loadu_ps(x.add(hi)));
                let (c0, s0) = (_mm256_loadu_ps(c.add(lo)), _mm256_loadu_ps(s.add(lo)));
                let (c1, s1) = (_mm256_loadu_ps(c.add(hi)), _mm256_loadu_ps(s.add(hi)));
                let x0 = _mm256_sub_ps(_mm256_mul_ps(a, c0), _mm256_mul_ps(b, s0));
                let x1 = _mm256_add_ps(_mm256_mul_ps(b, c1), _mm256_mul_ps(a, s1));
                _mm256_storeu_ps(x.add(lo), x0);
                _mm256_storeu_ps(x.add(hi), x1);
            }
        }
    }

    /// [`super::max`], 8 at a time.
    #[target_feature(enable = "avx2")]
    pub unsafe fn max(values: &[f32]) -> f32 {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut chunks = values.chunks_exact(8);
        for c in &mut chunks {
            // SAFETY: 8 values. A NaN in them gives the second operand.
            m = _mm256_max_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, m);
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        lanes
            .iter()
            .chain(chunks.remainder())
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
    }

    /// [`super::silu_mul`], 8 at a time (the last few padded), with the
    /// AVX-512 version's bits.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = gate.len();
        assert!(up.len() == n && out.len() == n);
        let (zero, one) = (_mm256_setzero_ps(), _mm256_set1_ps(1.0));
        let sign = _mm256_set1_ps(-0.0);
        for at in (0..n).step_by(8) {
            let len = (n - at).min(8);
            let (mut g, mut u) = ([0f32; 8], [0f32; 8]);
            g[..len].copy_from_slice(&gate[at..at + len]);
            u[..len].copy_from_slice(&up[at..at + len]);
            // SAFETY: 8 values each.
            let (g8, u8) = unsafe { (_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())) };
            let e = exp_le0(_mm256_sub_ps(zero, _mm256_andnot_ps(sign, g8)));
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(g8, zero);
            let top = _mm256_blendv_ps(g8, _mm256_mul_ps(g8, e), neg);
            let silu = _mm256_div_ps(top, _mm256_add_ps(one, e));
            // SAFETY: 8 values.
            unsafe { _mm256_storeu_ps(g.as_mut_ptr(), _mm256_mul_ps(silu, u8)) };
            out[at..at + len].copy_from_slice(&g[..len]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random floats of either sign whose biased exponents run from `low`
    /// over `span` binades (xorshift from `seed`): magnitudes far enough
    /// apart that a change in the order of a sum changes its bits.
    fn binades(seed: u32, low: u32, span: u32) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            f32::from_bits((s & 0x8000_0000) | ((low + (s >> 8) % span) << 23) | (s & 0x7F_FFFF))
        }
    }

    /// The vectorised exponential of the softmax against the library's, over
    /// the range scores take, masked slots (-∞) and a tail shorter than 16.
    #[test]
    fn softmax_exp_matches_the_library_exp() {
        let mut scores: Vec<f32> = (0..4001).map(|i| -80.0 + i as f32 * 0.02).collect();
        scores.extend([f32::NEG_INFINITY, -200.0, -87.9, 0.0, -1e-7]);
        let max = 0.0;
        let want: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
        let total = softmax_exp(&mut scores, max);
        for (got, want) in scores.iter().zip(&want) {
            assert!(
                (got - want).abs() <= 2e-7 * want.max(1e-30),
                "{got} != {want}"
            );
        }
        assert_eq!(scores[4001], 0.0, "a masked slot weighs nothing");
        let sum: f64 = want.iter().map(|&w| f64::from(w)).sum();
        assert!((f64::from(total) - sum).abs() < 1e-5 * sum);
    }

    /// SwiGLU's product against f64, over the range activations reach and
    /// past it (no overflow for any gate), for lengths that are not whole
    /// vectors; the AVX-512 and AVX2 versions with the same bits.
    #[test]
    fn silu_mul_matches_f64_on_every_kernel() {
        let mut gate: Vec<f32> = (0..2001).map(|i| -100.0 + i as f32 * 0.1).collect();
        gate.extend([0.0, -0.0, 1e-30, -1e-30, 500.0, -500.0, 88.5, -88.5, 1e-3]);
        let up: Vec<f32> = (0..gate.len())
            .map(|i| ((i % 13) as f32 - 6.0) / 3.0)
            .collect();
        for len in [gate.len(), 1, 15, 17, 33] {
            let (g, u) = (&gate[..len], &up[..len]);
            let mut out = vec![0.0; len];
            silu_mul(g, u, &mut out);
            for ((&got, &g), &u) in out.iter().zip(g).zip(u) {
                let (g64, u64) = (f64::from(g), f64::from(u));
                let want = g64 / (1.0 + (-g64).exp()) * u64;
                assert!(
                    // Below -88, e^g is taken as 0: silu(g) is under 1e-36 there.
                    (f64::from(got) - want).abs() <= 1e-6 * want.abs() + 1e-35,
                    "silu({g}) × {u}: {got} != {want}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx512() && has_avx2() {
                let (mut a, mut b) = (vec![0.0; len], vec![0.0; len]);
                // SAFETY: both checked.
                unsafe {
                    avx512_att::silu_mul(g, u, &mut a);
                    avx2::silu_mul(g, u, &mut b);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "AVX-512 and AVX2 differ");
            }
        }
    }

    /// Every level this CPU has.
    fn test_levels() -> Vec<Level> {
        let mut levels = vec![Level::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                levels.push(Level::Avx2);
            }
            if has_avx512() {
                levels.push(Level::Avx512);
            }
        }
        levels
    }

    /// RMSNorm against a plain f64 computation, with the same bits at every
    /// level, in place or not, for lengths with and without a tail of 8.
    #[test]
    fn rms_norm_has_the_same_bits_at_every_level() {
        let x: Vec<f32> = (0..1541)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
            .collect();
        let w: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 11) as f32 / 7.0).collect();
        let levels = test_levels();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for n in [1541, 1536, 576, 64, 7, 1] {
            let (x, w) = (&x[..n], &w[..n]);
            let mean: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
            let scale = 1.0 / (mean + 1e-5).sqrt();
            let mut first: Option<Vec<f32>> = None;
            for &level in &levels {
                let mut out = vec![0f32; n];
                let mut inplace = x.to_vec();
                // SAFETY: the CPU has `level` (checked); `n` values each.
                unsafe {
                    rms_norm_raw(level, x.as_ptr(), out.as_mut_ptr(), w, 1e-5);
                    let p = inplace.as_mut_ptr();
                    rms_norm_raw(level, p, p, w, 1e-5);
                }
                assert_eq!(bits(&out), bits(&inplace), "{level:?}, {n}: in place");
                for ((&got, &v), &w) in out.iter().zip(x).zip(w) {
                    let want = f64::from(v) * scale * f64::from(w);
                    assert!((f64::from(got) - want).abs() <= 1e-6 * want.abs() + 1e-30);
                }
                match &first {
                    None => first = Some(out),
                    Some(f) => assert_eq!(bits(f), bits(&out), "{level:?}, {n}"),
                }
            }
        }
    }

    /// The rotary embedding with the same bits at every level, for halves
    /// with and without a tail of 8.
    #[test]
    fn rope_has_the_same_bits_at_every_level() {
        let levels = test_levels();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for hd in [128, 64, 48, 10, 2] {
            let x: Vec<f32> = (0..hd)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
                .collect();
            let cos: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.3).cos()).collect();
            let sin: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.3).sin()).collect();
            let mut want = x.clone();
            let half = hd / 2;
            for i in 0..half {
                want[i] = x[i] * cos[i] - x[i + half] * sin[i];
                want[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half];
            }
            for &level in &levels {
                let mut got = x.clone();
                // SAFETY: the CPU has `level` (checked).
                unsafe { rope_at(level, &mut got, &cos, &sin) };
                assert_eq!(bits(&got), bits(&want), "{level:?}, head of {hd}");
            }
        }
    }

    /// The vector maxima against `f32::max`'s fold: every length to 40, the
    /// largest value anywhere, NaNs passed over, -∞ for nothing.
    #[test]
    fn max_matches_the_plain_fold() {
        for len in 0..40 {
            for at in 0..len {
                let mut v: Vec<f32> = (0..len).map(|i| -((i * 7 % 11) as f32)).collect();
                v[at] = 3.5;
                if len > 2 {
                    v[(at + 1) % len] = f32::NAN;
                }
                assert_eq!(max(&v), 3.5, "{len} values, largest at {at}");
                #[cfg(target_arch = "x86_64")]
                {
                    // SAFETY: checked.
                    if has_avx512() {
                        assert_eq!(unsafe { avx512_att::max(&v) }, 3.5);
                    }
                    if has_avx2() {
                        assert_eq!(unsafe { avx2::max(&v) }, 3.5);
                    }
                }
            }
        }
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(max(&[f32::NEG_INFINITY; 20]), f32::NEG_INFINITY);
    }

    /// The weighted values against a plain f64 sum, and each row's bits the
    /// same whether it shares its call (and its block of four) or not:
    /// masked slots (zeros) and head sizes of one to five vectors included.
    #[test]
    fn weighted_rows_match_a_plain_sum_and_each_row_alone() {
        for (rows, n, hd) in [(1, 5, 16), (4, 33, 64), (7, 20, 80), (6, 1, 48)] {
            let p: Vec<f32> = (0..rows * n)
                .map(|i| {
                    if i % 7 == 3 {
                        0.0
                    } else {
                        ((i * 13 % 17) as f32 + 0.5) / 9.0
                    }
                })
                .collect();
            let totals: Vec<f32> = p
                .chunks_exact(n)
                .map(|r| r.iter().sum::<f32>() + 0.25)
                .collect();
            let v: Vec<f32> = (0..n * hd)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.1)
                .collect();
            let v16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            for slots in [Slots::F32(&v), Slots::F16(&v16)] {
                let value = |j: usize, d: usize| match slots {
                    Slots::F32(v) => f64::from(v[j * hd + d]),
                    Slots::F16(v) => f64::from(v[j * hd + d].to_f32()),
                };
                let mut all = vec![0f32; rows * hd];
                weighted_rows(&mut p.clone(), &totals, slots, &mut all);
                for r in 0..rows {
                    let mut alone = vec![0f32; hd];
                    let mut q = p[r * n..(r + 1) * n].to_vec();
                    weighted_rows(&mut q, &totals[r..r + 1], slots, &mut alone);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&alone),
                        bits(&all[r * hd..(r + 1) * hd]),
                        "row {r} of {rows}"
                    );
                    for d in 0..hd {
                        let want: f64 = (0..n)
                            .map(|j| f64::from(p[r * n + j]) / f64::from(totals[r]) * value(j, d))
                            .sum();
                        let got = f64::from(all[r * hd + d]);
                        assert!((got - want).abs() < 1e-5, "row {r}, {d}: {got} != {want}");
                    }
                }
            }
        }
    }

    /// Four reductions at once give each one's bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn four_sums_at_once_give_the_same_bits() {
        use std::arch::x86_64::*;
        assert!(has_avx2(), "this test needs AVX2");
        let mut next = binades(0x9E37_79B9, 100, 60);
        for _ in 0..500 {
            let vals: Vec<[f32; 8]> = (0..4).map(|_| std::array::from_fn(|_| next())).collect();
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let (got, want) = unsafe {
                let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(vals[k].as_ptr()));
                (avx2::hsum_4(v), v.map(|v| avx2::hsum(v)))
            };
            assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits));
        }
    }

    /// The AVX2 kernels give the AVX-512 kernels' very bits (so a CPU's
    /// instruction set does not change a sequence's tokens), checked where
    /// the CPU has both; where it has only AVX2, the tests above check the
    /// AVX2 kernels against plain sums.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_give_the_avx512_bits() {
        assert!(has_avx2(), "this test needs AVX2");
        if !has_avx512() {
            eprintln!("no AVX-512 here: the AVX2 kernels were checked against plain sums");
            return;
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let (rows, inner, n) = (5, 64 + 16 + 5, 37);
        let x: Vec<f32> = (0..rows * inner)
            .map(|i| ((i * 7 % 13) as f32 - 6.1) / 7.0)
            .collect();
        let w: Vec<f32> = (0..inner * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.3) / 3.0)
            .collect();
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
        // SAFETY: both instruction sets checked above.
        unsafe {
            avx512_f32::outputs(&x, rows, inner, &w, n, &mut a);
            avx2::outputs(&x, rows, inner, &w, n, &mut b);
            assert_eq!(bits(&a), bits(&b), "f32 outputs");
            avx512_f16::outputs(&x, rows, inner, &w16, n, &mut a);
            avx2::outputs(&x, rows, inner, &w16, n, &mut b);
            assert_eq!(bits(&a), bits(&b), "f16 outputs");
        }
        let mut scores: Vec<f32> = (0..1003).map(|i| -95.0 + i as f32 * 0.0947).collect();
        scores[17] = f32::NEG_INFINITY;
        let mut other = scores.clone();
        // SAFETY: as above.
        let (ta, tb) = unsafe {
            (
                avx512_att::softmax_exp(&mut scores, 0.5),
                avx2::softmax_exp(&mut other, 0.5),
            )
        };
        assert_eq!(bits(&scores), bits(&other), "softmax numerators");
        assert_eq!(ta.to_bits(), tb.to_bits(), "softmax total");
        let (rows, slots, hd) = (6, 29, 64);
        let p: Vec<f32> = (0..rows * slots)
            .map(|i| {
                if i % 5 == 2 {
                    0.0
                } else {
                    ((i * 13 % 17) as f32 + 0.5) / 9.0
                }
            })
            .collect();
        let totals: Vec<f32> = p
            .chunks_exact(slots)
            .map(|r| r.iter().sum::<f32>())
            .collect();
        let v: Vec<f16> = (0..slots * hd)
            .map(|i| f16::from_f32(((i * 5 % 11) as f32 - 5.0) / 3.1))
            .collect();
        let (mut a, mut b) = (vec![0f32; rows * hd], vec![0f32; rows * hd]);
        // SAFETY: as above.
        unsafe {
            avx512_att::weighted_rows(&mut p.clone(), &totals, &v, &mut a);
            avx2::weighted_rows(&mut p.clone(), &totals, &v, &mut b);
        }
        assert_eq!(bits(&a), bits(&b), "weighted values");
    }

    /// Attention scores from keys turned into columns have [`outputs`]'
    /// bits, for every count of rows and keys (whole and partial blocks of
    /// eight), f32 and f16 keys, values over many binades (where the order
    /// of the sums shows); through [`scores`] (which chooses) and the AVX2
    /// kernel itself (which an AVX-512 CPU would not choose).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn scores_from_columns_have_the_bits_of_outputs() {
        assert!(has_avx2(), "this test needs AVX2");
        let mut next = binades(0x2545_F491, 112, 30);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let mut columns = Vec::new();
        for (rows, hd, n) in [
            (8, 64, 8),
            (9, 64, 37),
            (48, 64, 130),
            (11, 128, 17),
            (2, 64, 9),
            (16, 32, 1),
            (13, 48, 23),
        ] {
            let x: Vec<f32> = (0..rows * hd).map(|_| next()).collect();
            let k: Vec<f32> = (0..n * hd).map(|_| next()).collect();
            let k16: Vec<f16> = k.iter().map(|&v| f16::from_f32(v)).collect();
            for keys in [Weights::F32(&k), Weights::F16(&k16)] {
                let (mut want, mut got) = (vec![0f32; rows * n], vec![1f32; rows * n]);
                outputs(&x, rows, hd, keys, n, &mut want);
                scores(&x, rows, hd, keys, n, &mut got, &mut columns);
                assert_eq!(bits(&got), bits(&want), "{rows}x{hd}, {n} keys");
                let mut direct = vec![2f32; rows * n];
                columns.resize(8 * hd, 0.0);
                // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`,
                // asserted above, checks all three).
                unsafe {
                    match keys {
                        Weights::F32(k) => {
                            avx2::scores(&x, rows, hd, k, n, &mut direct, &mut columns)
                        }
                        Weights::F16(k) => {
                            avx2::scores(&x, rows, hd, k, n, &mut direct, &mut columns)
                        }
                    }
                }
                assert_eq!(bits(&direct), bits(&want), "AVX2, {rows}x{hd}, {n} keys");
            }
        }
    }

    /// A row's outputs have the same bits whichever tile computes them (8,
    /// 4, 3, 2 or 1 rows): a query's attention scores do not depend on how
    /// many heads share its group, nor a token's on its batch.
    #[test]
    fn a_row_has_the_same_bits_in_every_tile() {
        let (inner, cols) = (64 + 16 + 5, 37);
        let w: Vec<f32> = (0..inner * cols)
            .map(|i| ((i * 5 % 11) as f32 - 5.3) / 3.0)
            .collect();
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for rows in 1..=11 {
            let x: Vec<f32> = (0..rows * inner)
                .map(|i| ((i * 7 % 13) as f32 - 6.1) / 7.3)
                .collect();
            for w in [Weights::F32(&w), Weights::F16(&w16)] {
                let all = matmul_rows(&x, rows, inner, w, cols);
                for r in 0..rows {
                    let alone = matmul_rows(&x[r * inner..(r + 1) * inner], 1, inner, w, cols);
                    assert_eq!(
                        bits(&all[r * cols..(r + 1) * cols]),
                        bits(&alone),
                        "row {r} of {rows}"
                    );
                }
            }
        }
    }

    #[test]
    fn kernel_matches_a_plain_product() {
        // Odd sizes: tails of rows, outputs and the inner dimension, every
        // tile shape (8, 4 and 1 rows by 3; 4 and 1 rows by 4; 1 by 1).
        for (rows, inner, cols) in [
            (3, 7 * 16 + 3, OUTPUTS_PER_TASK + 37),
            (9, 64, 6),
            (13, 3 * 16 + 9, OUTPUTS_PER_TASK + 2),
            (16, 5, 130),
            (5, 48, 70),
        ] {
            let x: Vec<f32> = (0..rows * inner)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..inner * cols)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let got = matmul_rows(&x, rows, inner, Weights::F32(&w), cols);
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let got16 = matmul_rows(&x, rows, inner, Weights::F16(&w16), cols);
            for r in 0..rows {
                for c in 0..cols {
                    let want: f64 = (0..inner)
                        .map(|k| f64::from(x[r * inner + k]) * f64::from(w[c * inner + k]))
                        .sum();
                    assert!(
                        (f64::from(got[r * cols + c]) - want).abs() < 1e-4,
                        "{r},{c}"
                    );
                    let want16: f64 = (0..inner)
                        .map(|k| f64::from(x[r * inner + k]) * f64::from(w16[c * inner + k]))
                        .sum();
                    assert!(
                        (f64::from(got16[r * cols + c]) - want16).abs() < 1e-4,
                        "f16 {r},{c}"
                    );
                }
            }
        }
    }
}
