//! Weight blocks unpacked for integer dot products: one byte per value and,
//! per group of 16 values, a scale and a min, so that every type reads
//! `value = scale * q - min`. The symmetric types (Q4_0, Q5_0, Q8_0, Q3_K,
//! Q6_K: `value = d (q - offset)`) keep `q - offset` as a signed byte and no
//! min ([`Unpacked::signed`]), which is what llama.cpp multiplies: the kernels
//! multiply it with the inputs plus 128 and subtract 128 × its sums
//! ([`Unpacked::offset_sums`]), or (blocks decoded in registers, and AVX2's Q8_0) take
//! its magnitude as the unsigned operand and move its sign onto the input;
//! AVX2's decoding kernel multiplies Q4_0's and Q5_0's values as stored
//! (`block_stored`) and subtracts the offset times the inputs' sums.
//! The others keep an unsigned byte and their min.
//!
//! The bytes and scales are then put in the kernels' panel order
//! ([`crate::layout`]); the mins stay in order.
//!
//! This is plain scalar code in a crate built with full optimisation: the
//! compiler vectorises it, with AVX-512 where the calling kernel enables it.

use crate::formats::{GgmlType, f16_to_f32, q3k_scales, scale_min_k4};
use crate::layout::{Aligned, aligned, padded, scales_to_panels, to_panels};

pub use crate::activations::GROUP;

/// An unpacked row of `len` values: `q` for every value and `scale` per
/// group of 16, in panel order (padded), `min` per group in order.
pub struct Unpacked {
    pub len: usize,
    pub q: Aligned<u8>,
    pub scale: Aligned<f32>,
    pub min: Aligned<f32>,
    /// Per group, in panel order like `scale`: 128 × the sum of its signed
    /// values, for kernels that offset their inputs by 128 to multiply them
    /// as unsigned bytes. Filled by those kernels, once per unpacked row.
    /// (In an input's natural-order copy, AVX2's decoding kernel keeps its
    /// offset corrections here: `kernels::avx2::offset_corrections`.)
    pub offset_sums: Aligned<i32>,
    /// `q` holds signed bytes and `min` is zero (a symmetric type).
    pub signed: bool,
    /// A K-quant's row: its inputs (`Q8_K`) have one scale per 256 values,
    /// which the kernels apply once per 256 values instead of per product.
    pub superblocks: bool,
    /// Some bytes may lie outside ±32 (Q8_0): the AVX2 kernel cannot add
    /// several steps' 16-bit pair sums before widening them.
    pub wide: bool,
    /// Every byte lies within ±16 (Q4_0, Q4_1, Q5_0 and the K-quants of 2
    /// to 4 bits): the AVX2 kernel can add twice as many steps' pair sums
    /// before widening them as for other types.
    pub narrow: bool,
}

/// Whether every unpacked byte of `kind` lies within ±16 ([`Unpacked::narrow`]).
pub const fn narrow(kind: GgmlType) -> bool {
    matches!(
        kind,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
    )
}

/// What a symmetric type's stored value is offset by (`value = d (q - offset)`).
pub const fn offset(kind: GgmlType) -> Option<u8> {
    match kind {
        GgmlType::Q4_0 => Some(8),
        GgmlType::Q5_0 => Some(16),
        GgmlType::Q8_0 => Some(128),
        GgmlType::Q3K => Some(4),
        GgmlType::Q6K => Some(32),
        _ => None,
    }
}

impl Unpacked {
    pub fn with_len(values: usize) -> Self {
        Unpacked {
            len: values,
            q: aligned(0, padded(values)),
            scale: aligned(0.0, padded(values) / GROUP),
            min: aligned(0.0, values / GROUP),
            offset_sums: aligned(0, padded(values) / GROUP),
            signed: false,
            superblocks: false,
            wide: false,
            narrow: false,
        }
    }
}

/// Unpack the whole row `bytes` of `kind` into `out` (sized for it), in
/// panel order. `f16c`: the caller is compiled with the F16C instructions
/// (one instruction per scale instead of a dozen); a constant once inlined.
#[inline(always)]
pub fn unpack_row(kind: GgmlType, f16c: bool, bytes: &[u8], out: &mut Unpacked) {
    let (per, size) = (kind.block_size(), kind.block_bytes());
    assert_eq!(bytes.len() / size * per, out.len, "unpacked row length");
    out.superblocks = per == crate::formats::QK_K;
    out.signed = offset(kind).is_some();
    out.wide = kind == GgmlType::Q8_0;
    out.narrow = narrow(kind);
    #[cfg(target_arch = "x86_64")]
    if f16c {
        let n = out.len;
        // SAFETY: `f16c` is only set by kernels compiled with (and chosen
        // for CPUs with) AVX2 and F16C; whole blocks in, the row's values
        // and groups out (checked above).
        let done = unsafe {
            match kind {
                // One copy of the loop per type: no per-block `match`.
                GgmlType::Q4_0 => {
                    simd::small_row::<2>(bytes, out);
                    true
                }
                GgmlType::Q4_1 => {
                    simd::small_row::<3>(bytes, out);
                    true
                }
                GgmlType::Q5_0 if simd::masks() => {
                    simd::small_row_masked::<6>(bytes, out);
                    true
                }
                GgmlType::Q5_0 => {
                    simd::small_row::<6>(bytes, out);
                    true
                }
                GgmlType::Q5_1 if simd::masks() => {
                    simd::small_row_masked::<7>(bytes, out);
                    true
                }
                GgmlType::Q5_1 => {
                    simd::small_row::<7>(bytes, out);
                    true
                }
                GgmlType::Q8_0 => {
                    simd::small_row::<8>(bytes, out);
                    true
                }
                GgmlType::Q6K => {
                    for (i, block) in bytes.chunks_exact(size).enumerate() {
                        simd::q6k(block, &mut out.q[i * per..], &mut out.scale[i * 16..]);
                    }
                    out.min[..n / GROUP].fill(0.0);
                    true
                }
                GgmlType::Q4K | GgmlType::Q5K => {
                    for (i, block) in bytes.chunks_exact(size).enumerate() {
                        let (scale, min) = (&mut out.scale[i * 16..], &mut out.min[i * 16..]);
                        simd::q4k(
                            block,
                            kind == GgmlType::Q5K,
                            &mut out.q[i * per..],
                            scale,
                            min,
                        );
                    }
                    true
                }
                _ => false,
            }
        };
        if done {
            return;
        }
    }
    unpack_in_order(kind, f16c, bytes, out);
    let paired = kind.block_size() == 32;
    to_panels(&mut out.q, out.len, paired);
    scales_to_panels(&mut out.scale, out.len, paired);
}

/// [`unpack_row`] in scalar code, before the reordering.
#[inline(always)]
fn unpack_in_order(kind: GgmlType, f16c: bool, bytes: &[u8], out: &mut Unpacked) {
    let (per, size) = (kind.block_size(), kind.block_bytes());
    let groups = per / GROUP;
    for (i, block) in bytes.chunks_exact(size).enumerate() {
        let q = &mut out.q[i * per..(i + 1) * per];
        let scale = &mut out.scale[i * groups..(i + 1) * groups];
        let min = &mut out.min[i * groups..(i + 1) * groups];
        unpack_block(kind, f16c, block, q, scale, min);
    }
    out.signed = offset(kind).is_some();
    out.wide = kind == GgmlType::Q8_0;
    out.narrow = narrow(kind);
    if let Some(offset) = offset(kind) {
        let n = bytes.len() / size * per;
        for q in &mut out.q[..n] {
            *q = q.wrapping_sub(offset);
        }
        out.min[..n / GROUP].fill(0.0);
    }
}

/// The f16 at `b[at..at + 2]` as f32.
#[inline(always)]
fn half(f16c: bool, b: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([b[at], b[at + 1]]);
    #[cfg(target_arch = "x86_64")]
    if f16c {
        use std::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
        // SAFETY: `f16c` is only set by kernels compiled with (and chosen
        // for CPUs with) the F16C instructions.
        return unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h)))) };
    }
    f16_to_f32(h)
}

/// Eight bytes from `b[at..]` as one little-endian word.
#[inline(always)]
fn load8(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[inline(always)]
fn store8(q: &mut [u8], at: usize, v: u64) {
    q[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A byte's low bit in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;

/// The words below work on eight values at once (SWAR): the compiler keeps
/// them in registers whatever it manages to vectorise.
#[inline(always)]
fn unpack_block(
    kind: GgmlType,
    f16c: bool,
    b: &[u8],
    q: &mut [u8],
    scale: &mut [f32],
    min: &mut [f32],
) {
    let half = |b: &[u8], at: usize| half(f16c, b, at);
    const LOW: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    match kind {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let d = half(b, 0);
            let (m, at) = if kind == GgmlType::Q4_0 {
                (8.0 * d, 2)
            } else {
                (-half(b, 2), 4)
            };
            // Fixed-size arrays: the compiler sees the whole block and turns
            // these loops into a few vector instructions and one store.
            let src: [u8; 16] = b[at..at + 16].try_into().expect("16 bytes");
            let mut out = [0u8; 32];
            for j in 0..16 {
                out[j] = src[j] & 0x0F;
                out[j + 16] = src[j] >> 4;
            }
            q[..32].copy_from_slice(&out);
            scale[..2].copy_from_slice(&[d, d]);
            min[..2].copy_from_slice(&[m, m]);
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let d = half(b, 0);
            let (m, h, at) = if kind == GgmlType::Q5_0 {
                (16.0 * d, 2, 6)
            } else {
                (-half(b, 2), 4, 8)
            };
            // High bit j of value j (j < 32) is bit j of the 32-bit word.
            for i in 0..2 {
                let v = load8(b, at + 8 * i);
                let low_high = spread(b[h + i]) << 4;
                let high_high = spread(b[h + 2 + i]) << 4;
                store8(q, 8 * i, (v & LOW) | low_high);
                store8(q, 16 + 8 * i, ((v >> 4) & LOW) | high_high);
            }
            scale[..2].copy_from_slice(&[d, d]);
            min[..2].copy_from_slice(&[m, m]);
        }
        GgmlType::Q8_0 => {
            let d = half(b, 0);
            let src: [u8; 32] = b[2..34].try_into().expect("32 bytes");
            let mut out = [0u8; 32];
            for j in 0..32 {
                out[j] = src[j] ^ 0x80; // (v as i8) + 128
            }
            q[..32].copy_from_slice(&out);
            scale[..2].copy_from_slice(&[d, d]);
            min[..2].copy_from_slice(&[128.0 * d, 128.0 * d]);
        }
        GgmlType::Q2K => {
            let (d, dmin) = (half(b, 80), half(b, 82));
            for g in 0..16 {
                scale[g] = d * f32::from(b[g] & 0x0F);
                min[g] = dmin * f32::from(b[g] >> 4);
            }
            for n in 0..2 {
                for i in 0..4 {
                    let v = load8(b, 16 + 32 * n + 8 * i);
                    for s in 0..4 {
                        store8(q, 128 * n + 32 * s + 8 * i, (v >> (2 * s)) & (3 * ONES));
                    }
                }
            }
        }
        GgmlType::Q3K => {
            let scales = q3k_scales(&b[96..108]);
            let d = half(b, 108);
            for g in 0..16 {
                let s = d * f32::from(scales[g]);
                scale[g] = s;
                min[g] = 4.0 * s;
            }
            for n in 0..2 {
                for i in 0..4 {
                    let v = load8(b, 32 + 32 * n + 8 * i);
                    let h = load8(b, 8 * i);
                    for s in 0..4 {
                        let bit = 4 * n + s;
                        let low = (v >> (2 * s)) & (3 * ONES);
                        let high = ((h >> bit) & ONES) << 2;
                        store8(q, 128 * n + 32 * s + 8 * i, low | high);
                    }
                }
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let scales = &b[4..16];
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, scales);
                let (s, m) = (d * f32::from(s), dmin * f32::from(m));
                scale[2 * j..2 * j + 2].fill(s);
                min[2 * j..2 * j + 2].fill(m);
            }
            let five = kind == GgmlType::Q5K;
            let at = if five { 48 } else { 16 };
            for j in 0..4 {
                for i in 0..4 {
                    let v = load8(b, at + 32 * j + 8 * i);
                    let (mut lo, mut hi) = (v & LOW, (v >> 4) & LOW);
                    if five {
                        let h = load8(b, 16 + 8 * i);
                        lo |= ((h >> (2 * j)) & ONES) << 4;
                        hi |= ((h >> (2 * j + 1)) & ONES) << 4;
                    }
                    store8(q, 64 * j + 8 * i, lo);
                    store8(q, 64 * j + 32 + 8 * i, hi);
                }
            }
        }
        GgmlType::Q6K => {
            let d = half(b, 208);
            for g in 0..16 {
                let s = d * f32::from(b[192 + g] as i8);
                scale[g] = s;
                min[g] = 32.0 * s;
            }
            for n in 0..2 {
                for i in 0..4 {
                    let l0 = load8(b, 64 * n + 8 * i);
                    let l1 = load8(b, 64 * n + 32 + 8 * i);
                    let h = load8(b, 128 + 32 * n + 8 * i);
                    let three = 3 * ONES;
                    let base = 128 * n + 8 * i;
                    store8(q, base, (l0 & LOW) | ((h & three) << 4));
                    store8(q, base + 32, (l1 & LOW) | (((h >> 2) & three) << 4));
                    store8(q, base + 64, ((l0 >> 4) & LOW) | (((h >> 4) & three) << 4));
                    store8(q, base + 96, ((l1 >> 4) & LOW) | (((h >> 6) & three) << 4));
                }
            }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {
            unreachable!("float types are not unpacked: QuantMatrix refuses them")
        }
    }
}

/// Blocks unpacked with AVX2, into the very bytes and floats
/// [`unpack_block`] gives (and `unpack_row`'s signed bytes for the symmetric
/// types): the same scale arithmetic, in vectors, put in panel order in
/// registers before they are stored.
#[cfg(target_arch = "x86_64")]
pub(crate) use simd::{block_scales, block_stored, block_values};

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{GROUP, Unpacked};
    use crate::formats::GgmlType;
    use crate::layout::{MINI, PAIR, PANEL, transpose_128, transpose_256};

    /// Whether the CPU has AVX-512's byte masks ([`small_row_masked`]).
    pub fn masks() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && crate::Kernel::allows(crate::Kernel::Avx512Vnni)
        })
    }

    /// A panel's 256 values, given in order as eight vectors of 32, stored
    /// in panel order at `q`.
    ///
    /// # Safety
    /// The CPU has AVX2; `q` holds 256 bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store_panel(v: [__m256i; 8], q: *mut u8) {
        for half in 0..2 {
            let steps = transpose_256([v[half], v[2 + half], v[4 + half], v[6 + half]]);
            for (s, step) in steps.into_iter().enumerate() {
                // SAFETY: the caller's.
                unsafe { _mm256_storeu_si256(q.add(64 * s + 32 * half) as *mut __m256i, step) };
            }
        }
    }

    /// A panel's scales, one per 32 values (`v[j]` for groups `2j`, `2j + 1`),
    /// stored in panel order (lane `4c + j` is group `4j + c`).
    ///
    /// # Safety
    /// The CPU has AVX2; `out` holds 16 floats.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store_panel_pairs(v: __m256, out: &mut [f32]) {
        assert!(out.len() >= 16);
        let lo = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
        let hi = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7));
        // SAFETY: sixteen floats (asserted).
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), lo);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), hi);
        }
    }

    /// The f16 scales at the start of eight blocks of `size` bytes from `b`,
    /// as f32: gathered into one vector and converted at once (built from
    /// eight scalars, the vector would wait on their stores).
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; eight whole blocks at `b`.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub unsafe fn block_scales(b: *const u8, size: usize) -> __m256 {
        // SAFETY: the caller's: two bytes at the start of each block.
        let h = |i: usize| {
            i32::from(unsafe { std::ptr::read_unaligned(b.add(i * size) as *const u16) })
        };
        let mut v = _mm_cvtsi32_si128(h(0));
        v = _mm_insert_epi16::<1>(v, h(1));
        v = _mm_insert_epi16::<2>(v, h(2));
        v = _mm_insert_epi16::<3>(v, h(3));
        v = _mm_insert_epi16::<4>(v, h(4));
        v = _mm_insert_epi16::<5>(v, h(5));
        v = _mm_insert_epi16::<6>(v, h(6));
        v = _mm_insert_epi16::<7>(v, h(7));
        _mm256_cvtph_ps(v)
    }

    /// Eight f32 `v[j]` as sixteen, `v[j]` at `2j` and `2j + 1`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store_pairs(v: __m256, out: &mut [f32]) {
        assert!(out.len() >= 16);
        let lo = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
        let hi = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
        // SAFETY: sixteen floats (asserted).
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), lo);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), hi);
        }
    }

    /// Eight bytes as f32, times `d`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn times(bytes: u64, d: f32) -> __m256 {
        let v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes as i64));
        _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(d))
    }

    /// One Q4_K (or, `five`, Q5_K) block: 256 values into `q`, 16 scales
    /// and mins.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub unsafe fn q4k(b: &[u8], five: bool, q: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        assert!(b.len() >= if five { 176 } else { 144 } && q.len() >= 256);
        let (d, dmin) = (super::half(true, b, 0), super::half(true, b, 2));
        // The twelve bytes of 6-bit scales and mins, as `scale_min_k4` reads
        // them, eight of each at once.
        let word = |i: usize| u32::from_le_bytes(b[4 + 4 * i..8 + 4 * i].try_into().expect("4"));
        let (w0, w1, w2) = (word(0), word(1), word(2));
        const LOW6: u32 = 0x3F3F_3F3F;
        const LOW4: u32 = 0x0F0F_0F0F;
        const LOW2: u32 = 0x0303_0303;
        let scales =
            u64::from(w0 & LOW6) | u64::from((w2 & LOW4) | (((w0 >> 6) & LOW2) << 4)) << 32;
        let mins =
            u64::from(w1 & LOW6) | u64::from(((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4)) << 32;
        // SAFETY: sixteen floats each (the caller's).
        unsafe {
            store_panel_pairs(times(scales, d), scale);
            store_pairs(times(mins, dmin), min);
        }
        let low = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        let at = if five { 48 } else { 16 };
        let mut pieces = [_mm256_setzero_si256(); 8];
        // SAFETY: bytes `at..at + 128` (and the high bits at 16..48) inside
        // the block, values `0..256` inside `q` (asserted).
        unsafe {
            let high = _mm256_loadu_si256(b.as_ptr().add(16) as *const __m256i);
            for j in 0..4 {
                let v = _mm256_loadu_si256(b.as_ptr().add(at + 32 * j) as *const __m256i);
                let mut lo = _mm256_and_si256(v, low);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                if five {
                    let bit = |s: usize| {
                        let h = _mm256_srl_epi16(high, _mm_cvtsi32_si128(s as i32));
                        _mm256_slli_epi16(_mm256_and_si256(h, one), 4)
                    };
                    lo = _mm256_or_si256(lo, bit(2 * j));
                    hi = _mm256_or_si256(hi, bit(2 * j + 1));
                }
                (pieces[2 * j], pieces[2 * j + 1]) = (lo, hi);
            }
            store_panel(pieces, q.as_mut_ptr());
        }
    }

    /// A row of blocks of 32 values (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), eight
    /// blocks to a panel (two to a mini-panel), into `out`.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; `out` sized for the row.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub unsafe fn small_row<const T: u32>(bytes: &[u8], out: &mut Unpacked) {
        // SAFETY: the caller's.
        unsafe { small_row_with::<T, false>(bytes, out) }
    }

    /// [`small_row`] with AVX-512's byte masks for Q5_0's and Q5_1's high
    /// bits (one instruction instead of five).
    ///
    /// # Safety
    /// The CPU has AVX2, F16C and AVX-512 F, BW and VL; `out` sized for the row.
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn small_row_masked<const T: u32>(bytes: &[u8], out: &mut Unpacked) {
        // SAFETY: the caller's.
        unsafe { small_row_with::<T, true>(bytes, out) }
    }

    /// The body of [`small_row`] and [`small_row_masked`] (`MASKS`), inlined
    /// into each so that it gets its instructions.
    ///
    /// # Safety
    /// As theirs.
    #[inline(always)]
    unsafe fn small_row_with<const T: u32, const MASKS: bool>(bytes: &[u8], out: &mut Unpacked) {
        // SAFETY: the caller's: the CPU has the instructions (a vector
        // instruction needs no more here).
        #[allow(unused_unsafe)]
        unsafe {
            let size = const { GgmlType::from_supported_id(T).block_bytes() };
            let n = bytes.len() / size * 32;
            let full = n / PANEL * PANEL;
            assert!(out.q.len() >= crate::layout::padded(n) && out.min.len() >= n / GROUP);
            let block = |i: usize| &bytes[i * size..(i + 1) * size];
            let pairs = crate::layout::pairs_end(n, true);
            for p in (0..pairs).step_by(PAIR) {
                let mut q = [_mm256_setzero_si256(); 16];
                for (i, q) in q.iter_mut().enumerate() {
                    let blk = p / 32 + i;
                    // SAFETY: a whole block (`block` slices it).
                    let (v, _, min) = unsafe { small::<T, MASKS>(block(blk)) };
                    *q = v;
                    out.min[2 * blk..2 * blk + 2].copy_from_slice(&[min, min]);
                }
                // SAFETY: the pair's sixteen blocks, and its 512 bytes and 32
                // groups inside `out`.
                unsafe {
                    // Panel `h` is a panel of the blocks' halves `h` (see `layout`).
                    for h in 0..2 {
                        let v: [__m256i; 8] = std::array::from_fn(|i| {
                            if h == 0 {
                                _mm256_permute2x128_si256::<0x20>(q[2 * i], q[2 * i + 1])
                            } else {
                                _mm256_permute2x128_si256::<0x31>(q[2 * i], q[2 * i + 1])
                            }
                        });
                        store_panel(v, out.q.as_mut_ptr().add(p + PANEL * h));
                    }
                    let at = bytes.as_ptr().add(p / 32 * size);
                    let mut d = [0f32; 16];
                    _mm256_storeu_ps(d.as_mut_ptr(), block_scales(at, size));
                    _mm256_storeu_ps(d.as_mut_ptr().add(8), block_scales(at.add(8 * size), size));
                    // Block `4j + c` in lane `4c + j`, in both panels.
                    let lanes: [f32; 16] = std::array::from_fn(|l| d[4 * (l % 4) + l / 4]);
                    let g = p / GROUP;
                    out.scale[g..g + 16].copy_from_slice(&lanes);
                    out.scale[g + 16..g + 32].copy_from_slice(&lanes);
                }
            }
            for p in (pairs..full).step_by(PANEL) {
                let mut v = [_mm256_setzero_si256(); 8];
                for (i, v) in v.iter_mut().enumerate() {
                    let blk = p / 32 + i;
                    // SAFETY: a whole block (`block` slices it).
                    let (q, _, min) = unsafe { small::<T, MASKS>(block(blk)) };
                    *v = q;
                    out.min[2 * blk..2 * blk + 2].copy_from_slice(&[min, min]);
                }
                // SAFETY: the panel's eight blocks, and its 256 bytes and 16
                // groups inside `out`.
                unsafe {
                    let d = block_scales(bytes.as_ptr().add(p / 32 * size), size);
                    store_panel(v, out.q.as_mut_ptr().add(p));
                    store_panel_pairs(d, &mut out.scale[p / GROUP..]);
                }
            }
            for m in (full..n).step_by(MINI) {
                let blk = m / 32;
                // SAFETY: whole blocks.
                let (q0, d0, m0) = unsafe { small::<T, MASKS>(block(blk)) };
                let (q1, d1) = if m + MINI <= n {
                    // SAFETY: a whole block.
                    let (q1, d1, m1) = unsafe { small::<T, MASKS>(block(blk + 1)) };
                    out.min[2 * blk + 2..2 * blk + 4].copy_from_slice(&[m1, m1]);
                    (q1, d1)
                } else {
                    (_mm256_setzero_si256(), 0.0)
                };
                out.min[2 * blk..2 * blk + 2].copy_from_slice(&[m0, m0]);
                let groups = [
                    _mm256_castsi256_si128(q0),
                    _mm256_extracti128_si256::<1>(q0),
                    _mm256_castsi256_si128(q1),
                    _mm256_extracti128_si256::<1>(q1),
                ];
                for (s, step) in transpose_128(groups).into_iter().enumerate() {
                    // SAFETY: the mini-panel's 64 bytes, inside `out` (padded).
                    unsafe {
                        _mm_storeu_si128(out.q.as_mut_ptr().add(m + 16 * s) as *mut __m128i, step)
                    };
                }
                out.scale[m / GROUP..m / GROUP + 4].copy_from_slice(&[d0, d0, d1, d1]);
            }
        }
    }

    /// A block's values as [`small`] gives them, without AVX-512, for
    /// kernels that decode blocks in registers: from a pointer, so that their
    /// loops over a row's blocks carry no bounds checks.
    ///
    /// # Safety
    /// The CPU has AVX2; a whole block at `b`.
    #[inline(always)]
    pub unsafe fn block_values<const T: u32>(b: *const u8) -> __m256i {
        // SAFETY: the caller's.
        unsafe { values::<T, false, false>(b) }
    }

    /// Q4_0's and Q5_0's block at `b` as stored: its values plus their
    /// offset ([`super::offset`]: 8, 16), unsigned bytes.
    ///
    /// # Safety
    /// As [`block_values`].
    #[inline(always)]
    pub unsafe fn block_stored<const T: u32>(b: *const u8) -> __m256i {
        // SAFETY: the caller's.
        unsafe { values::<T, false, true>(b) }
    }

    /// One block of 32 values (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): its values
    /// (signed bytes for the symmetric Q4_0, Q5_0 and Q8_0, with no min),
    /// scale and min.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[inline(always)]
    unsafe fn small<const T: u32, const MASKS: bool>(b: &[u8]) -> (__m256i, f32, f32) {
        let kind = const { GgmlType::from_supported_id(T) };
        assert!(b.len() >= kind.block_bytes());
        let d = super::half(true, b, 0);
        // SAFETY: the block's bytes (asserted).
        let v = unsafe { values::<T, MASKS, false>(b.as_ptr()) };
        let m = if matches!(kind, GgmlType::Q4_1 | GgmlType::Q5_1) {
            -super::half(true, b, 2)
        } else {
            0.0
        };
        (v, d, m)
    }

    /// [`small`]'s values of the block at `b`; `STORED`: Q4_0's and Q5_0's
    /// without their offset subtracted (and not with `MASKS`).
    ///
    /// # Safety
    /// The CPU has AVX2 (and AVX-512 BW and VL where `MASKS`); a whole block
    /// at `b`.
    #[inline(always)]
    unsafe fn values<const T: u32, const MASKS: bool, const STORED: bool>(b: *const u8) -> __m256i {
        let kind = const { GgmlType::from_supported_id(T) };
        const {
            assert!(
                !(MASKS && STORED),
                "the masked Q5 path subtracts the offset"
            )
        };
        // SAFETY: the block's bytes (the caller's).
        unsafe {
            match kind {
                GgmlType::Q8_0 => _mm256_loadu_si256(b.add(2) as *const __m256i),
                _ => {
                    // Where the nibbles are, and for Q5 the 32 high bits.
                    let (at, high) = match kind {
                        GgmlType::Q4_0 => (2, None),
                        GgmlType::Q4_1 => (4, None),
                        GgmlType::Q5_0 => (6, Some(2)),
                        _ => (8, Some(4)),
                    };
                    let v = _mm_loadu_si128(b.add(at) as *const __m128i);
                    let low = _mm_set1_epi8(0x0F);
                    let mut v = _mm256_set_m128i(
                        _mm_and_si128(_mm_srli_epi16(v, 4), low),
                        _mm_and_si128(v, low),
                    );
                    if let (Some(h), true) = (high, MASKS) {
                        // The word is a byte mask: Q5_0's value is `q - 16`
                        // where its high bit is clear, the nibble where it is
                        // set; Q5_1's is the nibble plus 16 where it is set.
                        let h = std::ptr::read_unaligned(b.add(h) as *const u32);
                        let sixteen = _mm256_set1_epi8(16);
                        return if kind == GgmlType::Q5_0 {
                            _mm256_mask_sub_epi8(v, !h, v, sixteen)
                        } else {
                            _mm256_mask_add_epi8(v, h, v, sixteen)
                        };
                    }
                    if let Some(h) = high {
                        // Bit j of the word onto value j: byte j / 8 of it
                        // in byte j, tested against bit j % 8.
                        let h = std::ptr::read_unaligned(b.add(h) as *const u32);
                        let which = _mm256_setr_epi8(
                            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                            3, 3, 3, 3, 3, 3, 3, 3,
                        );
                        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(h as i32), which);
                        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
                        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
                        v = _mm256_or_si256(v, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
                    }
                    match kind {
                        _ if STORED => v,
                        GgmlType::Q4_0 => _mm256_sub_epi8(v, _mm256_set1_epi8(8)),
                        GgmlType::Q5_0 => _mm256_sub_epi8(v, _mm256_set1_epi8(16)),
                        _ => v,
                    }
                }
            }
        }
    }

    /// One Q6_K block: 256 values as signed bytes (`q - 32`) into `q`, 16
    /// scales.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub unsafe fn q6k(b: &[u8], q: &mut [u8], scale: &mut [f32]) {
        assert!(b.len() >= 210 && q.len() >= 256 && scale.len() >= 16);
        let d = _mm256_set1_ps(super::half(true, b, 208));
        let low = _mm256_set1_epi8(0x0F);
        let three = _mm256_set1_epi8(3);
        let offset = _mm256_set1_epi8(32);
        // SAFETY: bytes `0..210` of the block, values `0..256` and sixteen
        // scales (asserted).
        unsafe {
            let scales: [__m256; 2] = std::array::from_fn(|k| {
                let s = _mm_loadl_epi64(b.as_ptr().add(192 + 8 * k) as *const __m128i);
                _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s)))
            });
            // Panel order: groups 0, 4, 8, 12, 1, 5, 9, 13 (of the first
            // eight and the second), then 2, 6, 10, 14, 3, 7, 11, 15.
            for (k, idx) in [
                _mm256_setr_epi32(0, 4, 0, 4, 1, 5, 1, 5),
                _mm256_setr_epi32(2, 6, 2, 6, 3, 7, 3, 7),
            ]
            .into_iter()
            .enumerate()
            {
                let v = _mm256_blend_ps::<0b1100_1100>(
                    _mm256_permutevar8x32_ps(scales[0], idx),
                    _mm256_permutevar8x32_ps(scales[1], idx),
                );
                _mm256_storeu_ps(scale.as_mut_ptr().add(8 * k), v);
            }
            let mut v = [_mm256_setzero_si256(); 8];
            for n in 0..2 {
                let p = b.as_ptr();
                let l0 = _mm256_loadu_si256(p.add(64 * n) as *const __m256i);
                let l1 = _mm256_loadu_si256(p.add(64 * n + 32) as *const __m256i);
                let h = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
                let top = |s: i32| {
                    let h = _mm256_srl_epi16(h, _mm_cvtsi32_si128(s));
                    _mm256_slli_epi16(_mm256_and_si256(h, three), 4)
                };
                let parts = [
                    _mm256_or_si256(_mm256_and_si256(l0, low), top(0)),
                    _mm256_or_si256(_mm256_and_si256(l1, low), top(2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low), top(4)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low), top(6)),
                ];
                for (i, part) in parts.into_iter().enumerate() {
                    v[4 * n + i] = _mm256_sub_epi8(part, offset);
                }
            }
            store_panel(v, q.as_mut_ptr());
        }
    }
}

/// The eight bits of `bits`, one per byte (bit i → bit 0 of byte i).
#[inline(always)]
fn spread(bits: u8) -> u64 {
    // The byte in every byte, bit i kept in byte i, then each byte made 0 or 1
    // (adding 0x7F sets bit 7 of a non-zero byte without carrying over).
    let kept = u64::from(bits).wrapping_mul(ONES) & 0x8040_2010_0804_0201;
    (kept.wrapping_add(0x7F7F_7F7F_7F7F_7F7F) >> 7) & ONES
}

#[cfg(test)]
mod tests {
    use super::{Unpacked, unpack_row};
    use crate::formats::{GgmlType, QK_K};

    fn k_quant(kind: GgmlType) -> bool {
        kind.block_size() == QK_K
    }

    /// The vector unpacking (what the AVX2 and AVX-512 kernels use) gives
    /// the scalar code's very bytes, scales and mins.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_unpacking_gives_the_scalar_bits() {
        use std::arch::is_x86_feature_detected as has;
        assert!(
            has!("avx2") && has!("f16c"),
            "this test needs AVX2 and F16C"
        );
        let mut s = 0x2545_F491_4F6C_DD1D_u64;
        let kinds = GgmlType::ALL.into_iter().filter(|k| k.is_quantized());
        // 480, 544 and 800: rows ending on mini-panels, and on a lone panel
        // after a pair, for the 32-value types.
        for (kind, values) in
            kinds.flat_map(|k| [(k, 512), (k, 480), (k, 544), (k, 800), (k, 1056)])
        {
            if k_quant(kind) && values % 256 != 0 {
                continue;
            }
            let mut bytes: Vec<u8> = (0..kind.bytes_for(values).unwrap())
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
            // Finite f16 scales: clear the exponent's top bit everywhere.
            for b in bytes.iter_mut().skip(1).step_by(2) {
                *b &= 0xBF;
            }
            let (mut a, mut b) = (Unpacked::with_len(values), Unpacked::with_len(values));
            unpack_row(kind, false, &bytes, &mut a);
            unpack_row(kind, true, &bytes, &mut b);
            assert_eq!(a.q, b.q, "{}", kind.name());
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.scale), bits(&b.scale), "{}", kind.name());
            assert_eq!(bits(&a.min), bits(&b.min), "{}", kind.name());
            assert_eq!((a.signed, a.superblocks), (b.signed, b.superblocks));
            // The high bits of Q5_0 and Q5_1 without AVX-512's masks too.
            let mut c = Unpacked::with_len(values);
            // SAFETY: the CPU has AVX2 and F16C (asserted); `c` is sized for the row.
            unsafe {
                match kind {
                    GgmlType::Q5_0 => super::simd::small_row::<6>(&bytes, &mut c),
                    GgmlType::Q5_1 => super::simd::small_row::<7>(&bytes, &mut c),
                    _ => continue,
                }
            }
            assert_eq!(a.q, c.q, "{} without masks", kind.name());
            assert_eq!(
                bits(&a.scale),
                bits(&c.scale),
                "{} without masks",
                kind.name()
            );
            assert_eq!(bits(&a.min), bits(&c.min), "{} without masks", kind.name());
        }
    }
}
