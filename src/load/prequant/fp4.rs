//! MXFP4 and NVFP4 sources handed over as stored when the load quantizes to their own
//! format: the checkpoints' layout is the quantizers' (E2M1 codes two a byte, element 2i
//! in the low nibble, rows of `cols`; one scale byte per 32 or 16 elements of a row;
//! NVFP4's f32 tensor scale), so the codes pass through untouched, as bnb's and FP8's do.

use super::layout::{self, Layout};
use super::read_raw;
use crate::checkpoint::Checkpoint;
use crate::diag::Diagnostic;
use crate::plan::{Recipe, Target};
use crate::quant::{Format, QuantizedTensor, Scales};

/// `target` as stored in `format` (MXFP4 or NVFP4): one source of that format whose rows
/// are the target's (a transpose around it moves the blocks, so it is requantized), or
/// for MXFP4 a fuse on dim 0 of several (rows concatenate, and so do their scales;
/// NVFP4's tensor scale belongs to one stored tensor). `None`: assembled and quantized.
pub(super) fn stored_as_fp4(
    ckpt: &Checkpoint,
    target: &Target,
    format: Format,
) -> Result<Option<QuantizedTensor>, Diagnostic> {
    let nvfp4 = match format {
        Format::Nvfp4 => true,
        Format::Mxfp4 => false,
        _ => return Ok(None),
    };
    let parts: Vec<&Recipe> = match &target.recipe {
        r @ (Recipe::Mxfp4 { .. } | Recipe::Nvfp4 { .. }) => vec![r],
        Recipe::Fuse { dim: 0, parts } if !nvfp4 => parts.iter().collect(),
        _ => return Ok(None),
    };
    let stored_in_format = |r: &Recipe| match r {
        Recipe::Mxfp4 { .. } => !nvfp4,
        Recipe::Nvfp4 { .. } => nvfp4,
        _ => false,
    };
    if !parts.iter().all(|r| stored_in_format(r)) {
        return Ok(None);
    }
    let mut q = QuantizedTensor {
        format,
        shape: target.shape.clone(),
        data: Vec::new(),
        scales: Scales::U8(Vec::new()),
        scale_shape: Vec::new(),
        nested: None,
        tensor_scale: None,
    };
    let (mut scales, mut all_rows, mut blocks_per_row) = (Vec::new(), 0u64, 0u64);
    for p in parts {
        let Some(Layout::Fp4 {
            packed,
            scales: s,
            tensor_scale,
            rows,
            cols,
            ..
        }) = layout::layout(ckpt, p, target.dtype)?
        else {
            return Ok(None);
        };
        q.data.extend(read_raw(ckpt, packed)?.0);
        scales.extend(read_raw(ckpt, s)?.0);
        all_rows = all_rows.saturating_add(rows);
        blocks_per_row = cols / if nvfp4 { 16 } else { 32 };
        q.tensor_scale = nvfp4.then_some(tensor_scale);
    }
    q.scales = Scales::U8(scales);
    q.scale_shape = vec![all_rows, blocks_per_row];
    Ok(Some(q))
}
