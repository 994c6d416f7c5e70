//! `match` arms that can never be chosen: a pattern after `_`, or one an earlier arm
//! already matches (W0203). Exhaustiveness needs the config and is checked in
//! [`crate::check`] (E0430).

use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::source::Span;
use crate::syntax::ast::{Match, Pattern};

pub fn check(m: &Match, diags: &mut Diagnostics) {
    let mut seen: Vec<(&Pattern, Span)> = Vec::new();
    let mut wildcard: Option<Span> = None;
    for p in m.arms.iter().flat_map(|a| a.patterns.iter()) {
        let earlier =
            wildcard.or_else(|| seen.iter().find(|(q, _)| **q == p.node).map(|(_, s)| *s));
        if let Some(earlier) = earlier {
            diags.push(
                Diagnostic::new(Code::W0203, "this match pattern can never be chosen")
                    .at(p.span, "unreachable")
                    .with_label(earlier, "an earlier pattern already matches it")
                    .with_help("remove it, or move `_` to the last arm"),
            );
            continue;
        }
        if p.node == Pattern::Any {
            wildcard = Some(p.span);
        }
        seen.push((&p.node, p.span));
    }
}
