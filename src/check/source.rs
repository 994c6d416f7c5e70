//! Source trees: shape inference and checking.
//!
//! Shapes flow both ways. Top-down, the param's shape is what its source must produce:
//! a stack strips its leading dim for its part, a transpose swaps two dims, a squeeze
//! inserts a 1. Bottom-up, annotated tensor names (`"q_proj.weight": [q, hidden]`) give
//! parts their shapes, so a `fuse` can check that its parts agree off the fuse dim and
//! add up on it, and infer the one part left unannotated. Whatever stays unknown here is
//! checked against the real tensor when the IR is bound to a checkpoint.

use super::eval::Binding;
use super::{Ctx, Walker};
use crate::diag::{Code, Diagnostic};
use crate::ir;
use crate::source::Spanned;
use crate::syntax::ast::{self, SourceKind as K};

type Shape = Vec<u64>;

fn show(s: &[u64]) -> String {
    format!(
        "[{}]",
        s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    )
}

/// Stack variables bound anywhere in a source tree.
pub(super) fn stack_vars(s: &ast::Source, out: &mut Vec<String>) {
    match &s.node {
        K::Stack { var, part, .. }
        | K::Stacked {
            var, source: part, ..
        } => {
            out.push(var.node.clone());
            stack_vars(part, out);
        }
        K::Try(items) | K::Fuse { parts: items, .. } => {
            items.iter().for_each(|i| stack_vars(i, out))
        }
        K::Slice { source, .. }
        | K::Split { source, .. }
        | K::Reshape { source, .. }
        | K::Squeeze { source, .. }
        | K::Transpose { source, .. } => stack_vars(source, out),
        K::Name { .. }
        | K::Tied(_)
        | K::Fp8Blocks { .. }
        | K::Bnb4 { .. }
        | K::Mxfp4 { .. }
        | K::Nvfp4(_) => {}
    }
}

impl<'a> Walker<'a> {
    /// Checks a source against the shape it must produce (when known). Returns the IR
    /// node and the shape it is known to produce.
    pub(super) fn source(
        &mut self,
        s: &'a ast::Source,
        expected: Option<&[u64]>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<ir::Source> {
        self.source_shaped(s, expected, ctx).map(|(src, _)| src)
    }

    /// A stack's range: non-empty (E0401), within the caps, and as long as the param's
    /// leading dim where that is known (E0404). Returns (start, count).
    pub(super) fn stack_range(
        &mut self,
        range: &'a ast::Range,
        expected: Option<&[u64]>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<(i64, u64)> {
        let (start, _) = self.int(&range.start, ctx.scope)?;
        let (end, end_val) = self.int(&range.end, ctx.scope)?;
        if end <= start {
            self.diags.push(
                Diagnostic::new(Code::E0401, format!("stack over {start}..{end} is empty"))
                    .at(range.end.span, format!("this is {end}"))
                    .with_labels(end_val.labels()),
            );
            return None;
        }
        let count = self.count(start, end, range, &end_val, "stack", ir::limits::MAX_STACK)?;
        if let Some(e) = expected {
            if e.first() != Some(&count) {
                let have = e
                    .first()
                    .map_or("no leading dim".to_string(), u64::to_string);
                self.shape_error(
                    Diagnostic::new(
                        Code::E0404,
                        format!("stack makes {count} slices but the param's leading dim is {have}"),
                    )
                    .at(range.end.span, format!("{count} slices"))
                    .with_labels(end_val.labels()),
                );
                return None;
            }
        }
        Some((start, count))
    }

    fn source_shaped(
        &mut self,
        s: &'a ast::Source,
        expected: Option<&[u64]>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<(ir::Source, Option<Shape>)> {
        match &s.node {
            K::Name { template, shape } => {
                let template = &self.fill_params(template, ctx.scope)?;
                if !self.template(template, ctx.scope) {
                    return None;
                }
                let declared = match shape {
                    Some(sh) => Some(self.shape(sh, ctx.scope)?),
                    None => None,
                };
                if let (Some(d), Some(e)) = (&declared, expected) {
                    if d.as_slice() != e {
                        self.shape_error(mismatch(s, d, e, "the param"));
                        return None;
                    }
                }
                let shape = declared.or_else(|| expected.map(<[u64]>::to_vec));
                let name = crate::check::join_name(ctx.prefix, &template.node);
                Some((
                    ir::Source::Tensor {
                        name,
                        shape: shape.clone(),
                    },
                    shape,
                ))
            }
            K::Fp8Blocks {
                template,
                shape,
                scale_inv,
                block,
            } => {
                let parts = super::prequant::Fp8Parts {
                    template,
                    shape: shape.as_ref(),
                    scale_inv: scale_inv.as_ref(),
                    block,
                };
                self.fp8_blocks(s, parts, expected, ctx)
            }
            K::Nvfp4(name) => self.nvfp4(s, name, expected, ctx),
            K::Mxfp4 { blocks, scales } => self.mxfp4(s, [blocks, scales], expected, ctx),
            K::Bnb4 {
                template,
                shape,
                blocksize,
            } => self.bnb4(
                s,
                (template, shape.as_ref()),
                blocksize.as_ref(),
                expected,
                ctx,
            ),
            K::Try(options) => {
                let mut out = Vec::with_capacity(options.len());
                let mut known = expected.map(<[u64]>::to_vec);
                for o in options {
                    let (src, shape) = self.source_shaped(o, expected, ctx)?;
                    known = known.or(shape);
                    out.push(src);
                }
                Some((ir::Source::Try { options: out }, known))
            }
            K::Fuse { dim, parts } => self.fuse(s, dim, parts, expected, ctx),
            K::Stacked { var, range, source } => {
                // The source is the whole [count, …] tensor: the variable names its
                // slices (for offload groups) and is not in scope for its names.
                let (start, count) = self.stack_range(range, expected, ctx)?;
                let (inner, shape) = self.source_shaped(source, expected, ctx)?;
                let node = ir::Source::Stacked {
                    var: var.node.clone(),
                    start,
                    count,
                    source: Box::new(inner),
                };
                Some((node, shape))
            }
            K::Stack { var, range, part } => {
                let (start, count) = self.stack_range(range, expected, ctx)?;
                let scope = ctx.scope.with_var(&var.node, Binding::Stack);
                let inner = Ctx {
                    scope: &scope,
                    ..ctx.clone()
                };
                let (p, pshape) = self.source_shaped(part, expected.map(|e| &e[1..]), &inner)?;
                let shape = pshape.map(|ps| [vec![count], ps].concat());
                Some((
                    ir::Source::Stack {
                        var: var.node.clone(),
                        start,
                        count,
                        part: Box::new(p),
                    },
                    shape,
                ))
            }
            K::Slice {
                source,
                dim,
                range,
                step,
            } => {
                let d = self.dim(dim, ctx)?;
                let (a, _) = self.int(&range.start, ctx.scope)?;
                let (b, bval) = self.int(&range.end, ctx.scope)?;
                let step = match step {
                    Some(st) => self.int(st, ctx.scope)?.0,
                    None => 1,
                };
                if a < 0 || b <= a || step < 1 {
                    self.diags.push(
                        Diagnostic::new(
                            Code::E0406,
                            format!("slice {a}..{b} step {step} is empty or negative"),
                        )
                        .at(s.span, "needs 0 <= start < end and step >= 1")
                        .with_labels(bval.labels()),
                    );
                    return None;
                }
                let (a, b, step) = (a as u64, b as u64, step as u64);
                let len = (b - a).div_ceil(step);
                let (inner, sshape) = self.source_shaped(source, None, ctx)?;
                let shape = match sshape {
                    Some(ss) => {
                        if d >= ss.len() {
                            self.diags.push(dim_error(dim, d, ss.len()));
                            return None;
                        }
                        if b > ss[d] {
                            self.diags.push(
                                Diagnostic::new(
                                    Code::E0406,
                                    format!(
                                        "slice end {b} is past the source's dim {d} of size {}",
                                        ss[d]
                                    ),
                                )
                                .at(range.end.span, format!("this is {b}"))
                                .with_labels(bval.labels()),
                            );
                            return None;
                        }
                        let mut r = ss.clone();
                        r[d] = len;
                        Some(r)
                    }
                    None => None,
                };
                let shape = self.agree(s, shape, expected, d, len)?;
                let node = ir::Source::Slice {
                    dim: d,
                    start: a,
                    end: b,
                    step,
                    source: Box::new(inner),
                };
                Some((node, shape))
            }
            K::Split {
                source,
                dim,
                part,
                of,
            } => {
                let d = self.dim(dim, ctx)?;
                let (i, _) = self.int(part, ctx.scope)?;
                let (n, _) = self.int(of, ctx.scope)?;
                if n < 1 || i < 0 || i >= n {
                    self.diags.push(
                        Diagnostic::new(Code::E0406, format!("part {i} of {n} does not exist"))
                            .at(part.span, format!("needs 0 <= part < {n}")),
                    );
                    return None;
                }
                let (i, n) = (i as u64, n as u64);
                // The source is `n` times the result along `d`.
                let src_expected = expected.and_then(|e| {
                    (d < e.len()).then(|| {
                        let mut x = e.to_vec();
                        // Saturating: an impossible size then fails the shape comparison.
                        x[d] = x[d].saturating_mul(n);
                        x
                    })
                });
                let (inner, sshape) = self.source_shaped(source, src_expected.as_deref(), ctx)?;
                let shape = match sshape {
                    Some(ss) if d >= ss.len() => {
                        self.diags.push(dim_error(dim, d, ss.len()));
                        return None;
                    }
                    Some(ss) if ss[d] % n != 0 => {
                        self.diags.push(
                            Diagnostic::new(
                                Code::E0402,
                                format!(
                                    "dim {d} of size {} does not split into {n} equal parts",
                                    ss[d]
                                ),
                            )
                            .at(s.span, "uneven split"),
                        );
                        return None;
                    }
                    Some(mut ss) => {
                        ss[d] /= n;
                        Some(ss)
                    }
                    None => None,
                };
                let len = shape.as_ref().map(|x| x[d]);
                let shape = match len {
                    Some(len) => self.agree(s, shape, expected, d, len)?,
                    None => expected.map(<[u64]>::to_vec),
                };
                let node = ir::Source::Split {
                    dim: d,
                    part: i,
                    of: n,
                    source: Box::new(inner),
                };
                Some((node, shape))
            }
            K::Reshape { source, shape } => {
                let target = self.shape(shape, ctx.scope)?;
                if let Some(e) = expected {
                    if target.as_slice() != e {
                        self.shape_error(mismatch(s, &target, e, "the param"));
                        return None;
                    }
                }
                let (inner, sshape) = self.source_shaped(source, None, ctx)?;
                if let Some(ss) = &sshape {
                    // `target` was checked by `shape`; a source size that overflows
                    // cannot equal it.
                    if ir::numel(ss) != ir::numel(&target) {
                        self.shape_error(mismatch(
                            s,
                            ss,
                            &target,
                            "the reshape (element counts differ)",
                        ));
                        return None;
                    }
                }
                Some((
                    ir::Source::Reshape {
                        shape: target.clone(),
                        source: Box::new(inner),
                    },
                    Some(target),
                ))
            }
            K::Squeeze { source, dim } => {
                let d = self.dim(dim, ctx)?;
                let src_expected = match expected {
                    Some(e) if d > e.len() => {
                        self.diags.push(dim_error(dim, d, e.len() + 1));
                        return None;
                    }
                    Some(e) => {
                        let mut x = e.to_vec();
                        x.insert(d, 1);
                        Some(x)
                    }
                    None => None,
                };
                let (inner, sshape) = self.source_shaped(source, src_expected.as_deref(), ctx)?;
                let shape = match sshape {
                    Some(ss) if d >= ss.len() || ss[d] != 1 => {
                        self.diags.push(
                            Diagnostic::new(
                                Code::E0407,
                                format!("cannot squeeze dim {d} of {}", show(&ss)),
                            )
                            .at(dim.span, "this dim is not of size 1"),
                        );
                        return None;
                    }
                    Some(mut ss) => {
                        ss.remove(d);
                        Some(ss)
                    }
                    None => None,
                };
                Some((
                    ir::Source::Squeeze {
                        dim: d,
                        source: Box::new(inner),
                    },
                    shape,
                ))
            }
            K::Transpose { source, a, b } => {
                let da = self.dim(a, ctx)?;
                let db = self.dim(b, ctx)?;
                let swap = |x: &[u64]| {
                    let mut y = x.to_vec();
                    y.swap(da, db);
                    y
                };
                let src_expected = match expected {
                    Some(e) if da.max(db) >= e.len() => {
                        let bad = if da >= e.len() { a } else { b };
                        self.diags.push(dim_error(bad, da.max(db), e.len()));
                        return None;
                    }
                    Some(e) => Some(swap(e)),
                    None => None,
                };
                let (inner, sshape) = self.source_shaped(source, src_expected.as_deref(), ctx)?;
                if let Some(ss) = &sshape {
                    if da.max(db) >= ss.len() {
                        self.diags.push(dim_error(a, da.max(db), ss.len()));
                        return None;
                    }
                }
                Some((
                    ir::Source::Transpose {
                        dims: [da, db],
                        source: Box::new(inner),
                    },
                    sshape.map(|ss| swap(&ss)),
                ))
            }
            K::Tied(path) => {
                let (param, shape) = self.tied(path, ctx)?;
                if let Some(e) = expected {
                    if shape.as_slice() != e {
                        self.shape_error(mismatch(s, &shape, e, "the param"));
                        return None;
                    }
                }
                Some((ir::Source::Tied { param }, Some(shape)))
            }
        }
    }

    /// A `dim` argument: a non-negative integer.
    fn dim(&mut self, e: &ast::Expr, ctx: &Ctx<'a, '_>) -> Option<usize> {
        let (d, _) = self.int(e, ctx.scope)?;
        match usize::try_from(d) {
            Ok(d) => Some(d),
            Err(_) => {
                self.diags.push(
                    Diagnostic::new(Code::E0408, format!("dim {d} is negative"))
                        .at(e.span, "dims count from 0"),
                );
                None
            }
        }
    }

    /// The produced shape must agree with the expected one along `d` (and fully, when both are known).
    fn agree(
        &mut self,
        s: &ast::Source,
        shape: Option<Shape>,
        expected: Option<&[u64]>,
        d: usize,
        len: u64,
    ) -> Option<Option<Shape>> {
        match (shape, expected) {
            (Some(sh), Some(e)) if sh.as_slice() != e => {
                self.shape_error(mismatch(s, &sh, e, "the param"));
                None
            }
            (None, Some(e)) if e.get(d) != Some(&len) => {
                let mut got = e.to_vec();
                if d < got.len() {
                    got[d] = len;
                }
                self.shape_error(mismatch(s, &got, e, "the param"));
                None
            }
            (sh, e) => Some(sh.or_else(|| e.map(<[u64]>::to_vec))),
        }
    }

    fn fuse(
        &mut self,
        s: &'a ast::Source,
        dim: &ast::Expr,
        parts: &'a [ast::Source],
        expected: Option<&[u64]>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<(ir::Source, Option<Shape>)> {
        let d = self.dim(dim, ctx)?;
        let mut nodes = Vec::with_capacity(parts.len());
        let mut shapes = Vec::with_capacity(parts.len());
        for p in parts {
            let (n, sh) = self.source_shaped(p, None, ctx)?;
            nodes.push(n);
            shapes.push(sh);
        }
        // The reference for off-dim sizes: the param, else the first known part.
        let reference: Option<Shape> = expected
            .map(<[u64]>::to_vec)
            .or_else(|| shapes.iter().flatten().next().cloned());
        if let Some(r) = &reference {
            if d >= r.len() {
                self.diags.push(dim_error(dim, d, r.len()));
                return None;
            }
            for (p, sh) in parts.iter().zip(&shapes) {
                let Some(sh) = sh else { continue };
                let off_dim_ok = sh.len() == r.len()
                    && sh
                        .iter()
                        .zip(r)
                        .enumerate()
                        .all(|(i, (a, b))| i == d || a == b);
                if !off_dim_ok {
                    self.shape_error(
                        Diagnostic::new(
                            Code::E0403,
                            format!(
                                "fuse part is {} but the fused tensor is {} off dim {d}",
                                show(sh),
                                show(r)
                            ),
                        )
                        .at(p.span, format!("{} does not match off dim {d}", show(sh)))
                        .with_label(dim.span, format!("fused along dim {d}")),
                    );
                    return None;
                }
            }
        }
        let Some(known) = shapes
            .iter()
            .flatten()
            .try_fold(0u64, |n, sh| n.checked_add(sh[d]))
        else {
            self.shape_error(
                Diagnostic::new(
                    Code::E0411,
                    format!("the parts' sizes along dim {d} overflow 64 bits"),
                )
                .at(s.span, "this fuse"),
            );
            return None;
        };
        let unknown: Vec<usize> = (0..parts.len()).filter(|&i| shapes[i].is_none()).collect();
        if let Some(e) = expected {
            let target = e[d];
            match unknown.as_slice() {
                [] if known != target => {
                    self.shape_error(fuse_sum(s, dim, d, known, target, &shapes));
                    return None;
                }
                [one] => {
                    if known >= target {
                        self.shape_error(fuse_sum(s, dim, d, known, target, &shapes));
                        return None;
                    }
                    let mut derived = e.to_vec();
                    derived[d] = target - known;
                    let (n, sh) = self.source_shaped(&parts[*one], Some(&derived), ctx)?;
                    nodes[*one] = n;
                    shapes[*one] = sh;
                }
                _ => {}
            }
        }
        let shape = match (expected, &reference) {
            (Some(e), _) => Some(e.to_vec()),
            (None, Some(r)) if unknown.is_empty() => {
                let mut x = r.clone();
                x[d] = known;
                Some(x)
            }
            _ => None,
        };
        Some((
            ir::Source::Fuse {
                dim: d,
                parts: nodes,
            },
            shape,
        ))
    }

    /// Resolves `tied(a.b.c)` from the current declaration: its IR path and shape.
    fn tied(
        &mut self,
        path: &'a Spanned<Vec<String>>,
        ctx: &Ctx<'a, '_>,
    ) -> Option<(String, Shape)> {
        let program = self.program();
        let mut decl = program.decl(ctx.decl);
        let mut scope = ctx.scope.clone();
        let mut ir_path = ctx.path.to_string();
        for (i, seg) in path.node.iter().enumerate() {
            ir_path = crate::check::join_name(&ir_path, seg);
            match program.member(program.lookup(&decl.name.node)?, seg)? {
                ast::Member::Param(p) if i + 1 == path.node.len() => {
                    let shape = self.shape(&p.shape, &scope)?;
                    return Some((ir_path, shape));
                }
                ast::Member::Instance(inst) if inst.repeat.is_none() => {
                    decl = program.decl(program.lookup(&inst.decl.node)?);
                    scope.frames.push(super::frame(decl, Vec::new()));
                }
                _ => {
                    self.diags.push(
                        Diagnostic::new(
                            Code::E0207,
                            format!("cannot tie to `{}`", path.node.join(".")),
                        )
                        .at(
                            path.span,
                            format!("`{seg}` is a repeated instance, not one param"),
                        )
                        .with_help("tie to a param reachable through plain instances"),
                    );
                    return None;
                }
            }
        }
        None
    }
}

pub(super) fn mismatch(s: &ast::Source, got: &[u64], want: &[u64], what: &str) -> Diagnostic {
    Diagnostic::new(
        Code::E0407,
        format!("source gives {} but {what} is {}", show(got), show(want)),
    )
    .at(s.span, format!("this is {}", show(got)))
}

fn dim_error(e: &ast::Expr, d: usize, rank: usize) -> Diagnostic {
    Diagnostic::new(
        Code::E0408,
        format!("dim {d} is out of range for a tensor of rank {rank}"),
    )
    .at(e.span, format!("valid dims are 0..{rank}"))
}

fn fuse_sum(
    s: &ast::Source,
    dim: &ast::Expr,
    d: usize,
    known: u64,
    target: u64,
    shapes: &[Option<Shape>],
) -> Diagnostic {
    let parts: Vec<String> = shapes
        .iter()
        .map(|sh| sh.as_ref().map_or("?".to_string(), |x| x[d].to_string()))
        .collect();
    Diagnostic::new(
        Code::E0403,
        format!("fuse parts add up to {known} on dim {d}, but the param has {target}"),
    )
    .at(s.span, format!("parts: {}", parts.join(" + ")))
    .with_label(dim.span, format!("fused along dim {d}"))
}
