//! `match` members: the scrutinee's value picks one arm, whose instance is checked as
//! any instance is. A value no arm matches is E0430, naming the expression, the index
//! variables and the value, with the config key it came from: a hybrid whose pattern
//! holds a kind the mapping does not know must not load as a layer with no mixer.

use super::value::Val;
use super::{Ctx, Value, Walker};
use crate::diag::{Code, Diagnostic};
use crate::ir;
use crate::syntax::ast::{self, Pattern};

impl<'a> Walker<'a> {
    pub(super) fn match_instance(
        &mut self,
        m: &'a ast::Match,
        ctx: &Ctx<'a, '_>,
    ) -> Option<ir::Instance> {
        let v = self.evaluate(&m.scrutinee, ctx.scope);
        let v = self.report(v, ctx.scope)?;
        let arm = m
            .arms
            .iter()
            .find(|a| a.patterns.iter().any(|p| matches(&p.node, &v.value)));
        match arm {
            Some(a) => self.instance(&a.instance, ctx),
            None => {
                let indices = ctx.scope.indices();
                self.diags.push(no_arm(m, &v, &indices));
                None
            }
        }
    }
}

/// The kind a match contributes to its body's variant: the chosen arm's name, or
/// `name:Module` when the arms share one name (`mixer:Mamba2Mixer`).
pub(super) fn kind(m: &ast::Match, body: &ir::Body) -> Option<String> {
    let shared = m
        .arms
        .windows(2)
        .any(|w| w[0].instance.name.node == w[1].instance.name.node);
    m.arms.iter().find_map(|a| {
        let name = &a.instance.name.node;
        let inst = body.instances.iter().find(|i| &i.name == name)?;
        (inst.module == a.instance.decl.node).then(|| {
            if shared {
                format!("{name}:{}", inst.module)
            } else {
                name.clone()
            }
        })
    })
}

fn matches(p: &Pattern, v: &Value) -> bool {
    match (p, v) {
        (Pattern::Any, _) => true,
        (Pattern::Str(a), Value::Str(b)) => a == b,
        (Pattern::Int(a), Value::Int(b)) => a == b,
        _ => false,
    }
}

fn no_arm(m: &ast::Match, v: &Val, indices: &[(String, i64)]) -> Diagnostic {
    let at = if indices.is_empty() {
        String::new()
    } else {
        let shown: Vec<String> = indices.iter().map(|(n, i)| format!("{n} = {i}")).collect();
        format!(" at {}", shown.join(", "))
    };
    let arms: Vec<String> = m
        .arms
        .iter()
        .flat_map(|a| a.patterns.iter())
        .map(|p| match &p.node {
            Pattern::Str(s) => format!("{s:?}"),
            Pattern::Int(i) => i.to_string(),
            Pattern::Any => "_".to_string(),
        })
        .collect();
    Diagnostic::new(
        Code::E0430,
        format!(
            "`{}` is {}{at}, which no arm matches",
            m.scrutinee.node, v.value
        ),
    )
    .at(m.scrutinee.span, format!("{} here", v.value))
    .with_labels(v.labels())
    .with_note(format!("the arms match {}", arms.join(", ")))
    .with_help("add an arm for this value, or `_ =>` for every other one")
}
