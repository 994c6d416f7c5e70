//! Dequantizing pre-quantized sources on the host, exactly as the reference tools do.
//!
//! Input: a [`Recipe::Fp8Blocks`]'s two reads (E4M3 codes `[rows, cols]`, scales
//! `[⌈rows/br⌉, ⌈cols/bc⌉]` in F32 or BF16) and the target dtype. Output: the target's
//! bytes, each element `f32(code) × f32(scale)` (one f32 rounding, as transformers'
//! `Fp8Dequantize` computes it) rounded to nearest even into the target dtype. Binding
//! checked the dtypes and the scale grid; a recipe that breaks them (one read from JSON)
//! is an error here, never an out-of-bounds index.
//!
//! When the load quantizes to the very format a target is stored in, [`stored_as`] hands
//! over the stored codes and scales instead: same bytes out as in. [`layout`] checks a
//! source and names its stored tensors without reading them, for a loader that decodes
//! them elsewhere (the GPU); the host decode here runs the same checks first.

mod fp4;
mod layout;

use rayon::prelude::*;

pub use layout::{layout, Absmax, Layout};

use super::convert::{convert, e4m3_to_f32};
use crate::checkpoint::{Checkpoint, Dtype, TensorEntry};
use crate::diag::{Code, Diagnostic};
use crate::plan::{Recipe, Target};
use crate::quant::{Format, QuantizedTensor, Scales};

/// The bytes of a [`Recipe::Read`] (or of a rank's [`Recipe::Window`]) as stored.
fn read_raw(ckpt: &Checkpoint, r: &Recipe) -> Result<(Vec<u8>, Dtype, Vec<u64>), Diagnostic> {
    let (file, offset, length, dtype, shape, tensor) = match r {
        Recipe::Read {
            file,
            offset,
            length,
            dtype,
            shape,
            tensor,
        } => (file, offset, length, dtype, shape, tensor),
        Recipe::Window {
            dtype,
            shape,
            tensor,
            ..
        } => {
            let n = super::bytes_of(shape, *dtype)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad("a tensor does not fit in memory"))?;
            let mut buf = super::memory::try_alloc(n, tensor)?;
            super::assemble::fill(ckpt, r, *dtype, &mut buf)?;
            return Ok((buf, *dtype, shape.clone()));
        }
        _ => return Err(bad("a pre-quantized source reads stored tensors")),
    };
    let n = usize::try_from(*length).map_err(|_| bad("a tensor does not fit in memory"))?;
    let mut buf = super::memory::try_alloc(n, tensor)?;
    let entry = TensorEntry {
        shard: *file,
        dtype: *dtype,
        shape: shape.clone(),
        offset: *offset,
        len: *length,
    };
    ckpt.read_into(&entry, &mut buf)?;
    Ok((buf, *dtype, shape.clone()))
}

fn bad(what: &str) -> Diagnostic {
    Diagnostic::new(
        Code::E0531,
        format!("an FP8 block recipe is inconsistent: {what}"),
    )
}

/// Scales widened to f32.
fn scales_f32(bytes: &[u8], dtype: Dtype) -> Result<Vec<f32>, Diagnostic> {
    match dtype {
        Dtype::F32 => Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::Bf16 => Ok(bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect()),
        other => Err(Diagnostic::new(
            Code::E0530,
            format!("FP8 scales are {}, not F32 or BF16", other.name()),
        )),
    }
}

/// Fills `out` (`rows × cols` elements of `dtype`) from FP8 codes and block scales.
pub fn fill_fp8_blocks(
    ckpt: &Checkpoint,
    weight: &Recipe,
    scale_inv: &Recipe,
    block: [u64; 2],
    dtype: Dtype,
    out: &mut [u8],
) -> Result<(), Diagnostic> {
    let Layout::Fp8Blocks { rows, cols, .. } = layout::fp8_layout(weight, scale_inv, block, dtype)?
    else {
        return Err(bad("codes, scales and output disagree"));
    };
    let (codes, _, _) = read_raw(ckpt, weight)?;
    let (sbytes, sdt, _) = read_raw(ckpt, scale_inv)?;
    let scales = scales_f32(&sbytes, sdt)?;
    let (rows, cols) = (rows as usize, cols as usize);
    let es = dtype.size();
    if codes.len() != rows * cols || out.len() != rows * cols * es {
        return Err(bad("codes, scales and output disagree"));
    }
    let (br, bc) = (block[0] as usize, block[1] as usize);
    let gc = cols.div_ceil(bc);
    out.par_chunks_mut(cols * es)
        .zip(codes.par_chunks(cols))
        .enumerate()
        .for_each(|(r, (dst, q))| {
            let srow = &scales[(r / br) * gc..(r / br + 1) * gc];
            let row: Vec<u8> = q
                .iter()
                .enumerate()
                .flat_map(|(c, &b)| (e4m3_to_f32(b) * srow[c / bc]).to_le_bytes())
                .collect();
            convert(Dtype::F32, &row, dtype, dst);
        });
    Ok(())
}

/// `target` as the checkpoint stores it, when that is exactly `format`: a `quantizable`
/// FP8 block source (or a fuse of them on dim 0 whose parts end on tile boundaries, or a
/// gather of whole tiles of one, [`super::fp8_rows`]) in square tiles of the format's
/// block, a bnb 4-bit one ([`stored_as_bnb4`]), or an MXFP4 or NVFP4 one
/// ([`fp4::stored_as_fp4`]). The codes concatenate along rows, and so do the scales.
/// `None`: the target is assembled and
/// quantized as usual.
pub fn stored_as(
    ckpt: &Checkpoint,
    target: &Target,
    format: Option<Format>,
) -> Result<Option<QuantizedTensor>, Diagnostic> {
    let Some(format) = format.filter(|_| target.quantizable) else {
        return Ok(None);
    };
    let block = match format {
        Format::Fp8Block { block } => block,
        Format::Nf4 { .. } | Format::Fp4 { .. } | Format::Nf4Dq { .. } => {
            return stored_as_bnb4(ckpt, target, format)
        }
        Format::Mxfp4 | Format::Nvfp4 => return fp4::stored_as_fp4(ckpt, target, format),
        _ => return Ok(None),
    };
    let b = block as u64;
    let parts: Vec<&Recipe> = match &target.recipe {
        r @ Recipe::Fp8Blocks { .. } => vec![r],
        Recipe::Fuse { dim: 0, parts } => parts.iter().collect(),
        r @ (Recipe::Reshape { .. } | Recipe::Slice { .. }) => {
            return match super::fp8_rows::whole_tile_rows(r, b) {
                Some((rows, node)) => gathered(ckpt, target, block, &rows, node),
                None => Ok(None),
            };
        }
        _ => return Ok(None),
    };
    let mut pieces = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let Recipe::Fp8Blocks {
            block: [br, bc],
            weight,
            scale_inv,
        } = p
        else {
            return Ok(None);
        };
        let rows = weight.shape().first().copied().unwrap_or(0);
        // A part that ends mid-tile would share its last tile with the next part.
        let aligned = i + 1 == parts.len() || rows % b == 0;
        if [*br, *bc] != [b, b] || !aligned {
            return Ok(None);
        }
        pieces.push((weight, scale_inv));
    }
    let (mut data, mut scales, mut grid_rows, mut grid_cols) = (Vec::new(), Vec::new(), 0, 0);
    for (weight, scale_inv) in pieces {
        let (codes, _, _) = read_raw(ckpt, weight)?;
        let (sbytes, sdt, sshape) = read_raw(ckpt, scale_inv)?;
        data.extend_from_slice(&codes);
        scales.extend(scales_f32(&sbytes, sdt)?);
        grid_rows += sshape.first().copied().unwrap_or(0);
        grid_cols = sshape.get(1).copied().unwrap_or(0);
    }
    Ok(Some(QuantizedTensor {
        format: Format::Fp8Block { block },
        shape: target.shape.clone(),
        data,
        scales: Scales::F32(scales),
        scale_shape: vec![grid_rows, grid_cols],
        nested: None,
        tensor_scale: None,
    }))
}

/// `target` as the stored tiles of one FP8 matrix it gathers whole rows of (see
/// [`super::fp8_rows`]): each tile's code rows and its row of scales, in the target's order.
fn gathered(
    ckpt: &Checkpoint,
    target: &Target,
    block: usize,
    rows: &[u64],
    node: &Recipe,
) -> Result<Option<QuantizedTensor>, Diagnostic> {
    let Recipe::Fp8Blocks {
        weight, scale_inv, ..
    } = node
    else {
        return Ok(None);
    };
    let (codes, _, shape) = read_raw(ckpt, weight)?;
    let (sbytes, sdt, sshape) = read_raw(ckpt, scale_inv)?;
    let scales = scales_f32(&sbytes, sdt)?;
    let cols = shape.get(1).and_then(|&c| usize::try_from(c).ok());
    let grid_cols = sshape.get(1).and_then(|&c| usize::try_from(c).ok());
    let (Some(cols), Some(grid_cols)) = (cols, grid_cols) else {
        return Ok(None);
    };
    let row = |r: u64| usize::try_from(r).ok();
    let mut data = Vec::with_capacity(rows.len() * cols);
    for &r in rows {
        let at = row(r).ok_or_else(|| bad("a row index does not fit in memory"))? * cols;
        data.extend_from_slice(
            codes
                .get(at..at + cols)
                .ok_or_else(|| bad("a row past the codes"))?,
        );
    }
    // `whole_tile_rows` made every tile's first row a multiple of the block.
    let mut gathered_scales = Vec::with_capacity(rows.len() / block * grid_cols);
    for tile in rows.chunks(block) {
        let at = row(tile[0]).ok_or_else(|| bad("a row index does not fit in memory"))? / block
            * grid_cols;
        let srow = scales
            .get(at..at + grid_cols)
            .ok_or_else(|| bad("a tile past the scales"))?;
        gathered_scales.extend_from_slice(srow);
    }
    Ok(Some(QuantizedTensor {
        format: Format::Fp8Block { block },
        shape: target.shape.clone(),
        data,
        scales: Scales::F32(gathered_scales),
        scale_shape: vec![(rows.len() / block) as u64, grid_cols as u64],
        nested: None,
        tensor_scale: None,
    }))
}

/// The parts of a [`Recipe::Bnb4`], borrowed.
pub struct Bnb4Parts<'r> {
    pub shape: &'r [u64],
    pub blocksize: u64,
    pub fp4: bool,
    pub packed: &'r Recipe,
    pub absmax: &'r Recipe,
    pub quant_map: &'r Recipe,
    pub quant_state: &'r Recipe,
    pub nested: Option<&'r [Box<Recipe>; 2]>,
}

/// What transformers writes in `quant_state.bitsandbytes__<type>` (a JSON blob, U8).
#[derive(serde::Deserialize)]
struct QuantState {
    quant_type: String,
    blocksize: u64,
    shape: Vec<u64>,
    #[serde(default)]
    nested_blocksize: Option<u64>,
    #[serde(default)]
    nested_offset: Option<f32>,
}

fn state_mismatch(what: String) -> Diagnostic {
    Diagnostic::new(Code::E0531, what)
        .with_help("the mapping's `bnb4(..., blocksize = …)` and shape must be the ones the checkpoint was quantized with")
}

/// bitsandbytes' absmax per block, from the stored F32 values or (double quant) the U8
/// codes, their nested absmax and the quant state's offset. The stored maps must be
/// bitsandbytes' own tables, which the dequantization uses.
fn bnb_absmax(
    ckpt: &Checkpoint,
    p: &Bnb4Parts,
    state: &QuantState,
) -> Result<Vec<f32>, Diagnostic> {
    absmax_values(ckpt, &layout::bnb4_absmax(ckpt, p, state)?)
}

/// The absmax values a (checked) stored absmax decodes to.
fn absmax_values(ckpt: &Checkpoint, absmax: &Absmax<&Recipe>) -> Result<Vec<f32>, Diagnostic> {
    match *absmax {
        Absmax::F32(a) => scales_f32(&read_raw(ckpt, a)?.0, Dtype::F32),
        Absmax::Double {
            codes,
            nested,
            offset,
            blocksize,
        } => {
            let nested = crate::quant::bnb4::Nested {
                absmax: scales_f32(&read_raw(ckpt, nested)?.0, Dtype::F32)?,
                codes: read_raw(ckpt, codes)?.0,
                offset,
                blocksize: blocksize as usize,
            };
            Ok(crate::quant::bnb4::undo_double(&nested))
        }
    }
}

fn bnb_kind(p: &Bnb4Parts) -> crate::quant::bnb4::Kind {
    if p.fp4 {
        crate::quant::bnb4::Kind::Fp4
    } else {
        crate::quant::bnb4::Kind::Nf4
    }
}

/// The parts of a [`Recipe::Bnb4`], borrowed; `None` for any other recipe.
pub fn bnb4_parts(r: &Recipe) -> Option<Bnb4Parts<'_>> {
    match r {
        Recipe::Bnb4 {
            shape,
            blocksize,
            fp4,
            packed,
            absmax,
            quant_map,
            quant_state,
            nested,
        } => Some(Bnb4Parts {
            shape,
            blocksize: *blocksize,
            fp4: *fp4,
            packed,
            absmax,
            quant_map,
            quant_state,
            nested: nested.as_ref(),
        }),
        _ => None,
    }
}

fn same_f32s(bytes: &[u8], table: &[f32]) -> bool {
    bytes.len() == 4 * table.len()
        && bytes
            .chunks_exact(4)
            .zip(table)
            .all(|(b, t)| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == t.to_bits())
}

/// The quant state blob, checked against the recipe (type, blocksize, shape).
fn bnb_state(ckpt: &Checkpoint, p: &Bnb4Parts) -> Result<QuantState, Diagnostic> {
    let (blob, _, _) = read_raw(ckpt, p.quant_state)?;
    let state: QuantState = serde_json::from_slice(&blob).map_err(|e| {
        state_mismatch(format!(
            "the bnb quant state is not the JSON transformers writes: {e}"
        ))
    })?;
    let kind = if p.fp4 { "fp4" } else { "nf4" };
    if state.quant_type != kind || state.blocksize != p.blocksize || state.shape != p.shape {
        return Err(state_mismatch(format!(
            "the bnb quant state says {} in blocks of {} for shape {:?}; the mapping reads {kind} in blocks of {} for {:?}",
            state.quant_type, state.blocksize, state.shape, p.blocksize, p.shape
        )));
    }
    Ok(state)
}

/// Fills `out` with bitsandbytes' dequantization (`table[code] × absmax`, f32) rounded
/// to nearest even into `dtype`.
pub fn fill_bnb4(
    ckpt: &Checkpoint,
    p: &Bnb4Parts,
    dtype: Dtype,
    out: &mut [u8],
) -> Result<(), Diagnostic> {
    let Layout::Bnb4 {
        kind, n, absmax, ..
    } = layout::bnb4_layout(ckpt, p)?
    else {
        return Err(state_mismatch(
            "bnb4 codes, absmax and output disagree".into(),
        ));
    };
    let absmax = absmax_values(ckpt, &absmax)?;
    let (packed, _, _) = read_raw(ckpt, p.packed)?;
    let n = usize::try_from(n).map_err(|_| bad("a bnb4 shape does not fit in memory"))?;
    let bs = p.blocksize as usize;
    if packed.len() != n.div_ceil(2)
        || absmax.len() != n.div_ceil(bs)
        || out.len() != n * dtype.size()
    {
        return Err(state_mismatch(
            "bnb4 codes, absmax and output disagree".into(),
        ));
    }
    let mut f = vec![0f32; n];
    crate::quant::bnb4::dequantize(kind, &packed, &absmax, bs, n, &mut f);
    let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
    convert(Dtype::F32, &bytes, dtype, out);
    Ok(())
}

/// bnb 4-bit stored as `format` (type, blocksize and double quant alike): one `bnb4`
/// source, or (without double quant, whose offset is per stored tensor) a fuse on dim 0
/// of several whose parts end on block boundaries. Codes and absmax concatenate.
fn stored_as_bnb4(
    ckpt: &Checkpoint,
    target: &Target,
    format: Format,
) -> Result<Option<QuantizedTensor>, Diagnostic> {
    let (fp4, double, bs) = match format {
        Format::Nf4 { blocksize } => (false, false, blocksize),
        Format::Fp4 { blocksize } => (true, false, blocksize),
        Format::Nf4Dq { blocksize } => (false, true, blocksize),
        _ => return Ok(None),
    };
    let parts: Vec<&Recipe> = match &target.recipe {
        r @ Recipe::Bnb4 { .. } => vec![r],
        Recipe::Fuse { dim: 0, parts } if !double => parts.iter().collect(),
        _ => return Ok(None),
    };
    let mut list = Vec::with_capacity(parts.len());
    for (i, r) in parts.iter().enumerate() {
        let Some(p) = bnb4_parts(r) else {
            return Ok(None);
        };
        let n = crate::ir::numel(p.shape).unwrap_or(0);
        // A part that ends mid-block (or mid-byte) would share it with the next part.
        let aligned = i + 1 == parts.len() || n % (bs as u64) == 0 && n % 2 == 0;
        if p.fp4 != fp4 || p.nested.is_some() != double || p.blocksize != bs as u64 || !aligned {
            return Ok(None);
        }
        list.push(p);
    }
    let mut q = QuantizedTensor {
        format,
        shape: target.shape.clone(),
        data: Vec::new(),
        scales: Scales::F32(Vec::new()),
        scale_shape: Vec::new(),
        nested: None,
        tensor_scale: None,
    };
    let mut absmax = Vec::new();
    for p in &list {
        let state = bnb_state(ckpt, p)?;
        // Checks the stored maps are bitsandbytes' own, as the dequantization would.
        let values = bnb_absmax(ckpt, p, &state)?;
        q.data.extend(read_raw(ckpt, p.packed)?.0);
        match (p.nested, state.nested_offset, state.nested_blocksize) {
            (Some([nested_absmax, _]), Some(offset), Some(nbs)) => {
                let codes = read_raw(ckpt, p.absmax)?.0;
                let nabs = scales_f32(&read_raw(ckpt, nested_absmax)?.0, Dtype::F32)?;
                q.scale_shape = vec![codes.len() as u64];
                q.scales = Scales::U8(codes.clone());
                q.nested = Some(crate::quant::bnb4::Nested {
                    codes,
                    absmax: nabs,
                    offset,
                    blocksize: nbs as usize,
                });
            }
            _ => absmax.extend(values),
        }
    }
    if !double {
        q.scale_shape = vec![absmax.len() as u64];
        q.scales = Scales::F32(absmax);
    }
    Ok(Some(q))
}

/// Fills `out` from MXFP4 `[blocks, scales]` of a `[.., rows, cols]` tensor: each value
/// `e2m1 × 2^(e − 127)` in f32 (exact), rounded to nearest even into `dtype`, as
/// transformers' `convert_moe_packed_tensors` computes it.
pub fn fill_mxfp4(
    ckpt: &Checkpoint,
    shape: &[u64],
    [blocks, scales]: [&Recipe; 2],
    dtype: Dtype,
    out: &mut [u8],
) -> Result<(), Diagnostic> {
    layout::fp4_layout(shape, blocks, scales, None)?;
    let (packed, _, _) = read_raw(ckpt, blocks)?;
    let (e8m0, _, _) = read_raw(ckpt, scales)?;
    let n = crate::ir::numel(shape)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad("an MXFP4 shape does not fit in memory"))?;
    let cols = shape.last().copied().unwrap_or(0) as usize;
    let fits = cols % 32 == 0
        && packed.len() * 2 == n
        && e8m0.len() * 32 == n
        && out.len() == n * dtype.size();
    if !fits {
        return Err(bad("MXFP4 blocks, scales and output disagree"));
    }
    let mut f = vec![0f32; n];
    crate::quant::fp4::mxfp4_dequantize(&packed, &e8m0, cols, &mut f);
    let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
    convert(Dtype::F32, &bytes, dtype, out);
    Ok(())
}

/// Fills `out` from ModelOpt NVFP4 `[codes, weight_scale, weight_scale_2]` of a
/// `[.., rows, cols]` tensor: `e2m1 × (e4m3 scale × tensor scale)` in f32, as ModelOpt's
/// `NVFP4QTensor.dequantize` associates it, rounded to nearest even into `dtype`.
pub fn fill_nvfp4(
    ckpt: &Checkpoint,
    shape: &[u64],
    [weight, scale, scale_2]: [&Recipe; 3],
    dtype: Dtype,
    out: &mut [u8],
) -> Result<(), Diagnostic> {
    let ws2 = layout::tensor_scale(ckpt, scale_2)?;
    layout::fp4_layout(shape, weight, scale, Some(ws2))?;
    let (packed, _, _) = read_raw(ckpt, weight)?;
    let (scales, _, _) = read_raw(ckpt, scale)?;
    let n = crate::ir::numel(shape)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad("an NVFP4 shape does not fit in memory"))?;
    let cols = shape.last().copied().unwrap_or(0) as usize;
    let fits = cols % 16 == 0
        && packed.len() * 2 == n
        && scales.len() * 16 == n
        && out.len() == n * dtype.size();
    if !fits {
        return Err(bad("NVFP4 codes, scales and output disagree"));
    }
    let mut f = vec![0f32; n];
    crate::quant::fp4::nvfp4_dequantize(&packed, &scales, ws2, cols, &mut f);
    let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
    convert(Dtype::F32, &bytes, dtype, out);
    Ok(())
}
