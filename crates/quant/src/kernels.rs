//! Dot products of one unpacked weight row with up to four quantized
//! activation rows: integer products summed per group of 16 values (one
//! 32-bit lane per group, the bytes in panel order: [`crate::layout`]),
//! scaled by the weight group's scale times the activation block's scale;
//! then, once per row, minus the weight groups' mins times the activations'
//! group sums. With a vector kernel, rows of 32-value blocks sum a whole
//! block per lane (the panels' pairs, [`crate::layout::PAIR`]) before that
//! float work, which halves it, as llama.cpp scales once per block.
//!
//! Three versions, chosen at run time: AVX-512 VNNI (`vpdpbusd`: 64 products
//! per instruction), AVX2 (`vpmaddubsw`: 32 products into 16-bit pair sums,
//! widened every few steps), and portable scalar code for every other CPU.
//!
//! With many inputs (a prompt pass, a batch), a task unpacks its weight rows
//! once and multiplies them in tiles of [`TILE_ROWS`] rows × [`MAX_ROWS`]
//! inputs; with few (decoding), the vector kernels decode the 32-value block
//! types in registers instead. Both give the same bits (tests/matmul.rs), so
//! a sequence's tokens never depend on how many others share its steps.

use std::sync::OnceLock;

use crate::activations::ActivationRow;
use crate::formats::GgmlType;
use crate::layout::{MINI, PAIR, PANEL, padded, pairs_end};
use crate::unpack::{GROUP, Unpacked, unpack_row};

/// Activation rows one weight row is multiplied with at a time.
pub const MAX_ROWS: usize = 4;

/// Weight rows multiplied together with the same inputs (many inputs: a
/// prompt pass or a batch), so that each input's bytes, once loaded, serve
/// several rows.
pub const TILE_ROWS: usize = 4;

/// A tile's dot products: weight row `i` times input `r` at `[i][r]`.
type Tile = [[f32; MAX_ROWS]; TILE_ROWS];

/// The instruction set the matrix products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Avx512Vnni,
    Avx2,
    Portable,
}

impl Kernel {
    /// The best kernel this CPU runs; `MOULIN_QUANT_KERNEL=portable|avx2|avx512`
    /// asks for a lesser one (to compare them, to see how a CPU without
    /// AVX-512 fares, or to work around a faulty CPU): see [`Kernel::asked`].
    pub fn detect() -> Kernel {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let best = Kernel::available();
            let asked = Kernel::asked().unwrap_or(best);
            // Never one the CPU lacks.
            if Kernel::supported().contains(&asked) {
                asked
            } else {
                best
            }
        })
    }

    /// The kernel `MOULIN_QUANT_KERNEL` asks for (`avx2` or `portable`),
    /// if any. The rest of this crate's vector code (unpacking rows,
    /// quantizing inputs) keeps to that level too, and so do moulin's own
    /// attention and f16 kernels: the whole pass then runs as on a CPU
    /// without the instructions left out.
    pub fn asked() -> Option<Kernel> {
        static ASKED: OnceLock<Option<Kernel>> = OnceLock::new();
        *ASKED.get_or_init(|| match std::env::var("MOULIN_QUANT_KERNEL").as_deref() {
            Ok("portable") => Some(Kernel::Portable),
            Ok("avx2") => Some(Kernel::Avx2),
            _ => None,
        })
    }

    /// Whether vector code of `level` (a kernel's instruction set) may run:
    /// no level above the one [`Kernel::asked`] for.
    pub(crate) fn allows(level: Kernel) -> bool {
        // The enum lists the kernels best first.
        Kernel::asked().is_none_or(|asked| asked as u8 <= level as u8)
    }

    /// Every kernel this CPU can run, best first.
    pub fn supported() -> &'static [Kernel] {
        static SUPPORTED: OnceLock<Vec<Kernel>> = OnceLock::new();
        SUPPORTED.get_or_init(Kernel::detect_all)
    }

    fn detect_all() -> Vec<Kernel> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512vnni")
                && has!("f16c")
            {
                all.push(Kernel::Avx512Vnni);
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                all.push(Kernel::Avx2);
            }
        }
        all.push(Kernel::Portable);
        all
    }

    fn available() -> Kernel {
        Kernel::supported()[0]
    }

    /// Whether this kernel multiplies inputs for weights of `kind` as
    /// unsigned bytes, and so wants them [`ActivationRow::shifted`] too
    /// (AVX2, with the signed types of at most 6 bits: see `avx2::rows`).
    pub fn shifts(self, kind: GgmlType) -> bool {
        self == Kernel::Avx2 && crate::unpack::offset(kind).is_some_and(|o| o <= 32)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }
}

/// Dot products of one unpacked weight row with up to [`MAX_ROWS`] inputs.
trait Dot {
    /// Compiled with the F16C instructions.
    const F16C: bool;
    /// `out[r] = Σ (scale × q − min) × input` over the row: the integer
    /// products scaled per group, minus the weights' mins times the inputs'
    /// group sums.
    ///
    /// # Safety
    /// The CPU must have the kernel's instructions; every input as long as `w`.
    unsafe fn dot(w: &Unpacked, a: &[ActivationRow<'_>], out: &mut [f32]);

    /// Work on a freshly unpacked row that every [`Dot::tile`] of it would
    /// otherwise repeat, done once (AVX-512: [`Unpacked::offset_sums`]).
    ///
    /// # Safety
    /// The CPU must have the kernel's instructions.
    #[inline(always)]
    unsafe fn prepare(_w: &mut Unpacked) {}

    /// Whether [`Dot::dot`] reads what [`Dot::prepare`] writes too, so that
    /// rows multiplied by it (few inputs) are prepared as well.
    const DOT_PREPARED: bool = false;

    /// The dot products of up to [`TILE_ROWS`] weight rows with up to
    /// [`MAX_ROWS`] inputs, with the same bits as [`Dot::dot`] row by row
    /// (which is what this default does).
    ///
    /// # Safety
    /// As [`Dot::dot`], for every row of `w`.
    #[inline(always)]
    unsafe fn tile(w: &[Unpacked], a: &[ActivationRow<'_>], out: &mut Tile) {
        for (w, out) in w.iter().zip(out.iter_mut()) {
            // SAFETY: the caller's.
            unsafe { Self::dot(w, a, &mut out[..a.len()]) };
        }
    }
}

/// Call `$body` with `$t` bound to `kind`'s id as a constant, so that the
/// unpacking code is specialised per type (no per-block `match`).
macro_rules! per_kind {
    ($kind:expr, $t:ident => $body:expr) => {
        match $kind {
            GgmlType::Q4_0 => {
                const $t: u32 = 2;
                $body
            }
            GgmlType::Q4_1 => {
                const $t: u32 = 3;
                $body
            }
            GgmlType::Q5_0 => {
                const $t: u32 = 6;
                $body
            }
            GgmlType::Q5_1 => {
                const $t: u32 = 7;
                $body
            }
            GgmlType::Q8_0 => {
                const $t: u32 = 8;
                $body
            }
            GgmlType::Q2K => {
                const $t: u32 = 10;
                $body
            }
            GgmlType::Q3K => {
                const $t: u32 = 11;
                $body
            }
            GgmlType::Q4K => {
                const $t: u32 = 12;
                $body
            }
            GgmlType::Q5K => {
                const $t: u32 = 13;
                $body
            }
            GgmlType::Q6K => {
                const $t: u32 = 14;
                $body
            }
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {
                unreachable!("float weights are not in blocks")
            }
        }
    };
}

/// Where a task's products go: input `i` times weight row `j` is written at
/// `ptr[i * stride + j]`. Tasks get disjoint column ranges of one output.
pub struct OutBlock {
    pub ptr: *mut f32,
    pub stride: usize,
    /// Add the products to what is there (a residual connection) instead of
    /// writing them.
    pub add: bool,
}

impl OutBlock {
    /// # Safety
    /// `ptr[i * stride + j]` must be inside the output and written by no other task.
    #[inline(always)]
    unsafe fn write(&self, i: usize, j: usize, v: f32) {
        // SAFETY: the caller's.
        unsafe {
            let p = self.ptr.add(i * self.stride + j);
            *p = if self.add { *p + v } else { v };
        }
    }
}

/// For each weight row in `weights` (rows of `row_bytes`, type `kind`): unpack
/// it into `scratch` (at least one row long, grown as needed), then its dot
/// product with every input, written to `out`. `next`: weight bytes to ask
/// the cache for meanwhile (the next tasks' rows), or nothing.
///
/// # Safety
/// `out` must have `inputs.len()` rows of `stride` values, the columns
/// `0..weights.len() / row_bytes` of them this call's alone.
#[allow(clippy::too_many_arguments)]
pub unsafe fn weight_rows(
    kernel: Kernel,
    kind: GgmlType,
    weights: &[u8],
    row_bytes: usize,
    inputs: &[ActivationRow<'_>],
    scratch: &mut Vec<Unpacked>,
    acc: &OutBlock,
    next: &[u8],
) {
    let len = scratch[0].len;
    let shifted = if kernel.shifts(kind) { padded(len) } else { 0 };
    for r in inputs {
        assert!(r.len() == len && r.q.len() == padded(len) && r.scale.len() == padded(len) / GROUP);
        assert!(
            r.shifted.len() >= shifted,
            "inputs shifted as the kernel wants"
        );
    }
    assert_eq!(kind.bytes_for(len), Ok(row_bytes));
    match kernel {
        // SAFETY: `Kernel::detect` and `Kernel::supported` only offer kernels
        // whose instructions the CPU has; lengths were checked above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe {
            if inputs.len() <= 2 * MAX_ROWS && avx512::fuses(kind) {
                avx512::fused_weight_rows(kind, weights, row_bytes, inputs, scratch, acc)
            } else {
                avx512::weight_rows(kind, weights, row_bytes, inputs, scratch, acc, next)
            }
        },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe {
            if inputs.len() <= avx2::fused_up_to(kind) {
                avx2::fused_weight_rows(kind, weights, row_bytes, inputs, scratch, acc)
            } else {
                avx2::weight_rows(kind, weights, row_bytes, inputs, scratch, acc, next)
            }
        },
        // SAFETY: scalar code.
        _ => per_kind!(kind, T => unsafe {
            rows_of::<T, Portable>(weights, row_bytes, inputs, scratch, acc, next)
        }),
    }
}

/// The loop of [`weight_rows`] for one type and one kernel, inlined into the
/// kernel's function so that it is compiled with the kernel's instructions.
///
/// # Safety
/// As [`Dot::dot`].
#[inline(always)]
unsafe fn rows_of<const T: u32, D: Dot>(
    weights: &[u8],
    row_bytes: usize,
    inputs: &[ActivationRow<'_>],
    scratch: &mut Vec<Unpacked>,
    acc: &OutBlock,
    next: &[u8],
) {
    let kind = GgmlType::from_supported_id(T);
    let width = weights.len() / row_bytes;
    let len = scratch[0].len;
    let mut dots = [0f32; MAX_ROWS];
    let mut one = |w: &Unpacked, j: usize, c: usize, chunk: &[ActivationRow<'_>]| {
        let dots = &mut dots[..chunk.len()];
        // SAFETY: the caller's.
        unsafe { D::dot(w, chunk, dots) };
        for (i, &d) in dots.iter().enumerate() {
            // SAFETY: the caller's: row `c * MAX_ROWS + i` of the inputs,
            // column `j` of this task's.
            unsafe { acc.write(c * MAX_ROWS + i, j, d) };
        }
    };
    if inputs.len() <= 2 * MAX_ROWS {
        // Few inputs (decoding): each weight row unpacked, then used at once.
        for (j, row) in weights.chunks_exact(row_bytes).enumerate() {
            unpack_row(kind, D::F16C, row, &mut scratch[0]);
            if D::DOT_PREPARED {
                // SAFETY: the caller's: the CPU has the instructions.
                unsafe { D::prepare(&mut scratch[0]) };
            }
            for (c, chunk) in inputs.chunks(MAX_ROWS).enumerate() {
                one(&scratch[0], j, c, chunk);
            }
        }
        return;
    }
    // Many inputs (a prompt pass): every weight row of the task unpacked once,
    // then a few inputs at a time against all of them, so that those inputs
    // stay in the nearest cache while the unpacked rows are read again.
    while scratch.len() < width {
        scratch.push(Unpacked::with_len(len));
    }
    for (row, w) in weights.chunks_exact(row_bytes).zip(scratch.iter_mut()) {
        unpack_row(kind, D::F16C, row, w);
        // SAFETY: the caller's: the CPU has the instructions.
        unsafe { D::prepare(w) };
    }
    let mut tile: Tile = [[0.0; MAX_ROWS]; TILE_ROWS];
    // The next task's weights asked for a few lines per tile, so that they
    // come from memory while these are multiplied, not when they are
    // unpacked (whichever thread takes that task).
    let tiles = inputs.len().div_ceil(MAX_ROWS) * width.div_ceil(TILE_ROWS);
    let mut ahead = next.chunks(64 * (next.len().div_ceil(64).div_ceil(tiles)).max(1));
    let mut one = |c: usize, chunk: &[ActivationRow<'_>], t: usize, rows: &[Unpacked]| {
        prefetch(ahead.next());
        // SAFETY: the caller's.
        unsafe { D::tile(rows, chunk, &mut tile) };
        for (i, dots) in tile[..rows.len()].iter().enumerate() {
            for (r, &d) in dots[..chunk.len()].iter().enumerate() {
                // SAFETY: the caller's: input row `c * MAX_ROWS + r`,
                // this task's column `t * TILE_ROWS + i`.
                unsafe { acc.write(c * MAX_ROWS + r, t * TILE_ROWS + i, d) };
            }
        }
    };
    if (inputs.len() + TILE_ROWS) * padded(len) <= NEAREST_CACHE {
        // Few enough inputs to stay in the nearest cache (a batch's decoding
        // step): each tile of weight rows, once loaded, against all of them.
        for (t, rows) in scratch[..width].chunks(TILE_ROWS).enumerate() {
            for (c, chunk) in inputs.chunks(MAX_ROWS).enumerate() {
                one(c, chunk, t, rows);
            }
        }
    } else {
        for (c, chunk) in inputs.chunks(MAX_ROWS).enumerate() {
            for (t, rows) in scratch[..width].chunks(TILE_ROWS).enumerate() {
                one(c, chunk, t, rows);
            }
        }
    }
}

/// Bytes of inputs and a tile of unpacked weight rows that stay in the
/// first-level cache: half of it (AVX-512 machines have 32 to 48 KiB).
const NEAREST_CACHE: usize = 24 * 1024;

/// Ask for `bytes` (if any) to be brought into the second-level cache.
#[inline(always)]
fn prefetch(bytes: Option<&[u8]>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(bytes) = bytes {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        for at in (0..bytes.len()).step_by(64) {
            // SAFETY: a prefetch reads nothing and faults on nothing; the
            // address is inside `bytes` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(bytes.as_ptr().add(at) as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// How far ahead of the row being read AVX2's fused decoding asks for a
/// task's next weight bytes: with the hardware prefetcher alone, a Zen 2
/// core decoding Q8_0 rows waited on memory (batch-1 generation 11% slower;
/// Q4_1 and Q5_0 rows gained little, and unpacked K-quant rows nothing).
const AHEAD_BYTES: usize = 2048;

/// Ask for `weights[from + AHEAD_BYTES..][..len]` (what of it is inside
/// `weights`) to be brought into the first-level cache.
#[inline(always)]
fn prefetch_ahead(weights: &[u8], from: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = from + AHEAD_BYTES;
        let end = (start + len).min(weights.len());
        for at in (start..end).step_by(64) {
            // SAFETY: a prefetch reads nothing and faults on nothing; the
            // address is inside `weights` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(weights.as_ptr().add(at) as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (weights, from, len);
}

struct Portable;

impl Dot for Portable {
    const F16C: bool = false;
    unsafe fn dot(w: &Unpacked, a: &[ActivationRow<'_>], out: &mut [f32]) {
        portable(w, a, out)
    }
}

fn portable(w: &Unpacked, a: &[ActivationRow<'_>], out: &mut [f32]) {
    let (n, signed) = (w.len, w.signed);
    let full = n / PANEL * PANEL;
    // Panels (16 lanes a step), then mini-panels (4).
    let units = (0..full)
        .step_by(PANEL)
        .map(|at| (at, PANEL))
        .chain((full..padded(n)).step_by(MINI).map(|at| (at, MINI)));
    for (a, out) in a.iter().zip(out.iter_mut()) {
        let mut acc = 0f32;
        for (at, unit) in units.clone() {
            let lanes = unit / GROUP;
            let mut sums = [0i32; 16];
            for (i, (w4, a4)) in w.q[at..at + unit]
                .chunks_exact(4)
                .zip(a.q[at..at + unit].chunks_exact(4))
                .enumerate()
            {
                sums[i % lanes] += w4
                    .iter()
                    .zip(a4)
                    .map(|(&w, &a)| {
                        let w = if signed {
                            i32::from(w as i8)
                        } else {
                            i32::from(w)
                        };
                        w * i32::from(a)
                    })
                    .sum::<i32>();
            }
            for (l, &sum) in sums[..lanes].iter().enumerate() {
                let g = at / GROUP + l;
                acc += w.scale[g] * a.scale[g] * sum as f32;
            }
        }
        let mins: f32 = w.min.iter().zip(a.group_sum).map(|(m, s)| m * s).sum();
        *out = acc - mins;
    }
}

/// An instruction set's [`Dot`] (its `rows::<R>` for 1 to [`MAX_ROWS`] inputs)
/// and its [`weight_rows`], compiled with its `target_feature`s.
#[cfg(target_arch = "x86_64")]
macro_rules! entry {
    ($dot:ident, $features:literal, $safety:literal $(, tile = $tile:ident)? $(, prepare = $prepare:ident)? $(, dot_prepared = $prepared:literal)?) => {
        struct $dot;

        impl Dot for $dot {
            const F16C: bool = true;
            $(const DOT_PREPARED: bool = $prepared;)?
            #[inline(always)]
            unsafe fn dot(w: &Unpacked, a: &[ActivationRow<'_>], out: &mut [f32]) {
                macro_rules! by_inputs {
                    ($s:literal, $k:literal) => {
                        match a.len() {
                            1 => rows::<1, $s, $k>(w, a, out),
                            2 => rows::<2, $s, $k>(w, a, out),
                            3 => rows::<3, $s, $k>(w, a, out),
                            _ => rows::<MAX_ROWS, $s, $k>(w, a, out),
                        }
                    };
                }
                // SAFETY: the caller's: the CPU has the instructions.
                unsafe {
                    match (w.signed, w.superblocks) {
                        (false, false) => by_inputs!(false, false),
                        (true, false) => by_inputs!(true, false),
                        (false, true) => by_inputs!(false, true),
                        (true, true) => by_inputs!(true, true),
                    }
                }
            }

            $(
            #[inline(always)]
            unsafe fn tile(w: &[Unpacked], a: &[ActivationRow<'_>], out: &mut Tile) {
                // SAFETY: the caller's: the CPU has the instructions.
                unsafe { $tile(w, a, out) }
            }
            )?

            $(
            #[inline(always)]
            unsafe fn prepare(w: &mut Unpacked) {
                // SAFETY: the caller's: the CPU has the instructions.
                unsafe { $prepare(w) }
            }
            )?
        }

        /// [`super::weight_rows`] compiled for this instruction set.
        ///
        /// # Safety
        #[doc = $safety]
        #[target_feature(enable = $features)]
        pub unsafe fn weight_rows(
            kind: GgmlType,
            weights: &[u8],
            row_bytes: usize,
            inputs: &[ActivationRow<'_>],
            scratch: &mut Vec<Unpacked>,
            acc: &OutBlock,
            next: &[u8],
        ) {
            // SAFETY: the caller's.
            per_kind!(kind, T => unsafe {
                rows_of::<T, $dot>(weights, row_bytes, inputs, scratch, acc, next)
            })
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{
        ActivationRow, Dot, GROUP, GgmlType, MAX_ROWS, MINI, OutBlock, PAIR, PANEL, Tile, Unpacked,
        padded, pairs_end, rows_of,
    };

    entry!(
        Vnni,
        "avx512f,avx512bw,avx512vl,avx512vnni,f16c",
        "The CPU must have AVX-512 F, BW, VL and VNNI, and F16C; lengths as checked there.",
        tile = tiles,
        prepare = offset_sums
    );

    /// A signed row's [`Unpacked::offset_sums`], which [`tile`] subtracts
    /// from its products with inputs offset by 128: `vpdpbusd` of 128s with
    /// the row's bytes, as [`tile`] would compute it for every tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    fn offset_sums(w: &mut Unpacked) {
        if !w.signed {
            return;
        }
        let n = w.len;
        let full = n / PANEL * PANEL;
        assert!(w.q.len() >= padded(n) && w.offset_sums.len() >= padded(n) / GROUP);
        let pairs = pairs_end(n, !w.superblocks);
        let (q, sums) = (w.q.as_ptr(), w.offset_sums.as_mut_ptr());
        // SAFETY: bytes `p..p + 512` (`p..p + 256`, `m..m + 64`) of a row of
        // `padded(n)`, and their first 16 (16, 4) groups (asserted).
        unsafe {
            let offset = _mm512_set1_epi8(-128);
            // A pair's sums in its first panel's slots, as `tile` reads them.
            for p in (0..pairs).step_by(PAIR) {
                let mut sum = _mm512_setzero_si512();
                for s in (p..p + PAIR).step_by(64) {
                    let v = _mm512_loadu_si512(q.add(s) as *const __m512i);
                    sum = _mm512_dpbusd_epi32(sum, offset, v);
                }
                _mm512_storeu_si512(sums.add(p / GROUP) as *mut __m512i, sum);
            }
            for p in (pairs..full).step_by(PANEL) {
                let mut sum = _mm512_setzero_si512();
                for s in (p..p + PANEL).step_by(64) {
                    let v = _mm512_loadu_si512(q.add(s) as *const __m512i);
                    sum = _mm512_dpbusd_epi32(sum, offset, v);
                }
                _mm512_storeu_si512(sums.add(p / GROUP) as *mut __m512i, sum);
            }
            let offset = _mm_set1_epi8(-128);
            for m in (full..padded(n)).step_by(MINI) {
                let mut sum = _mm_setzero_si128();
                for s in (m..m + MINI).step_by(16) {
                    let v = _mm_loadu_si128(q.add(s) as *const __m128i);
                    sum = _mm_dpbusd_epi32(sum, offset, v);
                }
                _mm_storeu_si128(sums.add(m / GROUP) as *mut __m128i, sum);
            }
        }
    }

    /// [`Dot::tile`]: [`tile`] for as many rows and inputs as given.
    ///
    /// # Safety
    /// As [`Dot::tile`]; the CPU has AVX-512 F, BW, VL and VNNI.
    #[inline(always)]
    unsafe fn tiles(w: &[Unpacked], a: &[ActivationRow<'_>], out: &mut Tile) {
        macro_rules! by_inputs {
            ($w:literal, $s:literal, $k:literal) => {
                match a.len() {
                    1 => tile::<$w, 1, $s, $k>(w, a, out),
                    2 => tile::<$w, 2, $s, $k>(w, a, out),
                    3 => tile::<$w, 3, $s, $k>(w, a, out),
                    _ => tile::<$w, MAX_ROWS, $s, $k>(w, a, out),
                }
            };
        }
        macro_rules! by_rows {
            ($s:literal, $k:literal) => {
                match w.len() {
                    1 => by_inputs!(1, $s, $k),
                    2 => by_inputs!(2, $s, $k),
                    3 => by_inputs!(3, $s, $k),
                    _ => by_inputs!(4, $s, $k),
                }
            };
        }
        // SAFETY: the caller's.
        unsafe {
            match (w[0].signed, w[0].superblocks) {
                (false, false) => by_rows!(false, false),
                (true, false) => by_rows!(true, false),
                (false, true) => by_rows!(false, true),
                (true, true) => by_rows!(true, true),
            }
        }
    }

    /// A panel's float work for one weight row and one input: its 16 group
    /// sums `sums` times the row's group scales `ws` and the input's `xs`,
    /// added to `acc`. `K` (a K-quant's row, its input one `Q8_K` block of
    /// 256 values): `xs` is that block's one scale, applied after the
    /// weights' as llama.cpp applies it.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn panel_end<const K: bool>(sums: __m512i, ws: __m512, xs: __m512, acc: __m512) -> __m512 {
        let sums = _mm512_cvtepi32_ps(sums);
        if K {
            _mm512_fmadd_ps(_mm512_mul_ps(sums, ws), xs, acc)
        } else {
            _mm512_fmadd_ps(sums, _mm512_mul_ps(ws, xs), acc)
        }
    }

    /// The input's scales for the panel whose groups start at `g` (see
    /// [`panel_end`]).
    ///
    /// # Safety
    /// `scale` holds groups `g..g + 16`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn input_scales<const K: bool>(scale: *const f32, g: usize) -> __m512 {
        // SAFETY: the caller's.
        unsafe {
            if K {
                _mm512_set1_ps(*scale.add(g))
            } else {
                _mm512_loadu_ps(scale.add(g))
            }
        }
    }

    /// [`panel_end`] for a mini-panel: its 4 groups into lanes 0 to 3.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    fn mini_end(sums: __m128i, ws: __m128, xs: __m128, acc: __m512) -> __m512 {
        let sums = _mm512_zextps128_ps512(_mm_cvtepi32_ps(sums));
        let scale = _mm512_zextps128_ps512(_mm_mul_ps(ws, xs));
        _mm512_mask3_fmadd_ps(sums, scale, acc, 0x000F)
    }

    /// The 4×4 transposition of 32-bit lanes within each 128-bit chunk:
    /// four natural 64-value vectors into a panel's four steps.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose(v: [__m512i; 4]) -> [__m512i; 4] {
        let t0 = _mm512_unpacklo_epi32(v[0], v[1]);
        let t1 = _mm512_unpackhi_epi32(v[0], v[1]);
        let t2 = _mm512_unpacklo_epi32(v[2], v[3]);
        let t3 = _mm512_unpackhi_epi32(v[2], v[3]);
        [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ]
    }

    /// `W` weight rows times `R` inputs at once. Each step's input bytes are
    /// loaded once for the `W` rows, and the float work is done once per
    /// panel, or pair of panels (not `K`), and per couple of weight row and
    /// input ([`panel_end`], the same as [`rows`] and [`fused`],
    /// whose integer sums are the same: so the same bits). Signed weights
    /// (`S`) are the signed operand here and the inputs, offset by 128, the
    /// unsigned one: minus 128 × the weights' sum (computed once per row by
    /// [`offset_sums`]) leaves Σ q x exactly, and spares [`rows`]'s per-pair
    /// sign flip.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    fn tile<const W: usize, const R: usize, const S: bool, const K: bool>(
        w: &[Unpacked],
        a: &[ActivationRow<'_>],
        out: &mut Tile,
    ) {
        let n = w[0].len;
        assert!(w.len() >= W && a.len() >= R);
        assert!(
            w[..W]
                .iter()
                .all(|w| w.len == n && w.offset_sums.len() == padded(n) / GROUP)
        );
        let full = n / PANEL * PANEL;
        let mut acc = [[_mm512_setzero_ps(); R]; W];
        let wq: [*const u8; W] = std::array::from_fn(|i| w[i].q.as_ptr());
        let ws: [*const f32; W] = std::array::from_fn(|i| w[i].scale.as_ptr());
        let wo: [*const i32; W] = std::array::from_fn(|i| w[i].offset_sums.as_ptr());
        let aq: [*const i8; R] = std::array::from_fn(|r| a[r].q.as_ptr());
        let asc: [*const f32; R] = std::array::from_fn(|r| a[r].scale.as_ptr());
        let offset = _mm512_set1_epi8(-128);
        // Pairs (32-value blocks): a lane sums a whole block over 8 steps.
        let pairs = pairs_end(n, !K);
        // SAFETY: every load reads bytes `p..p + 512` or `p..p + 256` (groups
        // `p/16..p/16 + 16`) of rows and inputs that hold `padded(n)`.
        unsafe {
            // One pair (`$steps` 8) or panel (4) at `$p`, its steps unrolled.
            macro_rules! panel {
                ($p:expr, $steps:literal) => {{
                    let p = $p;
                    let mut sums = [[_mm512_setzero_si512(); R]; W];
                    for s in 0..$steps {
                        let s = p + 64 * s;
                        let x: [__m512i; R] = std::array::from_fn(|r| {
                            let v = _mm512_loadu_si512(aq[r].add(s) as *const __m512i);
                            if S { _mm512_xor_si512(v, offset) } else { v }
                        });
                        for i in 0..W {
                            let q = _mm512_loadu_si512(wq[i].add(s) as *const __m512i);
                            for r in 0..R {
                                sums[i][r] = if S {
                                    _mm512_dpbusd_epi32(sums[i][r], x[r], q)
                                } else {
                                    _mm512_dpbusd_epi32(sums[i][r], q, x[r])
                                };
                            }
                        }
                    }
                    let xs: [__m512; R] =
                        std::array::from_fn(|r| input_scales::<K>(asc[r], p / GROUP));
                    for i in 0..W {
                        let scale = _mm512_loadu_ps(ws[i].add(p / GROUP));
                        let wsum = _mm512_loadu_si512(wo[i].add(p / GROUP) as *const __m512i);
                        for r in 0..R {
                            let sum = if S {
                                _mm512_sub_epi32(sums[i][r], wsum)
                            } else {
                                sums[i][r]
                            };
                            acc[i][r] = panel_end::<K>(sum, scale, xs[r], acc[i][r]);
                        }
                    }
                }};
            }
            for p in (0..pairs).step_by(PAIR) {
                panel!(p, 8);
            }
            for p in (pairs..full).step_by(PANEL) {
                panel!(p, 4);
            }
            let offset = _mm_set1_epi8(-128);
            for m in (full..padded(n)).step_by(MINI) {
                let mut sums = [[_mm_setzero_si128(); R]; W];
                for s in (m..m + MINI).step_by(16) {
                    let x: [__m128i; R] = std::array::from_fn(|r| {
                        let v = _mm_loadu_si128(aq[r].add(s) as *const __m128i);
                        if S { _mm_xor_si128(v, offset) } else { v }
                    });
                    for i in 0..W {
                        let q = _mm_loadu_si128(wq[i].add(s) as *const __m128i);
                        for r in 0..R {
                            sums[i][r] = if S {
                                _mm_dpbusd_epi32(sums[i][r], x[r], q)
                            } else {
                                _mm_dpbusd_epi32(sums[i][r], q, x[r])
                            };
                        }
                    }
                }
                let xs: [__m128; R] = std::array::from_fn(|r| _mm_loadu_ps(asc[r].add(m / GROUP)));
                for i in 0..W {
                    let scale = _mm_loadu_ps(ws[i].add(m / GROUP));
                    let wsum = _mm_loadu_si128(wo[i].add(m / GROUP) as *const __m128i);
                    for r in 0..R {
                        let sum = if S {
                            _mm_sub_epi32(sums[i][r], wsum)
                        } else {
                            sums[i][r]
                        };
                        acc[i][r] = mini_end(sum, scale, xs[r], acc[i][r]);
                    }
                }
            }
        }
        // `finish`'s ending for every pair, its reductions done 16 at a time.
        let mut flat = [_mm512_setzero_ps(); 16];
        for i in 0..W {
            flat[i * R..(i + 1) * R].copy_from_slice(&acc[i]);
        }
        let total = reduce16(&flat);
        let mut sums = [[0f32; R]; W];
        if S {
            for (i, sums) in sums.iter_mut().enumerate() {
                for (r, sum) in sums.iter_mut().enumerate() {
                    *sum = total[i * R + r];
                }
            }
        } else {
            let groups = w[0].min.len();
            let mut g = 0;
            let mut accm = [_mm512_setzero_ps(); 16];
            // SAFETY: groups `g..g + 16`, inside every row's mins and input's sums.
            unsafe {
                while g + 16 <= groups {
                    let sum: [__m512; R] =
                        std::array::from_fn(|r| _mm512_loadu_ps(a[r].group_sum.as_ptr().add(g)));
                    for i in 0..W {
                        let m = _mm512_loadu_ps(w[i].min.as_ptr().add(g));
                        for r in 0..R {
                            accm[i * R + r] = _mm512_fmadd_ps(m, sum[r], accm[i * R + r]);
                        }
                    }
                    g += 16;
                }
            }
            let mins = reduce16(&accm);
            for (i, sums) in sums.iter_mut().enumerate() {
                for (r, sum) in sums.iter_mut().enumerate() {
                    *sum = total[i * R + r] - mins[i * R + r];
                    for (g, &m) in w[i].min.iter().enumerate().skip(g) {
                        *sum -= m * a[r].group_sum[g];
                    }
                }
            }
        }
        for i in 0..W {
            out[i][..R].copy_from_slice(&sums[i]);
        }
    }

    /// `_mm512_reduce_add_ps` of 16 vectors at once, with its very sums (lane
    /// `i` plus lane `i + 8`, then `+ 4`, `+ 2`, `+ 1`), shuffled across the
    /// vectors instead of within each: 45 instructions instead of 16 × 7.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn reduce16(v: &[__m512; 16]) -> [f32; 16] {
        // Halves of 256 bits: vectors 2m and 2m + 1 side by side.
        let l1: [__m512; 8] = std::array::from_fn(|m| {
            let (a, b) = (v[2 * m], v[2 * m + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            )
        });
        // Quarters: vector 4n + c in 128-bit chunk c.
        let l2: [__m512; 4] = std::array::from_fn(|n| {
            let (a, b) = (l1[2 * n], l1[2 * n + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            )
        });
        let l3: [__m512; 2] = std::array::from_fn(|p| {
            let (a, b) = (l2[2 * p], l2[2 * p + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
            )
        });
        let l4 = _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(l3[0], l3[1]),
            _mm512_shuffle_ps::<0b11_01_11_01>(l3[0], l3[1]),
        );
        let mut lanes = [0f32; 16];
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), l4) };
        // Lane 4c + j holds vector c + 4j.
        std::array::from_fn(|i| lanes[4 * (i % 4) + i / 4])
    }

    /// `S`: the weights are signed bytes (a symmetric type, no mins): their
    /// magnitudes are the unsigned operand and their signs go onto the inputs.
    /// `K`: a K-quant's row (see [`panel_end`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    fn rows<const R: usize, const S: bool, const K: bool>(
        w: &Unpacked,
        a: &[ActivationRow<'_>],
        out: &mut [f32],
    ) {
        let n = w.len;
        let full = n / PANEL * PANEL;
        let mut acc = [_mm512_setzero_ps(); R];
        let (wq, ws) = (w.q.as_ptr(), w.scale.as_ptr());
        let aq: [*const i8; R] = std::array::from_fn(|r| a[r].q.as_ptr());
        let asc: [*const f32; R] = std::array::from_fn(|r| a[r].scale.as_ptr());
        let pairs = pairs_end(n, !K);
        // SAFETY: bytes `p..p + 512` or `p..p + 256` and groups `p/16..p/16 +
        // 16` (or a mini-panel's 64 and 4), inside rows and inputs of `padded(n)`.
        unsafe {
            for p in (0..pairs).step_by(PAIR) {
                let q: [__m512i; 8] = std::array::from_fn(|s| {
                    _mm512_loadu_si512(wq.add(p + 64 * s) as *const __m512i)
                });
                let sums = panel_sums::<R, S, 8>(q, aq, p);
                let scale = _mm512_loadu_ps(ws.add(p / GROUP));
                for r in 0..R {
                    let xs = input_scales::<K>(asc[r], p / GROUP);
                    acc[r] = panel_end::<K>(sums[r], scale, xs, acc[r]);
                }
            }
            for p in (pairs..full).step_by(PANEL) {
                let q: [__m512i; 4] = std::array::from_fn(|s| {
                    _mm512_loadu_si512(wq.add(p + 64 * s) as *const __m512i)
                });
                let sums = panel_sums::<R, S, 4>(q, aq, p);
                let scale = _mm512_loadu_ps(ws.add(p / GROUP));
                for r in 0..R {
                    let xs = input_scales::<K>(asc[r], p / GROUP);
                    acc[r] = panel_end::<K>(sums[r], scale, xs, acc[r]);
                }
            }
            for m in (full..padded(n)).step_by(MINI) {
                let q =
                    std::array::from_fn(|s| _mm_loadu_si128(wq.add(m + 16 * s) as *const __m128i));
                let sums = mini_sums::<R, S>(q, aq, m);
                let scale = _mm_loadu_ps(ws.add(m / GROUP));
                for r in 0..R {
                    let xs = _mm_loadu_ps(asc[r].add(m / GROUP));
                    acc[r] = mini_end(sums[r], scale, xs, acc[r]);
                }
            }
        }
        // SAFETY: the inputs are as long as the row (the caller's).
        let sums = unsafe { finish::<R, S>(acc, &w.min, a) };
        out[..R].copy_from_slice(&sums);
    }

    /// A panel's (or pair's) integer sums, lane `l` for group (block) `l` in
    /// panel order: the weights' `N` steps `q` (signed bytes when `S`) times
    /// every input's bytes `p..p + 64N`.
    ///
    /// # Safety
    /// Every input holds bytes `p..p + 64N`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn panel_sums<const R: usize, const S: bool, const N: usize>(
        q: [__m512i; N],
        aq: [*const i8; R],
        p: usize,
    ) -> [__m512i; R] {
        let mut sums = [_mm512_setzero_si512(); R];
        for (s, q) in q.into_iter().enumerate() {
            let (q, neg) = magnitude::<S>(q);
            for r in 0..R {
                // SAFETY: the caller's.
                let x = unsafe { _mm512_loadu_si512(aq[r].add(p + 64 * s) as *const __m512i) };
                sums[r] = _mm512_dpbusd_epi32(sums[r], q, signs::<S>(x, neg));
            }
        }
        sums
    }

    /// [`panel_sums`] for a mini-panel at `m`.
    ///
    /// # Safety
    /// Every input holds bytes `m..m + 64`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn mini_sums<const R: usize, const S: bool>(
        q: [__m128i; 4],
        aq: [*const i8; R],
        m: usize,
    ) -> [__m128i; R] {
        let mut sums = [_mm_setzero_si128(); R];
        for (s, q) in q.into_iter().enumerate() {
            let (q, neg) = if S {
                (_mm_abs_epi8(q), _mm_movepi8_mask(q))
            } else {
                (q, 0)
            };
            for r in 0..R {
                // SAFETY: the caller's.
                let x = unsafe { _mm_loadu_si128(aq[r].add(m + 16 * s) as *const __m128i) };
                let x = if S {
                    _mm_mask_sub_epi8(x, neg, _mm_setzero_si128(), x)
                } else {
                    x
                };
                sums[r] = _mm_dpbusd_epi32(sums[r], q, x);
            }
        }
        sums
    }

    /// Signed weight bytes (`S`) as the unsigned operand of `vpdpbusd`: their
    /// magnitudes, and which of them were negative; unsigned ones as they are.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn magnitude<const S: bool>(q: __m512i) -> (__m512i, __mmask64) {
        if S {
            (_mm512_abs_epi8(q), _mm512_movepi8_mask(q))
        } else {
            (q, 0)
        }
    }

    /// The inputs negated where the weight was negative (`S`): the product of
    /// magnitude and signed input is the signed product.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn signs<const S: bool>(x: __m512i, neg: __mmask64) -> __m512i {
        if S {
            _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x)
        } else {
            x
        }
    }

    /// The dot products' ends, shared by [`rows`] and [`fused`] so that both
    /// give the same bits: the accumulated products minus the weights' mins
    /// times the inputs' group sums, 16 groups at a time and summed apart as
    /// llama.cpp sums them (folded into the same accumulators, the rounding
    /// differs enough to flip 8-bit inputs downstream: tests/quantized.rs
    /// sees it on Q4_0, Q5_0 and Q5_K).
    ///
    /// # Safety
    /// Every input as long as the row; `min` one per group of 16 of it.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn finish<const R: usize, const S: bool>(
        acc: [__m512; R],
        min: &[f32],
        a: &[ActivationRow<'_>],
    ) -> [f32; R] {
        if S {
            // No mins: the products are the whole sum.
            let mut sums = [0f32; R];
            for r in 0..R {
                sums[r] = _mm512_reduce_add_ps(acc[r]);
            }
            return sums;
        }
        let mut accm = [_mm512_setzero_ps(); R];
        let groups = min.len();
        let mut g = 0;
        // SAFETY: groups `g..g + 16`, inside both.
        unsafe {
            while g + 16 <= groups {
                let m = _mm512_loadu_ps(min.as_ptr().add(g));
                for r in 0..R {
                    let sum = _mm512_loadu_ps(a[r].group_sum.as_ptr().add(g));
                    accm[r] = _mm512_fmadd_ps(m, sum, accm[r]);
                }
                g += 16;
            }
        }
        let mut sums = [0f32; R];
        for r in 0..R {
            sums[r] = _mm512_reduce_add_ps(acc[r]) - _mm512_reduce_add_ps(accm[r]);
        }
        for (g, &m) in min.iter().enumerate().skip(g) {
            for r in 0..R {
                sums[r] -= m * a[r].group_sum[g];
            }
        }
        sums
    }

    /// Whether [`fused_weight_rows`] serves `kind`: the types of 32-value
    /// blocks, whose blocks decode into registers in a few instructions.
    pub fn fuses(kind: GgmlType) -> bool {
        matches!(
            kind,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
        )
    }

    /// [`super::weight_rows`] for few inputs (decoding) and a type that
    /// [`fuses`]: each block is decoded in registers right before its dot
    /// products instead of being unpacked into memory and read back, which
    /// was as long as the products themselves. The arithmetic is
    /// [`rows`]'s, operation for operation (same bytes, same scales, same
    /// order of sums), so the results are identical.
    ///
    /// # Safety
    /// As [`weight_rows`]; at most `2 * MAX_ROWS` inputs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn fused_weight_rows(
        kind: GgmlType,
        weights: &[u8],
        row_bytes: usize,
        inputs: &[ActivationRow<'_>],
        scratch: &mut [Unpacked],
        acc: &OutBlock,
    ) {
        match kind {
            // SAFETY: the caller's.
            GgmlType::Q4_0 => unsafe {
                fused_rows::<2, true>(weights, row_bytes, inputs, scratch, acc)
            },
            GgmlType::Q4_1 => unsafe {
                fused_rows::<3, false>(weights, row_bytes, inputs, scratch, acc)
            },
            GgmlType::Q5_0 => unsafe {
                fused_rows::<6, true>(weights, row_bytes, inputs, scratch, acc)
            },
            GgmlType::Q5_1 => unsafe {
                fused_rows::<7, false>(weights, row_bytes, inputs, scratch, acc)
            },
            GgmlType::Q8_0 => unsafe {
                fused_rows::<8, true>(weights, row_bytes, inputs, scratch, acc)
            },
            _ => unreachable!("checked by `fuses`"),
        }
    }

    /// `S`: the type is symmetric (see [`rows`]).
    #[inline(always)]
    unsafe fn fused_rows<const T: u32, const S: bool>(
        weights: &[u8],
        row_bytes: usize,
        inputs: &[ActivationRow<'_>],
        scratch: &mut [Unpacked],
        acc: &OutBlock,
    ) {
        let mins = &mut scratch[0].min;
        let mut dots = [0f32; MAX_ROWS];
        for (j, row) in weights.chunks_exact(row_bytes).enumerate() {
            for (c, chunk) in inputs.chunks(MAX_ROWS).enumerate() {
                let dots = &mut dots[..chunk.len()];
                // SAFETY: the caller's: the CPU has the instructions, the
                // inputs are as long as the row's values.
                unsafe {
                    match chunk.len() {
                        1 => fused::<T, 1, S>(row, chunk, mins, dots),
                        2 => fused::<T, 2, S>(row, chunk, mins, dots),
                        3 => fused::<T, 3, S>(row, chunk, mins, dots),
                        _ => fused::<T, MAX_ROWS, S>(row, chunk, mins, dots),
                    }
                }
                for (i, &d) in dots.iter().enumerate() {
                    // SAFETY: the caller's: input row `c * MAX_ROWS + i`,
                    // this task's column `j`.
                    unsafe { acc.write(c * MAX_ROWS + i, j, d) };
                }
            }
        }
    }

    /// The f16 at `p` as f32 (F16C, as `unpack` converts it).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    #[inline]
    unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: the caller's: two bytes at `p`.
        let h = unsafe { std::ptr::read_unaligned(p as *const u16) };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
    }

    /// Block `b` of type `T` in registers: its 32 values as unsigned bytes
    /// (in `unpack`'s order), its scale and its min.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    #[inline]
    unsafe fn decode<const T: u32>(b: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: the caller's: one whole block at `b`.
        unsafe {
            let nibbles = |at: usize| {
                let v = _mm_loadu_si128(b.add(at) as *const __m128i);
                let low = _mm_set1_epi8(0x0F);
                _mm256_set_m128i(
                    _mm_and_si128(_mm_srli_epi16(v, 4), low),
                    _mm_and_si128(v, low),
                )
            };
            let high_bits = |at: usize| {
                let h = std::ptr::read_unaligned(b.add(at) as *const u32);
                _mm256_maskz_mov_epi8(h, _mm256_set1_epi8(0x10))
            };
            let d = half(b);
            // The symmetric types as signed bytes without a min, as unpacked.
            match T {
                2 => (_mm256_sub_epi8(nibbles(2), _mm256_set1_epi8(8)), d, 0.0),
                3 => (nibbles(4), d, -half(b.add(2))),
                6 => (
                    _mm256_sub_epi8(
                        _mm256_or_si256(nibbles(6), high_bits(2)),
                        _mm256_set1_epi8(16),
                    ),
                    d,
                    0.0,
                ),
                7 => (
                    _mm256_or_si256(nibbles(8), high_bits(4)),
                    d,
                    -half(b.add(2)),
                ),
                _ => (_mm256_loadu_si256(b.add(2) as *const __m256i), d, 0.0),
            }
        }
    }

    /// [`rows`] on one row of blocks of type `T`, decoded as it goes and put
    /// in panel order in registers; for the types with a min (not `S`), the
    /// groups' mins are written to `mins` (two per block) and summed after,
    /// as there.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    #[inline]
    unsafe fn fused<const T: u32, const R: usize, const S: bool>(
        row: &[u8],
        a: &[ActivationRow<'_>],
        mins: &mut [f32],
        out: &mut [f32],
    ) {
        let size = GgmlType::from_supported_id(T).block_bytes();
        let blocks = row.len() / size;
        let n = blocks * 32;
        let full = n / PANEL * PANEL;
        assert!(a.iter().all(|a| a.len() == n) && mins.len() == n / GROUP);
        let mut acc = [_mm512_setzero_ps(); R];
        let aq: [*const i8; R] = std::array::from_fn(|r| a[r].q.as_ptr());
        let asc: [*const f32; R] = std::array::from_fn(|r| a[r].scale.as_ptr());
        let p0 = row.as_ptr();
        // Lane 4c + j of a panel is group 4j + c, of block 2j + c/2.
        let spread = _mm512_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6, 1, 3, 5, 7, 1, 3, 5, 7);
        let pairs = pairs_end(n, true);
        // Pairs: lane 4c + j is block 4j + c in both panels.
        let lanes = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        // Blocks `b` and `b + 1` side by side, their mins recorded. A macro,
        // not a closure: `array::from_fn`'s closures stayed calls.
        macro_rules! two_blocks {
            ($b:expr) => {{
                let b = $b;
                let (q0, _, m0) = decode::<T>(p0.add(b * size));
                let (q1, _, m1) = decode::<T>(p0.add((b + 1) * size));
                if !S {
                    mins[2 * b..2 * b + 4].copy_from_slice(&[m0, m0, m1, m1]);
                }
                _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1)
            }};
        }
        // SAFETY: blocks `p/32..p/32 + 16` (or 8, or a mini-panel's one or
        // two) lie inside the row; the inputs hold `padded(n)` bytes and
        // their groups.
        unsafe {
            for p in (0..pairs).step_by(PAIR) {
                let blk = p / 32;
                // Blocks 2v, 2v + 1 side by side.
                let mut two = [_mm512_setzero_si512(); 8];
                for (v, two) in two.iter_mut().enumerate() {
                    *two = two_blocks!(blk + 2 * v);
                }
                // Panel h's natural rows: the halves h of four blocks.
                let (mut firsts, mut seconds) =
                    ([_mm512_setzero_si512(); 4], [_mm512_setzero_si512(); 4]);
                for g in 0..4 {
                    let (x, y) = (two[2 * g], two[2 * g + 1]);
                    firsts[g] = _mm512_shuffle_i64x2::<0b10_00_10_00>(x, y);
                    seconds[g] = _mm512_shuffle_i64x2::<0b11_01_11_01>(x, y);
                }
                let [a0, a1, a2, a3] = transpose(firsts);
                let [b0, b1, b2, b3] = transpose(seconds);
                let sums = panel_sums::<R, S, 8>([a0, a1, a2, a3, b0, b1, b2, b3], aq, p);
                // The two halves joined by AVX-512F's `vinsertf64x4`: the
                // same bits as `_mm512_insertf32x8`, which needs AVX-512DQ,
                // which this function is not compiled with, so it stayed a
                // call (with a `vzeroupper`) per pair.
                let lo = crate::unpack::block_scales(p0.add(blk * size), size);
                let hi = crate::unpack::block_scales(p0.add((blk + 8) * size), size);
                let d = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castps_pd(_mm512_castps256_ps512(lo)),
                    _mm256_castps_pd(hi),
                ));
                let scale = _mm512_permutexvar_ps(lanes, d);
                for r in 0..R {
                    let xs = _mm512_loadu_ps(asc[r].add(p / GROUP));
                    acc[r] = panel_end::<false>(sums[r], scale, xs, acc[r]);
                }
            }
            for p in (pairs..full).step_by(PANEL) {
                let blk = p / 32;
                let mut natural = [_mm512_setzero_si512(); 4];
                for (v, natural) in natural.iter_mut().enumerate() {
                    *natural = two_blocks!(blk + 2 * v);
                }
                let sums = panel_sums::<R, S, 4>(transpose(natural), aq, p);
                let d = crate::unpack::block_scales(p0.add(blk * size), size);
                let scale = _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(d));
                for r in 0..R {
                    let xs = _mm512_loadu_ps(asc[r].add(p / GROUP));
                    acc[r] = panel_end::<false>(sums[r], scale, xs, acc[r]);
                }
            }
            for m in (full..n).step_by(MINI) {
                let blk = m / 32;
                let (q0, d0, m0) = decode::<T>(p0.add(blk * size));
                let (q1, d1, m1) = if m + MINI <= n {
                    decode::<T>(p0.add((blk + 1) * size))
                } else {
                    (_mm256_setzero_si256(), 0.0, 0.0)
                };
                if !S {
                    mins[2 * blk..2 * blk + 2].copy_from_slice(&[m0, m0]);
                    if m + MINI <= n {
                        mins[2 * blk + 2..2 * blk + 4].copy_from_slice(&[m1, m1]);
                    }
                }
                let groups = [
                    _mm256_castsi256_si128(q0),
                    _mm256_extracti128_si256::<1>(q0),
                    _mm256_castsi256_si128(q1),
                    _mm256_extracti128_si256::<1>(q1),
                ];
                let sums = mini_sums::<R, S>(crate::layout::transpose_128(groups), aq, m);
                let scale = _mm_setr_ps(d0, d0, d1, d1);
                for r in 0..R {
                    let xs = _mm_loadu_ps(asc[r].add(m / GROUP));
                    acc[r] = mini_end(sums[r], scale, xs, acc[r]);
                }
            }
        }
        // SAFETY: the inputs are as long as the row (asserted above).
        let sums = unsafe { finish::<R, S>(acc, mins, a) };
        out[..R].copy_from_slice(&sums);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{
        ActivationRow, Dot, GROUP, GgmlType, MAX_ROWS, MINI, OutBlock, PAIR, PANEL, TILE_ROWS,
        Tile, Unpacked, padded, pairs_end, prefetch_ahead, rows_of,
    };

    entry!(
        Avx2,
        "avx2,fma,f16c",
        "The CPU must have AVX2, FMA and F16C; lengths as checked there.",
        tile = tiles,
        prepare = offset_sums,
        dot_prepared = true
    );

    /// A signed row's [`Unpacked::offset_sums`] when its inputs are
    /// multiplied shifted ([`rows`]): 128 × the sum of its bytes per lane, in
    /// the lanes [`rows_with`] sums them in, which it subtracts from every
    /// input's sums.
    #[target_feature(enable = "avx2")]
    fn offset_sums(w: &mut Unpacked) {
        if !w.signed || w.wide {
            return;
        }
        let n = w.len;
        let full = n / PANEL * PANEL;
        assert!(w.q.len() >= padded(n) && w.offset_sums.len() >= padded(n) / GROUP);
        let pairs = pairs_end(n, !w.superblocks);
        let (q, sums) = (w.q.as_ptr(), w.offset_sums.as_mut_ptr());
        // 128 as the unsigned operand, the row's bytes as the signed one:
        // 16-bit sums within 128 × 2 × 32, then widened.
        let (offset, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
        // SAFETY: bytes `p..p + 512` (`p..p + 256`, `m..m + 64`) of a row of
        // `padded(n)`, and their first 16 (16, 4) groups (asserted).
        unsafe {
            let sum = |from: usize, steps: usize| {
                let mut sum = _mm256_setzero_si256();
                for s in 0..steps {
                    let v = _mm256_loadu_si256(q.add(from + 64 * s) as *const __m256i);
                    let v = _mm256_maddubs_epi16(offset, v);
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(v, ones));
                }
                sum
            };
            // Half `h` of a pair (panel) at `p` in groups `p / 16 + 8h`.
            for (p, steps) in (0..pairs)
                .step_by(PAIR)
                .map(|p| (p, PAIR / 64))
                .chain((pairs..full).step_by(PANEL).map(|p| (p, PANEL / 64)))
            {
                for h in 0..2 {
                    let at = sums.add(p / GROUP + 8 * h) as *mut __m256i;
                    _mm256_storeu_si256(at, sum(p + 32 * h, steps));
                }
            }
            // A mini-panel's two halves of 32 bytes, side by side, folded.
            for m in (full..padded(n)).step_by(MINI) {
                let halves = _mm256_add_epi32(sum(m, 1), sum(m + 32, 1));
                let folded = _mm_add_epi32(
                    _mm256_castsi256_si128(halves),
                    _mm256_extracti128_si256::<1>(halves),
                );
                _mm_storeu_si128(sums.add(m / GROUP) as *mut __m128i, folded);
            }
        }
    }

    #[target_feature(enable = "avx2")]
    fn hsum8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `S`: signed weight bytes (no mins). Those of at most 6 bits are the
    /// signed operand of `vpmaddubsw` and the inputs, [shifted] by 128, the
    /// unsigned one; 128 × the weights' sum per lane
    /// ([`Unpacked::offset_sums`], once per row) is subtracted after. Q8_0's
    /// bytes are too wide for that (255 × 127 × 2 overflows the 16-bit
    /// sums): their magnitudes are the unsigned operand and their signs go
    /// onto the inputs (`vpsignb`), as llama.cpp's AVX2 code does, which
    /// costs two more instructions per 32 products and one input, on the
    /// pipes that `vpmaddubsw` needs too on Zen 3 and Intel's cores.
    /// `K`: a K-quant's row (its inputs' one scale per 256 values applied
    /// after the weights', as on AVX-512).
    ///
    /// Each 32-bit lane sums a group (a block, in a pair) over its panel's
    /// steps, as on AVX-512: `vpmaddubsw` gives 16-bit sums of two products,
    /// those of up to four steps are added as they are (weights within ±32,
    /// inputs from -128 to 127: the sums lie from -2¹⁵ to 4 × 2 × 32 × 127
    /// < 2¹⁵), or of up to eight ([`Unpacked::narrow`], within ±16); with
    /// shifted inputs (up to 255), of four (within ±16: 4 × 2 × 255 × 16 =
    /// 32 640) or two (Q6_K, within ±32). Then `vpmaddwd` by ones widens
    /// them to the lane's 32 bits. Zen 2 runs both on its one pipe that
    /// multiplies integers, which bounds these loops: a pair's eight steps
    /// with one widening spend a ninth of that pipe on it, not a fifth.
    ///
    /// [shifted]: ActivationRow::shifted
    #[target_feature(enable = "avx2,fma")]
    fn rows<const R: usize, const S: bool, const K: bool>(
        w: &Unpacked,
        a: &[ActivationRow<'_>],
        out: &mut [f32],
    ) {
        products::<R, S, K, true>(w, a, out)
    }

    /// [`rows`], with the weights' mins subtracted (`M`) or left to the
    /// caller ([`tile`], which sums those of several rows at once).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn products<const R: usize, const S: bool, const K: bool, const M: bool>(
        w: &Unpacked,
        a: &[ActivationRow<'_>],
        out: &mut [f32],
    ) {
        if S && w.wide {
            rows_with::<R, S, K, M, 1, false>(w, a, out)
        } else if S && w.narrow {
            rows_with::<R, S, K, M, 4, true>(w, a, out)
        } else if S {
            rows_with::<R, S, K, M, 2, true>(w, a, out)
        } else if w.narrow {
            rows_with::<R, S, K, M, 8, false>(w, a, out)
        } else {
            rows_with::<R, S, K, M, 4, false>(w, a, out)
        }
    }

    /// [`products`], the 16-bit sums of `N` steps added before widening;
    /// `O`: the inputs shifted, the weights signed (see [`rows`]).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn rows_with<
        const R: usize,
        const S: bool,
        const K: bool,
        const M: bool,
        const N: usize,
        const O: bool,
    >(
        w: &Unpacked,
        a: &[ActivationRow<'_>],
        out: &mut [f32],
    ) {
        let n = w.len;
        // `shifts` asked the caller for shifted inputs, and `prepare` (which
        // runs on every row of a kernel that `shifts`) filled the sums.
        assert!(!O || a.iter().all(|a| a.shifted.len() == a.q.len()));
        let full = n / PANEL * PANEL;
        let pairs = pairs_end(n, !K);
        let mut acc = [_mm256_setzero_ps(); R];
        let (wq, ws) = (w.q.as_ptr(), w.scale.as_ptr());
        let aq: [*const i8; R] = std::array::from_fn(|r| {
            if O {
                a[r].shifted.as_ptr() as *const i8
            } else {
                a[r].q.as_ptr()
            }
        });
        let asc: [*const f32; R] = std::array::from_fn(|r| a[r].scale.as_ptr());
        let offsets = w.offset_sums.as_ptr();
        let ones = _mm256_set1_epi16(1);
        // The weights' 32 bytes at `at` as the unsigned operand, and input
        // `r`'s, signed like the weights (`S`); with `O`, the weights signed
        // and the inputs unsigned. (Macros: closures were kept as calls.)
        macro_rules! weights {
            ($at:expr) => {{
                // Used inside the `unsafe` below, which reads inside the
                // row's `padded(n)` bytes.
                let q = _mm256_loadu_si256(wq.add($at) as *const __m256i);
                if S && !O {
                    (_mm256_abs_epi8(q), q)
                } else {
                    (q, q)
                }
            }};
        }
        macro_rules! product {
            ($r:expr, $at:expr, $u:expr, $q:expr) => {{
                // As for `weights`: every input holds `padded(n)` bytes.
                let x = _mm256_loadu_si256(aq[$r].add($at) as *const __m256i);
                if O {
                    _mm256_maddubs_epi16(x, $q)
                } else if S {
                    _mm256_maddubs_epi16($u, _mm256_sign_epi8(x, $q))
                } else {
                    _mm256_maddubs_epi16($u, x)
                }
            }};
        }
        // SAFETY: every load reads bytes `p..p + 512` or `p..p + 256` and
        // groups `p/16..p/16 + 16` (or a mini-panel's 64 and 4) of rows and
        // inputs of `padded(n)`.
        unsafe {
            // One pair (`$steps` 8) or panel (4) at `$p`: lane `l` of half
            // `h` sums group (block) `8h + l` of the panel order. A half at a
            // time, so that the sums of four inputs stay in registers.
            macro_rules! panel {
                ($p:expr, $steps:literal) => {{
                    let p = $p;
                    for h in 0..2 {
                        let mut sums = [_mm256_setzero_si256(); R];
                        let n = if N < $steps { N } else { $steps };
                        for s0 in (0..$steps).step_by(n) {
                            let mut part = [_mm256_setzero_si256(); R];
                            for s in s0..s0 + n {
                                let at = p + 64 * s + 32 * h;
                                let (u, q) = weights!(at);
                                for r in 0..R {
                                    part[r] = _mm256_add_epi16(part[r], product!(r, at, u, q));
                                }
                            }
                            for r in 0..R {
                                let wide = _mm256_madd_epi16(part[r], ones);
                                sums[r] = _mm256_add_epi32(sums[r], wide);
                            }
                        }
                        let g = p / GROUP + 8 * h;
                        if O {
                            let offset = _mm256_loadu_si256(offsets.add(g) as *const __m256i);
                            for r in 0..R {
                                sums[r] = _mm256_sub_epi32(sums[r], offset);
                            }
                        }
                        let scale = _mm256_loadu_ps(ws.add(g));
                        for r in 0..R {
                            let f = _mm256_cvtepi32_ps(sums[r]);
                            let xs = _mm256_loadu_ps(asc[r].add(g));
                            acc[r] = if K {
                                _mm256_fmadd_ps(_mm256_mul_ps(f, scale), xs, acc[r])
                            } else {
                                _mm256_fmadd_ps(f, _mm256_mul_ps(scale, xs), acc[r])
                            };
                        }
                    }
                }};
            }
            for p in (0..pairs).step_by(PAIR) {
                panel!(p, 8);
            }
            for p in (pairs..full).step_by(PANEL) {
                panel!(p, 4);
            }
            // Mini-panels: steps 0, 1 (then 2, 3) side by side in one vector,
            // lane `j` of each half for group `j`.
            for m in (full..padded(n)).step_by(MINI) {
                let mut sums = [_mm256_setzero_si256(); R];
                let mut part = [_mm256_setzero_si256(); R];
                for at in [m, m + 32] {
                    let (u, q) = weights!(at);
                    for r in 0..R {
                        let prod = product!(r, at, u, q);
                        if N == 1 {
                            let wide = _mm256_madd_epi16(prod, ones);
                            sums[r] = _mm256_add_epi32(sums[r], wide);
                        } else {
                            part[r] = _mm256_add_epi16(part[r], prod);
                        }
                    }
                }
                let scale = _mm_loadu_ps(ws.add(m / GROUP));
                for r in 0..R {
                    if N != 1 {
                        sums[r] = _mm256_madd_epi16(part[r], ones);
                    }
                    let mut sum = _mm_add_epi32(
                        _mm256_castsi256_si128(sums[r]),
                        _mm256_extracti128_si256::<1>(sums[r]),
                    );
                    if O {
                        let offset = _mm_loadu_si128(offsets.add(m / GROUP) as *const __m128i);
                        sum = _mm_sub_epi32(sum, offset);
                    }
                    let xs = _mm_loadu_ps(asc[r].add(m / GROUP));
                    let low = _mm_fmadd_ps(
                        _mm_cvtepi32_ps(sum),
                        _mm_mul_ps(scale, xs),
                        _mm256_castps256_ps128(acc[r]),
                    );
                    acc[r] = _mm256_blend_ps::<0x0F>(acc[r], _mm256_castps128_ps256(low));
                }
            }
        }
        // SAFETY: the inputs are as long as the row (the caller's); with no
        // mins (`S` or not `M`), `finish` reads none.
        let sums = unsafe {
            if M {
                finish::<R, S, K>(acc, &w.min, a)
            } else {
                finish::<R, true, K>(acc, &[], a)
            }
        };
        out[..R].copy_from_slice(&sums);
    }

    /// [`Dot::tile`]: [`tile`] for as many rows and inputs as given.
    ///
    /// # Safety
    /// As [`Dot::tile`]; the CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn tiles(w: &[Unpacked], a: &[ActivationRow<'_>], out: &mut Tile) {
        macro_rules! by_inputs {
            ($s:literal, $k:literal) => {
                match a.len() {
                    1 => tile::<1, $s, $k>(w, a, out),
                    2 => tile::<2, $s, $k>(w, a, out),
                    3 => tile::<3, $s, $k>(w, a, out),
                    _ => tile::<MAX_ROWS, $s, $k>(w, a, out),
                }
            };
        }
        // SAFETY: the caller's: the CPU has the instructions; the rows of a
        // tile are rows of one matrix, of one type.
        unsafe {
            match (w[0].signed, w[0].superblocks) {
                (false, false) => by_inputs!(false, false),
                (true, false) => by_inputs!(true, false),
                (false, true) => by_inputs!(false, true),
                (true, true) => by_inputs!(true, true),
            }
        }
    }

    /// Up to [`TILE_ROWS`] rows' [`rows`] with `R` inputs, with the same
    /// bits: the products row by row, then the mins of all the tile's rows
    /// and inputs together ([`tile_mins`]). Summed by [`finish`] one row
    /// at a time, each row's mins are a chain of dependent scalar additions
    /// per input; in lanes, four inputs' chains cost one vector's.
    #[target_feature(enable = "avx2,fma")]
    fn tile<const R: usize, const S: bool, const K: bool>(
        w: &[Unpacked],
        a: &[ActivationRow<'_>],
        out: &mut Tile,
    ) {
        for (w, out) in w.iter().zip(out.iter_mut()) {
            products::<R, S, K, false>(w, a, &mut out[..R]);
        }
        if !S {
            if w.len() == TILE_ROWS {
                tile_mins::<R, K, TILE_ROWS>(w, a, out);
            } else {
                for (i, w) in w.iter().enumerate() {
                    tile_mins::<R, K, 1>(std::slice::from_ref(w), a, &mut out[i..]);
                }
            }
        }
    }

    /// Subtract from `out[i][r]` the mins of row `i` of `w` (`W` rows)
    /// times the group sums of input `r`, summed as [`finish`] sums them:
    /// one by one in order from zero, every other group for 32-value
    /// types, each product rounded before it is added. The inputs are the
    /// four lanes of a vector (their group sums transposed four groups at a
    /// time), so that each lane's chain of additions is [`finish`]'s.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn tile_mins<const R: usize, const K: bool, const W: usize>(
        w: &[Unpacked],
        a: &[ActivationRow<'_>],
        out: &mut [[f32; MAX_ROWS]],
    ) {
        let groups = w[0].len / GROUP;
        let step = if K { 1 } else { 2 };
        assert!(w.len() == W && out.len() >= W && a.len() == R);
        assert!(w.iter().all(|w| w.min.len() >= groups));
        assert!(a.iter().all(|a| a.group_sum.len() == groups));
        let gs: [*const f32; R] = std::array::from_fn(|r| a[r].group_sum.as_ptr());
        let mins: [*const f32; W] = std::array::from_fn(|i| w[i].min.as_ptr());
        let mut chains = [_mm_setzero_ps(); W];
        let mut g = 0;
        // SAFETY: groups `g..g + 4` (then `g`) of every row and input, fewer
        // than `groups` (asserted).
        unsafe {
            while g + 4 <= groups {
                let mut t: [__m128; 4] = std::array::from_fn(|r| {
                    if r < R {
                        _mm_loadu_ps(gs[r].add(g))
                    } else {
                        _mm_setzero_ps()
                    }
                });
                // Transposed: `t[k]` holds group `g + k` of each input.
                let (t01, t23) = (_mm_unpacklo_ps(t[0], t[1]), _mm_unpacklo_ps(t[2], t[3]));
                let (u01, u23) = (_mm_unpackhi_ps(t[0], t[1]), _mm_unpackhi_ps(t[2], t[3]));
                t = [
                    _mm_movelh_ps(t01, t23),
                    _mm_movehl_ps(t23, t01),
                    _mm_movelh_ps(u01, u23),
                    _mm_movehl_ps(u23, u01),
                ];
                for k in (0..4).step_by(step) {
                    for i in 0..W {
                        let m = _mm_broadcast_ss(&*mins[i].add(g + k));
                        chains[i] = _mm_add_ps(chains[i], _mm_mul_ps(m, t[k]));
                    }
                }
                g += 4;
            }
            while g < groups {
                let t: [f32; 4] = std::array::from_fn(|r| if r < R { *gs[r].add(g) } else { 0.0 });
                let t = _mm_loadu_ps(t.as_ptr());
                for i in 0..W {
                    let m = _mm_broadcast_ss(&*mins[i].add(g));
                    chains[i] = _mm_add_ps(chains[i], _mm_mul_ps(m, t));
                }
                g += step;
            }
        }
        for i in 0..W {
            let mut m = [0f32; 4];
            // SAFETY: four floats.
            unsafe { _mm_storeu_ps(m.as_mut_ptr(), chains[i]) };
            for r in 0..R {
                out[i][r] -= m[r];
            }
        }
    }

    /// The dot products' ends for [`rows`]: the lanes' sum minus the
    /// weights' mins times the inputs' group sums, these summed one by one
    /// in order (as [`tile_mins`] and [`fused`] sum them too, so that every
    /// path gives the same bits), as llama.cpp's
    /// AVX2 code sums its blocks' mins (summed in vectors, or folded into the
    /// products' accumulators, the rounding differs enough to flip greedy
    /// tokens: tests/quantized.rs sees it on Q4_1 and Q5_K).
    ///
    /// # Safety
    /// Every input as long as the row; `min` one per group of 16 of it.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn finish<const R: usize, const S: bool, const K: bool>(
        acc: [__m256; R],
        min: &[f32],
        a: &[ActivationRow<'_>],
    ) -> [f32; R] {
        if S {
            // No mins: the products are the whole sum.
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hsum8(acc[r]);
            }
            return out;
        }
        // Rows of 32-value blocks: the inputs' (`Q8_1`) sum is in each
        // block's first group, the second's is 0 (adding its product changes
        // nothing): every other group. The inputs' chains side by side.
        let step = if K { 1 } else { 2 };
        let mut mins = [0f32; R];
        for g in (0..min.len()).step_by(step) {
            let m = min[g];
            for r in 0..R {
                mins[r] += m * a[r].group_sum[g];
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum8(acc[r]) - mins[r];
        }
        out
    }

    /// Up to how many inputs [`weight_rows`] takes [`fused_weight_rows`] for
    /// `kind` (0: never). The decoding kernel decodes each row once per four
    /// inputs. On Zen 3, from five inputs up, rows unpacked once were faster
    /// for the 4- and 5-bit types (the kernels bench, Q5_0 at six and eight
    /// inputs: 20 and 18 of 20 alternated trials; a batch-8 Q4_K_M case's
    /// generation 9–19% in three sets of alternated runs) and slower for Q8_0
    /// (the same case: 2–7%, 1 to 3 of 8 runs faster), whose decoding is a
    /// load (benches/llm.md).
    pub fn fused_up_to(kind: GgmlType) -> usize {
        match kind {
            GgmlType::Q8_0 => 2 * MAX_ROWS,
            _ if fuses(kind) => MAX_ROWS,
            _ => 0,
        }
    }

    /// Whether [`fused_weight_rows`] serves `kind`: the types of 32-value
    /// blocks, whose blocks decode into registers in a few instructions.
    pub fn fuses(kind: GgmlType) -> bool {
        matches!(
            kind,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
        )
    }

    /// [`super::weight_rows`] for few inputs (decoding) and a type that
    /// [`fuses`]: each block is decoded in registers and multiplied at once
    /// with the inputs' bytes, put back in their natural order for the
    /// call, instead of being unpacked into memory and read back. The
    /// integer sums of each group are the same as [`rows`]' (integers add
    /// exactly in any order), gathered into its lanes, and the float work is
    /// its, operation for operation: the results are identical.
    ///
    /// # Safety
    /// As [`weight_rows`]; at most `2 * MAX_ROWS` inputs.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn fused_weight_rows(
        kind: GgmlType,
        weights: &[u8],
        row_bytes: usize,
        inputs: &[ActivationRow<'_>],
        scratch: &mut Vec<Unpacked>,
        acc: &OutBlock,
    ) {
        let len = scratch[0].len;
        while scratch.len() < inputs.len() {
            scratch.push(Unpacked::with_len(len));
        }
        let offset = crate::unpack::offset(kind).map_or(0, i32::from);
        for (a, s) in inputs.iter().zip(scratch.iter_mut()) {
            // SAFETY: the CPU has AVX2; both hold `padded(len)` bytes.
            unsafe {
                crate::layout::from_panels(
                    a.q.as_ptr() as *const u8,
                    s.q.as_mut_ptr(),
                    len,
                    pairs_end(len, true),
                )
            };
            if stored(kind) {
                offset_corrections(s, offset);
            }
        }
        let mut natural = [(std::ptr::null::<i8>(), std::ptr::null::<i32>()); 2 * MAX_ROWS];
        for (p, s) in natural.iter_mut().zip(scratch.iter()).take(inputs.len()) {
            *p = (s.q.as_ptr() as *const i8, s.offset_sums.as_ptr());
        }
        let natural = &natural[..inputs.len()];
        // SAFETY: the caller's.
        unsafe {
            match kind {
                GgmlType::Q4_0 => fused_rows::<2, true>(weights, row_bytes, inputs, natural, acc),
                GgmlType::Q4_1 => fused_rows::<3, false>(weights, row_bytes, inputs, natural, acc),
                GgmlType::Q5_0 => fused_rows::<6, true>(weights, row_bytes, inputs, natural, acc),
                GgmlType::Q5_1 => fused_rows::<7, false>(weights, row_bytes, inputs, natural, acc),
                GgmlType::Q8_0 => fused_rows::<8, true>(weights, row_bytes, inputs, natural, acc),
                _ => unreachable!("checked by `fuses`"),
            }
        }
    }

    /// Whether [`fused`] multiplies `kind`'s values as stored (Q4_0's and
    /// Q5_0's, from 0 to 15 or 31) as the unsigned operand of `vpmaddubsw`
    /// by the signed inputs, then subtracts the offset (8, 16) times each
    /// group's inputs' sum ([`offset_corrections`], once per call) from the
    /// widened sums. That drops the offset's subtraction and `vpabsb` per
    /// block and `vpsignb` per block and input, for one `vpsubd` per eight
    /// blocks: a single input's step goes from four instructions to one.
    /// The sums are the same integers, so the bits are too.
    pub const fn stored(kind: GgmlType) -> bool {
        matches!(kind, GgmlType::Q4_0 | GgmlType::Q5_0)
    }

    /// `offset` × the sum of each group of an input's bytes, `s.q` in
    /// natural order, into `s.offset_sums` in the order [`fused`]'s lanes
    /// take them: a pair's two vectors of eight blocks (both groups), a
    /// panel's two of four blocks' groups, a mini-panel's four groups as
    /// they lie.
    #[target_feature(enable = "avx2")]
    fn offset_corrections(s: &mut Unpacked, offset: i32) {
        let n = s.len;
        let (pairs, full) = (pairs_end(n, true), n / PANEL * PANEL);
        assert!(s.q.len() >= padded(n) && s.offset_sums.len() >= padded(n) / GROUP);
        let q = s.q.as_ptr();
        // `offset` × the sums of block `blk`'s two groups.
        let group_sums = |blk: usize| {
            // SAFETY: block `blk < n / 32` of the row's padded(n) bytes
            // (asserted; the callers below stay below `n`).
            unsafe {
                let x = _mm256_loadu_si256(q.add(32 * blk) as *const __m256i);
                let v = _mm256_maddubs_epi16(_mm256_set1_epi8(1), x);
                let v = _mm256_madd_epi16(v, _mm256_set1_epi16(1));
                let v = _mm256_hadd_epi32(v, v);
                let v = _mm256_hadd_epi32(v, v);
                [
                    offset * _mm256_extract_epi32::<0>(v),
                    offset * _mm256_extract_epi32::<4>(v),
                ]
            }
        };
        let sums = &mut s.offset_sums;
        for p in (0..pairs).step_by(PAIR) {
            let b = p / 32;
            for h in 0..2 {
                // Whole blocks, as a pair's lanes hold them.
                let c = b + 2 * h;
                for (j, blk) in [c, c + 4, c + 8, c + 12, c + 1, c + 5, c + 9, c + 13]
                    .into_iter()
                    .enumerate()
                {
                    let [g0, g1] = group_sums(blk);
                    sums[p / GROUP + 8 * h + j] = g0 + g1;
                }
            }
        }
        for p in (pairs..full).step_by(PANEL) {
            let b = p / 32;
            for h in 0..2 {
                // Four blocks' first groups, then their second.
                let at = p / GROUP + 8 * h;
                for (j, blk) in [b + h, b + h + 2, b + h + 4, b + h + 6]
                    .into_iter()
                    .enumerate()
                {
                    [sums[at + j], sums[at + 4 + j]] = group_sums(blk);
                }
            }
        }
        for m in (full..n).step_by(MINI) {
            let b = m / 32;
            let [g0, g1] = group_sums(b);
            let [g2, g3] = if m + MINI <= n {
                group_sums(b + 1)
            } else {
                [0, 0]
            };
            sums[m / GROUP..m / GROUP + 4].copy_from_slice(&[g0, g1, g2, g3]);
        }
    }

    /// The f16 at `p` as f32: one `vcvtph2ps` from memory, which writes its
    /// whole register. From a 16-bit load (or an 8-byte one, which it
    /// narrows) LLVM inserts the half into whatever register it likes
    /// (`vpinsrw $0`), often the one the mins' chain of sums had just
    /// written: each block's min then waited for the previous ones, and
    /// Q4_1's rows took 7 cycles a block instead of 3 (`llvm-mca`).
    ///
    /// # Safety
    /// The CPU has F16C; 8 bytes readable at `p` (an f16 at byte 0 or 2 of
    /// a block of at least 18 bytes).
    #[inline(always)]
    unsafe fn half_at(p: *const u8) -> f32 {
        let v: __m128;
        // SAFETY: the caller's: the instruction reads the 8 bytes at `p`.
        unsafe {
            std::arch::asm!(
                "vcvtph2ps {v}, qword ptr [{p}]",
                p = in(reg) p,
                v = out(xmm_reg) v,
                options(pure, readonly, nostack, preserves_flags),
            );
            _mm_cvtss_f32(v)
        }
    }

    /// `S`: the type is symmetric (see [`rows`]).
    #[inline(always)]
    unsafe fn fused_rows<const T: u32, const S: bool>(
        weights: &[u8],
        row_bytes: usize,
        inputs: &[ActivationRow<'_>],
        natural: &[(*const i8, *const i32)],
        acc: &OutBlock,
    ) {
        let mut dots = [0f32; MAX_ROWS];
        for (j, row) in weights.chunks_exact(row_bytes).enumerate() {
            prefetch_ahead(weights, j * row_bytes, row_bytes);
            for (c, chunk) in inputs.chunks(MAX_ROWS).enumerate() {
                let dots = &mut dots[..chunk.len()];
                let x = &natural[c * MAX_ROWS..c * MAX_ROWS + chunk.len()];
                // SAFETY: the caller's: the CPU has the instructions, the
                // inputs are as long as the row's values.
                unsafe {
                    match chunk.len() {
                        1 => fused::<T, 1, S>(row, chunk, x, dots),
                        2 => fused::<T, 2, S>(row, chunk, x, dots),
                        3 => fused::<T, 3, S>(row, chunk, x, dots),
                        _ => fused::<T, MAX_ROWS, S>(row, chunk, x, dots),
                    }
                }
                for (i, &d) in dots.iter().enumerate() {
                    // SAFETY: the caller's: input row `c * MAX_ROWS + i`,
                    // this task's column `j`.
                    unsafe { acc.write(c * MAX_ROWS + i, j, d) };
                }
            }
        }
    }

    /// [`rows`] on one row of blocks of type `T`, decoded as it goes; `x`:
    /// the inputs' bytes in natural order. The blocks' mins are summed in
    /// [`finish`]'s order, one step beside each block's products.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn fused<const T: u32, const R: usize, const S: bool>(
        row: &[u8],
        a: &[ActivationRow<'_>],
        x: &[(*const i8, *const i32)],
        out: &mut [f32],
    ) {
        let size = const { GgmlType::from_supported_id(T).block_bytes() };
        let narrow = const { !matches!(GgmlType::from_supported_id(T), GgmlType::Q8_0) };
        let blocks = row.len() / size;
        let n = blocks * 32;
        let full = n / PANEL * PANEL;
        let pairs = pairs_end(n, true);
        assert!(a.iter().all(|a| a.len() == n) && x.len() >= R);
        // The mins' sums (see `finish`): one block's step beside each
        // block's products, in order whatever the order of the products
        // (a row's whole chain of dependent additions at once filled the
        // scheduler and held the products back).
        let mut mins = [0f32; R];
        let mut next = 0;
        let mut acc = [_mm256_setzero_ps(); R];
        let asc: [*const f32; R] = std::array::from_fn(|r| a[r].scale.as_ptr());
        let xq: [*const i8; R] = std::array::from_fn(|r| x[r].0);
        // The values as stored (see `stored`), and what to subtract.
        let stored = const { stored(GgmlType::from_supported_id(T)) };
        let corr: [*const i32; R] = std::array::from_fn(|r| x[r].1);
        let ones = _mm256_set1_epi16(1);
        // Blocks are read through pointers: the slices' bounds checks and
        // their index arithmetic were half of this loop's instructions.
        let base = row.as_ptr();
        // Block `b` decoded, its min recorded: then per input, its 16 lanes
        // of 16-bit sums of 2 products (the first eight lanes for its first
        // group). Macros, not closures: the compiler kept those as calls.
        macro_rules! pairs {
            ($b:expr) => {{
                let b = $b;
                // Used inside the `unsafe` below: block `b < blocks` lies
                // inside the row; the CPU has AVX2.
                let q = if stored {
                    crate::unpack::block_stored::<T>(base.add(b * size))
                } else {
                    crate::unpack::block_values::<T>(base.add(b * size))
                };
                if !S {
                    // Block `next`'s min is minus the f16 at its byte 2;
                    // `next` stays below `blocks`, one step per block.
                    let m = -half_at(base.add(next * size + 2));
                    for r in 0..R {
                        mins[r] += m * *a[r].group_sum.get_unchecked(2 * next);
                    }
                    next += 1;
                }
                let signs = S && !stored;
                let u = if signs { _mm256_abs_epi8(q) } else { q };
                let mut v = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    // The inputs hold the row's `padded(n)` bytes.
                    let x = _mm256_loadu_si256(xq[r].add(32 * b) as *const __m256i);
                    let x = if signs { _mm256_sign_epi8(x, q) } else { x };
                    v[r] = _mm256_maddubs_epi16(u, x);
                }
                v
            }};
        }
        // The same as 8 lanes of sums of 4 products.
        macro_rules! products {
            ($b:expr) => {{
                let mut v = pairs!($b);
                for r in 0..R {
                    v[r] = _mm256_madd_epi16(v[r], ones);
                }
                v
            }};
        }
        // Four blocks' products as one vector per input: block `b[k]`'s
        // first group in lane `k`, its second in lane `4 + k`.
        //
        // Below 8-bit weights, the 16-bit sums are added in pairs twice
        // before widening: a lane then sums 8 products, at most 8 × 31 × 128
        // = 31 744 < 2¹⁵ (Q5_1; Q5_0's magnitudes are at most 16, Q4's 15).
        // That is one `vpmaddwd` for four blocks instead of four: on Zen 2
        // it and `vpmaddubsw` share the one pipe that multiplies integers,
        // which bounds this loop. Integers add exactly, so the sums (and
        // the bits) are the same.
        macro_rules! four {
            ($b0:expr, $b1:expr, $b2:expr, $b3:expr) => {{
                // `$each` block's vectors added in pairs by `$hadd`, twice.
                macro_rules! tree {
                    ($each:ident, $hadd:ident) => {{
                        let (v0, v1) = ($each!($b0), $each!($b1));
                        let mut t = [_mm256_setzero_si256(); R];
                        for r in 0..R {
                            t[r] = $hadd(v0[r], v1[r]);
                        }
                        let (v2, v3) = ($each!($b2), $each!($b3));
                        for r in 0..R {
                            t[r] = $hadd(t[r], $hadd(v2[r], v3[r]));
                        }
                        t
                    }};
                }
                if narrow {
                    let mut t = tree!(pairs, _mm256_hadd_epi16);
                    for r in 0..R {
                        t[r] = _mm256_madd_epi16(t[r], ones);
                    }
                    t
                } else {
                    tree!(products, _mm256_hadd_epi32)
                }
            }};
        }
        // SAFETY: the blocks read lie inside the row; the inputs hold
        // `padded(n)` bytes and their groups.
        unsafe {
            let d = |b: usize| crate::unpack::block_scales(row.as_ptr().add(b * size), size);
            for p in (0..pairs).step_by(PAIR) {
                let b = p / 32;
                // Lane `4c + j` of a pair's panels is block `4j + c`: the
                // first 8 lanes blocks 0 4 8 12 1 5 9 13, the next 2 6 10 ....
                let (d0, d1) = (d(b), d(b + 8));
                for h in 0..2 {
                    let (c, t0) = (
                        b + 2 * h,
                        four!(b + 2 * h, b + 2 * h + 4, b + 2 * h + 8, b + 2 * h + 12),
                    );
                    let t1 = four!(c + 1, c + 5, c + 9, c + 13);
                    let c = 2 * h as i32;
                    let idx = _mm256_setr_epi32(c, c + 4, c, c + 4, c + 1, c + 5, c + 1, c + 5);
                    let scale = _mm256_blend_ps::<0b1100_1100>(
                        _mm256_permutevar8x32_ps(d0, idx),
                        _mm256_permutevar8x32_ps(d1, idx),
                    );
                    let g = p / GROUP + 8 * h;
                    for r in 0..R {
                        // Each block's two groups added: its sum.
                        let mut sums = _mm256_add_epi32(
                            _mm256_permute2x128_si256::<0x20>(t0[r], t1[r]),
                            _mm256_permute2x128_si256::<0x31>(t0[r], t1[r]),
                        );
                        if stored {
                            let c = _mm256_loadu_si256(corr[r].add(g) as *const __m256i);
                            sums = _mm256_sub_epi32(sums, c);
                        }
                        let f = _mm256_cvtepi32_ps(sums);
                        let xs = _mm256_loadu_ps(asc[r].add(g));
                        acc[r] = _mm256_fmadd_ps(f, _mm256_mul_ps(scale, xs), acc[r]);
                    }
                }
            }
            for p in (pairs..full).step_by(PANEL) {
                let b = p / 32;
                // Lane `4c + j` is group `4j + c`, of block `2j + c / 2`.
                let dv = d(b);
                for h in 0..2 {
                    let sums = four!(b + h, b + h + 2, b + h + 4, b + h + 6);
                    let c = h as i32;
                    let idx = _mm256_setr_epi32(c, c + 2, c + 4, c + 6, c, c + 2, c + 4, c + 6);
                    let scale = _mm256_permutevar8x32_ps(dv, idx);
                    let g = p / GROUP + 8 * h;
                    for r in 0..R {
                        let mut sums = sums[r];
                        if stored {
                            let c = _mm256_loadu_si256(corr[r].add(g) as *const __m256i);
                            sums = _mm256_sub_epi32(sums, c);
                        }
                        let f = _mm256_cvtepi32_ps(sums);
                        let xs = _mm256_loadu_ps(asc[r].add(g));
                        acc[r] = _mm256_fmadd_ps(f, _mm256_mul_ps(scale, xs), acc[r]);
                    }
                }
            }
            for m in (full..n).step_by(MINI) {
                let b = m / 32;
                let whole = m + MINI <= n;
                let v0 = products!(b);
                let v1 = if whole {
                    products!(b + 1)
                } else {
                    [_mm256_setzero_si256(); R]
                };
                // The blocks' f16 scales, converted as `unpack` converts them.
                let h = |b: usize| half_at(base.add(b * size));
                let (s0, s1) = (h(b), if whole { h(b + 1) } else { 0.0 });
                let scale = _mm_setr_ps(s0, s0, s1, s1);
                for r in 0..R {
                    // Lanes G0 G2 G0 G2 | G1 G3 G1 G3, interleaved.
                    let t = _mm256_hadd_epi32(v0[r], v1[r]);
                    let t = _mm256_hadd_epi32(t, t);
                    let mut sum = _mm_unpacklo_epi32(
                        _mm256_castsi256_si128(t),
                        _mm256_extracti128_si256::<1>(t),
                    );
                    if stored {
                        let c = _mm_loadu_si128(corr[r].add(m / GROUP) as *const __m128i);
                        sum = _mm_sub_epi32(sum, c);
                    }
                    let xs = _mm_loadu_ps(asc[r].add(m / GROUP));
                    let low = _mm_fmadd_ps(
                        _mm_cvtepi32_ps(sum),
                        _mm_mul_ps(scale, xs),
                        _mm256_castps256_ps128(acc[r]),
                    );
                    acc[r] = _mm256_blend_ps::<0x0F>(acc[r], _mm256_castps128_ps256(low));
                }
            }
        }
        // SAFETY: the inputs are as long as the row (asserted above); no
        // mins to read.
        let sums = unsafe { finish::<R, true, false>(acc, &[], a) };
        for r in 0..R {
            out[r] = sums[r] - mins[r];
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn sixteen_reductions_at_once_give_the_same_bits() {
        use std::arch::x86_64::*;
        if !Kernel::supported().contains(&Kernel::Avx512Vnni) {
            return;
        }
        let mut s = 0x9E37_79B9_u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // Magnitudes over many binades, so that the order of sums shows.
            f32::from_bits((s & 0x8000_0000) | ((100 + (s >> 8) % 60) << 23) | (s & 0x7F_FFFF))
        };
        use super::Kernel;
        for _ in 0..200 {
            let vals: Vec<[f32; 16]> = (0..16).map(|_| std::array::from_fn(|_| next())).collect();
            // SAFETY: the CPU has AVX-512 F (checked above).
            let (got, want) = unsafe {
                let v: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(vals[j].as_ptr()));
                (
                    super::avx512::reduce16(&v),
                    v.map(|v| _mm512_reduce_add_ps(v)),
                )
            };
            assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits));
        }
    }
}
