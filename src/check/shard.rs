//! Shard rules: a param's `shard …` attribute → the IR's [`ir::shard::Shard`].
//!
//! The rules are checked against the param's evaluated shape, with no TP or EP size in
//! view: the kinds are known and given once, the split dim exists, the `parts` add up to
//! it and the `unit` divides every part (E0452 otherwise). Whether the sizes of a load
//! divide is [`crate::plan::shard::check_sizes`]' business, E0450 / E0451.

use super::{Scope, Value, Walker};
use crate::diag::{Code, Diagnostic};
use crate::ir::shard::{Shard, TpKind, TpSplit};
use crate::source::Span;
use crate::syntax::ast;

impl<'a> Walker<'a> {
    /// The param's rule set, or `None` after reporting a problem.
    pub(super) fn shard(
        &mut self,
        rules: &'a [ast::ShardRule],
        scope: &Scope<'a>,
        shape: &[u64],
    ) -> Option<Shard> {
        let mut out = Shard {
            experts: false,
            tp: None,
        };
        let mut tp_rule = None;
        for r in rules {
            match r.kind.node.as_str() {
                "experts" if out.experts => return self.bad_rule(r.kind.span, "`experts` twice"),
                "experts" => {
                    if let Some(a) = r.args.first() {
                        return self.bad_rule(a.name.span, "`experts` takes no arguments");
                    }
                    out.experts = true;
                }
                "column" | "row" if tp_rule.is_some() => {
                    return self.bad_rule(r.kind.span, "a param splits under TP one way");
                }
                "column" => tp_rule = Some((TpKind::Column, r)),
                "row" => tp_rule = Some((TpKind::Row, r)),
                other => {
                    let msg = format!("`{other}` is not a shard rule");
                    return self.bad_rule(r.kind.span, &msg);
                }
            }
        }
        if let Some((kind, rule)) = tp_rule {
            let dim = usize::from(out.experts) + usize::from(kind == TpKind::Row);
            out.tp = Some(self.tp_split(kind, dim, rule, scope, shape)?);
        } else if out.experts && shape.len() < 2 {
            return self.bad_rule(rules[0].kind.span, "`experts` needs a stacked [E, …] param");
        }
        Some(out)
    }

    fn tp_split(
        &mut self,
        kind: TpKind,
        dim: usize,
        rule: &'a ast::ShardRule,
        scope: &Scope<'a>,
        shape: &[u64],
    ) -> Option<TpSplit> {
        let Some(&len) = shape.get(dim) else {
            let msg = format!(
                "a {} split is on dim {dim}, and the param has {} dims",
                kind.name(),
                shape.len()
            );
            return self.bad_rule(rule.kind.span, &msg);
        };
        let (mut parts, mut heads, mut unit) = (None, None, 1u64);
        for a in &rule.args {
            match a.name.node.as_str() {
                "parts" => parts = Some(self.positive_list(&a.value, scope)?),
                "heads" => heads = Some(self.positive_list(&a.value, scope)?),
                "unit" => match self.positive_list(&a.value, scope)?.as_slice() {
                    [one] => unit = *one,
                    _ => return self.bad_rule(a.value.span, "`unit` is one integer"),
                },
                other => {
                    let msg = format!("`{other}` is not an argument of `{}`", kind.name());
                    return self.bad_rule(a.name.span, &msg);
                }
            }
        }
        // `heads = [h, kv, kv]` counts the parts in units: `parts = [h·unit, kv·unit, …]`.
        let parts = match (parts, heads) {
            (Some(_), Some(_)) => {
                return self.bad_rule(rule.kind.span, "give `parts` or `heads`, not both");
            }
            (Some(p), None) => p,
            (None, Some(h)) => match h.iter().map(|n| n.checked_mul(unit)).collect() {
                Some(p) => p,
                None => return self.bad_rule(rule.kind.span, "`heads` × `unit` overflows"),
            },
            (None, None) => vec![len],
        };
        let sum = parts.iter().try_fold(0u64, |a, &p| a.checked_add(p));
        if sum != Some(len) {
            let msg = format!("the parts {parts:?} do not add up to dim {dim}, {len}");
            return self.bad_rule(rule.kind.span, &msg);
        }
        if let Some(p) = parts.iter().find(|p| *p % unit != 0) {
            let msg = format!("the unit {unit} does not divide the part {p}");
            return self.bad_rule(rule.kind.span, &msg);
        }
        Some(TpSplit {
            kind,
            dim,
            parts,
            unit,
        })
    }

    /// A positive integer, or a list of them, as a list.
    fn positive_list(&mut self, e: &ast::Expr, scope: &Scope<'a>) -> Option<Vec<u64>> {
        let v = self.evaluate(e, scope);
        let v = self.report(v, scope)?;
        let items = match &v.value {
            Value::List(items) => items.clone(),
            one => vec![one.clone()],
        };
        let ints: Option<Vec<u64>> = items
            .iter()
            .map(|i| match i {
                Value::Int(n) => u64::try_from(*n).ok().filter(|n| *n > 0),
                _ => None,
            })
            .collect();
        match ints {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                let msg = format!("expected positive integers, found {}", v.value);
                self.bad_rule(e.span, &msg)
            }
        }
    }

    fn bad_rule<T>(&mut self, span: Span, message: &str) -> Option<T> {
        self.diags.push(
            Diagnostic::new(Code::E0452, format!("invalid shard rule: {message}"))
                .at(span, "here")
                .with_help(
                    "write `shard column(parts = [...], unit = ...)`, `shard row`, \
                     or `shard experts` (see `wmapc explain E0452`)",
                ),
        );
        None
    }
}
