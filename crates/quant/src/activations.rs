//! Activations quantized for the integer dot products: signed bytes with a
//! scale per block, repeated per group of 16 values (what the kernels
//! multiply the weights' group scales with), both in the kernels' panel
//! order ([`crate::layout`]), and per group of 16 values, in order, the
//! scaled sum of their bytes (what the weights' mins multiply).
//!
//! The scales are rounded as llama.cpp's x86 code rounds them ([`Scheme`]), so
//! that the integer products are the same ones llama.cpp computes on the same
//! file and greedy decoding follows the same path.

use half::f16;

use crate::formats::{GgmlType, QK_K, f16_to_f32};
use crate::layout::{self, Aligned, aligned, padded};

/// Values per activation block of the 32-value schemes.
pub const BLOCK: usize = 32;
/// Values per weight scale group.
pub const GROUP: usize = 16;

/// How a weight type wants its inputs quantized (ggml's `vec_dot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Blocks of 32, scale stored in f16 (`Q8_0`): for Q4_0, Q5_0, Q8_0.
    Q8_0,
    /// `Q8_0` plus the block's scaled sum in f16 (`Q8_1`): for Q4_1, Q5_1.
    Q8_1,
    /// Blocks of 256, f32 scale taken from the largest value's sign (`Q8_K`):
    /// for the K-quants.
    Q8K,
}

impl Scheme {
    pub fn for_weights(kind: GgmlType) -> Scheme {
        match kind {
            GgmlType::Q4_1 | GgmlType::Q5_1 => Scheme::Q8_1,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
                Scheme::Q8K
            }
            _ => Scheme::Q8_0,
        }
    }

    /// Values per block: every row's length is a multiple of it.
    pub fn block(self) -> usize {
        match self {
            Scheme::Q8K => QK_K,
            _ => BLOCK,
        }
    }
}

/// `x` rounded to the nearest integer, ties to even, for |x| < 2²²: adding
/// 1.5 × 2²³ leaves no fraction bits, so the FPU rounds (ggml's `nearest_int`).
/// `f32::round_ties_even` is a library call without SSE4.1, a tenth of a
/// prompt pass.
#[inline(always)]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// `rows` rows of `len` values, quantized.
pub struct Activations {
    pub rows: usize,
    pub len: usize,
    /// Per row, `padded(len)` signed bytes within ±127, in panel order.
    pub q: Aligned<i8>,
    /// Per row, `padded(len) / 16`: the scale of the block each group
    /// belongs to, in panel order.
    pub scale: Aligned<f32>,
    /// Per row, `len / 16`: scale × the sum of the group's sixteen bytes.
    pub group_sum: Aligned<f32>,
    /// Per row, `padded(len)`: the bytes plus 128 ([`shift_into`]), which
    /// kernels that multiply inputs as unsigned bytes read ([`crate::Kernel::shifts`]).
    pub shifted: Aligned<u8>,
}

impl Activations {
    /// Quantize `x`, `rows` rows of `len` values (`len` a multiple of the
    /// scheme's block: 32, or 256 for `Q8K`).
    pub fn quantize(x: &[f32], rows: usize, len: usize, scheme: Scheme) -> Self {
        let block = scheme.block();
        assert_eq!(x.len(), rows * len, "activation shape");
        assert_eq!(
            len % block,
            0,
            "activation rows are whole blocks of {block}"
        );
        let mut a = Activations::zeros(rows, len);
        let (p, g) = (padded(len), len / GROUP);
        for (r, x) in x.chunks_exact(len).enumerate() {
            quantize_into(
                x,
                scheme,
                &mut a.q[r * p..(r + 1) * p],
                &mut a.scale[r * p / GROUP..(r + 1) * p / GROUP],
                &mut a.group_sum[r * g..(r + 1) * g],
            );
            shift_into(&a.q[r * p..(r + 1) * p], &mut a.shifted[r * p..(r + 1) * p]);
        }
        a
    }

    /// `rows` rows of `len` values, all zero: a buffer for [`quantize_into`].
    pub fn zeros(rows: usize, len: usize) -> Self {
        Activations {
            rows,
            len,
            q: aligned(0, rows * padded(len)),
            scale: aligned(0.0, rows * padded(len) / GROUP),
            group_sum: aligned(0.0, rows * len / GROUP),
            shifted: aligned(0, rows * padded(len)),
        }
    }

    pub fn row(&self, r: usize) -> ActivationRow<'_> {
        let (n, p) = (self.len, padded(self.len));
        ActivationRow {
            q: &self.q[r * p..(r + 1) * p],
            scale: &self.scale[r * p / GROUP..(r + 1) * p / GROUP],
            group_sum: &self.group_sum[r * n / GROUP..(r + 1) * n / GROUP],
            shifted: &self.shifted[r * p..(r + 1) * p],
        }
    }
}

/// `q`'s bytes plus 128 (`x ^ 0x80`: from 1 to 255 for bytes within ±127),
/// for kernels that multiply inputs as the unsigned operand
/// ([`ActivationRow::shifted`]).
pub fn shift_into(q: &[i8], shifted: &mut [u8]) {
    assert_eq!(q.len(), shifted.len(), "shifted activation buffer");
    for (s, &q) in shifted.iter_mut().zip(q) {
        *s = q as u8 ^ 0x80;
    }
}

/// Quantize the row `x` (whole blocks of the scheme's size) into `q`
/// ([`padded`] from its length), `scale` (a sixteenth of that) and
/// `group_sum` (a sixteenth of `x`'s length): a row of an [`Activations`],
/// which lets several threads each quantize their own rows of one buffer.
pub fn quantize_into(
    x: &[f32],
    scheme: Scheme,
    q: &mut [i8],
    scale: &mut [f32],
    group_sum: &mut [f32],
) {
    let (block, n) = (scheme.block(), x.len());
    assert!(
        n.is_multiple_of(block)
            && q.len() == padded(n)
            && scale.len() == padded(n) / GROUP
            && group_sum.len() == n / GROUP,
        "activation buffers"
    );
    quantize_with(
        Quantizer::detect(),
        x,
        scheme,
        &mut q[..n],
        &mut scale[..n / GROUP],
        group_sum,
    );
    layout::to_panels(q, n, block == BLOCK);
    layout::scales_to_panels(scale, n, block == BLOCK);
}

/// The code that quantizes activations: the scalar code's operations,
/// several values at a time where the CPU can, with the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantizer {
    Avx512,
    Avx2,
    Scalar,
}

impl Quantizer {
    /// The best this CPU runs, within what `MOULIN_QUANT_KERNEL` allows.
    fn detect() -> Quantizer {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::Kernel;
            if avx512::available() && Kernel::allows(Kernel::Avx512Vnni) {
                return Quantizer::Avx512;
            }
            if avx2::available() && Kernel::allows(Kernel::Avx2) {
                return Quantizer::Avx2;
            }
        }
        Quantizer::Scalar
    }

    /// Every quantizer this CPU runs, the best first.
    #[cfg(test)]
    fn supported() -> Vec<Quantizer> {
        let mut all = vec![Quantizer::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::available() {
                all.insert(0, Quantizer::Avx2);
            }
            if avx512::available() {
                all.insert(0, Quantizer::Avx512);
            }
        }
        all
    }
}

/// [`quantize_into`]'s work before the reordering, in order, by `with`.
fn quantize_with(
    with: Quantizer,
    x: &[f32],
    scheme: Scheme,
    q: &mut [i8],
    scale: &mut [f32],
    group_sum: &mut [f32],
) {
    let block = scheme.block();
    match with {
        #[cfg(target_arch = "x86_64")]
        Quantizer::Avx512 => {
            for (x, q, scales, sums) in blocks(x, block, q, scale, group_sum) {
                // SAFETY: only detected on CPUs with AVX-512 F and BW; whole blocks.
                unsafe {
                    match scheme {
                        Scheme::Q8K => avx512::block256(x, q, scales, sums),
                        _ => avx512::block32(x, scheme == Scheme::Q8_1, q, scales, sums),
                    }
                };
            }
        }
        #[cfg(target_arch = "x86_64")]
        Quantizer::Avx2 => {
            for (x, q, scales, sums) in blocks(x, block, q, scale, group_sum) {
                // SAFETY: only detected on CPUs with AVX2; whole blocks.
                unsafe {
                    match scheme {
                        Scheme::Q8K => avx2::block256(x, q, scales, sums),
                        _ => avx2::block32(x, scheme == Scheme::Q8_1, q, scales, sums),
                    }
                };
            }
        }
        _ => quantize_scalar(x, scheme, q, scale, group_sum),
    }
}

/// The blocks of `block` values of `x` with their bytes, group scales and
/// group sums, in order.
fn blocks<'a>(
    x: &'a [f32],
    block: usize,
    q: &'a mut [i8],
    scale: &'a mut [f32],
    group_sum: &'a mut [f32],
) -> impl Iterator<Item = (&'a [f32], &'a mut [i8], &'a mut [f32], &'a mut [f32])> {
    x.chunks_exact(block)
        .zip(q.chunks_exact_mut(block))
        .zip(scale.chunks_exact_mut(block / GROUP))
        .zip(group_sum.chunks_exact_mut(block / GROUP))
        .map(|(((x, q), scales), sums)| (x, q, scales, sums))
}

/// [`quantize_into`] in scalar code, for every CPU and scheme, in order.
fn quantize_scalar(
    x: &[f32],
    scheme: Scheme,
    q: &mut [i8],
    scale: &mut [f32],
    group_sum: &mut [f32],
) {
    for (x, q, scales, sums) in blocks(x, scheme.block(), q, scale, group_sum) {
        let d = match scheme {
            Scheme::Q8_0 | Scheme::Q8_1 => {
                // ggml's AVX code: `id = 127 / amax`, rounding to nearest
                // even, the scale kept as f16.
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                for (q, &v) in q.iter_mut().zip(x) {
                    *q = round_even(v * id) as i8;
                }
                f16_to_f32(f16::from_f32(amax / 127.0).to_bits())
            }
            Scheme::Q8K => {
                // ggml's `quantize_row_q8_K_ref`: the scale's sign is the
                // largest value's, so that value maps to -127 exactly.
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in x {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                if amax == 0.0 {
                    q.fill(0);
                    0.0
                } else {
                    let iscale = -127.0 / max;
                    for (q, &v) in q.iter_mut().zip(x) {
                        *q = (round_even(iscale * v) as i32).min(127) as i8;
                    }
                    1.0 / iscale
                }
            }
        };
        scales.fill(d);
        if scheme == Scheme::Q8_1 {
            // One f16 sum per block, `d * Σq` with the unrounded scale: it
            // goes in the block's first group (the weights' min is the
            // same over the block).
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
            sums.fill(0.0);
            sums[0] = f16_to_f32(f16::from_f32(sum as f32 * (amax / 127.0)).to_bits());
        } else {
            for (sum, lane) in sums.iter_mut().zip(q.chunks_exact(GROUP)) {
                let s: i32 = lane.iter().map(|&v| i32::from(v)).sum();
                *sum = d * s as f32;
            }
        }
    }
}

/// Every scheme with AVX-512: the scalar code's operations on 16
/// values at a time (a maximum and integer sums are exact in any order, the
/// rest is value by value), so the same bytes and scales.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{BLOCK, GROUP};
    use crate::formats::f16_to_f32;

    pub fn available() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
        })
    }

    /// One block of 32 values (`Q8_0`, or with `q8_1` its sum).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn block32(
        x: &[f32],
        q8_1: bool,
        q: &mut [i8],
        scales: &mut [f32],
        sums: &mut [f32],
    ) {
        assert!(
            x.len() == BLOCK
                && q.len() == BLOCK
                && scales.len() == BLOCK / GROUP
                && sums.len() == BLOCK / GROUP
        );
        // SAFETY: 32 values in each (asserted).
        let (v0, v1) = unsafe {
            (
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            )
        };
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let magic = _mm512_set1_ps(12_582_912.0);
        let round = |v: __m512| {
            let r = _mm512_sub_ps(
                _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(id)), magic),
                magic,
            );
            _mm512_cvtps_epi32(r)
        };
        let (i0, i1) = (round(v0), round(v1));
        // SAFETY: 16 bytes each, inside `q`.
        unsafe {
            _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(i0));
            _mm_storeu_si128(
                q.as_mut_ptr().add(16) as *mut __m128i,
                _mm512_cvtepi32_epi8(i1),
            );
        }
        let d = f16_to_f32(f16::from_f32(amax / 127.0).to_bits());
        scales.fill(d);
        let (s0, s1) = (_mm512_reduce_add_epi32(i0), _mm512_reduce_add_epi32(i1));
        if q8_1 {
            sums.fill(0.0);
            sums[0] = f16_to_f32(f16::from_f32((s0 + s1) as f32 * (amax / 127.0)).to_bits());
        } else {
            sums[0] = d * s0 as f32;
            sums[1] = d * s1 as f32;
        }
    }

    /// One `Q8K` block of 256 values, as [`super::quantize_scalar`] does it: the
    /// scale's sign is that of the first value of the largest magnitude.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn block256(x: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
        const N: usize = 256 / GROUP;
        assert!(x.len() == 256 && q.len() == 256 && scales.len() == N && sums.len() == N);
        // SAFETY: 256 values (asserted).
        let v: [__m512; N] =
            std::array::from_fn(|i| unsafe { _mm512_loadu_ps(x.as_ptr().add(GROUP * i)) });
        let amax = _mm512_reduce_max_ps(v.iter().fold(_mm512_setzero_ps(), |m, &v| {
            _mm512_max_ps(m, _mm512_abs_ps(v))
        }));
        let first = v.iter().enumerate().find_map(|(i, &v)| {
            let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(v), _mm512_set1_ps(amax));
            (hit != 0).then(|| GROUP * i + hit.trailing_zeros() as usize)
        });
        let Some(first) = first.filter(|_| amax != 0.0 && amax.is_finite()) else {
            // All zeros (or not numbers): as the scalar code has it.
            super::quantize_scalar(x, super::Scheme::Q8K, q, scales, sums);
            return;
        };
        let iscale = -127.0 / x[first];
        let d = 1.0 / iscale;
        let magic = _mm512_set1_ps(12_582_912.0);
        for (i, &v) in v.iter().enumerate() {
            let r = _mm512_sub_ps(
                _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(iscale), v), magic),
                magic,
            );
            let b = _mm512_min_epi32(_mm512_cvtps_epi32(r), _mm512_set1_epi32(127));
            // SAFETY: 16 bytes inside `q` (asserted).
            unsafe {
                _mm_storeu_si128(
                    q.as_mut_ptr().add(GROUP * i) as *mut __m128i,
                    _mm512_cvtepi32_epi8(b),
                )
            };
            sums[i] = d * _mm512_reduce_add_epi32(b) as f32;
        }
        scales.fill(d);
    }
}

/// Every scheme with AVX2, as [`avx512`] does it 8 values at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{BLOCK, GROUP};
    use crate::formats::f16_to_f32;

    pub fn available() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn abs(v: __m256) -> __m256 {
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn max8(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn sum8(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<1>(s));
        _mm_cvtsi128_si32(s)
    }

    /// `v * by` rounded to the nearest integer, ties to even, as
    /// [`super::round_even`] rounds it.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn round(v: __m256, by: __m256) -> __m256i {
        let magic = _mm256_set1_ps(12_582_912.0);
        let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v, by), magic), magic);
        _mm256_cvtps_epi32(r)
    }

    /// Four vectors of 8 integers within ±127 as 32 bytes, in order.
    ///
    /// # Safety
    /// `q` holds 32 bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store32(i: [__m256i; 4], q: *mut i8) {
        // The packs work per 128-bit half: bytes come out as groups of 4 in
        // the order 0 2 4 6 1 3 5 7 of the eight groups, put back in place.
        let words = [
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        ];
        let bytes = _mm256_packs_epi16(words[0], words[1]);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        // SAFETY: the caller's.
        unsafe {
            _mm256_storeu_si256(q as *mut __m256i, _mm256_permutevar8x32_epi32(bytes, order))
        };
    }

    /// One block of 32 values (`Q8_0`, or with `q8_1` its sum).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block32(
        x: &[f32],
        q8_1: bool,
        q: &mut [i8],
        scales: &mut [f32],
        sums: &mut [f32],
    ) {
        assert!(
            x.len() == BLOCK
                && q.len() == BLOCK
                && scales.len() == BLOCK / GROUP
                && sums.len() == BLOCK / GROUP
        );
        // SAFETY: 32 values (asserted).
        let v: [__m256; 4] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
        let amax = max8(_mm256_max_ps(
            _mm256_max_ps(abs(v[0]), abs(v[1])),
            _mm256_max_ps(abs(v[2]), abs(v[3])),
        ));
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let i = v.map(|v| round(v, id));
        // SAFETY: 32 bytes (asserted).
        unsafe { store32(i, q.as_mut_ptr()) };
        let d = f16_to_f32(f16::from_f32(amax / 127.0).to_bits());
        scales.fill(d);
        let (s0, s1) = (
            sum8(_mm256_add_epi32(i[0], i[1])),
            sum8(_mm256_add_epi32(i[2], i[3])),
        );
        if q8_1 {
            sums.fill(0.0);
            sums[0] = f16_to_f32(f16::from_f32((s0 + s1) as f32 * (amax / 127.0)).to_bits());
        } else {
            sums[0] = d * s0 as f32;
            sums[1] = d * s1 as f32;
        }
    }

    /// One `Q8K` block of 256 values (see [`super::avx512::block256`]).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block256(x: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
        const N: usize = 256 / 8;
        assert!(x.len() == 256 && q.len() == 256 && scales.len() == 16 && sums.len() == 16);
        // SAFETY: 256 values (asserted).
        let v: [__m256; N] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
        let amax = max8(
            v.iter()
                .fold(_mm256_setzero_ps(), |m, &v| _mm256_max_ps(m, abs(v))),
        );
        let first = v.iter().enumerate().find_map(|(i, &v)| {
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs(v), _mm256_set1_ps(amax)));
            (hit != 0).then(|| 8 * i + hit.trailing_zeros() as usize)
        });
        let Some(first) = first.filter(|_| amax != 0.0 && amax.is_finite()) else {
            // All zeros (or not numbers): as the scalar code has it.
            super::quantize_scalar(x, super::Scheme::Q8K, q, scales, sums);
            return;
        };
        let iscale = -127.0 / x[first];
        let d = 1.0 / iscale;
        let by = _mm256_set1_ps(iscale);
        for (g, v) in v.chunks_exact(4).enumerate() {
            let i: [__m256i; 4] =
                std::array::from_fn(|k| _mm256_min_epi32(round(v[k], by), _mm256_set1_epi32(127)));
            // SAFETY: bytes `32g..32g + 32` of the 256 (asserted).
            unsafe { store32(i, q.as_mut_ptr().add(32 * g)) };
            sums[2 * g] = d * sum8(_mm256_add_epi32(i[0], i[1])) as f32;
            sums[2 * g + 1] = d * sum8(_mm256_add_epi32(i[2], i[3])) as f32;
        }
        scales.fill(d);
    }
}

/// One quantized row, as [`Activations`] keeps it.
#[derive(Clone, Copy)]
pub struct ActivationRow<'a> {
    /// Signed bytes in panel order, padded.
    pub q: &'a [i8],
    /// Per group, in panel order, padded: its block's scale.
    pub scale: &'a [f32],
    /// Per group, in order: scale × the sum of its bytes.
    pub group_sum: &'a [f32],
    /// `q` plus 128 ([`shift_into`]), or empty: what the kernels that
    /// [`crate::Kernel::shifts`] for a weight type read instead of `q`.
    pub shifted: &'a [u8],
}

impl ActivationRow<'_> {
    /// Values in the row.
    pub fn len(&self) -> usize {
        self.group_sum.len() * GROUP
    }

    pub fn is_empty(&self) -> bool {
        self.group_sum.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::round_even;

    /// Every vector quantization this CPU runs (AVX-512, AVX2) gives the
    /// scalar code's very bytes, scales and sums, and so does
    /// [`quantize_into`] after its reordering.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_quantization_gives_the_scalar_bits() {
        use super::{Quantizer, Scheme, quantize_into, quantize_scalar, quantize_with};
        let vector: Vec<Quantizer> = Quantizer::supported()
            .into_iter()
            .filter(|&q| q != Quantizer::Scalar)
            .collect();
        assert!(!vector.is_empty(), "this test needs AVX2");
        let mut s = 0x9E37_79B9_7F4A_7C15_u64;
        let mut x: Vec<f32> = (0..32 * 64)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // Magnitudes from 1e-3 to 1e3, and 256 zeros.
                let m = 10f32.powi((s % 7) as i32 - 3);
                if i < 256 {
                    0.0
                } else {
                    ((s >> 11) as f32 / (1u64 << 53) as f32 - 0.5) * m
                }
            })
            .collect();
        x[300] = 2.5 * 127.0 / 3.0; // a value that rounds on a tie-ish edge
        // Two largest magnitudes of opposite signs: the first sets the sign.
        (x[600], x[601]) = (-5e3, 5e3);
        (x[800], x[801]) = (5e3, -5e3);
        for scheme in [Scheme::Q8_0, Scheme::Q8_1, Scheme::Q8K] {
            let n = x.len();
            let mut a = (vec![0i8; n], vec![0f32; n / 16], vec![0f32; n / 16]);
            let mut b = (vec![0i8; n], vec![0f32; n / 16], vec![0f32; n / 16]);
            quantize_scalar(&x, scheme, &mut a.0, &mut a.1, &mut a.2);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for &with in &vector {
                quantize_with(with, &x, scheme, &mut b.0, &mut b.1, &mut b.2);
                assert_eq!(a.0, b.0, "{with:?} {scheme:?}");
                assert_eq!(bits(&a.1), bits(&b.1), "{with:?} {scheme:?}");
                assert_eq!(bits(&a.2), bits(&b.2), "{with:?} {scheme:?}");
            }
            let paired = scheme != Scheme::Q8K;
            crate::layout::to_panels(&mut a.0, n, paired);
            crate::layout::scales_to_panels(&mut a.1, n, paired);
            quantize_into(&x, scheme, &mut b.0, &mut b.1, &mut b.2);
            assert_eq!(a.0, b.0, "{scheme:?}");
            assert_eq!(bits(&a.1), bits(&b.1), "{scheme:?}");
            assert_eq!(bits(&a.2), bits(&b.2), "{scheme:?}");
        }
    }

    #[test]
    fn rounding_is_ties_to_even() {
        for i in -300_000..300_000 {
            let x = i as f32 / 1024.0;
            assert_eq!(round_even(x), x.round_ties_even(), "{x}");
        }
        assert_eq!(round_even(2.5), 2.0);
        assert_eq!(round_even(-3.5), -4.0);
    }
}
