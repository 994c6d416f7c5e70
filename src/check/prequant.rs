//! Pre-quantized sources: a stored quantized tensor and its companions (scales), checked
//! before a byte is read.
//!
//! Input: an `fp8_blocks(...)` source and the shape its param expects. Output: an
//! [`ir::Source::Fp8Blocks`] whose block is two positive integers (E0440) and whose shape,
//! where known, is a `[rows, cols]` matrix (E0441). The scale grid's shape follows from
//! the two (`[⌈rows/block[0]⌉, ⌈cols/block[1]⌉]`); binding checks it against the
//! checkpoint, since the checker never reads headers. `bnb4(...)` is checked the same
//! way: a positive blocksize (E0440) and the shape; its companions are binding's.

use super::eval::Scope;
use super::value::Value;
use super::{Ctx, Walker};
use crate::diag::{Code, Diagnostic};
use crate::ir;
use crate::source::Spanned;
use crate::syntax::ast;

/// bitsandbytes' (and transformers') default 4-bit blocksize.
const BNB_DEFAULT_BLOCKSIZE: u64 = 64;

/// The name transformers gives a weight's FP8 scales: `x.weight` → `x.weight_scale_inv`.
fn default_scale_name(weight: &str) -> String {
    format!("{weight}_scale_inv")
}

impl<'a> Walker<'a> {
    /// Checks `fp8_blocks(template: shape, scale_inv = …, block = …)`.
    pub(super) fn fp8_blocks(
        &mut self,
        s: &'a ast::Source,
        parts: Fp8Parts<'a>,
        expected: Option<&[u64]>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<(ir::Source, Option<Vec<u64>>)> {
        let template = self.stored_name(parts.template, ctx.scope);
        let scale_inv = parts.scale_inv.map(|t| self.stored_name(t, ctx.scope));
        let block = self.block(parts.block, ctx.scope);
        let shape = self.stored_shape(s, parts.shape, expected, ctx)?;
        if let Some(sh) = shape.as_ref().filter(|sh| sh.len() != 2) {
            self.shape_error(
                Diagnostic::new(
                    Code::E0441,
                    format!(
                        "an FP8 block source must be a [rows, cols] matrix, not rank {}",
                        sh.len()
                    ),
                )
                .at(s.span, "this source is quantized per 2-D tile")
                .with_help("stack or reshape around `fp8_blocks(...)`, one matrix per call"),
            );
            return None;
        }
        let (block, Some(template)) = (block?, template) else {
            return None;
        };
        let name = crate::check::join_name(ctx.prefix, &template.node);
        let scale_inv = match scale_inv {
            Some(t) => crate::check::join_name(ctx.prefix, &t?.node),
            None => default_scale_name(&name),
        };
        let node = ir::Source::Fp8Blocks {
            name,
            shape: shape.clone(),
            scale_inv,
            block,
        };
        Some((node, shape))
    }

    /// The shape a stored tensor is declared (`"name": [shape]`) or expected to have;
    /// `None` after reporting a disagreement between the two.
    fn stored_shape(
        &mut self,
        s: &'a ast::Source,
        declared: Option<&'a ast::Shape>,
        expected: Option<&[u64]>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<Option<Vec<u64>>> {
        let declared = match declared {
            Some(sh) => Some(self.shape(sh, ctx.scope)?),
            None => None,
        };
        if let (Some(d), Some(e)) = (&declared, expected) {
            if d.as_slice() != e {
                self.shape_error(super::source::mismatch(s, d, e, "the param"));
                return None;
            }
        }
        Some(declared.or_else(|| expected.map(<[u64]>::to_vec)))
    }

    /// Checks `bnb4(template: shape, blocksize = …)`: the blocksize is a positive
    /// integer (E0440); the companions are found and checked by binding.
    pub(super) fn bnb4(
        &mut self,
        s: &'a ast::Source,
        (template, declared): (&'a Spanned<String>, Option<&'a ast::Shape>),
        blocksize: Option<&'a ast::Expr>,
        expected: Option<&[u64]>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<(ir::Source, Option<Vec<u64>>)> {
        let template = self.stored_name(template, ctx.scope);
        let blocksize = match blocksize {
            None => Some(BNB_DEFAULT_BLOCKSIZE),
            Some(e) => self.blocksize(e, ctx.scope),
        };
        let shape = self.stored_shape(s, declared, expected, ctx)?;
        let (blocksize, Some(template)) = (blocksize?, template) else {
            return None;
        };
        let name = crate::check::join_name(ctx.prefix, &template.node);
        let node = ir::Source::Bnb4 {
            name,
            shape: shape.clone(),
            blocksize,
        };
        Some((node, shape))
    }

    /// Checks `mxfp4("blocks", scales = "scales")`: the param's shape is needed (the
    /// stored tensors are shaped by it) and its last dim must be whole 32-element blocks.
    pub(super) fn mxfp4(
        &mut self,
        s: &'a ast::Source,
        [blocks, scales]: [&'a Spanned<String>; 2],
        expected: Option<&[u64]>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<(ir::Source, Option<Vec<u64>>)> {
        let (blocks, scales) = (
            self.stored_name(blocks, ctx.scope),
            self.stored_name(scales, ctx.scope),
        );
        let shape = match expected {
            Some(e) if e.len() >= 2 && e.last().is_some_and(|c| c % 32 == 0) => e.to_vec(),
            _ => {
                let shown = expected.map_or("unknown".to_string(), |e| format!("{e:?}"));
                self.shape_error(
                    Diagnostic::new(
                        Code::E0440,
                        format!("an MXFP4 source needs a [.., rows, cols] shape with cols in whole 32-element blocks, not {shown}"),
                    )
                    .at(s.span, "MXFP4 scales one block of 32 elements per byte"),
                );
                return None;
            }
        };
        let (Some(blocks), Some(scales)) = (blocks, scales) else {
            return None;
        };
        let node = ir::Source::Mxfp4 {
            blocks: crate::check::join_name(ctx.prefix, &blocks.node),
            scales: crate::check::join_name(ctx.prefix, &scales.node),
            shape: shape.clone(),
        };
        Some((node, Some(shape)))
    }

    /// Checks `nvfp4("name")`: the param's shape is needed and its last dim must be whole
    /// 16-element blocks (E0440).
    pub(super) fn nvfp4(
        &mut self,
        s: &'a ast::Source,
        name: &'a Spanned<String>,
        expected: Option<&[u64]>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<(ir::Source, Option<Vec<u64>>)> {
        let name = self.stored_name(name, ctx.scope);
        let shape = match expected {
            Some(e) if e.len() >= 2 && e.last().is_some_and(|c| c % 16 == 0) => e.to_vec(),
            _ => {
                let shown = expected.map_or("unknown".to_string(), |e| format!("{e:?}"));
                self.shape_error(
                    Diagnostic::new(
                        Code::E0440,
                        format!("an NVFP4 source needs a [.., rows, cols] shape with cols in whole 16-element blocks, not {shown}"),
                    )
                    .at(s.span, "NVFP4 scales one block of 16 elements per E4M3 byte"),
                );
                return None;
            }
        };
        let name = name?;
        let node = ir::Source::Nvfp4 {
            name: crate::check::join_name(ctx.prefix, &name.node),
            shape: shape.clone(),
        };
        Some((node, Some(shape)))
    }

    /// A stored tensor's name with the declaration's string and integer parameters written
    /// into their holes (`"experts.{expert}.{gate}.weight"` in `GatedExperts(gate = "w1")`),
    /// as for a plain name, then checked; `None` after reporting.
    fn stored_name(&mut self, t: &Spanned<String>, scope: &Scope<'a>) -> Option<Spanned<String>> {
        let filled = self.fill_params(t, scope)?;
        self.template(&filled, scope).then_some(filled)
    }

    fn blocksize(&mut self, e: &ast::Expr, scope: &Scope<'a>) -> Option<u64> {
        let (v, val) = self.int(e, scope)?;
        match u64::try_from(v) {
            Ok(b @ 1..) => Some(b),
            _ => {
                self.diags.push(
                    Diagnostic::new(
                        Code::E0440,
                        format!("a bnb4 blocksize must be a positive integer, not {v}"),
                    )
                    .at(e.span, "elements per absmax")
                    .with_labels(val.labels())
                    .with_help("bitsandbytes uses 64 unless told otherwise"),
                );
                None
            }
        }
    }

    /// A block size: a list of two positive integers (`[128, 128]`), E0440 otherwise.
    fn block(&mut self, e: &ast::Expr, scope: &Scope<'a>) -> Option<[u64; 2]> {
        let v = self.evaluate(e, scope);
        let v = self.report(v, scope)?;
        if let Value::List(items) = &v.value {
            if let [Value::Int(r), Value::Int(c)] = items.as_slice() {
                if let (Ok(r @ 1..), Ok(c @ 1..)) = (u64::try_from(*r), u64::try_from(*c)) {
                    return Some([r, c]);
                }
            }
        }
        self.diags.push(
            Diagnostic::new(
                Code::E0440,
                format!(
                    "an FP8 block must be two positive integers, not {}",
                    v.value
                ),
            )
            .at(e.span, "the tile is [rows, cols]")
            .with_labels(v.labels())
            .with_help(
                "write `block = [128, 128]`, or read `quantization_config.weight_block_size`",
            ),
        );
        None
    }
}

/// The pieces of an `fp8_blocks(...)` source, borrowed from the AST.
pub(super) struct Fp8Parts<'a> {
    pub template: &'a Spanned<String>,
    pub shape: Option<&'a ast::Shape>,
    pub scale_inv: Option<&'a Spanned<String>>,
    pub block: &'a ast::Expr,
}
