//! GGUF/ggml block formats: type ids, block sizes, a borrowed quantized matrix, scalar
//! dequantization and quantization with byte layouts identical to ggml.

use crate::error::{Error, Result};

/// A tensor element format as stored in GGUF files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 32-bit float.
    F32,
    /// IEEE half float.
    F16,
    /// 32 weights per block: f16 scale, 4-bit values with an implicit offset of -8.
    Q4_0,
    /// 32 weights per block: f16 scale and f16 minimum, 4-bit values.
    Q4_1,
    /// 32 weights per block: f16 scale, 5-bit values with an implicit offset of -16.
    Q5_0,
    /// 32 weights per block: f16 scale and f16 minimum, 5-bit values.
    Q5_1,
    /// 32 weights per block: f16 scale, signed 8-bit values.
    Q8_0,
    /// 256 weights per super-block: 8 sub-blocks with 6-bit scales and minimums, 4-bit values.
    Q4K,
    /// 256 weights per super-block: 8 sub-blocks with 6-bit scales and minimums, 5-bit values.
    Q5K,
    /// 256 weights per super-block: 16 sub-blocks with 8-bit scales, 6-bit values offset by -32.
    Q6K,
}

impl QuantType {
    /// Maps a ggml type id (as written in GGUF tensor infos) to a supported format.
    pub fn from_ggml_type_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            _ => return None,
        })
    }

    /// The ggml type id of this format.
    pub fn ggml_type_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
        }
    }

    /// Number of elements in one block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Number of bytes in one block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Bytes taken by one row of `cols` elements; errors when `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        let be = self.block_elems();
        if !cols.is_multiple_of(be) {
            return Err(Error::InvalidShape(format!(
                "{self:?} rows need a multiple of {be} columns, got {cols}"
            )));
        }
        Ok(cols / be * self.block_bytes())
    }

    /// Whether this is one of the block-quantized formats (not F32/F16).
    pub fn is_quantized(self) -> bool {
        !matches!(self, Self::F32 | Self::F16)
    }
}

/// How a matrix's blocks are laid out in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// ggml rows one after another, as in GGUF files.
    #[default]
    Rows,
    /// Groups of 8 rows with the blocks of the 8 rows interleaved (see [`crate::pack`]): the
    /// SIMD kernels then hold 8 rows in the 8 lanes of a vector. Every block-quantized format;
    /// the same number of bytes as [`Layout::Rows`].
    Interleaved8,
}

/// A quantized matrix borrowed from GGUF bytes or from packed copies of them (rows = output
/// features, cols = input features).
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    /// Element format.
    pub ty: QuantType,
    /// Number of rows (output features).
    pub rows: usize,
    /// Number of columns (input features).
    pub cols: usize,
    /// `rows * ty.row_bytes(cols)` bytes in `layout`.
    pub data: &'a [u8],
    /// How `data` is arranged.
    pub layout: Layout,
}

// Which formats the interleaved layout holds is a fact of the layout, so it lives beside
// `Layout`; `pack` does the moving of bytes.

/// Rows in one interleaved group.
pub const GROUP: usize = 8;

/// A block's fields for [`Layout::Interleaved8`], in block order, as `(bytes, unit)`: the field is
/// moved in pieces of `unit` bytes, piece `c` of the 8 rows side by side (see [`crate::pack`]).
/// f16 scalars move whole (unit 2); everything else in 4-byte chunks, one int8 dot's width.
pub(crate) fn interleave_fields(ty: QuantType) -> Option<&'static [(usize, usize)]> {
    match ty {
        QuantType::Q4_0 => Some(&[(2, 2), (16, 4)]),
        QuantType::Q4_1 => Some(&[(2, 2), (2, 2), (16, 4)]),
        QuantType::Q5_0 => Some(&[(2, 2), (4, 4), (16, 4)]),
        QuantType::Q5_1 => Some(&[(2, 2), (2, 2), (4, 4), (16, 4)]),
        QuantType::Q8_0 => Some(&[(2, 2), (32, 4)]),
        // d, dmin, the 12 bytes of 6-bit scales and minimums, (Q5_K: the high bits), the nibbles.
        QuantType::Q4K => Some(&[(2, 2), (2, 2), (12, 4), (128, 4)]),
        QuantType::Q5K => Some(&[(2, 2), (2, 2), (12, 4), (32, 4), (128, 4)]),
        // Low nibbles, high 2-bit pairs, 16 int8 scales, d.
        QuantType::Q6K => Some(&[(128, 4), (64, 4), (16, 4), (2, 2)]),
        QuantType::F32 | QuantType::F16 => None,
    }
}

/// Whether a `ty` matrix of `rows` rows can be held as [`Layout::Interleaved8`].
pub fn can_interleave8(ty: QuantType, rows: usize) -> bool {
    interleave_fields(ty).is_some() && rows.is_multiple_of(GROUP)
}

impl<'a> QMatrix<'a> {
    /// Checks that `data` holds exactly `rows` ggml rows of `cols` elements of `ty`.
    pub fn new(ty: QuantType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        Self::with_layout(ty, rows, cols, data, Layout::Rows)
    }

    /// As [`QMatrix::new`] for bytes in `layout`; errors when the format or the row count cannot
    /// be held that way (see [`can_interleave8`]).
    pub fn with_layout(
        ty: QuantType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
        layout: Layout,
    ) -> Result<Self> {
        if layout == Layout::Interleaved8 && !can_interleave8(ty, rows) {
            return Err(Error::InvalidShape(format!(
                "{ty:?} {rows}x{cols} cannot be interleaved by 8 rows"
            )));
        }
        let rb = ty.row_bytes(cols)?;
        let need = rb
            .checked_mul(rows)
            .ok_or_else(|| Error::InvalidShape(format!("{rows}x{cols} overflows")))?;
        if data.len() != need {
            return Err(Error::InvalidShape(format!(
                "{ty:?} {rows}x{cols} needs {need} bytes, got {}",
                data.len()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
            layout,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// The bytes of row `r` of a [`Layout::Rows`] matrix; panics if `r >= rows` (interleaved rows
    /// are not contiguous: see [`crate::pack::row_of_interleaved8`]).
    pub fn row(&self, r: usize) -> &'a [u8] {
        debug_assert_eq!(self.layout, Layout::Rows);
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Converts IEEE half bits to f32.
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Converts f32 to IEEE half bits (round to nearest even).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

#[inline]
pub(crate) fn rd_f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Unpacks 6-bit scale `j` and minimum `j` from the 12 packed scale bytes of Q4_K/Q5_K.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn check_row(ty: QuantType, src_len: usize, n: usize) -> Result<()> {
    let need = ty.row_bytes(n)?;
    if src_len != need {
        return Err(Error::InvalidShape(format!(
            "{ty:?} row of {n} elements needs {need} bytes, got {src_len}"
        )));
    }
    Ok(())
}

/// Dequantizes one row (`dst.len()` elements) from ggml bytes.
pub fn dequantize_row(ty: QuantType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_row(ty, src.len(), dst.len())?;
    let bb = ty.block_bytes();
    match ty {
        QuantType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        QuantType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        _ => {
            let be = ty.block_elems();
            for (b, out) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(be)) {
                dequantize_block(ty, b, out);
            }
        }
    }
    Ok(())
}

/// Dequantizes one block; `out.len() == ty.block_elems()`.
pub(crate) fn dequantize_block(ty: QuantType, b: &[u8], out: &mut [f32]) {
    match ty {
        QuantType::F32 | QuantType::F16 => {}
        QuantType::Q4_0 => {
            let d = rd_f16(b, 0);
            for j in 0..16 {
                out[j] = d * ((b[2 + j] & 0xF) as i32 - 8) as f32;
                out[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
            }
        }
        QuantType::Q4_1 => {
            let (d, m) = (rd_f16(b, 0), rd_f16(b, 2));
            for j in 0..16 {
                out[j] = d * (b[4 + j] & 0xF) as f32 + m;
                out[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
            }
        }
        QuantType::Q5_0 => {
            let d = rd_f16(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                out[j] = d * (((b[6 + j] & 0xF) as u32 | h0) as i32 - 16) as f32;
                out[j + 16] = d * (((b[6 + j] >> 4) as u32 | h1) as i32 - 16) as f32;
            }
        }
        QuantType::Q5_1 => {
            let (d, m) = (rd_f16(b, 0), rd_f16(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                out[j] = d * ((b[8 + j] & 0xF) as u32 | h0) as f32 + m;
                out[j + 16] = d * ((b[8 + j] >> 4) as u32 | h1) as f32 + m;
            }
        }
        QuantType::Q8_0 => {
            let d = rd_f16(b, 0);
            for j in 0..32 {
                out[j] = d * (b[2 + j] as i8) as f32;
            }
        }
        QuantType::Q4K => {
            let (d, dmin) = (rd_f16(b, 0), rd_f16(b, 2));
            let sc = &b[4..16];
            let qs = &b[16..144];
            for j in 0..4 {
                let (s0, m0) = scale_min_k4(2 * j, sc);
                let (s1, m1) = scale_min_k4(2 * j + 1, sc);
                let (d0, o0) = (d * s0 as f32, dmin * m0 as f32);
                let (d1, o1) = (d * s1 as f32, dmin * m1 as f32);
                for l in 0..32 {
                    let q = qs[32 * j + l];
                    out[64 * j + l] = d0 * (q & 0xF) as f32 - o0;
                    out[64 * j + 32 + l] = d1 * (q >> 4) as f32 - o1;
                }
            }
        }
        QuantType::Q5K => {
            let (d, dmin) = (rd_f16(b, 0), rd_f16(b, 2));
            let sc = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for j in 0..4 {
                let (s0, m0) = scale_min_k4(2 * j, sc);
                let (s1, m1) = scale_min_k4(2 * j + 1, sc);
                let (d0, o0) = (d * s0 as f32, dmin * m0 as f32);
                let (d1, o1) = (d * s1 as f32, dmin * m1 as f32);
                for l in 0..32 {
                    let q = qs[32 * j + l];
                    let h0 = if qh[l] & (1 << (2 * j)) != 0 { 16 } else { 0 };
                    let h1 = if qh[l] & (1 << (2 * j + 1)) != 0 {
                        16
                    } else {
                        0
                    };
                    out[64 * j + l] = d0 * ((q & 0xF) + h0) as f32 - o0;
                    out[64 * j + 32 + l] = d1 * ((q >> 4) + h1) as f32 - o1;
                }
            }
        }
        QuantType::Q6K => {
            let ql = &b[0..128];
            let qh = &b[128..192];
            let sc = &b[192..208];
            let d = rd_f16(b, 208);
            for half in 0..2 {
                let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                let o = &mut out[128 * half..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// Quantizes one row into ggml bytes appended to `dst`. Supports F32, F16, Q4_0, Q4_1, Q5_0,
/// Q5_1 and Q8_0 (round-to-nearest, like ggml's reference quantizers).
pub fn quantize_row(ty: QuantType, src: &[f32], dst: &mut Vec<u8>) -> Result<()> {
    ty.row_bytes(src.len())?;
    match ty {
        QuantType::F32 => src
            .iter()
            .for_each(|x| dst.extend_from_slice(&x.to_le_bytes())),
        QuantType::F16 => src
            .iter()
            .for_each(|x| dst.extend_from_slice(&f32_to_f16(*x).to_le_bytes())),
        QuantType::Q4_0 | QuantType::Q5_0 => {
            let bits = if ty == QuantType::Q4_0 { 4 } else { 5 };
            let half_range = (1i32 << (bits - 1)) as f32;
            for blk in src.chunks_exact(32) {
                // Signed max by magnitude keeps its sign so the extreme maps to -half_range.
                let mut amax = 0.0f32;
                let mut max = 0.0f32;
                for &v in blk {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -half_range;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let top = (1i32 << bits) - 1;
                let q = |v: f32| ((v * id + half_range + 0.5) as i32).clamp(0, top) as u32;
                dst.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                let mut qh = 0u32;
                let mut qs = [0u8; 16];
                for j in 0..16 {
                    let (a, b) = (q(blk[j]), q(blk[j + 16]));
                    qs[j] = ((a & 0xF) | ((b & 0xF) << 4)) as u8;
                    qh |= ((a >> 4) & 1) << j;
                    qh |= ((b >> 4) & 1) << (j + 16);
                }
                if bits == 5 {
                    dst.extend_from_slice(&qh.to_le_bytes());
                }
                dst.extend_from_slice(&qs);
            }
        }
        QuantType::Q4_1 | QuantType::Q5_1 => {
            let bits = if ty == QuantType::Q4_1 { 4 } else { 5 };
            let top = (1i32 << bits) - 1;
            for blk in src.chunks_exact(32) {
                let min = blk.iter().copied().fold(f32::INFINITY, f32::min);
                let max = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / top as f32;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, top) as u32;
                dst.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                dst.extend_from_slice(&f32_to_f16(min).to_le_bytes());
                let mut qh = 0u32;
                let mut qs = [0u8; 16];
                for j in 0..16 {
                    let (a, b) = (q(blk[j]), q(blk[j + 16]));
                    qs[j] = ((a & 0xF) | ((b & 0xF) << 4)) as u8;
                    qh |= ((a >> 4) & 1) << j;
                    qh |= ((b >> 4) & 1) << (j + 16);
                }
                if bits == 5 {
                    dst.extend_from_slice(&qh.to_le_bytes());
                }
                dst.extend_from_slice(&qs);
            }
        }
        QuantType::Q8_0 => {
            for blk in src.chunks_exact(32) {
                let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                dst.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                dst.extend(
                    blk.iter()
                        .map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
        }
        QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => {
            return Err(Error::Unsupported(format!("quantizing to {ty:?}")));
        }
    }
    Ok(())
}
