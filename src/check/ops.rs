//! Binary operators on values: checked integer arithmetic, exact division, comparisons.

use std::cmp::Ordering;

use super::eval::{overflow, type_error};
use super::value::{Val, Value};
use crate::diag::{Code, Diagnostic};
use crate::ir::{IntError, IntOp};
use crate::source::Span;
use crate::syntax::ast::BinOp;

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn labels_of(x: &Val, y: &Val) -> Vec<crate::diag::Label> {
    let mut l = x.labels();
    l.extend(y.labels());
    l
}

/// Applies `op`; `and`/`or` are handled by the caller (they short-circuit).
pub fn apply(
    op: BinOp,
    x: &Val,
    y: &Val,
    sa: Span,
    sb: Span,
    span: Span,
) -> Result<Value, Diagnostic> {
    use BinOp::*;
    match op {
        Add | Sub | Mul | Div | Mod => arith(op, x, y, sa, sb, span),
        Eq => Ok(Value::Bool(equal(&x.value, &y.value))),
        Ne => Ok(Value::Bool(!equal(&x.value, &y.value))),
        Lt | Le | Gt | Ge => {
            let ord = match (&x.value, &y.value) {
                (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
                (a, b) => match (num(a), num(b)) {
                    (Some(a), Some(b)) => a.partial_cmp(&b),
                    (None, _) => return Err(type_error(sa, "a number or string", x)),
                    (_, None) => return Err(type_error(sb, "a number or string", y)),
                },
            };
            let Some(ord) = ord else {
                return Ok(Value::Bool(false)); // NaN compares false, as in IEEE.
            };
            Ok(Value::Bool(match op {
                Lt => ord == Ordering::Less,
                Le => ord != Ordering::Greater,
                Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }))
        }
        In | NotIn => {
            let found = match (&x.value, &y.value) {
                (needle, Value::List(items)) => items.iter().any(|i| equal(needle, i)),
                (Value::Str(n), Value::Str(h)) => h.contains(n.as_str()),
                (_, Value::Str(_)) => return Err(type_error(sa, "a string", x)),
                _ => return Err(type_error(sb, "a list or string", y)),
            };
            Ok(Value::Bool(found == (op == In)))
        }
        And | Or => Err(Diagnostic::new(
            Code::E0901,
            "`and`/`or` reached apply; this is a bug in wmapc",
        )
        .at(span, "here")),
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn arith(op: BinOp, x: &Val, y: &Val, sa: Span, sb: Span, span: Span) -> Result<Value, Diagnostic> {
    match (&x.value, &y.value) {
        (Value::Int(a), Value::Int(b)) => {
            let both = Val::plain(Value::Null)
                .with_origins(&x.origins)
                .with_origins(&y.origins);
            let int_op = match op {
                BinOp::Add => IntOp::Add,
                BinOp::Sub => IntOp::Sub,
                BinOp::Mul => IntOp::Mul,
                BinOp::Div => IntOp::Div,
                _ => IntOp::Mod,
            };
            int_op.apply(*a, *b).map(Value::Int).map_err(|e| match e {
                IntError::DivisionByZero => Diagnostic::new(Code::E0409, "division by zero")
                    .at(sb, "this is 0")
                    .with_labels(labels_of(x, y)),
                IntError::Inexact => {
                    Diagnostic::new(Code::E0402, format!("{a} / {b} is not a whole number"))
                        .at(span, format!("{a} is not divisible by {b}"))
                        .with_labels(labels_of(x, y))
                        .with_help("shapes must divide exactly; check the config values")
                }
                IntError::Overflow => overflow(span, &both),
            })
        }
        (a, b) => match (num(a), num(b)) {
            (Some(a), Some(b)) => Ok(Value::Float(match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
                _ => a % b,
            })),
            (None, _) => Err(type_error(sa, "a number", x)),
            (_, None) => Err(type_error(sb, "a number", y)),
        },
    }
}
