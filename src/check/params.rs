//! Module parameters at an instantiation: the arguments, evaluated in the caller's
//! scope, or the defaults, evaluated at the top level (lexically: a default never sees
//! the caller's `config` items). An argument whose type differs from its literal
//! default's is E0431; a default of `null` or one computed from config accepts any type. Names and arity are checked earlier,
//! in [`crate::resolve`].
//!
//! Also: `{param}` holes in a declaration's names (`"{gate}.weight"`) are filled here,
//! so the IR and everything after it see plain names.

use super::eval::{self, Scope};
use super::value::Val;
use super::{Value, Walker};
use crate::diag::{Code, Diagnostic};
use crate::source::{Span, Spanned};
use crate::syntax::ast;

impl<'a> Walker<'a> {
    /// The values of `decl`'s parameters for the instance `i`; `None` once a problem
    /// is reported.
    pub(super) fn module_args(
        &mut self,
        i: &'a ast::Instance,
        decl: &'a ast::Decl,
        caller: &Scope<'a>,
    ) -> Option<Vec<(String, Val)>> {
        let mut out = Vec::with_capacity(decl.params.len());
        let mut ok = true;
        for p in &decl.params {
            let top = Scope::default();
            let arg = i.args.iter().find(|a| a.name.node == p.name.node);
            // A default the argument replaces is evaluated only when it reads no config:
            // its type is then the parameter's. One that reads config is not evaluated,
            // so it can name a key that this config lacks.
            let default = match &p.default {
                Some(d) if arg.is_none() || is_literal(d) => {
                    let v = self.evaluate(d, &top);
                    let Some(v) = self.report(v, &top) else {
                        ok = false;
                        continue;
                    };
                    Some(v)
                }
                _ => None,
            };
            let value = match (arg, default) {
                (Some(a), default) => {
                    let v = self.evaluate(&a.value, caller);
                    let Some(v) = self.report(v, caller) else {
                        ok = false;
                        continue;
                    };
                    if let Some(d) = default.filter(|d| !same_type(&d.value, &v.value)) {
                        self.diags.push(ill_typed(p, a, &d, &v));
                        ok = false;
                        continue;
                    }
                    v
                }
                (None, Some(d)) => d,
                // Resolve reported the missing argument (E0233).
                (None, None) => {
                    ok = false;
                    continue;
                }
            };
            out.push((p.name.node.clone(), value));
        }
        ok.then_some(out)
    }

    /// `t` with its `{param}` holes replaced by the innermost declaration's parameter
    /// values; holes naming anything else (index variables) are left for later.
    pub(super) fn fill_params(
        &mut self,
        t: &Spanned<String>,
        scope: &Scope<'a>,
    ) -> Option<Spanned<String>> {
        if !t.node.contains('{') {
            return Some(t.clone());
        }
        let mut out = String::with_capacity(t.node.len());
        let mut rest = t.node.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break; // An unclosed hole is reported by the template check.
            };
            out.push_str(&rest[..open]);
            let hole = &rest[open..=open + close];
            match scope.param(&hole[1..hole.len() - 1]) {
                Some(v) => match &v.value {
                    Value::Str(s) => out.push_str(s),
                    Value::Int(n) => out.push_str(&n.to_string()),
                    _ => {
                        let d = eval::type_error(t.span, "a string or an integer", v)
                            .with_note("a parameter in a name is written into the name");
                        self.diags.push(d);
                        return None;
                    }
                },
                None => out.push_str(hole),
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        Some(Spanned::new(out, t.span))
    }
}

fn is_literal(e: &ast::Expr) -> bool {
    use ast::ExprKind as K;
    match &e.node {
        K::Int(_) | K::Float(_) | K::Str(_) | K::Bool(_) | K::Null => true,
        K::Unary(ast::UnOp::Neg, inner) => matches!(inner.node, K::Int(_) | K::Float(_)),
        _ => false,
    }
}

fn same_type(a: &Value, b: &Value) -> bool {
    *a == Value::Null || std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn ill_typed(p: &ast::DeclParam, a: &ast::Arg, default: &Val, got: &Val) -> Diagnostic {
    let span: Span = a.value.span;
    Diagnostic::new(
        Code::E0431,
        format!(
            "argument `{}` is a {}, but its default is a {}",
            a.name.node,
            got.value.type_name(),
            default.value.type_name()
        ),
    )
    .at(span, format!("this is {}", got.value))
    .with_label(
        p.default.as_ref().map_or(p.name.span, |d| d.span),
        format!("the default, {}", default.value),
    )
    .with_labels(got.labels())
}
