//! Repeated instances: `layers: Block[layer in 0..n]` → the distinct bodies and the
//! indices that have each.
//!
//! A body is walked once per distinct *signature*, not once per index. A body that
//! reads no index variable is the same at every index and is walked once. One that
//! does is recorded with its trace (the evaluations that read the variable, with their
//! values); at a later index the trace is replayed, and if every reading agrees the
//! earlier body is reused. Memory and time grow with the distinct bodies, not with the
//! count, which is capped ([`ir::limits::MAX_REPEAT`]) along with visits and walks
//! across nested repeats (E0412).

use std::collections::BTreeMap;

use super::eval::Binding;
use super::{frame, join_name, value, Ctx, Scope, Value, Walker};
use crate::diag::{Code, Diagnostic};
use crate::ir;
use crate::ir::limits::{MAX_REPEAT, MAX_TENSORS};
use crate::resolve::DeclId;
use crate::syntax::ast;

/// Distinct repeated bodies walked in one check, across all repeats: as many as one
/// maximal repeat whose every index differs. A body that differs at every index of
/// nested repeats would otherwise be walked count × count times.
const MAX_WALKS: u64 = ir::limits::MAX_REPEAT;

/// Traces kept per repeated instance for replay (see [`Trace`]). Real models have one
/// to four kinds of layer.
const MAX_TRACES: usize = 16;

/// The evaluations in one walk of a repeated body that read its index variable, in
/// order. The walk is a function of their values: an index at which every one of them
/// gives the same value has the same body (its *signature* matches).
pub(super) struct Trace<'a> {
    pub(super) var: String,
    pub(super) entries: Vec<Reading<'a>>,
}

pub(super) struct Reading<'a> {
    pub(super) expr: ast::Expr,
    pub(super) scope: Scope<'a>,
    pub(super) value: Value,
}

/// What the caller's side of a repeated instance gives every index: its prefix with
/// parameter holes filled, and the values of the declaration's parameters.
pub(super) struct Call<'s> {
    pub(super) at: Option<&'s crate::source::Spanned<String>>,
    pub(super) params: Vec<(String, value::Val)>,
}

/// The distinct bodies of one repeated instance, built index by index: equal bodies
/// share one variant, so memory grows with the distinct bodies, not with the count.
#[derive(Default)]
struct Variants {
    list: Vec<ir::Variant>,
    /// Each variant's position in `list`, keyed by its kind and serialized body.
    by_body: BTreeMap<(String, String), usize>,
    /// The variant of a body that reads no index variable: every later index has it.
    shared: Option<usize>,
}

impl Variants {
    fn insert(&mut self, body: ir::Body, kind: String) -> usize {
        // The JSON text is a total, cheap key for a body; `ir::Body` is not `Ord`.
        let text = serde_json::to_string(&body).unwrap_or_default();
        let next = self.list.len();
        let at = *self.by_body.entry((kind.clone(), text)).or_insert(next);
        if at == next {
            self.list.push(ir::Variant {
                indices: Vec::new(),
                kind,
                body,
            });
        }
        at
    }

    /// Adds `idx` to variant `at`, extending its last range when adjacent.
    fn add(&mut self, at: usize, idx: i64) {
        let ranges = &mut self.list[at].indices;
        match ranges.last_mut() {
            Some(last) if last[1] == idx => last[1] = idx + 1,
            _ => ranges.push([idx, idx + 1]),
        }
    }
}

impl<'a> Walker<'a> {
    /// The variants of a repeated instance; `inst` arrives with its name and prefix.
    pub(super) fn repeat(
        &mut self,
        i: &'a ast::Instance,
        rep: &'a ast::Repeat,
        ctx: &Ctx<'a, '_>,
        child: DeclId,
        mut inst: ir::Instance,
        call: Call<'_>,
    ) -> Option<ir::Instance> {
        let child_decl = self.program().decl(child);
        let (start, end, count, end_val) = self.repeat_range(rep, ctx.scope)?;
        let var = rep.var.node.clone();
        inst.repeat = Some(ir::Repeat {
            var: var.clone(),
            start,
            count,
        });
        let path = format!("{}.{{{var}}}", join_name(ctx.path, &i.name.node));
        let mut variants = Variants::default();
        let mut traces: Vec<(Vec<Reading<'a>>, usize)> = Vec::new();
        for idx in start..end {
            if !self.visit(rep, &end_val) {
                return None;
            }
            let child_frame = frame(child_decl, vec![(var.clone(), Binding::Index(idx))]);
            let mut scope = Scope {
                frames: [ctx.scope.frames.clone(), vec![child_frame]].concat(),
            };
            if idx == start {
                if let Some(at) = call.at {
                    self.template(at, &scope);
                }
            }
            let on = match &i.when {
                Some(w) => self.condition(w, &scope),
                None => Some(true),
            };
            if on != Some(true) {
                continue;
            }
            // Parameters belong to the body, not to the caller's `when` above.
            if let Some(f) = scope.frames.last_mut() {
                f.params.clone_from(&call.params);
            }
            // A body that read no index variable is the same at every index: it is
            // checked once, not once per layer. One that did is the same as an earlier
            // one whenever the readings of its trace agree.
            if let Some(shared) = variants.shared {
                variants.add(shared, idx);
                continue;
            }
            let frame_at = ctx.scope.frames.len();
            if let Some(at) = self.replay(&traces, &var, frame_at, idx) {
                variants.add(at, idx);
                continue;
            }
            if !self.walk(rep, &end_val) {
                return None;
            }
            let errors_before = self.diags.count(crate::diag::Severity::Error);
            let (body, kind, trace) = self.traced_body(child, &scope, &inst.prefix, &path, &var);
            let at = variants.insert(body, kind);
            match trace {
                // Replaying costs every kept trace at every index: keep a few, so that a
                // body that differs at every index costs a walk per index, not a walk
                // plus a replay of all earlier indices.
                Some(t) if traces.len() < MAX_TRACES => traces.push((t, at)),
                Some(_) => {}
                None => variants.shared = Some(at),
            }
            variants.add(at, idx);
            // One broken layer is usually every layer broken the same way: stop early
            // rather than repeat the same diagnostic for all of them.
            if self.diags.count(crate::diag::Severity::Error) > errors_before {
                break;
            }
        }
        inst.variants = variants.list;
        Some(inst)
    }

    /// The repeat's start, end, count and the end's value (for labels).
    fn repeat_range(
        &mut self,
        rep: &ast::Repeat,
        scope: &Scope<'a>,
    ) -> Option<(i64, i64, u64, value::Val)> {
        let (start, _) = self.int(&rep.range.start, scope)?;
        let (end, end_val) = self.int(&rep.range.end, scope)?;
        if end < start {
            self.diags.push(
                Diagnostic::new(
                    Code::E0401,
                    format!("repeat range {start}..{end} runs backwards"),
                )
                .at(rep.range.end.span, format!("this is {end}"))
                .with_labels(end_val.labels()),
            );
            return None;
        }
        let count = self.count(start, end, &rep.range, &end_val, "repeat", MAX_REPEAT)?;
        Some((start, end, count, end_val))
    }

    /// Walks the body at one index under a fresh trace: the body, its kind, and its
    /// readings when it read `var` (`None`: it did not, so it is the same everywhere).
    fn traced_body(
        &mut self,
        child: DeclId,
        scope: &Scope<'a>,
        prefix: &str,
        path: &str,
        var: &str,
    ) -> (ir::Body, String, Option<Vec<Reading<'a>>>) {
        let outer_reads = std::mem::take(&mut self.ev.index_reads);
        self.traces.push(Trace {
            var: var.to_string(),
            entries: Vec::new(),
        });
        let body = self.body(child, scope, prefix, path);
        let trace = self.traces.pop().map(|t| t.entries).unwrap_or_default();
        let reads = std::mem::replace(&mut self.ev.index_reads, outer_reads);
        let kind = self.kind(child, &body);
        let read_var = reads.contains(var);
        // Reads of outer variables make the outer body index-dependent too.
        self.ev
            .index_reads
            .extend(reads.into_iter().filter(|r| r != var));
        (body, kind, read_var.then_some(trace))
    }

    /// Counts one full walk of a repeated body (one distinct signature). A walk builds
    /// and compares a whole body, so these are capped far lower than visits.
    fn walk(&mut self, rep: &ast::Repeat, end_val: &value::Val) -> bool {
        self.walks += 1;
        if self.walks <= MAX_WALKS {
            return true;
        }
        if self.walks == MAX_WALKS + 1 {
            self.diags.push(
                Diagnostic::new(
                    Code::E0412,
                    format!("repeated bodies differ in more than {MAX_WALKS} ways"),
                )
                .at(rep.range.end.span, "the limit was reached in this repeat")
                .with_labels(end_val.labels())
                .with_note(
                    "each distinct layer body is checked on its own; so many cannot be meant",
                ),
            );
        }
        false
    }

    /// Counts one repeat index. Nested repeats multiply: past [`MAX_TENSORS`] visits the
    /// model is refused (E0412, once) before the walk can run for hours.
    fn visit(&mut self, rep: &ast::Repeat, end_val: &value::Val) -> bool {
        self.visits += 1;
        if self.visits <= MAX_TENSORS {
            return true;
        }
        if self.visits == MAX_TENSORS + 1 {
            self.diags.push(
                Diagnostic::new(
                    Code::E0412,
                    format!("nested repeats expand to more than {MAX_TENSORS} indices"),
                )
                .at(rep.range.end.span, "the limit was reached in this repeat")
                .with_labels(end_val.labels())
                .with_note(
                    "wmapc caps counts from the config so that a wrong value cannot exhaust memory",
                ),
            );
        }
        false
    }

    /// The variant whose trace gives the same readings with `var` bound to `idx`, if any.
    /// `frame_at` is the scope frame that binds `var`.
    fn replay(
        &mut self,
        traces: &[(Vec<Reading<'a>>, usize)],
        var: &str,
        frame_at: usize,
        idx: i64,
    ) -> Option<usize> {
        traces.iter().find_map(|(readings, at)| {
            let same = readings.iter().all(|r| {
                let mut scope = r.scope.clone();
                if let Some(f) = scope.frames.get_mut(frame_at) {
                    for (_, b) in f.vars.iter_mut().filter(|(n, _)| n == var) {
                        *b = Binding::Index(idx);
                    }
                }
                matches!(self.evaluate(&r.expr, &scope), Ok(v) if v.value == r.value)
            });
            same.then_some(*at)
        })
    }

    /// The element count of `start..end`, within `max` (E0412).
    pub(super) fn count(
        &mut self,
        start: i64,
        end: i64,
        range: &ast::Range,
        end_val: &value::Val,
        what: &str,
        max: u64,
    ) -> Option<u64> {
        let Some(count) = end.checked_sub(start) else {
            self.diags
                .push(super::eval::overflow(range.end.span, end_val));
            return None;
        };
        // `end >= start` was checked, so the difference is not negative.
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        if count > max {
            self.diags.push(
                Diagnostic::new(
                    Code::E0412,
                    format!("{what} over {start}..{end} has {count} indices, more than {max}"),
                )
                .at(range.end.span, format!("this is {end}"))
                .with_labels(end_val.labels())
                .with_note(
                    "wmapc caps counts from the config so that a wrong value cannot exhaust memory",
                ),
            );
            return None;
        }
        Some(count)
    }
}
