//! `ignore` patterns: `{hole}`s that name an index variable stay holes (the planner
//! widens them to `*`); any other hole is a config symbol, evaluated and written in,
//! so DeepSeek's multi-token-prediction layer reads `model.layers.{num_hidden_layers}.*`.
//!
//! Input: a pattern as written and the scope. Output: the pattern with config holes
//! filled, or `None` after reporting why (E0204 unclosed hole, E0301 unknown symbol,
//! E0405 a value that is neither an integer nor a string).

use super::eval::{self, Scope};
use super::{Value, Walker};
use crate::diag::{Code, Diagnostic};
use crate::source::{Span, Spanned};
use crate::syntax::ast;

impl<'a> Walker<'a> {
    pub(super) fn ignore_pattern(
        &mut self,
        t: &Spanned<String>,
        scope: &Scope<'a>,
    ) -> Option<String> {
        let mut out = String::with_capacity(t.node.len());
        let mut rest = t.node.as_str();
        let mut offset = 0;
        let mut ok = true;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                self.diags.push(
                    Diagnostic::new(Code::E0204, "unclosed `{` in a name template")
                        .at(t.span, "add the closing `}`"),
                );
                return None;
            };
            out.push_str(&rest[..open]);
            let name = &rest[open + 1..open + close];
            if scope.var(name).is_some() {
                out.push_str(&rest[open..=open + close]);
            } else {
                let span = hole_span(t, offset + open, close + 1);
                match self.hole_value(name, span, scope) {
                    Some(v) => out.push_str(&v),
                    None => ok = false,
                }
            }
            offset += open + close + 1;
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        ok.then_some(out)
    }

    /// The text a config hole stands for: an integer or a string value.
    fn hole_value(&mut self, name: &str, span: Span, scope: &Scope<'a>) -> Option<String> {
        let path = name.split('.').map(str::to_string).collect();
        let e = Spanned::new(ast::ExprKind::Name(path), span);
        let v = self.evaluate(&e, scope);
        let v = self.report(v, scope)?;
        match &v.value {
            Value::Int(i) => Some(i.to_string()),
            Value::Str(s) => Some(s.clone()),
            _ => {
                let d = eval::type_error(span, "an integer or a string", &v)
                    .with_note("a hole in an `ignore` pattern is written into the name");
                self.diags.push(d);
                None
            }
        }
    }
}

/// The span of the hole `len` bytes long at byte `at` of the pattern's text.
fn hole_span(t: &Spanned<String>, at: usize, len: usize) -> Span {
    // +1 skips the opening quote of the string literal; an escape makes the text
    // shorter than the literal, so a span past its end falls back to the whole pattern.
    let start = t.span.start + 1 + at;
    let span = Span::new(t.span.file, start..start + len);
    if span.end <= t.span.end {
        span
    } else {
        t.span
    }
}
