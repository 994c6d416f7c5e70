//! Binding pre-quantized sources: the stored codes and their scales are read as they are
//! (no implicit conversion), after their dtypes and the scale grid are checked against
//! the declared block. The load dequantizes them ([`Recipe::Fp8Blocks`]).

use super::{raw_read, Binder, Bound, ParamCtx};
use crate::checkpoint::{Checkpoint, Dtype};
use crate::ir;
use crate::plan::report::IssueKind;
use crate::plan::{Fallback, Recipe};

/// Whether a source reads a pre-quantized form anywhere.
pub(super) fn prequantized(s: &ir::Source) -> bool {
    use ir::Source as S;
    match s {
        S::Fp8Blocks { .. } | S::Bnb4 { .. } | S::Mxfp4 { .. } | S::Nvfp4 { .. } => true,
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
struct Companion {
    name: String,
    dtype: Dtype,
    numel: Option<u64>,
}

fn companion(name: String, dtype: Dtype, numel: Option<u64>) -> Companion {
    Companion { name, dtype, numel }
}

/// What `bnb4(name)` of `n` elements needs, in [`Recipe::Bnb4`]'s order: codes, absmax,
/// quant map, quant state, then with double quant the nested absmax and map. FP4 and
/// double quant are told by the companions' names, so headers decide them.
fn bnb4_companions(
    ckpt: &Checkpoint,
    name: &str,
    n: u64,
    blocksize: u64,
) -> (Vec<Companion>, bool) {
    let has = |suffix: &str| ckpt.tensors.contains_key(&format!("{name}.{suffix}"));
    let nested = has("nested_absmax");
    let fp4 = !has("quant_state.bitsandbytes__nf4") && has("quant_state.bitsandbytes__fp4");
    let nblocks = n.div_ceil(blocksize);
    let at = |suffix: &str| format!("{name}.{suffix}");
    let mut out = vec![
        companion(name.to_string(), Dtype::U8, Some(n.div_ceil(2))),
        companion(
            at("absmax"),
            if nested { Dtype::U8 } else { Dtype::F32 },
            Some(nblocks),
        ),
        companion(at("quant_map"), Dtype::F32, Some(16)),
        companion(
            at(if fp4 {
                "quant_state.bitsandbytes__fp4"
            } else {
                "quant_state.bitsandbytes__nf4"
            }),
            Dtype::U8,
            None,
        ),
    ];
    if nested {
        let nested_blocks = nblocks.div_ceil(crate::quant::bnb4::NESTED_BLOCKSIZE as u64);
        out.push(companion(
            at("nested_absmax"),
            Dtype::F32,
            Some(nested_blocks),
        ));
        out.push(companion(at("nested_quant_map"), Dtype::F32, Some(256)));
    }
    (out, fp4)
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
        if !crate::load::is_training_float(ctx.target_dtype) {
            return Err(IssueKind::Dtype {
                tensor: name.to_string(),
                dtype: Dtype::U8,
                target: ctx.target_dtype,
            });
        }
        let (wanted, fp4) = bnb4_companions(self.ckpt, name, n, blocksize);
        let mut entries = Vec::with_capacity(wanted.len());
        for c in &wanted {
            entries.push(self.companion(c)?);
        }
        let mut reads = wanted
            .iter()
            .zip(entries)
            .map(|(c, e)| Box::new(raw_read(&c.name, &e, ctx)))
            .collect::<Vec<_>>()
            .into_iter();
        // `bnb4_companions` gave four reads, six with double quant.
        let (Some(packed), Some(absmax), Some(quant_map), Some(quant_state)) =
            (reads.next(), reads.next(), reads.next(), reads.next())
        else {
            return Err(IssueKind::Parts {
                what: "bnb4 companions".into(),
                shapes: Vec::new(),
            });
        };
        let nested = match (reads.next(), reads.next()) {
            (Some(a), Some(m)) => Some([a, m]),
            _ => None,
        };
        Ok(Recipe::Bnb4 {
            shape: expected.map(<[u64]>::to_vec).unwrap_or_default(),
            blocksize,
            fp4,
            packed,
            absmax,
            quant_map,
            quant_state,
            nested,
        })
    }

    /// A companion's entry, held to its dtype (E0530) and element count (E0509).
    fn companion(&self, c: &Companion) -> Result<crate::checkpoint::TensorEntry, IssueKind> {
        let e = self.entry(&c.name, None)?;
        if e.dtype != c.dtype {
            return Err(quant_dtype(&c.name, e.dtype, c.dtype.name()));
        }
        match c.numel {
            Some(want) if crate::ir::numel(&e.shape) != Some(want) => Err(IssueKind::Shape {
                tensor: Some(c.name.to_string()),
                expected: vec![want],
                actual: e.shape.clone(),
            }),
            _ => Ok(e.clone()),
        }
    }
}

impl Binder<'_> {
    /// `mxfp4(blocks, scales)` for a `[.., rows, cols]` param: U8 blocks
    /// `[.., rows, cols/32, 16]` and U8 E8M0 scales `[.., rows, cols/32]`.
    pub(super) fn mxfp4(&mut self, names: [&str; 2], shape: &[u64], ctx: &mut ParamCtx) -> Bound {
        let Some((cols, lead)) = shape.split_last() else {
            return Err(IssueKind::Parts {
                what: "an MXFP4 source needs its shape".into(),
                shapes: Vec::new(),
            });
        };
        let grid = [lead, &[cols / 32]].concat();
        let want = [[grid.clone(), vec![16]].concat(), grid];
        if !crate::load::is_training_float(ctx.target_dtype) {
            return Err(IssueKind::Dtype {
                tensor: names[0].to_string(),
                dtype: Dtype::U8,
                target: ctx.target_dtype,
            });
        }
        let mut reads = Vec::with_capacity(2);
        for (name, want) in names.iter().zip(want) {
            let e = self.entry(name, Some(&want))?;
            if e.dtype != Dtype::U8 {
                return Err(quant_dtype(name, e.dtype, "U8"));
            }
            let e = e.clone();
            reads.push(Box::new(raw_read(name, &e, ctx)));
        }
        let (Some(scales), Some(blocks)) = (reads.pop(), reads.pop()) else {
            return Err(IssueKind::Parts {
                what: "MXFP4 reads".into(),
                shapes: Vec::new(),
            });
        };
        Ok(Recipe::Mxfp4 {
            shape: shape.to_vec(),
            blocks,
            scales,
        })
    }
}

/// ModelOpt's names for the scales of `x.weight`: `x.weight_scale`, `x.weight_scale_2`.
pub(super) fn nvfp4_names(name: &str) -> [String; 3] {
    [
        name.to_string(),
        format!("{name}_scale"),
        format!("{name}_scale_2"),
    ]
}

impl Binder<'_> {
    /// `nvfp4(name)` for a `[.., rows, cols]` param: U8 codes `[.., rows, cols/2]`, E4M3
    /// `weight_scale` `[.., rows, cols/16]`, and one f32 `weight_scale_2`.
    pub(super) fn nvfp4(&mut self, name: &str, shape: &[u64], ctx: &mut ParamCtx) -> Bound {
        let Some((cols, lead)) = shape.split_last() else {
            return Err(IssueKind::Parts {
                what: "an NVFP4 source needs its shape".into(),
                shapes: Vec::new(),
            });
        };
        if !crate::load::is_training_float(ctx.target_dtype) {
            return Err(IssueKind::Dtype {
                tensor: name.to_string(),
                dtype: Dtype::U8,
                target: ctx.target_dtype,
            });
        }
        let names = nvfp4_names(name);
        let wanted = [
            (Dtype::U8, [lead, &[cols / 2]].concat()),
            (Dtype::F8E4M3, [lead, &[cols / 16]].concat()),
            (Dtype::F32, Vec::new()),
        ];
        let mut reads = Vec::with_capacity(3);
        for (n, (dtype, want)) in names.iter().zip(wanted) {
            let e = self.entry(n, None)?;
            if e.dtype != dtype {
                return Err(quant_dtype(n, e.dtype, dtype.name()));
            }
            // `weight_scale_2` is a scalar, stored as `[]` or `[1]`.
            let fits = if want.is_empty() {
                crate::ir::numel(&e.shape) == Some(1)
            } else {
                e.shape == want
            };
            if !fits {
                return Err(IssueKind::Shape {
                    tensor: Some(n.clone()),
                    expected: want,
                    actual: e.shape.clone(),
                });
            }
            let e = e.clone();
            reads.push(Box::new(raw_read(n, &e, ctx)));
        }
        let mut it = reads.into_iter();
        let (Some(weight), Some(scale), Some(scale_2)) = (it.next(), it.next(), it.next()) else {
            return Err(IssueKind::Parts {
                what: "NVFP4 reads".into(),
                shapes: Vec::new(),
            });
        };
        Ok(Recipe::Nvfp4 {
            shape: shape.to_vec(),
            weight,
            scale,
            scale_2,
        })
    }
}

fn quant_dtype(tensor: &str, dtype: Dtype, want: &str) -> IssueKind {
    IssueKind::QuantDtype {
        tensor: tensor.to_string(),
        dtype,
        want: want.to_string(),
    }
}
