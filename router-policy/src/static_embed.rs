//! Static prompt embeddings: the mean of MiniLM's own input token vectors (its word-embedding
//! table, read from the ONNX file), L2-normalized. No transformer layer runs, so a prompt costs
//! its tokenization plus a few hundred row additions (microseconds), which lets a decision go
//! ahead when the full embedding is not cached yet.

use std::path::Path;

use sha2::{Digest, Sha256};
use tokenizers::{Tokenizer, TruncationParams};

use crate::embedding::EMBEDDING_DIM;
use crate::{Error, Result};

/// Tokens read per prompt by default (the static path is cheap, so it reads past the encoder's
/// cut).
pub const STATIC_MAX_TOKENS: usize = 512;

/// The word-embedding table, int8 rows with one scale each (as the quantized ONNX file stores
/// it) or plain f32 rows (scales all one).
#[derive(Debug, Clone)]
struct Table {
    rows: usize,
    dim: usize,
    q: Vec<i8>,
    f: Vec<f32>,
    scale: Vec<f32>,
}

/// Mean-pooled static token embeddings from the encoder's own vocabulary table.
#[derive(Clone)]
pub struct StaticEmbedder {
    tokenizer: Tokenizer,
    table: Table,
    special: Vec<u32>,
    model_id: String,
}

impl std::fmt::Debug for StaticEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEmbedder")
            .field("rows", &self.table.rows)
            .field("dim", &self.table.dim)
            .finish_non_exhaustive()
    }
}

impl StaticEmbedder {
    /// Reads the word-embedding table from `model_path` (an ONNX BERT-family model, int8 with
    /// per-row scales or f32) and the tokenizer, keeping at most `max_tokens` tokens per prompt.
    pub fn load(model_path: &Path, tokenizer_path: &Path, max_tokens: usize) -> Result<Self> {
        let bytes = std::fs::read(model_path).map_err(|e| Error::io(model_path, e))?;
        let table = read_word_table(&bytes).map_err(|message| Error::Format {
            path: model_path.to_path_buf(),
            message,
        })?;
        if table.dim != EMBEDDING_DIM {
            return Err(Error::Format {
                path: model_path.to_path_buf(),
                message: format!(
                    "word embeddings are {} wide, expected {EMBEDDING_DIM}",
                    table.dim
                ),
            });
        }
        let mut tokenizer = Tokenizer::from_file(tokenizer_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens.max(1),
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let special = ["[CLS]", "[SEP]", "[PAD]", "[UNK]"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        let digest = Sha256::digest(&bytes);
        Ok(Self {
            tokenizer,
            table,
            special,
            model_id: format!("minilm-{}", hex::encode(&digest[..6])),
        })
    }

    /// Names the model file the table came from (the head of its SHA-256).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The embedding of `text`: mean of its tokens' rows (special tokens left out), L2-normalized.
    /// An empty prompt gives the zero vector.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let dim = self.table.dim;
        let mut sum = vec![0f32; dim];
        let mut n = 0usize;
        for &id in enc.get_ids() {
            let row = id as usize;
            if row >= self.table.rows || self.special.contains(&id) {
                continue;
            }
            n += 1;
            if self.table.q.is_empty() {
                let src = &self.table.f[row * dim..(row + 1) * dim];
                sum.iter_mut().zip(src).for_each(|(s, v)| *s += v);
            } else {
                let scale = self.table.scale[row];
                let src = &self.table.q[row * dim..(row + 1) * dim];
                sum.iter_mut()
                    .zip(src)
                    .for_each(|(s, &v)| *s += scale * f32::from(v));
            }
        }
        if n > 0 {
            let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            sum.iter_mut().for_each(|s| *s /= norm);
        }
        Ok(sum)
    }
}

/// One protobuf field: number, wire type, and its value (varint, or the byte range of a
/// length-delimited payload).
enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        out |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

/// The position `n` bytes after `pos`, if the message holds them.
fn skip(b: &[u8], pos: usize, n: usize) -> Result<usize, String> {
    pos.checked_add(n)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| "field past the end of the message".to_owned())
}

/// The fields of one protobuf message, in order.
fn fields(b: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let number = (key >> 3) as u32;
        match key & 7 {
            0 => out.push(Field::Varint(number, varint(b, &mut pos)?)),
            1 => pos = skip(b, pos, 8)?,
            2 => {
                let len = varint(b, &mut pos)? as usize;
                let end = skip(b, pos, len)?;
                out.push(Field::Bytes(number, &b[pos..end]));
                pos = end;
            }
            5 => pos = skip(b, pos, 4)?,
            w => return Err(format!("unsupported protobuf wire type {w}")),
        }
    }
    Ok(out)
}

/// One ONNX initializer: name, dims, element type, raw bytes.
struct Initializer<'a> {
    name: String,
    dims: Vec<usize>,
    data_type: u64,
    raw: &'a [u8],
}

fn initializers(model: &[u8]) -> Result<Vec<Initializer<'_>>, String> {
    // ModelProto.graph = 7; GraphProto.initializer = 5; TensorProto: dims = 1, data_type = 2,
    // name = 8, raw_data = 9.
    let mut out = Vec::new();
    for graph in fields(model)? {
        let Field::Bytes(7, graph) = graph else {
            continue;
        };
        for init in fields(graph)? {
            let Field::Bytes(5, tensor) = init else {
                continue;
            };
            let mut t = Initializer {
                name: String::new(),
                dims: Vec::new(),
                data_type: 0,
                raw: &[],
            };
            for f in fields(tensor)? {
                match f {
                    Field::Varint(1, d) => t.dims.push(d as usize),
                    Field::Bytes(1, packed) => {
                        let mut p = 0;
                        while p < packed.len() {
                            t.dims.push(varint(packed, &mut p)? as usize);
                        }
                    }
                    Field::Varint(2, dt) => t.data_type = dt,
                    Field::Bytes(8, name) => t.name = String::from_utf8_lossy(name).into_owned(),
                    Field::Bytes(9, raw) => t.raw = raw,
                    _ => {}
                }
            }
            out.push(t);
        }
    }
    Ok(out)
}

fn read_word_table(model: &[u8]) -> Result<Table, String> {
    const FLOAT: u64 = 1;
    const INT8: u64 = 3;
    let inits = initializers(model)?;
    let find = |suffix: &str| inits.iter().find(|t| t.name.ends_with(suffix));
    let matrix = |t: &Initializer<'_>, elem: usize| -> Result<(usize, usize), String> {
        match t.dims[..] {
            [rows, dim]
                if rows
                    .checked_mul(dim)
                    .and_then(|n| n.checked_mul(elem))
                    .is_some_and(|n| n == t.raw.len()) =>
            {
                Ok((rows, dim))
            }
            _ => Err(format!(
                "initializer {} has dims {:?} and {} bytes",
                t.name,
                t.dims,
                t.raw.len()
            )),
        }
    };
    let floats = |raw: &[u8]| -> Vec<f32> {
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    if let (Some(q), Some(s)) = (
        find("word_embeddings.weight_q"),
        find("word_embeddings.weight_scale"),
    ) {
        if q.data_type != INT8 || s.data_type != FLOAT {
            return Err("quantized word embeddings are not int8 with f32 scales".into());
        }
        let (rows, dim) = matrix(q, 1)?;
        let scale = floats(s.raw);
        if scale.len() != rows {
            return Err(format!("{} scales for {rows} rows", scale.len()));
        }
        return Ok(Table {
            rows,
            dim,
            q: q.raw.iter().map(|&b| b as i8).collect(),
            f: Vec::new(),
            scale,
        });
    }
    if let Some(w) = find("word_embeddings.weight").filter(|t| t.data_type == FLOAT) {
        let (rows, dim) = matrix(w, 4)?;
        return Ok(Table {
            rows,
            dim,
            q: Vec::new(),
            f: floats(w.raw),
            scale: vec![1.0; rows],
        });
    }
    Err("no word_embeddings initializer (raw data) in the model".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
        put_varint(out, u64::from(field) << 3 | 2);
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    fn tensor(name: &str, dims: &[u64], dt: u64, raw: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            put_varint(&mut t, 1 << 3);
            put_varint(&mut t, d);
        }
        put_varint(&mut t, 2 << 3);
        put_varint(&mut t, dt);
        put_bytes(&mut t, 8, name.as_bytes());
        put_bytes(&mut t, 9, raw);
        t
    }

    #[test]
    fn reads_int8_table_with_scales() {
        let q: Vec<u8> = [1i8, -2, 3, 4, 5, -6].iter().map(|&v| v as u8).collect();
        let s: Vec<u8> = [0.5f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut graph = Vec::new();
        put_bytes(
            &mut graph,
            5,
            &tensor("x.word_embeddings.weight_q", &[2, 3], 3, &q),
        );
        put_bytes(
            &mut graph,
            5,
            &tensor("x.word_embeddings.weight_scale", &[2, 1], 1, &s),
        );
        let mut model = Vec::new();
        put_varint(&mut model, 1 << 3);
        put_varint(&mut model, 8);
        put_bytes(&mut model, 7, &graph);
        let t = read_word_table(&model).map_err(anyhow::Error::msg).unwrap();
        assert_eq!((t.rows, t.dim), (2, 3));
        assert_eq!(t.q, vec![1, -2, 3, 4, 5, -6]);
        assert_eq!(t.scale, vec![0.5, 2.0]);
    }

    #[test]
    fn missing_table_is_an_error() {
        let mut model = Vec::new();
        put_bytes(&mut model, 7, &[]);
        assert!(read_word_table(&model).is_err());
        assert!(read_word_table(&[0xff]).is_err());
    }
}
