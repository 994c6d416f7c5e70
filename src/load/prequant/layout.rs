//! A pre-quantized source's stored tensors and what decoding them needs, checked before a
//! byte of them is read: for a loader that decodes elsewhere (the GPU) and for the host
//! decode in the parent module, so both refuse the same recipes with the same diagnostic.
//!
//! Input: one [`Recipe::Fp8Blocks`], [`Recipe::Bnb4`], [`Recipe::Mxfp4`] or
//! [`Recipe::Nvfp4`]. Output: a [`Layout`] naming each stored tensor's read. Only the small
//! companions are read here (the bnb quant state and maps, NVFP4's tensor scale); the
//! codes and scales are sized from the reads' headers.

use super::{bad, state_mismatch, Bnb4Parts};
use crate::checkpoint::{Checkpoint, Dtype};
use crate::diag::{Code, Diagnostic};
use crate::plan::Recipe;
use crate::quant::bnb4;

/// The stored tensors of one pre-quantized source (`T`: their reads, or where a loader
/// put them), each exactly as the checkpoint holds it.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout<T> {
    /// E4M3 codes `[rows, cols]`, one scale per `block` tile (row-major
    /// `[⌈rows/br⌉, ⌈cols/bc⌉]`), F32 or (`scales_bf16`) BF16.
    Fp8Blocks {
        codes: T,
        scales: T,
        scales_bf16: bool,
        rows: u64,
        cols: u64,
        block: [u64; 2],
    },
    /// bitsandbytes' packed codes (first element in the high nibble) and the absmax of
    /// each `blocksize` of the `n` elements.
    Bnb4 {
        kind: bnb4::Kind,
        packed: T,
        absmax: Absmax<T>,
        n: u64,
        blocksize: u64,
    },
    /// E2M1 codes two a byte (element 2i in the low nibble) in rows of `cols`: NVFP4's
    /// E4M3 scale per 16 elements times `tensor_scale`, or MXFP4's E8M0 scale per 32
    /// (`tensor_scale` 1).
    Fp4 {
        nvfp4: bool,
        packed: T,
        scales: T,
        tensor_scale: f32,
        rows: u64,
        cols: u64,
    },
}

/// bitsandbytes' absmax as stored: F32 values, or double quant's U8 codes with their
/// nested F32 absmax per `blocksize` codes and the quant state's offset.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax<T> {
    F32(T),
    Double {
        codes: T,
        nested: T,
        offset: f32,
        blocksize: u64,
    },
}

impl<T> Layout<T> {
    /// The same layout with every stored tensor replaced by `f(tensor)`, in the order
    /// codes, scales (absmax), nested absmax.
    pub fn try_map<U, E>(self, mut f: impl FnMut(T) -> Result<U, E>) -> Result<Layout<U>, E> {
        Ok(match self {
            Layout::Fp8Blocks {
                codes,
                scales,
                scales_bf16,
                rows,
                cols,
                block,
            } => Layout::Fp8Blocks {
                codes: f(codes)?,
                scales: f(scales)?,
                scales_bf16,
                rows,
                cols,
                block,
            },
            Layout::Bnb4 {
                kind,
                packed,
                absmax,
                n,
                blocksize,
            } => Layout::Bnb4 {
                kind,
                packed: f(packed)?,
                absmax: match absmax {
                    Absmax::F32(a) => Absmax::F32(f(a)?),
                    Absmax::Double {
                        codes,
                        nested,
                        offset,
                        blocksize,
                    } => Absmax::Double {
                        codes: f(codes)?,
                        nested: f(nested)?,
                        offset,
                        blocksize,
                    },
                },
                n,
                blocksize,
            },
            Layout::Fp4 {
                nvfp4,
                packed,
                scales,
                tensor_scale,
                rows,
                cols,
            } => Layout::Fp4 {
                nvfp4,
                packed: f(packed)?,
                scales: f(scales)?,
                tensor_scale,
                rows,
                cols,
            },
        })
    }
}

impl<T> Layout<T> {
    /// The elements the source decodes to (`None` past 64 bits).
    pub fn numel(&self) -> Option<u64> {
        match self {
            Layout::Fp8Blocks { rows, cols, .. } | Layout::Fp4 { rows, cols, .. } => {
                rows.checked_mul(*cols)
            }
            Layout::Bnb4 { n, .. } => Some(*n),
        }
    }
}

/// A read's dtype, shape and byte length (a rank's window: its own shape and bytes).
pub(super) fn meta(r: &Recipe) -> Result<(Dtype, &[u64], u64), Diagnostic> {
    match r {
        Recipe::Read {
            dtype,
            shape,
            length,
            ..
        } => Ok((*dtype, shape, *length)),
        Recipe::Window { dtype, shape, .. } => {
            let length = super::super::bytes_of(shape, *dtype)
                .ok_or_else(|| bad("a window's size overflows"))?;
            Ok((*dtype, shape, length))
        }
        _ => Err(bad("a pre-quantized source reads stored tensors")),
    }
}

fn elements(shape: &[u64], what: &str) -> Result<u64, Diagnostic> {
    crate::ir::numel(shape).ok_or_else(|| bad(&format!("{what} shape overflows")))
}

/// The layout of `recipe` decoded into `dtype`, or `None` when it is no pre-quantized
/// source.
pub fn layout<'r>(
    ckpt: &Checkpoint,
    recipe: &'r Recipe,
    dtype: Dtype,
) -> Result<Option<Layout<&'r Recipe>>, Diagnostic> {
    Ok(Some(match recipe {
        Recipe::Fp8Blocks {
            block,
            weight,
            scale_inv,
        } => fp8_layout(weight, scale_inv, *block, dtype)?,
        Recipe::Bnb4 { .. } => match super::bnb4_parts(recipe) {
            Some(p) => bnb4_layout(ckpt, &p)?,
            None => return Ok(None),
        },
        Recipe::Mxfp4 {
            shape,
            blocks,
            scales,
        } => fp4_layout(shape, blocks, scales, None)?,
        Recipe::Nvfp4 {
            shape,
            weight,
            scale,
            scale_2,
        } => fp4_layout(shape, weight, scale, Some(tensor_scale(ckpt, scale_2)?))?,
        _ => return Ok(None),
    }))
}

/// Codes F8_E4M3 `[rows, cols]`, scales F32 or BF16 on the tile grid, a float target.
pub(super) fn fp8_layout<'r>(
    weight: &'r Recipe,
    scale_inv: &'r Recipe,
    block: [u64; 2],
    dtype: Dtype,
) -> Result<Layout<&'r Recipe>, Diagnostic> {
    let (wdt, wshape, wlen) = meta(weight)?;
    let (sdt, sshape, slen) = meta(scale_inv)?;
    let scales_bf16 = match sdt {
        Dtype::F32 => false,
        Dtype::Bf16 => true,
        other => {
            return Err(Diagnostic::new(
                Code::E0530,
                format!("FP8 scales are {}, not F32 or BF16", other.name()),
            ))
        }
    };
    let grid = crate::plan::scale_grid(wshape, block);
    let ([rows, cols], Some(grid)) = (wshape, grid) else {
        return Err(bad("the codes are not a matrix"));
    };
    let tiles = grid[0].checked_mul(grid[1]);
    let fits = wdt == Dtype::F8E4M3
        && grid == sshape
        && tiles == Some(slen / sdt.size() as u64)
        && slen % sdt.size() as u64 == 0
        && rows.checked_mul(*cols) == Some(wlen)
        && crate::load::is_training_float(dtype);
    if !fits {
        return Err(bad("codes, scales and output disagree"));
    }
    Ok(Layout::Fp8Blocks {
        codes: weight,
        scales: scale_inv,
        scales_bf16,
        rows: *rows,
        cols: *cols,
        block,
    })
}

/// The quant state and maps checked (as the host decode checks them), the codes and
/// absmax sized from the shape and blocksize.
pub(super) fn bnb4_layout<'r>(
    ckpt: &Checkpoint,
    p: &Bnb4Parts<'r>,
) -> Result<Layout<&'r Recipe>, Diagnostic> {
    let state = super::bnb_state(ckpt, p)?;
    let absmax = bnb4_absmax(ckpt, p, &state)?;
    let n = elements(p.shape, "a bnb4")?;
    let blocks = match &absmax {
        Absmax::F32(a) => meta(a)?.2 / 4,
        Absmax::Double { codes, .. } => meta(codes)?.2,
    };
    let fits = p.blocksize > 0
        && meta(p.packed)?.2 == n.div_ceil(2)
        && blocks == n.div_ceil(p.blocksize.max(1));
    if !fits {
        return Err(state_mismatch(
            "bnb4 codes, absmax and output disagree".into(),
        ));
    }
    Ok(Layout::Bnb4 {
        kind: super::bnb_kind(p),
        packed: p.packed,
        absmax,
        n,
        blocksize: p.blocksize,
    })
}

/// The stored maps must be bitsandbytes' own tables, which the decode uses; double quant
/// needs the state's nested offset and blocksize, and enough nested absmax.
pub(super) fn bnb4_absmax<'r>(
    ckpt: &Checkpoint,
    p: &Bnb4Parts<'r>,
    state: &super::QuantState,
) -> Result<Absmax<&'r Recipe>, Diagnostic> {
    use crate::quant::dynamic;
    let kind = super::bnb_kind(p);
    let (map, _, _) = super::read_raw(ckpt, p.quant_map)?;
    if !super::same_f32s(&map, &kind.table()) {
        return Err(state_mismatch(format!(
            "the stored `quant_map` is not bitsandbytes' {} table",
            kind.name()
        )));
    }
    let Some([nested_absmax, nested_map]) = p.nested else {
        return Ok(Absmax::F32(p.absmax));
    };
    let (nmap, _, _) = super::read_raw(ckpt, nested_map)?;
    if !super::same_f32s(&nmap, &dynamic::signed_map()) {
        return Err(state_mismatch(
            "the stored `nested_quant_map` is not bitsandbytes' dynamic map".into(),
        ));
    }
    let (Some(offset), Some(nbs @ 1..)) = (state.nested_offset, state.nested_blocksize) else {
        return Err(state_mismatch(
            "the quant state lacks `nested_offset` or `nested_blocksize`".into(),
        ));
    };
    if meta(nested_absmax)?.2 / 4 < meta(p.absmax)?.2.div_ceil(nbs) {
        return Err(state_mismatch(
            "`nested_absmax` is too short for its codes".into(),
        ));
    }
    Ok(Absmax::Double {
        codes: p.absmax,
        nested: nested_absmax,
        offset,
        blocksize: nbs,
    })
}

/// MXFP4 (`tensor_scale` `None`) or NVFP4: whole blocks per row, codes and scales sized
/// from the shape.
pub(super) fn fp4_layout<'r>(
    shape: &[u64],
    packed: &'r Recipe,
    scales: &'r Recipe,
    tensor_scale: Option<f32>,
) -> Result<Layout<&'r Recipe>, Diagnostic> {
    let (name, block) = match tensor_scale {
        Some(_) => ("NVFP4", 16),
        None => ("MXFP4", 32),
    };
    let n = elements(shape, name)?;
    let cols = shape.last().copied().unwrap_or(0);
    let fits = cols % block == 0
        && meta(packed)?.2.checked_mul(2) == Some(n)
        && meta(scales)?.2.checked_mul(block) == Some(n);
    if !fits {
        let what = if tensor_scale.is_some() {
            "NVFP4 codes, scales and output disagree"
        } else {
            "MXFP4 blocks, scales and output disagree"
        };
        return Err(bad(what));
    }
    Ok(Layout::Fp4 {
        nvfp4: tensor_scale.is_some(),
        packed,
        scales,
        tensor_scale: tensor_scale.unwrap_or(1.0),
        rows: n.checked_div(cols).unwrap_or(0),
        cols,
    })
}

/// NVFP4's `weight_scale_2`: one f32.
pub(super) fn tensor_scale(ckpt: &Checkpoint, scale_2: &Recipe) -> Result<f32, Diagnostic> {
    let (ws2, _, _) = super::read_raw(ckpt, scale_2)?;
    match ws2[..] {
        [a, b, c, d] => Ok(f32::from_le_bytes([a, b, c, d])),
        _ => Err(bad("NVFP4 codes, scales and output disagree")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{self, Bound, ModelSource};

    fn bind(fixture: &str) -> Bound {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json")));
        let Ok(c) = c.as_mut() else {
            panic!("the fixture compiles")
        };
        driver::bind(c, &dir, true).expect("the fixture binds")
    }

    /// The first stored source of `target`, its reads replaced by their tensor names.
    fn named(b: &Bound, target: &str) -> Layout<String> {
        let t = b.plan.targets.iter().find(|t| t.name == target).unwrap();
        let mut r = &t.recipe;
        while let Recipe::Fuse { parts, .. } | Recipe::Stack { parts } = r {
            r = &parts[0];
        }
        if let Recipe::Transpose { source, .. } = r {
            r = source;
        }
        let l = layout(&b.checkpoint, r, Dtype::Bf16).unwrap().unwrap();
        l.try_map(|read| match read {
            Recipe::Read { tensor, .. } => Ok::<_, ()>(tensor.clone()),
            _ => Err(()),
        })
        .unwrap()
    }

    #[test]
    fn fp8_blocks_name_codes_and_tile_scales() {
        let b = bind("hf/qwen3_fp8");
        let p = "model.layers.0.self_attn.o_proj";
        let want = Layout::Fp8Blocks {
            codes: format!("{p}.weight"),
            scales: format!("{p}.weight_scale_inv"),
            scales_bf16: false,
            rows: 256,
            cols: 256,
            block: [128, 128],
        };
        assert_eq!(named(&b, "layers.0.attention.out"), want);
    }

    #[test]
    fn bnb_double_quant_names_codes_nested_absmax_and_the_state_offset() {
        let b = bind("hf/llama_bnb_nf4_dq");
        let Layout::Bnb4 {
            kind,
            packed,
            absmax,
            n,
            blocksize,
        } = named(&b, "layers.0.attention.out")
        else {
            panic!("not bnb4");
        };
        let p = "model.layers.0.self_attn.o_proj.weight";
        assert_eq!(
            (kind, packed.as_str(), n, blocksize),
            (bnb4::Kind::Nf4, p, 128 * 128, 64)
        );
        let Absmax::Double {
            codes,
            nested,
            offset,
            blocksize,
        } = absmax
        else {
            panic!("not double quant");
        };
        assert_eq!(
            (codes, nested, blocksize),
            (format!("{p}.absmax"), format!("{p}.nested_absmax"), 256)
        );
        assert!(offset.is_finite() && offset > 0.0, "{offset}");
    }

    #[test]
    fn gpt_oss_mxfp4_names_blocks_and_scales_in_rows_of_the_param() {
        let b = bind("prequant/gpt_oss_release");
        let Layout::Fp4 {
            nvfp4,
            packed,
            tensor_scale,
            rows,
            cols,
            ..
        } = named(&b, "layers.0.moe.experts.gate_up")
        else {
            panic!("not fp4");
        };
        assert!(
            !nvfp4 && packed.ends_with("gate_up_proj_blocks"),
            "{packed}"
        );
        assert_eq!((tensor_scale, rows, cols), (1.0, 4 * 64, 32));
    }
}
