//! The order the kernels keep a row's bytes in: **panels**, so that one
//! 32-bit lane of a vector sums a whole group of 16 values over four steps
//! and the float work (convert, scale, add) is done once per group instead
//! of once per 4 values.
//!
//! - A **panel** is 256 values (16 groups of 16), 4 steps of 64 bytes. Lane
//!   `4c + j` (128-bit chunk `c`, lane `j` in it) holds group `4j + c`; step
//!   `s` holds its values `4s..4s + 4`. So byte `64s + 16c + 4j + b` of the
//!   panel is value `16(4j + c) + 4s + b`. Four natural 64-value vectors
//!   become the four steps by one 4×4 transposition of 32-bit lanes within
//!   each 128-bit chunk.
//! - What is left of a row after its whole panels (rows are whole blocks of
//!   32, so 32 to 224 values) goes in **mini-panels** of 64 values (4 groups,
//!   4 steps of 16 bytes): byte `16s + 4j + b` is value `16j + 4s + b`. A last
//!   half mini-panel is padded with zeros: rows take [`padded`] bytes.
//! - Per-group arrays that multiply the lanes (the scales) follow the same
//!   order: a panel's group `4j + c` at `4c + j`, a mini-panel's as they are.
//!   Those summed apart (weights' mins, inputs' group sums) stay in order.
//! - **Pairs** (rows of 32-value blocks, `paired`): the whole panels go two by
//!   two, so that a lane sums a whole block over eight steps and the float
//!   work, whose scales are per block anyway, is done once per 32 values (as
//!   llama.cpp does it). A pair is 512 values, 16 blocks; panel `h` of it is
//!   laid out as a panel whose group `B` is half `h` of block `B`. So lane
//!   `4c + j` holds block `4j + c` in both panels, and a kernel that works
//!   group by group sees two ordinary panels (each half's scale slot holds
//!   its block's scale). What follows the pairs (a lone panel, mini-panels)
//!   is laid out as above.

/// Values per panel.
pub const PANEL: usize = 256;
/// Values per pair of panels (rows of 32-value blocks).
pub const PAIR: usize = 2 * PANEL;
/// Values per mini-panel.
pub const MINI: usize = 64;
/// Values per group (one scale).
const GROUP: usize = 16;

/// A buffer whose first element starts a 64-byte cache line. Rows of bytes
/// in panel order are whole 64-byte steps, so in such a buffer no vector
/// load of a step straddles two lines (two loads' worth, on the kernels' hot
/// path). Per-group arrays of several rows (inputs' scales) are aligned for
/// their first row only: a 576-wide row's 36 scales end mid-line. The
/// allocator aligns ordinary vectors to 16 bytes only, so which loads
/// straddled changed from one run to the next with where buffers landed.
pub type Aligned<T> = aligned_vec::AVec<T, aligned_vec::ConstAlign<64>>;

/// `n` copies of `value` in an [`Aligned`] buffer.
pub fn aligned<T: Clone>(value: T, n: usize) -> Aligned<T> {
    let mut v = Aligned::new(64);
    v.resize(n, value);
    v
}

/// Bytes a row of `len` values takes in panel order.
pub const fn padded(len: usize) -> usize {
    len.next_multiple_of(MINI)
}

/// Where the pairs of a row of `len` values end: `paired` rows of 32-value
/// blocks put their whole panels in pairs (see the module's text).
pub const fn pairs_end(len: usize, paired: bool) -> usize {
    if paired { len / PAIR * PAIR } else { 0 }
}

/// Where value `k` of a row of `len` values lies in panel order.
pub fn position(len: usize, k: usize, paired: bool) -> usize {
    if k < pairs_end(len, paired) {
        // Block `4j + c`, half `h`, values `4s..` of it.
        let (at, block, h) = (k / PAIR * PAIR, (k % PAIR) / 32, (k % 32) / GROUP);
        let (j, c, s, b) = (block / 4, block % 4, (k % GROUP) / 4, k % 4);
        return at + PANEL * h + 64 * s + 16 * c + 4 * j + b;
    }
    let full = len / PANEL * PANEL;
    let (s, b) = ((k % GROUP) / 4, k % 4);
    if k < full {
        let group = (k % PANEL) / GROUP;
        let (j, c) = (group / 4, group % 4);
        k / PANEL * PANEL + 64 * s + 16 * c + 4 * j + b
    } else {
        let base = full + (k - full) / MINI * MINI;
        base + 16 * s + 4 * ((k - base) / GROUP) + b
    }
}

/// Where group `g`'s scale lies in panel order, for a row of `len` values.
pub fn group_position(len: usize, g: usize, paired: bool) -> usize {
    if g < pairs_end(len, paired) / GROUP {
        let (block, h) = ((g % 32) / 2, g % 2);
        return g - g % 32 + 16 * h + 4 * (block % 4) + block / 4;
    }
    if g < len / PANEL * (PANEL / GROUP) {
        let i = g % 16;
        g - i + 4 * (i % 4) + i / 4
    } else {
        g
    }
}

/// Reorder a row's `len` values, unpacked in order at the start of `q`, into
/// panel order (`paired`: a row of 32-value blocks), zeroing the padding.
pub fn to_panels<T: Copy + Default>(q: &mut [T], len: usize, paired: bool) {
    assert!(size_of::<T>() == 1 && q.len() >= padded(len) && len.is_multiple_of(32));
    q[len..padded(len)].fill(T::default());
    let pairs = pairs_end(len, paired);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked); one-byte values, `padded(len)` of them.
        unsafe { avx2::to_panels(q.as_mut_ptr() as *mut u8, len, pairs) };
        return;
    }
    scalar_to_panels(q, len, paired);
}

/// [`to_panels`] without vector instructions, the padding already zeroed.
fn scalar_to_panels<T: Copy + Default>(q: &mut [T], len: usize, paired: bool) {
    let pairs = pairs_end(len, paired);
    for at in (0..pairs).step_by(PAIR) {
        let natural: [T; PAIR] = std::array::from_fn(|k| q[at + k]);
        for (k, &v) in natural.iter().enumerate() {
            q[position(len, at + k, paired)] = v;
        }
    }
    let full = len / PANEL * PANEL;
    let units = (pairs..full)
        .step_by(PANEL)
        .map(|at| (at, PANEL))
        .chain((full..padded(len)).step_by(MINI).map(|at| (at, MINI)));
    let mut lanes = [[T::default(); 4]; PANEL / 4];
    for (at, unit) in units {
        let n = unit / 4;
        for (i, lane) in lanes[..n].iter_mut().enumerate() {
            lane.copy_from_slice(&q[at + 4 * i..at + 4 * i + 4]);
        }
        for (i, lane) in lanes[..n].iter().enumerate() {
            let to = if unit == PANEL {
                // Natural lane 16j + 4c + s: group 4j + c, its values 4s...
                let (j, c, s) = (i / 16, (i / 4) % 4, i % 4);
                16 * s + 4 * c + j
            } else {
                let (j, s) = (i / 4, i % 4);
                4 * s + j
            };
            q[at + 4 * to..at + 4 * to + 4].copy_from_slice(lane);
        }
    }
}

/// Reorder a row's per-group scales (`len / 16` of them, in order at the
/// start of `scale`) into panel order, zeroing the padding.
pub fn scales_to_panels(scale: &mut [f32], len: usize, paired: bool) {
    assert!(scale.len() >= padded(len) / GROUP);
    scale[len / GROUP..padded(len) / GROUP].fill(0.0);
    let pairs = pairs_end(len, paired) / GROUP;
    for pair in scale[..pairs].chunks_exact_mut(32) {
        let natural: [f32; 32] = pair.try_into().expect("32 scales");
        for (g, &s) in natural.iter().enumerate() {
            pair[group_position(PAIR, g, true)] = s;
        }
    }
    for panel in scale[pairs..len / PANEL * 16].chunks_exact_mut(16) {
        let natural: [f32; 16] = panel.try_into().expect("16 scales");
        for (g, &s) in natural.iter().enumerate() {
            panel[4 * (g % 4) + g / 4] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2") && crate::Kernel::allows(crate::Kernel::Avx2)
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MINI, PAIR, PANEL, padded};

    /// [`super::to_panels`] on bytes, the pairs ending at `pairs`.
    ///
    /// # Safety
    /// The CPU has AVX2; `q` holds `padded(len)` bytes; `pairs` is whole
    /// pairs, at most `len`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn to_panels(q: *mut u8, len: usize, pairs: usize) {
        let full = len / PANEL * PANEL;
        // SAFETY: every load and store is inside the first `padded(len)` bytes.
        unsafe {
            for at in (0..pairs).step_by(PAIR) {
                // Panel `h`'s natural 32-byte pieces are the halves `h` of
                // two blocks: all loaded before the first store.
                let piece = |h: usize, i: usize| {
                    let one =
                        |b: usize| _mm_loadu_si128(q.add(at + 32 * b + 16 * h) as *const __m128i);
                    _mm256_set_m128i(one(2 * i + 1), one(2 * i))
                };
                let v: [[__m256i; 8]; 2] =
                    std::array::from_fn(|h| std::array::from_fn(|i| piece(h, i)));
                for (h, v) in v.iter().enumerate() {
                    for half in 0..2 {
                        let steps = transpose_256([v[half], v[2 + half], v[4 + half], v[6 + half]]);
                        for (s, step) in steps.into_iter().enumerate() {
                            let to = q.add(at + PANEL * h + 64 * s + 32 * half);
                            _mm256_storeu_si256(to as *mut __m256i, step);
                        }
                    }
                }
            }
            for at in (pairs..full).step_by(PANEL) {
                for half in [0, 32] {
                    let load =
                        |r: usize| _mm256_loadu_si256(q.add(at + 64 * r + half) as *const __m256i);
                    let steps = transpose_256([load(0), load(1), load(2), load(3)]);
                    for (s, v) in steps.into_iter().enumerate() {
                        _mm256_storeu_si256(q.add(at + 64 * s + half) as *mut __m256i, v);
                    }
                }
            }
            for at in (full..padded(len)).step_by(MINI) {
                let load = |j: usize| _mm_loadu_si128(q.add(at + 16 * j) as *const __m128i);
                let steps = transpose_128([load(0), load(1), load(2), load(3)]);
                for (s, v) in steps.into_iter().enumerate() {
                    _mm_storeu_si128(q.add(at + 16 * s) as *mut __m128i, v);
                }
            }
        }
    }

    /// The bytes of a row in panel order at `q` (`padded(len)` of them, the
    /// pairs ending at `pairs`) back in their natural order at `out`: the
    /// inverse of [`to_panels`] (its transpositions undo themselves).
    ///
    /// # Safety
    /// The CPU has AVX2; `q` and `out` hold `padded(len)` bytes each.
    #[target_feature(enable = "avx2")]
    pub unsafe fn from_panels(q: *const u8, out: *mut u8, len: usize, pairs: usize) {
        let full = len / PANEL * PANEL;
        // SAFETY: every load and store is inside the first `padded(len)` bytes.
        unsafe {
            for at in (0..pairs).step_by(PAIR) {
                for h in 0..2 {
                    for half in 0..2 {
                        let load = |s: usize| {
                            _mm256_loadu_si256(
                                q.add(at + PANEL * h + 64 * s + 32 * half) as *const __m256i
                            )
                        };
                        let v = transpose_256([load(0), load(1), load(2), load(3)]);
                        // Piece `half + 2k`: half `h` of blocks `2i`, `2i + 1`.
                        for (k, v) in v.into_iter().enumerate() {
                            let i = half + 2 * k;
                            let to = |b: usize| out.add(at + 32 * b + 16 * h) as *mut __m128i;
                            _mm_storeu_si128(to(2 * i), _mm256_castsi256_si128(v));
                            _mm_storeu_si128(to(2 * i + 1), _mm256_extracti128_si256::<1>(v));
                        }
                    }
                }
            }
            for at in (pairs..full).step_by(PANEL) {
                for half in [0, 32] {
                    let load =
                        |s: usize| _mm256_loadu_si256(q.add(at + 64 * s + half) as *const __m256i);
                    let rows = transpose_256([load(0), load(1), load(2), load(3)]);
                    for (r, v) in rows.into_iter().enumerate() {
                        _mm256_storeu_si256(out.add(at + 64 * r + half) as *mut __m256i, v);
                    }
                }
            }
            for at in (full..padded(len)).step_by(MINI) {
                let load = |s: usize| _mm_loadu_si128(q.add(at + 16 * s) as *const __m128i);
                let rows = transpose_128([load(0), load(1), load(2), load(3)]);
                for (j, v) in rows.into_iter().enumerate() {
                    _mm_storeu_si128(out.add(at + 16 * j) as *mut __m128i, v);
                }
            }
        }
    }

    /// The 4×4 transposition of 32-bit lanes within each 128-bit chunk:
    /// lane `i` of output `o` is lane `o` of input `i`.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub fn transpose_256(v: [__m256i; 4]) -> [__m256i; 4] {
        let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
        let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
        let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
        let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
        [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ]
    }

    /// [`transpose_256`] on one chunk.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub fn transpose_128(v: [__m128i; 4]) -> [__m128i; 4] {
        let t0 = _mm_unpacklo_epi32(v[0], v[1]);
        let t1 = _mm_unpackhi_epi32(v[0], v[1]);
        let t2 = _mm_unpacklo_epi32(v[2], v[3]);
        let t3 = _mm_unpackhi_epi32(v[2], v[3]);
        [
            _mm_unpacklo_epi64(t0, t2),
            _mm_unpackhi_epi64(t0, t2),
            _mm_unpacklo_epi64(t1, t3),
            _mm_unpackhi_epi64(t1, t3),
        ]
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::{from_panels, transpose_128, transpose_256};

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffers the kernels load whole steps from start cache lines:
    /// unpacked weight rows and quantized inputs, every array of them.
    #[test]
    fn kernel_buffers_start_cache_lines() {
        let starts = |p: *const u8| (p as usize).is_multiple_of(64);
        for len in [32, 96, 576, 1536] {
            let u = crate::unpack::Unpacked::with_len(len);
            assert!(starts(u.q.as_ptr()) && starts(u.scale.as_ptr().cast()));
            assert!(starts(u.min.as_ptr().cast()) && starts(u.offset_sums.as_ptr().cast()));
            let a = crate::Activations::zeros(3, len);
            assert!(starts(a.q.as_ptr().cast()) && starts(a.scale.as_ptr().cast()));
            assert!(starts(a.group_sum.as_ptr().cast()));
        }
        assert!(starts(aligned(0u8, 5).as_ptr()) && aligned(7u8, 5).iter().all(|&b| b == 7));
    }

    /// Every row length a model has (whole blocks of 32): the reordering
    /// puts each value where [`position`] says, and the scales where
    /// [`group_position`] says, on the vector path and the scalar one.
    #[test]
    fn values_and_scales_go_where_position_says() {
        for (len, paired) in (32..=1600)
            .step_by(32)
            .flat_map(|l| [(l, false), (l, true)])
        {
            let natural: Vec<u8> = (0..len).map(|k| (k % 251) as u8).collect();
            let mut q = vec![0xAAu8; padded(len)];
            q[..len].copy_from_slice(&natural);
            let mut scalar = q.clone();
            scalar[len..].fill(0);
            scalar_to_panels(&mut scalar, len, paired);
            to_panels(&mut q, len, paired);
            assert_eq!(q, scalar, "len {len}: the vector path and the scalar one");
            for k in 0..len {
                assert_eq!(
                    q[position(len, k, paired)],
                    natural[k],
                    "len {len}, value {k}"
                );
            }
            let mut seen = vec![false; padded(len)];
            (0..len).for_each(|k| seen[position(len, k, paired)] = true);
            for (p, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
                assert_eq!(q[p], 0, "len {len}: padding at {p}");
            }
            let mut scale: Vec<f32> = (0..padded(len) / GROUP).map(|g| g as f32).collect();
            scales_to_panels(&mut scale, len, paired);
            for g in 0..len / GROUP {
                assert_eq!(
                    scale[group_position(len, g, paired)],
                    g as f32,
                    "len {len}, group {g}"
                );
            }
            assert!(scale[len / GROUP..].iter().all(|&s| s == 0.0));
            // A lane's four values are one group's, and the lane's scale is it.
            for k in 0..len {
                let lane = position(len, k, paired) / 4;
                let g = if k < len / PANEL * PANEL {
                    lane / 64 * 16 + lane % 16
                } else {
                    lane / 16 * 4 + lane % 4
                };
                assert_eq!(
                    g,
                    group_position(len, k / GROUP, paired),
                    "len {len}, value {k}"
                );
                // In a pair, both halves of a block share a lane.
                if k < pairs_end(len, paired) {
                    let other = position(len, k ^ GROUP, paired) / 4;
                    assert_eq!(
                        (lane % 16, lane / 64),
                        (other % 16, (other / 64) ^ 1),
                        "len {len}, value {k}"
                    );
                }
            }
        }
    }
}
