//! GGUF files: the header, metadata and tensor table; the tensor types and
//! their blocks are [`moulin_quant`]'s.
//!
//! Format: magic `GGUF`, version (2 or 3), tensor count, metadata count, the
//! metadata key/values, the tensor infos (name, dimensions fastest first, type,
//! offset), then the tensor data from the next `general.alignment` boundary.
//! Every count, length and offset is checked against the file before use, so a
//! truncated or corrupt file is an error naming what is wrong, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use moulin_quant::{GgmlType, name_of_id};
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

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Dimensions as GGUF lists them: the fastest-varying first.
    pub dims: Vec<usize>,
    pub kind: GgmlType,
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
    map: Arc<Mmap>,
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

/// The file's bytes, for as long as the model lives. On Linux they are read
/// into anonymous memory that the kernel may back with 2 MiB pages: every
/// decoding step streams the whole model, and through a file's 4 KiB pages
/// each page costs a TLB miss (single-stream generation ran 13–23% slower).
/// The resident size is the same. `MOULIN_LLM_MMAP=1` maps the file
/// instead, so that processes loading the same file share its pages.
fn load(file: &File) -> std::io::Result<Mmap> {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MOULIN_LLM_MMAP").is_none_or(|v| v != "1") {
        use std::io::Read;
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        let mut bytes = memmap2::MmapMut::map_anon(len)?;
        // A hint: without transparent huge pages the bytes still load.
        let _ = bytes.advise(memmap2::Advice::HugePage);
        let mut file = file;
        file.read_exact(&mut bytes[..])?;
        return bytes.make_read_only();
    }
    // SAFETY: the map is read-only and lives as long as `Gguf`; a file changed
    // underneath us is the user's doing, as with any memory-mapped model file.
    unsafe { Mmap::map(file) }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let map = load(&file).map_err(|e| Error::io(path, e))?;
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
            let id = r.u32().map_err(&fail)?;
            let kind = GgmlType::from_id(id).map_err(|id| {
                fail(format!(
                    "tensor {name} has type {}, which moulin does not read (it reads {})",
                    name_of_id(id),
                    GgmlType::supported_names()
                ))
            })?;
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
            let len = kind
                .bytes_for(elements)
                .map_err(|e| fail(format!("tensor {name}: {e}")))?;
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
            map: Arc::new(map),
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

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| Error::Llm {
            model: self.path.display().to_string(),
            reason: format!("tensor {name} is missing"),
        })
    }

    /// A tensor's type, raw bytes (whole blocks, checked against the file at
    /// open) and row-major shape.
    pub fn tensor_bytes(&self, name: &str) -> Result<(GgmlType, &[u8], Vec<usize>)> {
        let info = self.info(name)?;
        Ok((
            info.kind,
            &self.map[info.start..info.start + info.len],
            info.shape(),
        ))
    }

    /// The mapped file, for tensors used where they lie (see
    /// [`TensorInfo::start`]).
    pub fn shared_map(&self) -> Arc<Mmap> {
        self.map.clone()
    }

    /// A tensor's table entry.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.info(name)
    }

    /// A tensor dequantized to f32, with its row-major shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (kind, bytes, shape) = self.tensor_bytes(name)?;
        let values =
            dequantize(kind, bytes, shape.iter().product()).map_err(|reason| Error::Llm {
                model: self.path.display().to_string(),
                reason: format!("tensor {name}: {reason}"),
            })?;
        Ok((values, shape))
    }
}

/// Dequantize `elements` values of type `kind` from `bytes`, blocks in parallel.
pub fn dequantize(
    kind: GgmlType,
    bytes: &[u8],
    elements: usize,
) -> std::result::Result<Vec<f32>, String> {
    let need = kind.bytes_for(elements)?;
    if bytes.len() != need {
        return Err(format!(
            "{} bytes for {elements} {} values, which need {need}",
            bytes.len(),
            kind.name()
        ));
    }
    let (per, size) = (kind.block_size(), kind.block_bytes());
    let mut out = vec![0f32; elements];
    // A few thousand blocks per task.
    const BLOCKS_PER_TASK: usize = 4096;
    out.par_chunks_mut(per * BLOCKS_PER_TASK)
        .zip(bytes.par_chunks(size * BLOCKS_PER_TASK))
        .try_for_each(|(out, bytes)| moulin_quant::dequantize(kind, bytes, out))?;
    Ok(out)
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
    fn wrong_byte_count_is_an_error() {
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], 32).is_err());
        assert!(dequantize(GgmlType::Q4K, &[0u8; 144], 255).is_err());
        assert_eq!(
            dequantize(GgmlType::Q4K, &[0u8; 288], 512).unwrap().len(),
            512
        );
    }
}
