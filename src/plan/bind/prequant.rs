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
        S::Fp8Blocks { .. } => true,
        S::Tensor { .. } | S::Tied { .. } => false,
        S::Try { options: v } | S::Fuse { parts: v, .. } => v.iter().any(prequantized),
        S::Stack { part: inner, .. }
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

fn quant_dtype(tensor: &str, dtype: Dtype, want: &'static str) -> IssueKind {
    IssueKind::QuantDtype {
        tensor: tensor.to_string(),
        dtype,
        want,
    }
}
