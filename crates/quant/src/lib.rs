//! ggml's quantized tensor formats, as moulin's LLM runner uses them.
//!
//! - [`formats`]: the types, their block geometry, and dequantization that
//!   gives ggml's values bit for bit (checked against blocks dequantized by the
//!   `gguf` Python package, `fixtures/quant_blocks.json`).
//! - [`QuantMatrix`] and [`matmul`]: weights kept in their blocks in memory;
//!   the inputs are quantized to signed bytes per block ([`Activations`], with
//!   llama.cpp's rounding, [`Scheme`]) and every product is an integer dot
//!   product, scaled per block, as llama.cpp computes it. The kernel is chosen at run time ([`Kernel`]).
//!
//! The crate is built with full optimisation even in debug builds (see the
//! workspace's Cargo.toml): its scalar unpacking code relies on the compiler
//! to vectorise it.

pub mod activations;
pub mod formats;
mod kernels;
pub mod layout;
mod matrix;
mod unpack;

pub use activations::{ActivationRow, Activations, Scheme, quantize_into, shift_into};
pub use formats::{GgmlType, QK_K, dequantize, name_of_id};
pub use kernels::Kernel;
pub use layout::{Aligned, aligned};
pub use matrix::{Product, QuantMatrix, Scratch, SharedBytes, matmul, matmul_with, quantize_for};
