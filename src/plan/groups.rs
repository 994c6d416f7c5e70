//! Offload groups: the IR's group expression evaluated for concrete indices.
//!
//! A group is named by the repeat indices in scope plus the expression's value, so
//! `offload_group = expert` inside layer 3 names `layer=3/expert=5`: one group per
//! (layer, expert). A stacked param whose expression reads the stack variable gets one
//! group per slice along its leading dim. `-1` means resident (no group).

use std::collections::BTreeMap;

use super::Offload;
use crate::ir;
use crate::source::FileId;
use crate::syntax::ast::{BinOp, ExprKind, UnOp};

pub fn offload(
    g: &ir::OffloadGroup,
    source: &ir::Source,
    env: &[(String, i64)],
    shape: &[u64],
    config: &BTreeMap<String, serde_json::Value>,
) -> Option<Offload> {
    let prefix: Vec<String> = env.iter().map(|(v, i)| format!("{v}={i}")).collect();
    let label = |value: i64| {
        let name = if g
            .expr
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !g.expr.starts_with(|c: char| c.is_ascii_digit())
        {
            g.expr.as_str()
        } else {
            "group"
        };
        let mut parts = prefix.clone();
        parts.push(format!("{name}={value}"));
        parts.join("/")
    };
    let expr = crate::syntax::parse_expr(FileId(0), &g.expr).ok()?;
    match g.per.first() {
        Some(var) => {
            let start = match source {
                ir::Source::Stack { start, .. } => *start,
                _ => 0,
            };
            let count = shape.first().copied().unwrap_or(0) as i64;
            let labels = (0..count)
                .map(|i| {
                    let mut env = env.to_vec();
                    env.push((var.clone(), start + i));
                    match eval(&expr.node, &env, config) {
                        Some(-1) | None => "resident".to_string(),
                        Some(v) => label(v),
                    }
                })
                .collect();
            Some(Offload::PerSlice(labels))
        }
        None => {
            let value = g.value.or_else(|| eval(&expr.node, env, config))?;
            (value != -1).then(|| Offload::Group(label(value)))
        }
    }
}

/// Integer evaluation over index variables and the IR's recorded config values.
fn eval(
    e: &ExprKind,
    env: &[(String, i64)],
    config: &BTreeMap<String, serde_json::Value>,
) -> Option<i64> {
    match e {
        ExprKind::Int(i) => Some(*i),
        ExprKind::Name(path) if path.len() == 1 => env
            .iter()
            .rev()
            .find(|(n, _)| *n == path[0])
            .map(|(_, v)| *v)
            .or_else(|| config.get(&path[0]).and_then(serde_json::Value::as_i64)),
        ExprKind::Unary(UnOp::Neg, a) => eval(&a.node, env, config)?.checked_neg(),
        ExprKind::Binary(op, a, b) => {
            let (x, y) = (eval(&a.node, env, config)?, eval(&b.node, env, config)?);
            match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                BinOp::Div => x.checked_div(y),
                BinOp::Mod => x.checked_rem_euclid(y),
                _ => None,
            }
        }
        _ => None,
    }
}
