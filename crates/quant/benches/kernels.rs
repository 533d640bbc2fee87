//! Products on quantized blocks, one type at a time and every kernel this CPU
//! runs side by side: GB/s of weights read and the time per product (best of
//! 5 trials), for 1, 4 and 16 input rows.
//!
//!     cargo bench -p moulin-quant --profile dev --bench kernels [-- TYPE...]
//!
//! `QUANT_BENCH_KERNEL` (a kernel's name), `QUANT_BENCH_ROWS` (numbers of
//! input rows, space-separated; default "1 4 16 64") and `QUANT_BENCH_SHAPES`
//! (default "3072x576 2048x2048") narrow the cases.

use std::time::Instant;

use moulin_quant::{GgmlType, Kernel, QuantMatrix, matmul_with};

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    // SmolLM2's gate+up projection: 3072 outputs of 576 inputs; and a wider
    // one of 8B-model proportions, scaled down (4096 × 4096 / 4).
    let kernel_only = std::env::var("QUANT_BENCH_KERNEL").ok();
    let row_counts: Vec<usize> = std::env::var("QUANT_BENCH_ROWS")
        .unwrap_or_else(|_| "1 4 16 64".into())
        .split_whitespace()
        .map(|r| r.parse().expect("QUANT_BENCH_ROWS: numbers"))
        .collect();
    // `QUANT_BENCH_SHAPES` ("OUTxIN", space-separated) for others.
    let shapes: Vec<(usize, usize)> = std::env::var("QUANT_BENCH_SHAPES")
        .unwrap_or_else(|_| "3072x576 2048x2048".into())
        .split_whitespace()
        .map(|s| {
            let (o, i) = s.split_once('x').expect("QUANT_BENCH_SHAPES: OUTxIN");
            (o.parse().expect("a number"), i.parse().expect("a number"))
        })
        .collect();
    let mut seed = 0x1234_5678_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    println!("| type | shape | kernel | rows | µs/product | GB/s of weights |");
    println!("|---|---|---|---|---|---|");
    for kind in GgmlType::ALL.into_iter().filter(|k| k.is_quantized()) {
        if !only.is_empty() && !only.iter().any(|o| o == kind.name()) {
            continue;
        }
        for &(outs, cols) in &shapes {
            // Whole blocks: SmolLM2's 576 for the 32-value types, 768 for
            // the K-quants (whose 576-wide rows its files store as Q5_0 or Q8_0).
            let cols = cols.div_ceil(kind.block_size()) * kind.block_size();
            let bytes = outs * kind.bytes_for(cols).unwrap();
            let mut data: Vec<u8> = (0..bytes).map(|_| next() as u8).collect();
            // Small finite f16 scales wherever they are (the values do not
            // matter for speed, NaNs would not either, but keep them sane).
            for b in data.iter_mut().skip(1).step_by(2) {
                *b &= 0x3B;
            }
            let w = QuantMatrix::new(kind, outs, cols, data).unwrap();
            for &kernel in Kernel::supported()
                .iter()
                .filter(|k| kernel_only.as_ref().is_none_or(|o| o == k.name()))
            {
                for &rows in &row_counts {
                    let x: Vec<f32> = (0..rows * cols)
                        .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
                        .collect();
                    let _ = matmul_with(kernel, &x, rows, &[&w]);
                    // The best of 5 trials: this machine's neighbours add noise,
                    // never speed.
                    let reps = (40_000_000 / bytes).clamp(3, 100);
                    let per = (0..5)
                        .map(|_| {
                            let t = Instant::now();
                            for _ in 0..reps {
                                std::hint::black_box(matmul_with(kernel, &x, rows, &[&w]));
                            }
                            t.elapsed().as_secs_f64() / reps as f64
                        })
                        .fold(f64::INFINITY, f64::min);
                    println!(
                        "| {} | {outs}×{cols} | {} | {rows} | {:.1} | {:.2} |",
                        kind.name(),
                        kernel.name(),
                        per * 1e6,
                        bytes as f64 / per / 1e9
                    );
                }
            }
        }
    }
}
