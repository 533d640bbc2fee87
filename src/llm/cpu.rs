//! A CPU kernel for the few-row matrix products of decoding, plugged into
//! burn's flex backend as a backend extension.
//!
//! A decoding step multiplies one row per sequence by every weight matrix: the
//! time goes to reading the weights, once per step. The backend's general
//! matrix product takes a single-threaded vector path for one row, which reads
//! about 8 GB/s here, and burn has no fast f16 product on the CPU. This kernel
//! streams the weights in their file layout (`[out, in]`, one contiguous row
//! per output, f16 by default: half the bytes) on every core, each weight
//! vector loaded (and widened) once for up to 8 rows of the input, with AVX-512
//! when the CPU has it (checked at run time). It serves every projection on the CPU, prompts
//! included; attention, norms, the rotary embedding and the cache stay burn
//! operations.

use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_flex::Flex;
use half::f16;
use rayon::prelude::*;

/// Weights as the kernel reads them: `[out, in]`, f32 or f16.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl Weights<'_> {
    fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::F16(w) => w.len(),
        }
    }
}

/// Weight rows per task: enough to stream, small enough to share the work out.
const OUTPUTS_PER_TASK: usize = 48;

/// `x @ wᵀ` for a flex tensor `w` stored `[out, in]` in f32 or f16, or `None`
/// when the kernel does not apply (another backend, another dtype, a
/// non-contiguous tensor).
pub fn matmul(x: &Tensor<2>, w: &Tensor<2>, device: &Device) -> Option<Tensor<2>> {
    let [rows, inner] = x.dims();
    let [cols, w_in] = w.dims();
    if rows == 0 || w_in != inner {
        return None;
    }
    let weights = w.clone().try_into_primitive::<Flex>().ok()?;
    if !weights.is_contiguous() || weights.layout().start_offset() != 0 {
        return None;
    }
    let input = x.clone().into_data();
    let input = input.as_slice::<f32>().ok()?;
    let w = match weights.dtype() {
        DType::F32 => Weights::F32(&weights.storage::<f32>()[..inner * cols]),
        DType::F16 => Weights::F16(&weights.storage::<f16>()[..inner * cols]),
        _ => return None,
    };
    let out = matmul_rows(input, rows, inner, w, cols);
    Some(Tensor::from_data(
        TensorData::new(out, [rows, cols]),
        device,
    ))
}

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

/// Whether the AVX-512 kernels can run. They need the vector-length extension
/// too: without it the compiler keeps accumulators out of zmm16–31 (their
/// 256- and 128-bit halves, used by the final sums, would need VL) and spills
/// them to the stack.
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Outputs of a block of `n` weight rows for every row of `x`, into `acc`
/// (`[rows, n]`).
fn outputs(x: &[f32], rows: usize, inner: usize, w: Weights<'_>, n: usize, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F and VL, checked just above.
        unsafe {
            match w {
                Weights::F32(w) => avx512_f32::outputs(x, rows, inner, w, n, acc),
                Weights::F16(w) => avx512_f16::outputs(x, rows, inner, w, n, acc),
            }
        }
        return;
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
                            while r < rows {
                                tile::<1, 4>(
                                    xp.wrapping_add(r * inner),
                                    wp.wrapping_add(o * inner),
                                    inner,
                                    op.wrapping_add(r * n + o),
                                    n,
                                );
                                r += 1;
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

/// Attention of `s` new tokens per sequence over the KV cache — one token in
/// a decoding step, a whole prompt (or a chunk of it) in a prompt pass — or
/// `None` when this does not apply (another backend or dtype, no AVX-512, a
/// head size not a multiple of 16). `q` is `[batch, kv_heads, group × s,
/// head_dim]` (rows by group member, then token), `keys` and `values`
/// `[cache rows, kv_heads, capacity, head_dim]`; sequence `b` lives in cache
/// row `rows[b]`, its new tokens in slots `starts[b]..starts[b] + s`. Token
/// `t` attends slot `j` when `j <= starts[b] + t` (causal) and `valid[b][j]`:
/// masked slots are never computed, which halves a prompt pass's attention
/// against the backend's full product. Rows are spread over the cores in
/// small tasks.
#[allow(clippy::too_many_arguments)]
pub fn cached_attention(
    q: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    valid: &[Vec<bool>],
    cache_rows: &[usize],
    starts: &[usize],
    s: usize,
    window: Option<usize>,
    device: &Device,
) -> Option<Tensor<4>> {
    #[cfg(target_arch = "x86_64")]
    {
        let [b, kvh, rows, hd] = q.dims();
        let [kb, kh, capacity, khd] = keys.dims();
        let end = starts.iter().map(|st| st + s).max().unwrap_or(0);
        if !avx512()
            || s == 0
            || !rows.is_multiple_of(s)
            || (kh, khd) != (kvh, hd)
            || cache_rows.len() != b
            || starts.len() != b
            || cache_rows.iter().any(|&r| r >= kb)
            || values.dims() != keys.dims()
            || !hd.is_multiple_of(16)
            || end > capacity
            || valid.len() < b
            || valid.iter().zip(starts).any(|(row, st)| row.len() < st + s)
        {
            return None;
        }
        let contiguous = |t: &Tensor<4>| {
            let p = t.clone().try_into_primitive::<Flex>().ok()?;
            (p.dtype() == DType::F32 && p.is_contiguous() && p.layout().start_offset() == 0)
                .then_some(p)
        };
        let (k, v) = (contiguous(keys)?, contiguous(values)?);
        let q = q.clone().into_data();
        let q = q.as_slice::<f32>().ok()?;
        let (k, v) = (k.storage::<f32>(), v.storage::<f32>());
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; b * kvh * rows * hd];
        // Rows per task: enough to amortise the task, few enough to balance the cores.
        const TASK_ROWS: usize = 8;
        out.par_chunks_mut(TASK_ROWS * hd)
            .enumerate()
            .for_each(|(chunk, out)| {
                let mut scores = vec![0f32; end];
                for (i, orow) in out.chunks_mut(hd).enumerate() {
                    let row = chunk * TASK_ROWS + i;
                    let task = row / rows;
                    let t = (row % rows) % s;
                    let (seq, head) = (task / kvh, task % kvh);
                    let base = (cache_rows[seq] * kvh + head) * capacity * hd;
                    let limit = starts[seq] + t + 1;
                    // A sliding window hides the slots more than `w` back.
                    let first = window.map_or(0, |w| limit.saturating_sub(w));
                    let qrow = &q[row * hd..(row + 1) * hd];
                    let mut max = f32::NEG_INFINITY;
                    for (j, score) in scores[..limit].iter_mut().enumerate() {
                        *score = if j >= first && valid[seq][j] {
                            // SAFETY: AVX-512F and VL checked above; both rows hold `hd` values.
                            let s = unsafe {
                                avx512_att::dot(qrow, &k[base + j * hd..base + (j + 1) * hd])
                            };
                            s * scale
                        } else {
                            f32::NEG_INFINITY
                        };
                        max = max.max(*score);
                    }
                    if max == f32::NEG_INFINITY {
                        continue; // nothing to attend (a padding position): zeros
                    }
                    let mut total = 0f32;
                    for score in scores[..limit].iter_mut() {
                        *score = (*score - max).exp();
                        total += *score;
                    }
                    for (j, &p) in scores[..limit].iter().enumerate() {
                        if p > 0.0 {
                            // SAFETY: as above.
                            unsafe {
                                avx512_att::axpy(
                                    p / total,
                                    &v[base + j * hd..base + (j + 1) * hd],
                                    orow,
                                )
                            };
                        }
                    }
                }
            });
        Some(Tensor::from_data(
            TensorData::new(out, [b, kvh, rows, hd]),
            device,
        ))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            q, keys, values, valid, cache_rows, starts, s, window, device,
        );
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512_att {
    use std::arch::x86_64::*;

    /// `a · b`, both of a length that is a multiple of 16.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        assert!(a.len() == b.len() && a.len().is_multiple_of(16));
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < a.len() {
            // SAFETY: `i + 16 <= len` for both slices.
            unsafe {
                let x = _mm512_loadu_ps(a.as_ptr().wrapping_add(i));
                let y = _mm512_loadu_ps(b.as_ptr().wrapping_add(i));
                acc = _mm512_fmadd_ps(x, y, acc);
            }
            i += 16;
        }
        _mm512_reduce_add_ps(acc)
    }

    /// `out += alpha * x`, both of a length that is a multiple of 16.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn axpy(alpha: f32, x: &[f32], out: &mut [f32]) {
        assert!(x.len() == out.len() && x.len().is_multiple_of(16));
        let a = _mm512_set1_ps(alpha);
        let mut i = 0;
        while i < x.len() {
            // SAFETY: `i + 16 <= len` for both slices.
            unsafe {
                let o = out.as_mut_ptr().wrapping_add(i);
                let v = _mm512_loadu_ps(x.as_ptr().wrapping_add(i));
                _mm512_storeu_ps(o, _mm512_fmadd_ps(a, v, _mm512_loadu_ps(o)));
            }
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel against burn's attention with the mask the model builds, for a
    /// prompt chunk after earlier tokens (start > 0), with a padded sequence.
    #[test]
    fn cached_attention_matches_the_masked_product() {
        use burn::tensor::Bool;
        let device = crate::llm::DeviceKind::Cpu.device().unwrap();
        let (b, kvh, group, s, start, capacity, hd) = (2, 2, 3, 5, 3, 11, 32);
        let value = |i: usize, m: usize| ((i * m % 97) as f32 - 48.0) / 50.0;
        let q: Vec<f32> = (0..b * kvh * group * s * hd).map(|i| value(i, 7)).collect();
        let k: Vec<f32> = (0..b * kvh * capacity * hd).map(|i| value(i, 13)).collect();
        let v: Vec<f32> = (0..b * kvh * capacity * hd).map(|i| value(i, 29)).collect();
        let q = Tensor::<4>::from_data(TensorData::new(q, [b, kvh, group * s, hd]), &device);
        let k = Tensor::<4>::from_data(TensorData::new(k, [b, kvh, capacity, hd]), &device);
        let v = Tensor::<4>::from_data(TensorData::new(v, [b, kvh, capacity, hd]), &device);
        // The second sequence is left-padded by two slots.
        let valid = vec![
            vec![true; capacity],
            (0..capacity).map(|j| j >= 2).collect(),
        ];
        // The whole context, then a sliding window of 4 positions.
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
            let mask: Tensor<4, Bool> =
                Tensor::from_data(TensorData::new(mask, [b, 1, group * s, capacity]), &device);
            let options = burn::tensor::ops::AttentionModuleOptions {
                scale: Some(1.0 / (hd as f64).sqrt()),
                ..Default::default()
            };
            let want = burn::tensor::module::attention(
                q.clone(),
                k.clone(),
                v.clone(),
                Some(mask),
                None,
                options,
            );
            match (
                avx512(),
                cached_attention(
                    &q,
                    &k,
                    &v,
                    &valid,
                    &[0, 1],
                    &[start, start],
                    s,
                    window,
                    &device,
                ),
            ) {
                (true, Some(got)) => {
                    let (got, want) = (got.into_data(), want.into_data());
                    let (got, want) = (
                        got.as_slice::<f32>().unwrap(),
                        want.as_slice::<f32>().unwrap(),
                    );
                    assert_eq!(got.len(), want.len());
                    for (i, (g, w)) in got.iter().zip(want).enumerate() {
                        assert!((g - w).abs() < 1e-5, "row {}: {g} != {w}", i / hd);
                    }
                }
                (false, None) => {} // no AVX-512 here: the backend's attention runs
                (has, got) => panic!("AVX-512 {has}, kernel ran: {}", got.is_some()),
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

    #[test]
    fn burn_tensors_go_through_the_kernel() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
            &device,
        );
        let w = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.5, 1.0, 1.0, 2.0], [3, 2]),
            &device,
        );
        let y = matmul(&x, &w, &device).expect("flex f32 tensors use the kernel");
        let want = x.matmul(w.transpose()).into_data();
        assert_eq!(
            y.into_data().as_slice::<f32>().unwrap(),
            want.as_slice::<f32>().unwrap()
        );
    }
}
