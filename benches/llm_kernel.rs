//! The CPU projection kernel alone (`moulin::llm::cpu::matmul_rows`), on
//! SmolLM2-135M's weight shapes at 1, 4 and 16 input rows, f16 and f32 weights,
//! side by side with burn's own flex matrix product on the same f32 data.
//! Items are multiply-adds: items/s × 2 = FLOP/s.
//!
//! Run: `cargo bench --profile dev --bench llm_kernel`

use burn::tensor::{Tensor, TensorData};
use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use half::f16;
use moulin::llm::cpu::{Weights, matmul_rows};

fn main() {
    divan::main();
}

/// (name, inner, outputs): the fused QKV, attention output, fused gate/up,
/// down and output head projections of SmolLM2-135M.
const SHAPES: [(&str, usize, usize); 5] = [
    ("qkv", 576, 960),
    ("o", 576, 576),
    ("gate_up", 576, 3072),
    ("down", 1536, 576),
    ("head", 576, 49152),
];

const ROWS: [usize; 3] = [1, 4, 16];

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// One product: a weight shape and a number of input rows.
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    inner: usize,
    cols: usize,
    rows: usize,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Case {
            name,
            inner,
            cols,
            rows,
        } = self;
        write!(f, "{name} {inner}x{cols} rows={rows}")
    }
}

fn cases() -> Vec<Case> {
    SHAPES
        .iter()
        .flat_map(|&(name, inner, cols)| {
            ROWS.iter().map(move |&rows| Case {
                name,
                inner,
                cols,
                rows,
            })
        })
        .collect()
}

#[divan::bench(args = cases(), sample_count = 20)]
fn kernel_f16(
    bencher: Bencher,
    Case {
        inner, cols, rows, ..
    }: Case,
) {
    let x = values(rows * inner, 1);
    let w: Vec<f16> = values(cols * inner, 2)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    bencher
        .counter(ItemsCount::new(rows * inner * cols))
        .bench(|| black_box(matmul_rows(&x, rows, inner, Weights::F16(&w), cols)));
}

#[divan::bench(args = cases(), sample_count = 20)]
fn kernel_f32(
    bencher: Bencher,
    Case {
        inner, cols, rows, ..
    }: Case,
) {
    let x = values(rows * inner, 1);
    let w = values(cols * inner, 2);
    bencher
        .counter(ItemsCount::new(rows * inner * cols))
        .bench(|| black_box(matmul_rows(&x, rows, inner, Weights::F32(&w), cols)));
}

/// The reference: burn's flex `matmul` of `[rows, inner]` by `[inner, cols]`.
#[divan::bench(args = cases(), sample_count = 20)]
fn burn_flex_f32(
    bencher: Bencher,
    Case {
        inner, cols, rows, ..
    }: Case,
) {
    let device = Default::default();
    let x: Tensor<2> = Tensor::from_data(
        TensorData::new(values(rows * inner, 1), [rows, inner]),
        &device,
    );
    let w: Tensor<2> = Tensor::from_data(
        TensorData::new(values(cols * inner, 2), [inner, cols]),
        &device,
    );
    bencher
        .counter(ItemsCount::new(rows * inner * cols))
        .bench(|| black_box(x.clone().matmul(w.clone()).into_data()));
}
