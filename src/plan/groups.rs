//! Offload groups: the IR's group expression evaluated for concrete indices.
//!
//! A group is named by the repeat indices in scope plus the expression's value, so
//! `offload_group = expert` inside layer 3 names `layer=3/expert=5`: one group per
//! (layer, expert). A stacked param whose expression reads the stack variable gets one
//! group per slice along its leading dim. `-1` means resident (no group).

use super::Offload;
use crate::ir;

/// The group of a param, or of each slice of a stacked param, at the indices in `env`.
/// An expression that fails to evaluate is an error (E0410 in the plan's report), never
/// a silent fallback to resident.
pub fn offload(
    g: &ir::OffloadGroup,
    source: &ir::Source,
    env: &[(String, i64)],
    shape: &[u64],
) -> Result<Option<Offload>, String> {
    let prefix: Vec<String> = env.iter().map(|(v, i)| format!("{v}={i}")).collect();
    let name = match &g.expr {
        ir::GroupExpr::Var(v) => v.as_str(),
        _ => "group",
    };
    let label = |value: i64| {
        let mut parts = prefix.clone();
        parts.push(format!("{name}={value}"));
        parts.join("/")
    };
    let check = |v: i64| {
        if v < -1 {
            Err(format!("group {v} is negative"))
        } else {
            Ok(v)
        }
    };
    match g.per.first() {
        Some(var) => {
            let (start, count) = ir::OffloadGroup::slices(source, shape);
            let mut env = env.to_vec();
            env.push((var.clone(), start));
            let mut labels = Vec::new();
            for i in 0..count {
                let at = i64::try_from(i)
                    .ok()
                    .and_then(|i| start.checked_add(i))
                    .ok_or_else(|| format!("stack index {start} + {i} overflows"))?;
                if let Some(last) = env.last_mut() {
                    last.1 = at;
                }
                labels.push(match check(g.expr.eval(&env)?)? {
                    -1 => "resident".to_string(),
                    v => label(v),
                });
            }
            Ok(Some(Offload::PerSlice(labels)))
        }
        None => {
            let value = match g.value {
                Some(v) => v,
                None => check(g.expr.eval(env)?)?,
            };
            Ok((value != -1).then(|| Offload::Group(label(value))))
        }
    }
}
