//! Validation of an IR that did not come from this compiler's checker.
//!
//! Input: JSON text claiming to be an [`Ir`]. Output: the IR, or E0413 naming the first
//! problem. After success the IR holds what the checker guarantees and the planner
//! relies on: the current [`IR_VERSION`]; positive shapes whose element counts are
//! within [`limits::MAX_NUMEL`]; repeat and stack counts within their caps, with index
//! ranges inside their repeat and disjoint; slices, splits and dims that make sense;
//! offload-group variables that are bound; shard rules that fit their shapes; at most
//! [`limits::MAX_TENSORS`] tensors.
//! It does not check names against a checkpoint; binding does that.

use super::{limits, Body, GroupExpr, Instance, Ir, Param, Source, IR_VERSION};
use crate::diag::{Code, Diagnostic};

/// Parses and validates an IR; every failure is E0413.
pub fn from_json(text: &str) -> Result<Ir, Diagnostic> {
    let ir: Ir = serde_json::from_str(text).map_err(|e| invalid(format!("not IR JSON: {e}")))?;
    validate(&ir).map_err(invalid)?;
    Ok(ir)
}

fn invalid(message: String) -> Diagnostic {
    Diagnostic::new(Code::E0413, format!("invalid IR: {message}"))
}

/// Checks the invariants listed in the module doc.
pub fn validate(ir: &Ir) -> Result<(), String> {
    if ir.ir_version != IR_VERSION {
        return Err(format!(
            "`ir_version` is {}, this wmapc reads {IR_VERSION}",
            ir.ir_version
        ));
    }
    body(&ir.root, "", &mut Vec::new())?;
    let tensors = tensor_count(&ir.root);
    if tensors > limits::MAX_TENSORS {
        return Err(format!(
            "it names {tensors} tensors, more than {}",
            limits::MAX_TENSORS
        ));
    }
    Ok(())
}

/// `vars`: the repeat variables in scope.
fn body(b: &Body, path: &str, vars: &mut Vec<String>) -> Result<(), String> {
    for p in &b.params {
        param(p, &format!("{path}{}", p.name), vars)?;
    }
    for inst in &b.instances {
        instance(inst, &format!("{path}{}.", inst.name), vars)?;
    }
    Ok(())
}

fn instance(inst: &Instance, path: &str, vars: &mut Vec<String>) -> Result<(), String> {
    let Some(r) = &inst.repeat else {
        if inst.variants.len() != 1 {
            return Err(format!("{path}: a plain instance has one variant"));
        }
        return inst
            .variants
            .iter()
            .try_for_each(|v| body(&v.body, path, vars));
    };
    if r.count > limits::MAX_REPEAT {
        return Err(format!("{path}: repeat count {} is over the cap", r.count));
    }
    let end = i64::try_from(r.count)
        .ok()
        .and_then(|c| r.start.checked_add(c))
        .ok_or_else(|| format!("{path}: repeat range overflows"))?;
    let mut ranges: Vec<[i64; 2]> = inst
        .variants
        .iter()
        .flat_map(|v| v.indices.iter().copied())
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1][0] < w[0][1] {
            return Err(format!("{path}: index ranges overlap"));
        }
    }
    if let Some([a, b]) = ranges
        .iter()
        .find(|[a, b]| a >= b || *a < r.start || *b > end)
    {
        return Err(format!(
            "{path}: index range {a}..{b} is empty or outside the repeat"
        ));
    }
    let count = usize::try_from(r.count).unwrap_or(usize::MAX);
    if !inst.kinds.is_empty() && inst.kinds.len() != count {
        return Err(format!(
            "{path}: {} kinds for {count} indices",
            inst.kinds.len()
        ));
    }
    vars.push(r.var.clone());
    let result = inst
        .variants
        .iter()
        .try_for_each(|v| body(&v.body, &format!("{path}{{{}}}.", r.var), vars));
    vars.pop();
    result
}

fn param(p: &Param, path: &str, vars: &[String]) -> Result<(), String> {
    shape(&p.shape).map_err(|e| format!("{path}: {e}"))?;
    source(&p.source).map_err(|e| format!("{path}: {e}"))?;
    if let Some(sh) = &p.shard {
        shard(sh, &p.shape).map_err(|e| format!("{path}: shard: {e}"))?;
    }
    if let Some(g) = &p.offload_group {
        let mut bound: Vec<&str> = vars.iter().map(String::as_str).collect();
        bound.extend(g.per.iter().map(String::as_str));
        unbound(&g.expr, &bound)
            .map_err(|v| format!("{path}: offload group reads unbound `{v}`"))?;
    }
    Ok(())
}

/// The rule fits the shape: the split dim exists, its parts add up to it, the unit
/// divides every part (what `check` established for a compiled IR).
fn shard(sh: &super::shard::Shard, shape: &[u64]) -> Result<(), String> {
    if sh.experts && shape.len() < 2 {
        return Err("`experts` needs a stacked param".into());
    }
    let Some(tp) = &sh.tp else { return Ok(()) };
    let first = usize::from(sh.experts);
    let want = first + usize::from(tp.kind == super::shard::TpKind::Row);
    if tp.dim != want || tp.dim >= shape.len() {
        return Err(format!("a {} split on dim {}", tp.kind.name(), tp.dim));
    }
    let sum = tp.parts.iter().try_fold(0u64, |a, &p| a.checked_add(p));
    if sum != Some(shape[tp.dim]) || tp.parts.is_empty() {
        return Err(format!(
            "parts {:?} for a dim of {}",
            tp.parts, shape[tp.dim]
        ));
    }
    if tp.unit == 0 || tp.parts.iter().any(|p| p % tp.unit != 0) {
        return Err(format!("unit {} for parts {:?}", tp.unit, tp.parts));
    }
    Ok(())
}

fn shape(s: &[u64]) -> Result<(), String> {
    if s.contains(&0) {
        return Err(format!("shape {s:?} has a zero dimension"));
    }
    match super::numel(s) {
        Some(n) if n <= limits::MAX_NUMEL => Ok(()),
        _ => Err(format!("shape {s:?} is too large")),
    }
}

fn source(s: &Source) -> Result<(), String> {
    match s {
        Source::Tensor {
            shape: Some(sh), ..
        } => shape(sh),
        Source::Tensor { shape: None, .. } | Source::Tied { .. } => Ok(()),
        Source::Fp8Blocks { block, .. } if block.contains(&0) => {
            Err("an FP8 block of size 0".into())
        }
        Source::Fp8Blocks { shape: Some(s), .. } if s.len() != 2 => {
            Err(format!("an FP8 block source of rank {}", s.len()))
        }
        Source::Fp8Blocks { shape: Some(s), .. } => shape(s),
        Source::Fp8Blocks { shape: None, .. } => Ok(()),
        Source::Mxfp4 { shape: s, .. } if s.len() < 2 || s.last().is_some_and(|c| c % 32 != 0) => {
            Err(format!("an MXFP4 source of shape {s:?}"))
        }
        Source::Mxfp4 { shape: s, .. } => shape(s),
        Source::Nvfp4 { shape: s, .. } if s.len() < 2 || s.last().is_some_and(|c| c % 16 != 0) => {
            Err(format!("an NVFP4 source of shape {s:?}"))
        }
        Source::Nvfp4 { shape: s, .. } => shape(s),
        Source::Bnb4 { blocksize: 0, .. } => Err("a bnb4 blocksize of 0".into()),
        Source::Bnb4 { shape: Some(s), .. } => shape(s),
        Source::Bnb4 { shape: None, .. } => Ok(()),
        Source::Try { options } if options.is_empty() => Err("an empty `try`".into()),
        Source::Try { options } => options.iter().try_for_each(source),
        Source::Fuse { parts, .. } if parts.is_empty() => Err("an empty `fuse`".into()),
        Source::Fuse { parts, .. } => parts.iter().try_for_each(source),
        Source::Stack {
            start, count, part, ..
        }
        | Source::Stacked {
            start,
            count,
            source: part,
            ..
        } => {
            let end = i64::try_from(*count)
                .ok()
                .and_then(|c| start.checked_add(c));
            if *count == 0 || *count > limits::MAX_STACK || end.is_none() {
                return Err(format!("stack count {count} from {start} is out of range"));
            }
            source(part)
        }
        Source::Slice {
            start,
            end,
            step,
            source: inner,
            ..
        } => {
            if start >= end || *step == 0 {
                return Err(format!("slice {start}..{end} step {step} is empty"));
            }
            source(inner)
        }
        Source::Split {
            part,
            of,
            source: inner,
            ..
        } => {
            if part >= of {
                return Err(format!("split part {part} of {of} does not exist"));
            }
            source(inner)
        }
        Source::Reshape {
            shape: sh,
            source: inner,
        } => {
            shape(sh)?;
            source(inner)
        }
        Source::Squeeze { source: inner, .. } => source(inner),
        Source::Transpose { source: inner, .. } => source(inner),
    }
}

/// The first variable `e` reads that is not in `bound`.
fn unbound(e: &GroupExpr, bound: &[&str]) -> Result<(), String> {
    match e {
        GroupExpr::Int(_) => Ok(()),
        GroupExpr::Var(v) if bound.contains(&v.as_str()) => Ok(()),
        GroupExpr::Var(v) => Err(v.clone()),
        GroupExpr::Neg(a) => unbound(a, bound),
        GroupExpr::Op(_, a, b) => unbound(a, bound).and_then(|()| unbound(b, bound)),
    }
}

/// Checkpoint tensors a body names once repeats and stacks are expanded. Saturating:
/// the result is only compared with a cap.
pub fn tensor_count(body: &Body) -> u64 {
    let params = body
        .params
        .iter()
        .fold(0u64, |n, p| n.saturating_add(source_tensors(&p.source)));
    body.instances.iter().fold(params, |n, inst| {
        inst.variants.iter().fold(n, |n, v| {
            let width = match inst.repeat {
                None => 1,
                Some(_) => v.indices.iter().fold(0u64, |w, [a, b]| {
                    w.saturating_add(u64::try_from(b.saturating_sub(*a)).unwrap_or(0))
                }),
            };
            n.saturating_add(width.saturating_mul(tensor_count(&v.body)))
        })
    })
}

/// Checkpoint tensors one source names; for `try`, its largest option.
fn source_tensors(s: &Source) -> u64 {
    match s {
        Source::Tensor { .. } => 1,
        Source::Fp8Blocks { .. } => 2,
        Source::Bnb4 { .. } => 6,
        Source::Mxfp4 { .. } => 2,
        Source::Nvfp4 { .. } => 3,
        Source::Tied { .. } => 0,
        Source::Try { options } => options.iter().map(source_tensors).max().unwrap_or(0),
        Source::Fuse { parts, .. } => parts
            .iter()
            .fold(0u64, |n, p| n.saturating_add(source_tensors(p))),
        Source::Stack { count, part, .. } => count.saturating_mul(source_tensors(part)),
        Source::Stacked { source, .. } => source_tensors(source),
        Source::Slice { source, .. }
        | Source::Split { source, .. }
        | Source::Reshape { source, .. }
        | Source::Squeeze { source, .. }
        | Source::Transpose { source, .. } => source_tensors(source),
    }
}
