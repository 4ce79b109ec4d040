//! The [`Layout::Interleaved8`] weight layout: rows in groups of 8, blocks in order within a
//! group, and each block of the 8 rows stored field by field.
//!
//! A ggml block is a sequence of fields (see `interleave_fields`): f16 scalars (a scale, a
//! minimum) and byte arrays (high-bit words, 6-bit scales, values). In a group, block `k` of the
//! 8 rows is stored field by field, each field cut into pieces (a whole f16, or 4 bytes) and
//! piece `c` of the 8 rows stored side by side: 8 scales in 16 bytes, so one load converts them;
//! 4-byte chunks in 32 bytes, one vector whose lane `j` is row `j`'s chunk. A kernel broadcasts
//! the matching 4 activation bytes and gets the 8 rows' partial dots in the 8 lanes, with no
//! horizontal sums. For a Q4_0 block that is the 8 scales, then 4 vectors of nibbles; for a Q4_K
//! super-block the 8 d, the 8 dmin, 3 vectors of packed 6-bit scales and minimums, then 32
//! vectors of nibbles; for Q6_K 32 vectors of low nibbles, 16 of high bit pairs, 4 of int8
//! scales, then the 8 d. Nothing is added or dropped: the bytes are the same as in
//! [`Layout::Rows`], in another order.

use crate::error::{Error, Result};
pub use crate::quant::{GROUP, can_interleave8};
use crate::quant::{Layout, QMatrix, QuantType, interleave_fields};

/// The formats that can be interleaved.
pub const FORMATS: [QuantType; 8] = [
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q8_0,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

/// Where the bytes of row `j` (of 8) of a block land in its interleaved group block: calls
/// `f(src, dst, len)` for each piece, `src` counted in the ggml block and `dst` in the group block.
fn pieces(ty: QuantType, j: usize, mut f: impl FnMut(usize, usize, usize)) {
    let Some(fields) = interleave_fields(ty) else {
        return;
    };
    let mut at = 0;
    for &(size, unit) in fields {
        for c in 0..size / unit {
            f(
                at + unit * c,
                at * GROUP + c * unit * GROUP + unit * j,
                unit,
            );
        }
        at += size;
    }
}

/// Rearranges a [`Layout::Rows`] matrix into [`Layout::Interleaved8`] bytes.
pub fn interleave8(w: &QMatrix) -> Result<Vec<u8>> {
    if w.layout != Layout::Rows || !can_interleave8(w.ty, w.rows) {
        return Err(Error::Unsupported(format!(
            "interleaving a {:?} {:?} matrix of {} rows",
            w.layout, w.ty, w.rows
        )));
    }
    let bb = w.ty.block_bytes();
    let nb = w.cols / w.ty.block_elems();
    let mut out = vec![0u8; w.data.len()];
    for g in 0..w.rows / GROUP {
        for j in 0..GROUP {
            let row = w.row(g * GROUP + j);
            for k in 0..nb {
                let src = &row[k * bb..(k + 1) * bb];
                let dst = &mut out[(g * nb + k) * GROUP * bb..(g * nb + k + 1) * GROUP * bb];
                pieces(w.ty, j, |s, d, len| {
                    dst[d..d + len].copy_from_slice(&src[s..s + len])
                });
            }
        }
    }
    Ok(out)
}

/// Writes row `r` of a [`Layout::Interleaved8`] matrix into `out` in ggml layout (`out` holds
/// one row).
pub fn row_of_interleaved8(w: &QMatrix, r: usize, out: &mut [u8]) -> Result<()> {
    if w.layout != Layout::Interleaved8 || r >= w.rows || out.len() != w.row_bytes() {
        return Err(Error::InvalidShape(format!(
            "row {r} of a {:?} matrix of {} rows into {} bytes",
            w.layout,
            w.rows,
            out.len()
        )));
    }
    let bb = w.ty.block_bytes();
    let nb = w.cols / w.ty.block_elems();
    let (g, j) = (r / GROUP, r % GROUP);
    for k in 0..nb {
        let src = &w.data[(g * nb + k) * GROUP * bb..(g * nb + k + 1) * GROUP * bb];
        let dst = &mut out[k * bb..(k + 1) * bb];
        pieces(w.ty, j, |s, d, len| {
            dst[s..s + len].copy_from_slice(&src[d..d + len])
        });
    }
    Ok(())
}

/// Rows `r0..r1` of an interleaved matrix as ggml rows, into `out` (replaced).
pub(crate) fn rows_of_interleaved8(w: &QMatrix, r0: usize, r1: usize, out: &mut Vec<u8>) {
    let rb = w.row_bytes();
    out.clear();
    out.resize((r1 - r0) * rb, 0);
    for (i, chunk) in out.chunks_exact_mut(rb).enumerate() {
        // Shapes come from a checked matrix and an in-range row span.
        let _ = row_of_interleaved8(w, r0 + i, chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_row_and_moves_the_scales_together() {
        for ty in FORMATS {
            let (rows, cols) = (16, 2 * ty.block_elems());
            let len = rows * ty.row_bytes(cols).unwrap_or(0);
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 13) as u8).collect();
            let w = QMatrix::new(ty, rows, cols, &data).unwrap();
            let packed = interleave8(&w).unwrap();
            assert_eq!(packed.len(), data.len());
            let p = QMatrix::with_layout(ty, rows, cols, &packed, Layout::Interleaved8).unwrap();
            let mut row = vec![0u8; w.row_bytes()];
            for r in 0..rows {
                row_of_interleaved8(&p, r, &mut row).unwrap();
                assert_eq!(row, w.row(r), "{ty:?} row {r}");
            }
            // The first 16 bytes of a group block are the 8 rows' scales (Q6_K: its last 16).
            let at = if ty == QuantType::Q6K { 208 } else { 0 };
            for j in 0..GROUP {
                let want = &data[j * w.row_bytes() + at..][..2];
                assert_eq!(&packed[GROUP * at + 2 * j..][..2], want, "{ty:?}");
            }
        }
    }

    #[test]
    fn every_byte_of_a_group_block_is_written_once() {
        for ty in FORMATS {
            let fields = interleave_fields(ty).unwrap();
            let sum: usize = fields.iter().map(|&(size, _)| size).sum();
            assert_eq!(sum, ty.block_bytes(), "{ty:?}");
            let mut hits = vec![0u8; GROUP * ty.block_bytes()];
            for j in 0..GROUP {
                pieces(ty, j, |_, d, len| {
                    hits[d..d + len].iter_mut().for_each(|h| *h += 1)
                });
            }
            assert!(hits.iter().all(|&h| h == 1), "{ty:?}");
        }
    }

    #[test]
    fn the_listed_formats_are_the_interleavable_ones() {
        for id in 0..16 {
            if let Some(ty) = QuantType::from_ggml_type_id(id) {
                assert_eq!(can_interleave8(ty, GROUP), FORMATS.contains(&ty), "{ty:?}");
            }
        }
    }

    #[test]
    fn other_formats_and_row_counts_are_refused() {
        let data = vec![0u8; 8 * 2 * 32];
        let w = QMatrix::new(QuantType::F16, 8, 32, &data).unwrap();
        assert!(interleave8(&w).is_err());
        let data = vec![0u8; 4 * 18];
        let w = QMatrix::new(QuantType::Q4_0, 4, 32, &data).unwrap();
        assert!(interleave8(&w).is_err());
        assert!(QMatrix::with_layout(QuantType::Q4_0, 4, 32, &data, Layout::Interleaved8).is_err());
    }
}
