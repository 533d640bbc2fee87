//! GGUF files: the header, metadata, tensor table and the dequantization of the
//! tensor types small Llama files use (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
//!
//! Format: magic `GGUF`, version (2 or 3), tensor count, metadata count, the
//! metadata key/values, the tensor infos (name, dimensions fastest first, type,
//! offset), then the tensor data from the next `general.alignment` boundary.
//! Every count, length and offset is checked against the file before use, so a
//! truncated or corrupt file is an error naming what is wrong, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::{Error, Result};

const MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::Uint(v) => Some(v as f64),
            Value::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// The ggml tensor types moulin reads, and the ones it names when refusing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q8_0,
    /// Another ggml type (k-quants, i-quants…): listed, not dequantized.
    Other(u32),
}

impl TensorType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            30 => TensorType::Bf16,
            other => TensorType::Other(other),
        }
    }

    /// Elements per block and bytes per block.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            TensorType::F32 => Some((1, 4)),
            TensorType::F16 | TensorType::Bf16 => Some((1, 2)),
            TensorType::Q4_0 => Some((32, 18)),
            TensorType::Q4_1 => Some((32, 20)),
            TensorType::Q8_0 => Some((32, 34)),
            TensorType::Other(_) => None,
        }
    }

    pub fn name(self) -> String {
        let known = match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Bf16 => "BF16",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Other(id) => {
                let name = match id {
                    6 => "Q5_0",
                    7 => "Q5_1",
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    12 => "Q4_K",
                    13 => "Q5_K",
                    14 => "Q6_K",
                    15 => "Q8_K",
                    _ => return format!("ggml type {id}"),
                };
                return name.to_string();
            }
        };
        known.to_string()
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Dimensions as GGUF lists them: the fastest-varying first.
    pub dims: Vec<usize>,
    pub kind: TensorType,
    /// Byte offset of the data in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The shape in row-major order (the slowest dimension first), as burn wants it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// An opened GGUF file: metadata and tensor table parsed, data mapped.
pub struct Gguf {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and lives as long as `Gguf`; a file changed
        // underneath us is the user's doing, as with any memory-mapped model file.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let fail = |reason: String| Error::Llm {
            model: path.display().to_string(),
            reason,
        };
        let mut r = Cursor {
            bytes: &map,
            pos: 0,
        };
        let magic = r.u32().map_err(&fail)?;
        if magic != MAGIC {
            return Err(fail("not a GGUF file (bad magic bytes)".into()));
        }
        let version = r.u32().map_err(&fail)?;
        if !(2..=3).contains(&version) {
            return Err(fail(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = r.count("tensor count").map_err(&fail)?;
        let n_meta = r.count("metadata count").map_err(&fail)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let key = r.string().map_err(&fail)?;
            let kind = r.u32().map_err(&fail)?;
            let value = r
                .value(kind, 0)
                .map_err(|e| fail(format!("metadata {key}: {e}")))?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string().map_err(&fail)?;
            let n_dims = r.u32().map_err(&fail)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(fail(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.count("tensor dimension").map_err(&fail)?);
            }
            let kind = TensorType::from_id(r.u32().map_err(&fail)?);
            let offset = r.u64().map_err(&fail)?;
            infos.push((name, dims, kind, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT)
            .max(1);
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, kind, offset) in infos {
            let elements = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| fail(format!("tensor {name}: size overflows")))?;
            let len = match kind.block() {
                Some((per, bytes)) => {
                    if elements % per != 0 {
                        return Err(fail(format!(
                            "tensor {name}: {elements} elements is not a whole number of {} blocks",
                            kind.name()
                        )));
                    }
                    elements / per * bytes
                }
                None => 0,
            };
            let start = data_start
                .checked_add(offset)
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| fail(format!("tensor {name}: offset out of range")))?;
            if start.checked_add(len).is_none_or(|end| end > map.len()) {
                return Err(fail(format!(
                    "truncated: tensor {name} needs bytes {start}..{} but the file has {}",
                    start.saturating_add(len),
                    map.len()
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    dims,
                    kind,
                    start,
                    len,
                },
            );
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A tensor dequantized to f32, with its row-major shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.tensors.get(name).ok_or_else(|| Error::Llm {
            model: self.path.display().to_string(),
            reason: format!("tensor {name} is missing"),
        })?;
        let bytes = &self.map[info.start..info.start + info.len];
        let values =
            dequantize(info.kind, bytes, info.elements()).map_err(|reason| Error::Llm {
                model: self.path.display().to_string(),
                reason: format!("tensor {name}: {reason}"),
            })?;
        Ok((values, info.shape()))
    }
}

/// Dequantize `elements` values of type `kind` from `bytes`.
pub fn dequantize(
    kind: TensorType,
    bytes: &[u8],
    elements: usize,
) -> std::result::Result<Vec<f32>, String> {
    let (per, size) = kind
        .block()
        .ok_or_else(|| format!("tensor type {} is not supported", kind.name()))?;
    if bytes.len() != elements / per * size {
        return Err(format!(
            "{} bytes for {elements} {} values",
            bytes.len(),
            kind.name()
        ));
    }
    let mut out = vec![0f32; elements];
    // Blocks are independent: dequantize them in parallel, a few thousand at a time.
    const BLOCKS_PER_TASK: usize = 4096;
    out.par_chunks_mut(per * BLOCKS_PER_TASK)
        .zip(bytes.par_chunks(size * BLOCKS_PER_TASK))
        .for_each(|(out, bytes)| {
            for (out, block) in out.chunks_exact_mut(per).zip(bytes.chunks_exact(size)) {
                dequantize_block(kind, block, out);
            }
        });
    Ok(out)
}

fn dequantize_block(kind: TensorType, block: &[u8], out: &mut [f32]) {
    let half = |i: usize| f16::from_le_bytes([block[i], block[i + 1]]).to_f32();
    match kind {
        TensorType::F32 => out[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
        TensorType::F16 => out[0] = half(0),
        TensorType::Bf16 => out[0] = bf16::from_le_bytes([block[0], block[1]]).to_f32(),
        TensorType::Q8_0 => {
            let d = half(0);
            for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                *o = f32::from(q as i8) * d;
            }
        }
        TensorType::Q4_0 => {
            // Low nibbles are the first 16 values, high nibbles the next 16.
            let d = half(0);
            for (j, &q) in block[2..18].iter().enumerate() {
                out[j] = (f32::from(q & 0x0F) - 8.0) * d;
                out[j + 16] = (f32::from(q >> 4) - 8.0) * d;
            }
        }
        TensorType::Q4_1 => {
            let d = half(0);
            let m = half(2);
            for (j, &q) in block[4..20].iter().enumerate() {
                out[j] = f32::from(q & 0x0F) * d + m;
                out[j + 16] = f32::from(q >> 4) * d + m;
            }
        }
        TensorType::Other(_) => unreachable!("checked by dequantize"),
    }
}

/// Reads the header with every length checked against the bytes left.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "truncated: header needs {n} bytes at offset {} but the file has {}",
                    self.pos,
                    self.bytes.len()
                )
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of things that each take at least a byte: cannot exceed the file.
    fn count(&mut self, what: &str) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        if n > (self.bytes.len() - self.pos) as u64 {
            return Err(format!(
                "{what} {n} does not fit in the {} bytes left: truncated or corrupt header",
                self.bytes.len() - self.pos
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.count("string length")?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn value(&mut self, kind: u32, depth: usize) -> std::result::Result<Value, String> {
        Ok(match kind {
            0 => Value::Uint(u64::from(self.array::<1>()?[0])),
            1 => Value::Int(i64::from(self.array::<1>()?[0] as i8)),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.array()?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array()?))),
            4 => Value::Uint(u64::from(self.u32()?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array()?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array()?))),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deep".into());
                }
                let inner = self.u32()?;
                let n = self.count("array length")?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.array()?)),
            12 => Value::Float(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_uses_low_then_high_nibbles() {
        let mut block = vec![0u8; 20];
        block[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        block[4] = 0x3A; // low nibble 10 → value 0, high nibble 3 → value 16
        let out = dequantize(TensorType::Q4_1, &block, 32).unwrap();
        assert_eq!(out[0], 10.0 * 0.5 - 1.0);
        assert_eq!(out[16], 3.0 * 0.5 - 1.0);
        assert_eq!(out[1], -1.0);
    }

    #[test]
    fn q4_0_and_q8_0_blocks() {
        let mut block = vec![0u8; 18];
        block[0..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        block[2] = 0x0F;
        let out = dequantize(TensorType::Q4_0, &block, 32).unwrap();
        assert_eq!((out[0], out[16], out[1]), (14.0, -16.0, -16.0));

        let mut block = vec![0u8; 34];
        block[0..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        block[2] = (-4i8) as u8;
        block[33] = 8;
        let out = dequantize(TensorType::Q8_0, &block, 32).unwrap();
        assert_eq!((out[0], out[31], out[1]), (-1.0, 2.0, 0.0));
    }

    #[test]
    fn wrong_byte_count_is_an_error() {
        assert!(dequantize(TensorType::Q8_0, &[0u8; 33], 32).is_err());
        assert!(dequantize(TensorType::Other(12), &[0u8; 144], 256).is_err());
    }
}
