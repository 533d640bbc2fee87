//! Weight blocks unpacked for integer dot products: one byte per value and,
//! per group of 16 values, a scale and a min, so that every type reads
//! `value = scale * q - min`. The symmetric types (Q4_0, Q5_0, Q8_0, Q3_K,
//! Q6_K: `value = d (q - offset)`) keep `q - offset` as a signed byte and no
//! min ([`Unpacked::signed`]), which is what llama.cpp multiplies: the kernels
//! take its magnitude as the unsigned operand and move its sign onto the
//! input. The others keep an unsigned byte and their min.
//!
//! This is plain scalar code in a crate built with full optimisation: the
//! compiler vectorises it, with AVX-512 where the calling kernel enables it.

use crate::formats::{GgmlType, f16_to_f32, q3k_scales, scale_min_k4};

pub use crate::activations::GROUP;

/// An unpacked row: `q[i]` for every value, `scale[g]`, `min[g]` per group of 16.
pub struct Unpacked {
    pub q: Vec<u8>,
    pub scale: Vec<f32>,
    pub min: Vec<f32>,
    /// `q` holds signed bytes and `min` is zero (a symmetric type).
    pub signed: bool,
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
            q: vec![0; values],
            scale: vec![0.0; values / GROUP],
            min: vec![0.0; values / GROUP],
            signed: false,
        }
    }
}

/// Unpack the whole row `bytes` of `kind` into `out` (sized for it).
/// `f16c`: the caller is compiled with the F16C instructions (one instruction
/// per scale instead of a dozen); a constant once inlined.
#[inline(always)]
pub fn unpack_row(kind: GgmlType, f16c: bool, bytes: &[u8], out: &mut Unpacked) {
    let (per, size) = (kind.block_size(), kind.block_bytes());
    let groups = per / GROUP;
    for (i, block) in bytes.chunks_exact(size).enumerate() {
        let q = &mut out.q[i * per..(i + 1) * per];
        let scale = &mut out.scale[i * groups..(i + 1) * groups];
        let min = &mut out.min[i * groups..(i + 1) * groups];
        unpack_block(kind, f16c, block, q, scale, min);
    }
    out.signed = offset(kind).is_some();
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

/// The eight bits of `bits`, one per byte (bit i → bit 0 of byte i).
#[inline(always)]
fn spread(bits: u8) -> u64 {
    // The byte in every byte, bit i kept in byte i, then each byte made 0 or 1
    // (adding 0x7F sets bit 7 of a non-zero byte without carrying over).
    let kept = u64::from(bits).wrapping_mul(ONES) & 0x8040_2010_0804_0201;
    (kept.wrapping_add(0x7F7F_7F7F_7F7F_7F7F) >> 7) & ONES
}
