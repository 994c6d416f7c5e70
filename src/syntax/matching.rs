//! `match` members: the pairs of `match_decl` → an [`ast::Match`] whose arms are
//! named instances. An arm with no name of its own, in a match with no name, is E0107.

use pest::iterators::Pair;

use super::ast::{self, Instance, MatchArm, Pattern};
use super::{Builder, Rule};
use crate::diag::{Code, Diagnostic};
use crate::source::Spanned;

impl Builder<'_> {
    pub(super) fn matching(&mut self, pair: Pair<Rule>) -> ast::Match {
        let span = self.span(&pair);
        let mut name = None;
        let mut scrutinee = None;
        let mut arms = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(self.ident(p)),
                Rule::expr => scrutinee = Some(self.expr(p)),
                Rule::match_arm => arms.extend(self.arm(p, name.as_ref())),
                _ => {}
            }
        }
        let Some(scrutinee) = scrutinee else {
            unreachable!("grammar: `match` has an expression")
        };
        ast::Match {
            scrutinee,
            arms,
            span,
        }
    }

    fn arm(&mut self, pair: Pair<Rule>, outer: Option<&ast::Ident>) -> Option<MatchArm> {
        let span = self.span(&pair);
        let mut patterns = Vec::new();
        let mut own = None;
        let mut decl = None;
        let mut at = None;
        let mut args = Vec::new();
        for p in pair.into_inner() {
            let pspan = self.span(&p);
            match p.as_rule() {
                Rule::string => {
                    let s = self.string(p).map_or(String::new(), |s| s.node);
                    patterns.push(Spanned::new(Pattern::Str(s), pspan));
                }
                Rule::int => patterns.push(Spanned::new(self.pattern_int(&p), pspan)),
                Rule::wildcard => patterns.push(Spanned::new(Pattern::Any, pspan)),
                Rule::arm_name => own = p.into_inner().next().map(|n| self.ident(n)),
                Rule::ident => decl = Some(self.ident(p)),
                Rule::inst_args => args = self.args(p),
                Rule::attr_at => at = p.into_inner().nth(1).and_then(|s| self.string(s)),
                _ => {}
            }
        }
        let decl = decl?;
        let Some(name) = own.or_else(|| outer.cloned()) else {
            self.diags.push(
                Diagnostic::new(Code::E0107, "a match arm has no instance name")
                    .at(span, "which member does this arm declare?")
                    .with_help(format!(
                        "name the match (`mixer: match …`) or the arm (`=> mixer: {}`)",
                        decl.node
                    )),
            );
            return None;
        };
        let instance = Instance {
            name,
            decl,
            args,
            repeat: None,
            at,
            when: None,
            span,
        };
        Some(MatchArm { patterns, instance })
    }

    fn pattern_int(&mut self, p: &Pair<Rule>) -> Pattern {
        match p.as_str().parse::<i64>() {
            Ok(v) => Pattern::Int(v),
            Err(_) => {
                let span = self.span(p);
                self.diags.push(
                    Diagnostic::new(Code::E0102, "integer literal does not fit in 64 bits")
                        .at(span, "too large"),
                );
                Pattern::Any
            }
        }
    }
}
