//! Binding pre-quantized sources: the stored codes and their scales are read as they are
//! (no implicit conversion), after their dtypes and the scale grid are checked against
//! the declared block. The load dequantizes them ([`Recipe::Fp8Blocks`]).

use super::{raw_read, Binder, Bound, ParamCtx};
use crate::checkpoint::Dtype;
use crate::ir;
use crate::plan::report::IssueKind;
use crate::plan::{Fallback, Recipe};

/// Whether a source reads a pre-quantized form anywhere.
pub(super) fn prequantized(s: &ir::Source) -> bool {
    use ir::Source as S;
    match s {
        S::Fp8Blocks { .. } | S::Bnb4 { .. } => true,
        S::Tensor { .. } | S::Tied { .. } => false,
        S::Try { options: v } | S::Fuse { parts: v, .. } => v.iter().any(prequantized),
        S::Stack { part: inner, .. }
        | S::Stacked { source: inner, .. }
        | S::Slice { source: inner, .. }
        | S::Split { source: inner, .. }
        | S::Reshape { source: inner, .. }
        | S::Squeeze { source: inner, .. }
        | S::Transpose { source: inner, .. } => prequantized(inner),
    }
}

/// Whether every option of a fallback list is pre-quantized.
pub(super) fn all_prequantized(options: &[ir::Source]) -> bool {
    options.iter().all(prequantized)
}

/// The fallback to record for taking option `chosen` of `options`. Pre-quantized options
/// are how a linear *may be stored*, not fallbacks: they are left out of the count, and
/// taking one records nothing, nor does a list left with one plain option. So a plain checkpoint reports exactly what it did before
/// the stdlib learned the quantized forms.
pub(super) fn fallback(options: &[ir::Source], chosen: usize) -> Option<Fallback> {
    if options.get(chosen).is_none_or(prequantized) {
        return None;
    }
    let plain = |o: &&ir::Source| !prequantized(o);
    let of = options.iter().filter(plain).count();
    (of > 1).then(|| Fallback {
        chosen: options[..chosen].iter().filter(plain).count(),
        of,
    })
}

/// The scale grid that tiles `shape` by `block`: `[⌈rows/br⌉, ⌈cols/bc⌉]`.
pub(crate) fn scale_grid(shape: &[u64], block: [u64; 2]) -> Option<Vec<u64>> {
    match shape {
        [rows, cols] if block[0] > 0 && block[1] > 0 => {
            Some(vec![rows.div_ceil(block[0]), cols.div_ceil(block[1])])
        }
        _ => None,
    }
}

impl Binder<'_> {
    /// `names` = [codes, scales]. Codes are F8_E4M3 `[rows, cols]`; scales F32 (or BF16,
    /// as some releases store them) shaped [`scale_grid`]; the param is a float.
    pub(super) fn fp8_blocks(
        &mut self,
        names: &[String; 2],
        expected: Option<&[u64]>,
        block: [u64; 2],
        ctx: &mut ParamCtx,
    ) -> Bound {
        let [weight, scale] = names;
        let w = self.entry(weight, expected)?;
        let s = self.entry(scale, None)?;
        if w.dtype != Dtype::F8E4M3 {
            return Err(quant_dtype(weight, w.dtype, "F8_E4M3 codes"));
        }
        if !matches!(s.dtype, Dtype::F32 | Dtype::Bf16) {
            return Err(quant_dtype(scale, s.dtype, "F32 (or BF16) scales"));
        }
        if !crate::load::is_training_float(ctx.target_dtype) {
            return Err(IssueKind::Dtype {
                tensor: weight.clone(),
                dtype: w.dtype,
                target: ctx.target_dtype,
            });
        }
        let Some(grid) = scale_grid(&w.shape, block) else {
            return Err(IssueKind::Parts {
                what: "an FP8 block source must be a [rows, cols] matrix".into(),
                shapes: vec![w.shape.clone()],
            });
        };
        if s.shape != grid {
            return Err(IssueKind::ScaleShape {
                tensor: scale.clone(),
                weight: w.shape.clone(),
                block,
                expected: grid,
                actual: s.shape.clone(),
            });
        }
        let (w, s) = (w.clone(), s.clone());
        Ok(Recipe::Fp8Blocks {
            block,
            weight: Box::new(raw_read(weight, &w, ctx)),
            scale_inv: Box::new(raw_read(scale, &s, ctx)),
        })
    }
}

/// A companion tensor of a pre-quantized source: its name, the dtype it must have, and
/// the element count it must have (`None`: any).
struct Companion<'n> {
    name: &'n str,
    dtype: Dtype,
    numel: Option<u64>,
}

impl Binder<'_> {
    /// `bnb4(name)`: packed U8 codes (`⌈n/2⌉` bytes for the param's `n` elements), one
    /// absmax per `blocksize` elements (F32, or U8 codes with double quant, whose
    /// `nested_absmax` F32 and `nested_quant_map` F32 [256] are then beside it), the
    /// `quant_map` F32 [16], and the `quant_state.bitsandbytes__nf4` (or `__fp4`) blob.
    pub(super) fn bnb4(
        &mut self,
        name: &str,
        expected: Option<&[u64]>,
        blocksize: u64,
        ctx: &mut ParamCtx,
    ) -> Bound {
        let Some(n) = expected.and_then(crate::ir::numel) else {
            return Err(IssueKind::Parts {
                what: format!("`bnb4(\"{name}\")` needs the param's shape to find its blocks"),
                shapes: Vec::new(),
            });
        };
        let nblocks = n.div_ceil(blocksize);
        let nested = self
            .ckpt
            .tensors
            .contains_key(&format!("{name}.nested_absmax"));
        let state_nf4 = format!("{name}.quant_state.bitsandbytes__nf4");
        let state_fp4 = format!("{name}.quant_state.bitsandbytes__fp4");
        let fp4 = !self.ckpt.tensors.contains_key(&state_nf4)
            && self.ckpt.tensors.contains_key(&state_fp4);
        let state = if fp4 { state_fp4 } else { state_nf4 };
        let (absmax, quant_map) = (format!("{name}.absmax"), format!("{name}.quant_map"));
        let (nested_absmax, nested_map) = (
            format!("{name}.nested_absmax"),
            format!("{name}.nested_quant_map"),
        );
        let absmax_dtype = if nested { Dtype::U8 } else { Dtype::F32 };
        let mut wanted = vec![
            Companion {
                name,
                dtype: Dtype::U8,
                numel: Some(n.div_ceil(2)),
            },
            Companion {
                name: &absmax,
                dtype: absmax_dtype,
                numel: Some(nblocks),
            },
            Companion {
                name: &quant_map,
                dtype: Dtype::F32,
                numel: Some(16),
            },
            Companion {
                name: &state,
                dtype: Dtype::U8,
                numel: None,
            },
        ];
        if nested {
            let nested_blocks = nblocks.div_ceil(crate::quant::bnb4::NESTED_BLOCKSIZE as u64);
            wanted.push(Companion {
                name: &nested_absmax,
                dtype: Dtype::F32,
                numel: Some(nested_blocks),
            });
            wanted.push(Companion {
                name: &nested_map,
                dtype: Dtype::F32,
                numel: Some(256),
            });
        }
        if !crate::load::is_training_float(ctx.target_dtype) {
            return Err(IssueKind::Dtype {
                tensor: name.to_string(),
                dtype: Dtype::U8,
                target: ctx.target_dtype,
            });
        }
        let mut reads = Vec::with_capacity(wanted.len());
        for c in &wanted {
            reads.push(self.companion(c)?);
        }
        let reads: Vec<Recipe> = reads
            .into_iter()
            .map(|e| raw_read(e.0, &e.1, ctx))
            .collect();
        let mut it = reads.into_iter().map(Box::new);
        let mut next = || {
            it.next().ok_or_else(|| IssueKind::Parts {
                what: "bnb4 companions".into(),
                shapes: Vec::new(),
            })
        };
        Ok(Recipe::Bnb4 {
            shape: expected.map(<[u64]>::to_vec).unwrap_or_default(),
            blocksize,
            fp4,
            packed: next()?,
            absmax: next()?,
            quant_map: next()?,
            quant_state: next()?,
            nested: if nested {
                Some([next()?, next()?])
            } else {
                None
            },
        })
    }

    /// A companion's entry, held to its dtype (E0530) and element count (E0509).
    fn companion<'n>(
        &self,
        c: &Companion<'n>,
    ) -> Result<(&'n str, crate::checkpoint::TensorEntry), IssueKind> {
        let e = self.entry(c.name, None)?;
        if e.dtype != c.dtype {
            return Err(quant_dtype(c.name, e.dtype, c.dtype.name()));
        }
        match c.numel {
            Some(want) if crate::ir::numel(&e.shape) != Some(want) => Err(IssueKind::Shape {
                tensor: Some(c.name.to_string()),
                expected: vec![want],
                actual: e.shape.clone(),
            }),
            _ => Ok((c.name, e.clone())),
        }
    }
}

fn quant_dtype(tensor: &str, dtype: Dtype, want: &str) -> IssueKind {
    IssueKind::QuantDtype {
        tensor: tensor.to_string(),
        dtype,
        want: want.to_string(),
    }
}
