//! Products computed on the quantized blocks against the same product in f32
//! over the dequantized weights, for every type and every kernel this CPU runs.

use moulin_quant::layout::{group_position, position};
use moulin_quant::{Activations, GgmlType, Kernel, QuantMatrix, Scheme, dequantize, matmul_with};

/// A small deterministic generator (xorshift), so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Offsets of the f16 fields of each block.
fn halves(kind: GgmlType) -> &'static [usize] {
    match kind {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[],
    }
}

/// Random blocks with small finite scales.
fn random_matrix(kind: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QuantMatrix {
    let blocks = rows * cols / kind.block_size();
    let mut data: Vec<u8> = (0..blocks * kind.block_bytes())
        .map(|_| rng.next() as u8)
        .collect();
    for block in data.chunks_exact_mut(kind.block_bytes()) {
        for &at in halves(kind) {
            let v = half::f16::from_f32(rng.unit() * 0.02);
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    QuantMatrix::new(kind, rows, cols, data).unwrap()
}

fn quantized_kinds() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL.into_iter().filter(|k| k.is_quantized())
}

#[test]
fn every_kernel_matches_f32_on_the_dequantized_weights() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // 6 input rows (a group of 4 and a group of 2; decoding's path), 11 (a
    // batch's path: weight rows unpacked together, each tile of them against
    // every input) and 45 (a prompt pass's: a few inputs against every
    // row); K-quants need multiples of 256.
    for (kind, rows, cols) in quantized_kinds().flat_map(|k| {
        // Rows of whole 256-value panels and rows that end on one to three
        // and a half 64-value mini-panels (576: SmolLM2's width).
        let widths: &[usize] = if k.block_size() == 256 {
            &[512, 768]
        } else {
            &[288, 480, 576, 800, 1536]
        };
        widths
            .iter()
            .flat_map(move |&c| [(k, 6, c), (k, 11, c), (k, 45, c)])
    }) {
        let outs = 37;
        let w = random_matrix(kind, outs, cols, &mut rng);
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
        let act = Activations::quantize(&x, rows, cols, Scheme::for_weights(kind));
        // The reference: dequantized weights times the quantized inputs, in f64.
        let mut wf = vec![0f32; cols];
        let mut reference = vec![0f64; rows * outs];
        let mut exact = vec![0f64; rows * outs];
        for o in 0..outs {
            dequantize(kind, w.row(o), &mut wf).unwrap();
            for r in 0..rows {
                let a = act.row(r);
                let mut s = 0f64;
                let mut e = 0f64;
                for k in 0..cols {
                    let paired = kind.block_size() == 32;
                    let (at, g) = (
                        position(cols, k, paired),
                        group_position(cols, k / 16, paired),
                    );
                    let xq = f64::from(a.q[at]) * f64::from(a.scale[g]);
                    s += f64::from(wf[k]) * xq;
                    e += f64::from(wf[k]) * f64::from(x[r * cols + k]);
                }
                reference[r * outs + o] = s;
                exact[r * outs + o] = e;
            }
        }
        let sum_sq = reference.iter().map(|v| v * v).sum::<f64>();
        let n = reference.len() as f64;
        // Q8_1 keeps each block's sum in f16: the min term carries that
        // rounding, relative to the min terms' size (about the outputs'
        // root mean square), not to each output's.
        let (tolerance, norm) = if Scheme::for_weights(kind) == Scheme::Q8_1 {
            (2e-3, (sum_sq / n).sqrt())
        } else {
            (1e-4, sum_sq.sqrt() / n)
        };
        for &kernel in Kernel::supported() {
            let got = matmul_with(kernel, &x, rows, &[&w]);
            for (i, (&g, &want)) in got.iter().zip(&reference).enumerate() {
                let err = (f64::from(g) - want).abs();
                assert!(
                    err <= tolerance * want.abs().max(norm) + 1e-6,
                    "{} on {}: output {i} is {g}, the reference {want}",
                    kind.name(),
                    kernel.name()
                );
            }
            // And against the unquantized inputs: within what 8 bits allow.
            let rel = got
                .iter()
                .zip(&exact)
                .map(|(&g, &e)| (f64::from(g) - e).powi(2))
                .sum::<f64>()
                .sqrt()
                / exact.iter().map(|e| e * e).sum::<f64>().sqrt();
            assert!(
                rel < 0.02,
                "{} on {}: relative error {rel}",
                kind.name(),
                kernel.name()
            );
        }
    }
}

/// Decoding's path (at most 8 inputs; on AVX-512 the 32-value block types
/// are decoded in registers) gives the very bits of the prompt path (weight
/// rows unpacked in memory) for the same rows: greedy decoding must not
/// depend on which path a step takes.
#[test]
fn decoding_and_prompt_paths_give_identical_bits() {
    let mut rng = Rng(7);
    for (kind, cols) in quantized_kinds().flat_map(|k| {
        let widths: &[usize] = if k.block_size() == 256 {
            &[512]
        } else {
            &[288, 480, 576, 800, 1536]
        };
        widths.iter().map(move |&c| (k, c))
    }) {
        let w = random_matrix(kind, 37, cols, &mut rng);
        let x: Vec<f32> = (0..9 * cols).map(|_| rng.unit()).collect();
        for &kernel in Kernel::supported() {
            let many = matmul_with(kernel, &x, 9, &[&w]);
            for rows in [1, 3, 4, 8] {
                let few = matmul_with(kernel, &x[..rows * cols], rows, &[&w]);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&few),
                    bits(&many[..rows * 37]),
                    "{} on {}, {rows} rows",
                    kind.name(),
                    kernel.name()
                );
            }
        }
    }
}

/// Blocks whose every value has its type's largest magnitude, against inputs
/// all at +1 or all at -1 (quantized to ±127, or shifted to 1 and 255):
/// every product of a group has the same sign and the largest size, so a
/// kernel that adds 16-bit sums before widening them (AVX2's) overflows here
/// if anywhere.
#[test]
fn largest_values_do_not_overflow_any_kernel() {
    // (type, the block's bytes after its f16 fields, where those end)
    let cases: [(GgmlType, u8, usize); 7] = [
        (GgmlType::Q4_0, 0x00, 2), // nibbles 0: -8
        (GgmlType::Q4_1, 0xFF, 4), // nibbles 15
        (GgmlType::Q5_0, 0x00, 2), // nibbles 0, high bits 0: -16
        (GgmlType::Q5_1, 0xFF, 4), // 31
        (GgmlType::Q8_0, 0x80, 2), // -128
        // The K-quants' d is their last field (written below): Q3_K's bytes
        // 0 are quants of -4 at scales of -32; Q6_K's quants 0 are -32, its
        // scales (bytes 192..208) set to 1 below.
        (GgmlType::Q3K, 0x00, 0),
        (GgmlType::Q6K, 0x00, 0),
    ];
    for (kind, byte, start) in cases {
        let cols = if kind.block_size() == 256 { 512 } else { 576 };
        let outs = 9;
        let mut data = vec![byte; outs * cols / kind.block_size() * kind.block_bytes()];
        for block in data.chunks_exact_mut(kind.block_bytes()) {
            let d = if start == 0 { block.len() - 2 } else { 0 };
            block[d..d + 2].copy_from_slice(&half::f16::ONE.to_le_bytes());
            if start == 4 {
                block[2..4].copy_from_slice(&half::f16::ZERO.to_le_bytes());
            }
            if kind == GgmlType::Q6K {
                block[192..208].fill(1);
            }
        }
        let w = QuantMatrix::new(kind, outs, cols, data).unwrap();
        let mut wf = vec![0f32; cols];
        dequantize(kind, w.row(0), &mut wf).unwrap();
        for sign in [1f32, -1.0] {
            // Each input quantizes to ±127 with the scale 1/127.
            let x = vec![sign; 12 * cols];
            let want: f64 = wf.iter().map(|&v| f64::from(v) * f64::from(sign)).sum();
            for &kernel in Kernel::supported() {
                for rows in [1, 5, 12] {
                    let got = matmul_with(kernel, &x[..rows * cols], rows, &[&w]);
                    for &g in &got {
                        assert!(
                            (f64::from(g) - want).abs() <= 1e-3 * want.abs(),
                            "{} on {}, {rows} rows, inputs {sign}: {g}, not {want}",
                            kind.name(),
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn stacked_parts_fill_their_own_columns() {
    let mut rng = Rng(42);
    let a = random_matrix(GgmlType::Q4K, 20, 256, &mut rng);
    let b = random_matrix(GgmlType::Q6K, 3, 256, &mut rng);
    let x: Vec<f32> = (0..9 * 256).map(|_| rng.unit()).collect();
    let kernel = Kernel::detect();
    let both = matmul_with(kernel, &x, 9, &[&a, &b]);
    let (ya, yb) = (
        matmul_with(kernel, &x, 9, &[&a]),
        matmul_with(kernel, &x, 9, &[&b]),
    );
    for r in 0..9 {
        assert_eq!(&both[r * 23..r * 23 + 20], &ya[r * 20..(r + 1) * 20]);
        assert_eq!(&both[r * 23 + 20..(r + 1) * 23], &yb[r * 3..(r + 1) * 3]);
    }
}

#[test]
fn wrong_sizes_are_refused() {
    let err = QuantMatrix::new(GgmlType::Q8_0, 2, 64, vec![0; 135]).unwrap_err();
    assert!(err.contains("135 bytes") && err.contains("136"), "{err}");
    assert!(QuantMatrix::new(GgmlType::F16, 1, 32, vec![0; 64]).is_err());
    assert!(QuantMatrix::new(GgmlType::Q4K, 1, 128, vec![0; 72]).is_err());
}
