//! The ggml tensor types: ids, block geometry, and dequantization written to
//! give the same f32 values as ggml's reference code, bit for bit (the same
//! operations in the same order: `d * scale` first, then `* q`, then `- min`).
//!
//! Block layouts (little-endian, `f16` scales), `QK_K = 256`:
//!
//! | type | values | bytes | layout |
//! |---|---|---|---|
//! | Q4_0 | 32 | 18 | d, 16 bytes of nibbles (low: values 0–15, high: 16–31), `(q - 8) d` |
//! | Q4_1 | 32 | 20 | d, m, 16 bytes of nibbles, `q d + m` |
//! | Q5_0 | 32 | 22 | d, 32 high bits, 16 bytes of nibbles, `(q - 16) d` |
//! | Q5_1 | 32 | 24 | d, m, 32 high bits, 16 bytes of nibbles, `q d + m` |
//! | Q8_0 | 32 | 34 | d, 32 signed bytes |
//! | Q2_K | 256 | 84 | 16 scale/min nibble pairs, 64 bytes of 2-bit values, d, dmin |
//! | Q3_K | 256 | 110 | 32 bytes of high bits, 64 bytes of 2-bit values, 12 bytes of 6-bit scales, d |
//! | Q4_K | 256 | 144 | d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles |
//! | Q5_K | 256 | 176 | d, dmin, 12 bytes of scales and mins, 32 bytes of high bits, 128 bytes of nibbles |
//! | Q6_K | 256 | 210 | 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed scales, d |

use half::bf16;

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// A ggml tensor type moulin reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    /// Every supported type, in the order error messages list them.
    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// The type with ggml id `id`, for ids known to be supported (generic
    /// code instantiated per type uses it; an unknown id panics).
    #[inline(always)]
    pub const fn from_supported_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            _ => panic!("not a supported ggml type id"),
        }
    }

    /// The type with ggml id `id`, or the id back when moulin does not read it.
    pub fn from_id(id: u32) -> Result<Self, u32> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id).ok_or(id)
    }

    #[inline(always)]
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    #[inline(always)]
    pub const fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            _ => QK_K,
        }
    }

    /// Bytes per block.
    #[inline(always)]
    pub const fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Blocks of scaled integers (the matrix products run on them) rather than floats.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes that `values` values take, or why they cannot be stored in this type.
    pub fn bytes_for(self, values: usize) -> Result<usize, String> {
        let per = self.block_size();
        if !values.is_multiple_of(per) {
            return Err(format!(
                "{values} values is not a whole number of {} blocks of {per}",
                self.name()
            ));
        }
        (values / per)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| format!("{values} {} values overflow the address space", self.name()))
    }

    /// The names of the supported types, for error messages.
    pub fn supported_names() -> String {
        GgmlType::ALL.map(GgmlType::name).join(", ")
    }
}

/// The name ggml gives type `id`, for types moulin does not read (i-quants,
/// ternary and FP4 types, integer tensors).
pub fn name_of_id(id: u32) -> String {
    if let Ok(t) = GgmlType::from_id(id) {
        return t.name().to_string();
    }
    let name = match id {
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("ggml type {id}"),
    };
    name.to_string()
}

/// Dequantize `bytes` (whole blocks of `kind`) into `out`, one value per slot.
pub fn dequantize(kind: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let need = kind.bytes_for(out.len())?;
    if bytes.len() != need {
        return Err(format!(
            "{} bytes for {} {} values, which need {need}",
            bytes.len(),
            out.len(),
            kind.name()
        ));
    }
    let (per, size) = (kind.block_size(), kind.block_bytes());
    for (out, block) in out.chunks_exact_mut(per).zip(bytes.chunks_exact(size)) {
        dequantize_block(kind, block, out);
    }
    Ok(())
}

/// The f16 at `block[at..at + 2]`, as f32.
#[inline(always)]
pub(crate) fn half(block: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[at], block[at + 1]]))
}

/// f16 → f32, exact for every value (subnormals, infinities, NaNs), inlined
/// and branch-free for normal numbers: the `half` crate's conversion is an
/// out-of-line call behind a CPU-feature check, which cost more than the
/// integer products of a 32-value block.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    const SHIFTED_EXP: u32 = 0x7C00 << 13;
    let mut o = u32::from(h & 0x7FFF) << 13;
    let exp = o & SHIFTED_EXP;
    o += (127 - 15) << 23;
    if exp == SHIFTED_EXP {
        o += (128 - 16) << 23; // infinity or NaN
    } else if exp == 0 {
        // Subnormal: renormalise through a float subtraction.
        o += 1 << 23;
        o = (f32::from_bits(o) - f32::from_bits(113 << 23)).to_bits();
    }
    f32::from_bits(o | (u32::from(h & 0x8000) << 16))
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K or Q5_K block.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The sixteen signed 6-bit scales of a Q3_K block.
#[inline(always)]
pub(crate) fn q3k_scales(packed: &[u8]) -> [i8; 16] {
    let mut s = [0i8; 16];
    for (j, s) in s.iter_mut().enumerate() {
        let low = if j < 8 {
            packed[j] & 0x0F
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = ((low | (high << 4)) as i8) - 32;
    }
    s
}

/// One block, as ggml's `dequantize_row_*` computes it.
pub fn dequantize_block(kind: GgmlType, b: &[u8], y: &mut [f32]) {
    match kind {
        GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => y[0] = half(b, 0),
        GgmlType::Bf16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => {
            let d = half(b, 0);
            for (j, &q) in b[2..18].iter().enumerate() {
                y[j] = f32::from((q & 0x0F) as i8 - 8) * d;
                y[j + 16] = f32::from((q >> 4) as i8 - 8) * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half(b, 0), half(b, 2));
            for (j, &q) in b[4..20].iter().enumerate() {
                y[j] = f32::from(q & 0x0F) * d + m;
                y[j + 16] = f32::from(q >> 4) * d + m;
            }
        }
        GgmlType::Q5_0 => {
            let d = half(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for (j, &q) in b[6..22].iter().enumerate() {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (((u32::from(q & 0x0F) | h0) as i32) - 16) as f32 * d;
                y[j + 16] = (((u32::from(q >> 4) | h1) as i32) - 16) as f32 * d;
            }
        }
        GgmlType::Q5_1 => {
            let (d, m) = (half(b, 0), half(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for (j, &q) in b[8..24].iter().enumerate() {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (u32::from(q & 0x0F) | h0) as f32 * d + m;
                y[j + 16] = (u32::from(q >> 4) | h1) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = half(b, 0);
            for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                *y = f32::from(q as i8) * d;
            }
        }
        GgmlType::Q2K => {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let (d, min) = (half(b, 80), half(b, 82));
            let mut i = 0;
            for n in 0..2 {
                let q = &qs[32 * n..32 * n + 32];
                for shift in [0, 2, 4, 6] {
                    for half_group in 0..2 {
                        let sc = scales[i];
                        i += 1;
                        let dl = d * f32::from(sc & 0x0F);
                        let ml = min * f32::from(sc >> 4);
                        for l in 0..16 {
                            let v = (q[16 * half_group + l] >> shift) & 3;
                            y[16 * (i - 1) + l] = dl * f32::from(v) - ml;
                        }
                    }
                }
            }
        }
        GgmlType::Q3K => {
            let (hmask, qs) = (&b[0..32], &b[32..96]);
            let scales = q3k_scales(&b[96..108]);
            let d = half(b, 108);
            let mut i = 0;
            for n in 0..2 {
                let q = &qs[32 * n..32 * n + 32];
                for (j, shift) in [0, 2, 4, 6].into_iter().enumerate() {
                    let bit = 1u8 << (4 * n + j);
                    for half_group in 0..2 {
                        let dl = d * f32::from(scales[i]);
                        for l in 0..16 {
                            let at = 16 * half_group + l;
                            let low = ((q[at] >> shift) & 3) as i8;
                            let v = low - if hmask[at] & bit != 0 { 0 } else { 4 };
                            y[16 * i + l] = dl * f32::from(v);
                        }
                        i += 1;
                    }
                }
            }
        }
        GgmlType::Q4K => {
            let (d, min) = (half(b, 0), half(b, 2));
            let (scales, qs) = (&b[4..16], &b[16..144]);
            for j in 0..4 {
                let (s1, m1) = scale_min_k4(2 * j, scales);
                let (s2, m2) = scale_min_k4(2 * j + 1, scales);
                let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
                let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
                let q = &qs[32 * j..32 * j + 32];
                for l in 0..32 {
                    y[64 * j + l] = d1 * f32::from(q[l] & 0x0F) - m1;
                    y[64 * j + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
                }
            }
        }
        GgmlType::Q5K => {
            let (d, min) = (half(b, 0), half(b, 2));
            let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
            for j in 0..4 {
                let (s1, m1) = scale_min_k4(2 * j, scales);
                let (s2, m2) = scale_min_k4(2 * j + 1, scales);
                let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
                let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
                let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                let q = &qs[32 * j..32 * j + 32];
                for l in 0..32 {
                    let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    y[64 * j + l] = d1 * f32::from((q[l] & 0x0F) + h1) - m1;
                    y[64 * j + 32 + l] = d2 * f32::from((q[l] >> 4) + h2) - m2;
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = half(b, 208);
            for n in 0..2 {
                let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
                let sc = &sc[8 * n..8 * n + 8];
                let y = &mut y[128 * n..128 * n + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
                    let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                    y[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
                    y[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
                    y[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
                    y[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} but {want}"
            );
        }
    }
}
