//! A GGUF reader over a read-only memory map: metadata values and tensor views, no copies.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Refuse absurd counts early, so a corrupt header gives an error rather than a huge allocation.
const MAX_COUNT: u64 = 1 << 24;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Unsigned integer (u8, u16, u32, u64).
    U64(u64),
    /// Signed integer (i8, i16, i32, i64).
    I64(i64),
    /// Float (f32, f64).
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string (invalid bytes replaced).
    Str(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a float, when it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor sits in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// GGML type id.
    pub ggml_type: u32,
    /// Dimensions, innermost first (GGUF order): `dims[0]` is the row length.
    pub dims: Vec<u64>,
    /// Byte offset of the data from the start of the file.
    pub offset: usize,
    /// Byte length of the data.
    pub len: usize,
}

impl TensorInfo {
    /// Row length (innermost dimension).
    pub fn cols(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Number of rows (product of the outer dimensions).
    pub fn rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
}

/// A parsed GGUF file held open through a memory map.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// Format version.
    pub version: u32,
    /// All metadata key/values.
    pub metadata: HashMap<String, Value>,
    /// Tensor infos by name.
    pub tensors: HashMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// (elements per block, bytes per block) for the GGML types we know the size of.
pub(crate) fn ggml_block_layout(ty: u32) -> Option<(usize, usize)> {
    Some(match ty {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::Gguf(format!(
                "file truncated: wanted {n} bytes at offset {} of {}",
                self.pos,
                self.buf.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn count(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        if n > MAX_COUNT * 16 {
            return Err(Error::Gguf(format!("implausible {what} count {n}")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count("string length")?;
        let bytes = self.take(n)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.array::<1>()?[0] as u64),
            1 => Value::I64(self.array::<1>()?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.array()?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.array()?) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(i32::from_le_bytes(self.array()?) as i64),
            6 => Value::F64(f32::from_le_bytes(self.array()?) as f64),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(Error::Gguf("metadata arrays nested too deeply".into()));
                }
                let item_ty = self.u32()?;
                let n = self.count("array length")?;
                // Every item takes at least one byte: bound the allocation by what is left.
                if n > self.buf.len().saturating_sub(self.pos) {
                    return Err(Error::Gguf(format!(
                        "file truncated: array of {n} items runs past the end"
                    )));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(Error::Gguf(format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file. Errors (not panics) on anything malformed or truncated.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        // SAFETY: the map is read-only; model files are not rewritten while a process serves them.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(path.to_path_buf(), mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<Self> {
        let wrap = |e: Error| match e {
            Error::Gguf(m) => Error::Gguf(format!("{}: {m}", path.display())),
            other => other,
        };
        let (version, metadata, tensors) = Self::parse_header(&mmap).map_err(wrap)?;
        Ok(Self {
            path,
            mmap,
            version,
            metadata,
            tensors,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse_header(
        buf: &[u8],
    ) -> Result<(u32, HashMap<String, Value>, HashMap<String, TensorInfo>)> {
        let mut c = Cursor { buf, pos: 0 };
        let magic = c
            .take(4)
            .map_err(|_| Error::Gguf("not a gguf file (too short)".into()))?;
        if magic != GGUF_MAGIC {
            return Err(Error::Gguf("not a gguf file (bad magic)".into()));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::Gguf(format!("unsupported gguf version {version}")));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        if n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
            return Err(Error::Gguf(format!(
                "implausible header counts ({n_tensors} tensors, {n_kv} keys)"
            )));
        }
        let mut metadata = HashMap::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return Err(Error::Gguf(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64()?);
            }
            let ggml_type = c.u32()?;
            let offset = c.u64()?;
            infos.push((name, dims, ggml_type, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT)
            .max(1);
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = HashMap::with_capacity(infos.len());
        for (name, dims, ggml_type, offset) in infos {
            let elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Error::Gguf(format!("tensor {name}: size overflows")))?;
            let len = match ggml_block_layout(ggml_type) {
                Some((be, bb)) => {
                    if dims[0] % be as u64 != 0 {
                        return Err(Error::Gguf(format!(
                            "tensor {name}: row of {} not a multiple of block size {be}",
                            dims[0]
                        )));
                    }
                    elems / be as u64 * bb as u64
                }
                None => 0, // unknown type: only an error if a model asks for it
            };
            let start = data_start
                .checked_add(offset)
                .ok_or_else(|| Error::Gguf(format!("tensor {name}: offset overflows")))?;
            let end = start
                .checked_add(len)
                .ok_or_else(|| Error::Gguf(format!("tensor {name}: size overflows")))?;
            if end > buf.len() as u64 {
                return Err(Error::Gguf(format!(
                    "file truncated: tensor {name} ends at byte {end}, file has {}",
                    buf.len()
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    ggml_type,
                    dims,
                    offset: start as usize,
                    len: len as usize,
                },
            );
        }
        Ok((version, metadata, tensors))
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file's bytes.
    pub fn map(&self) -> &[u8] {
        &self.mmap
    }

    /// Drops the resident pages of `len` bytes at `offset` of the map (a copy of them is held
    /// elsewhere). The bytes stay readable: the next read loads them from the file again.
    #[cfg_attr(not(unix), allow(unused_variables))]
    pub fn release(&self, offset: usize, len: usize) {
        // Only whole pages inside the range, so neighbouring tensors keep theirs.
        const PAGE: usize = 4096;
        let start = offset.div_ceil(PAGE) * PAGE;
        let end = (offset + len) / PAGE * PAGE;
        #[cfg(unix)]
        if end > start && end <= self.mmap.len() {
            // SAFETY: the map is read-only and backed by the file, so dropping its pages
            // changes no byte any reader sees; they are faulted in again from the file.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.missing(key, "string"))
    }

    /// A required unsigned integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.missing(key, "integer"))
    }

    /// An optional float value.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    fn missing(&self, key: &str, what: &str) -> Error {
        Error::Gguf(format!(
            "{}: metadata key {key} missing or not a {what}",
            self.path.display()
        ))
    }

    /// A tensor's info, or a clear error naming it.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Gguf(format!("{}: tensor {name} not found", self.path.display())))
    }

    /// A tensor's bytes, borrowed from the map.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.len]
    }
}
