//! Offload groups: an `offload_group = …` expression → the IR's typed [`ir::GroupExpr`].
//!
//! Index and stack variables stay symbolic; every subexpression that reads neither is
//! evaluated now and folded into an integer, so the IR carries no config lookups. The
//! result is then evaluated with [`ir::GroupExpr::eval`], the function the plan uses, at
//! the current indices and at every slice of the param's stack: a group the plan could
//! not compute is E0410 here, not a silently resident expert later.

use super::{collect_names, source, Scope, Value, Walker};
use crate::diag::{Code, Diagnostic};
use crate::ir;
use crate::syntax::ast::{self, BinOp, ExprKind, UnOp};

impl<'a> Walker<'a> {
    /// The param's offload group: `Some(None)` when it is a constant -1 (resident).
    pub(super) fn offload(
        &mut self,
        e: &ast::Expr,
        scope: &Scope<'a>,
        src: &ast::Source,
        source: &ir::Source,
        shape: &[u64],
    ) -> Option<Option<ir::OffloadGroup>> {
        // Stack variables of the source: the group may vary along them.
        let mut stack_vars = Vec::new();
        source::stack_vars(src, &mut stack_vars);
        let mut per: Vec<String> = Vec::new();
        collect_names(e, &mut |n| {
            if stack_vars.iter().any(|v| v == n) && !per.iter().any(|p| p == n) {
                per.push(n.to_string());
            }
        });
        let mut symbolic: Vec<String> = per.clone();
        symbolic.extend(scope.var_names().into_iter().map(str::to_string));
        let expr = self.group_expr(e, scope, &symbolic)?;
        let value = self.group_values(e, &expr, scope, &per, source, shape)?;
        if !expr.has_vars() && value == -1 {
            return Some(None);
        }
        Some(Some(ir::OffloadGroup {
            // A value that depends on the layer would make every layer's body distinct;
            // the plan evaluates such expressions per index instead.
            value: (!expr.has_vars()).then_some(value),
            expr,
            per,
        }))
    }

    /// Builds the typed expression; `vars` are the names that stay symbolic.
    fn group_expr(
        &mut self,
        e: &ast::Expr,
        scope: &Scope<'a>,
        vars: &[String],
    ) -> Option<ir::GroupExpr> {
        let mut reads_var = false;
        collect_names(e, &mut |n| reads_var |= vars.iter().any(|v| v == n));
        if !reads_var {
            return self.group_constant(e, scope).map(ir::GroupExpr::Int);
        }
        let op = |op: BinOp| match op {
            BinOp::Add => Some(ir::IntOp::Add),
            BinOp::Sub => Some(ir::IntOp::Sub),
            BinOp::Mul => Some(ir::IntOp::Mul),
            BinOp::Div => Some(ir::IntOp::Div),
            BinOp::Mod => Some(ir::IntOp::Mod),
            _ => None,
        };
        match &e.node {
            ExprKind::Name(path) if path.len() == 1 => Some(ir::GroupExpr::Var(path[0].clone())),
            ExprKind::Unary(UnOp::Neg, a) => {
                let a = self.group_expr(a, scope, vars)?;
                Some(ir::GroupExpr::Neg(Box::new(a)))
            }
            ExprKind::Binary(o, a, b) if op(*o).is_some() => {
                let a = self.group_expr(a, scope, vars)?;
                let b = self.group_expr(b, scope, vars)?;
                Some(ir::GroupExpr::Op(op(*o)?, Box::new(a), Box::new(b)))
            }
            _ => {
                self.diags.push(
                    Diagnostic::new(
                        Code::E0410,
                        "an offload group combines index variables only with `+ - * / %`",
                    )
                    .at(e.span, "not integer arithmetic over index variables")
                    .with_help("compute the config part in a `config` item; keep the index variables outside it"),
                );
                None
            }
        }
    }

    /// A part of the expression that reads no index variable: its integer value now.
    fn group_constant(&mut self, e: &ast::Expr, scope: &Scope<'a>) -> Option<i64> {
        let outer = std::mem::take(&mut self.ev.index_reads);
        let r = self.ev.eval(e, scope);
        let reads = std::mem::replace(&mut self.ev.index_reads, outer);
        let v = self.report(r, scope)?;
        if let Some(var) = reads.iter().next() {
            // Folding it would freeze the value at the index being checked.
            self.diags.push(
                Diagnostic::new(
                    Code::E0410,
                    format!("offload group reads index variable `{var}` through a `config` item"),
                )
                .at(e.span, "depends on the index indirectly")
                .with_help(format!(
                    "write `{var}` in the `offload_group` expression itself"
                )),
            );
            return None;
        }
        match v.value {
            Value::Int(i) => Some(i),
            other => {
                self.diags.push(
                    Diagnostic::new(
                        Code::E0410,
                        format!(
                            "offload group must be an integer, found {} `{other}`",
                            other.type_name()
                        ),
                    )
                    .at(e.span, "not an integer")
                    .with_help(
                        "use an index variable such as `layer` or `expert`, or -1 for resident",
                    ),
                );
                None
            }
        }
    }

    /// Evaluates the group at the current indices and, when it varies along the stack,
    /// at every slice. Returns the value at the first slice.
    fn group_values(
        &mut self,
        e: &ast::Expr,
        expr: &ir::GroupExpr,
        scope: &Scope<'a>,
        per: &[String],
        source: &ir::Source,
        shape: &[u64],
    ) -> Option<i64> {
        let mut env: Vec<(String, i64)> = scope.indices();
        let var = per.first();
        let slices: Vec<i64> = match var {
            None => vec![0],
            Some(var) => {
                let (start, count) = ir::OffloadGroup::slices(source, shape);
                env.push((var.clone(), start));
                // At most `limits::MAX_STACK` slices: the checker capped the stack.
                (0..count.max(1))
                    .filter_map(|i| i64::try_from(i).ok()?.checked_add(start))
                    .collect()
            }
        };
        let mut first = None;
        for at in slices {
            if let (Some(_), Some(last)) = (var, env.last_mut()) {
                last.1 = at;
            }
            let result = expr.eval(&env).and_then(|v| {
                if v < -1 {
                    Err(format!("group {v} is negative"))
                } else {
                    Ok(v)
                }
            });
            match result {
                Ok(v) => {
                    first.get_or_insert(v);
                }
                Err(why) => {
                    let at_index: Vec<String> =
                        env.iter().map(|(n, i)| format!("{n} = {i}")).collect();
                    self.diags.push(
                        Diagnostic::new(Code::E0410, format!("offload group fails: {why}"))
                            .at(e.span, format!("at {}", at_index.join(", ")))
                            .with_note("groups are numbered from 0; -1 means resident"),
                    );
                    return None;
                }
            }
        }
        first
    }
}
