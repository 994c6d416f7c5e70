//! `let` bindings for sources: `let qkv = reshape(…)` names a source; a bare name in a
//! later source of the same declaration stands for it. References are expanded here,
//! as the tree is built, so no later phase sees a `let`.
//!
//! A `let` is visible after its declaration only (so a `let` cannot refer to itself or
//! to a later one: no cycles), and an expansion is bounded: a `let` may nest no deeper
//! than [`MAX_LET_DEPTH`] sources and a file may copy in at most [`MAX_LET_NODES`] nodes
//! through references (E0109), so `let a1 = fuse(dim = 0, a0, a0)` chains cannot grow a
//! tree exponentially or deeper than later phases' recursion allows.

use pest::iterators::Pair;

use super::ast::{Source, SourceKind as K};
use super::{Builder, Rule};
use crate::diag::{Code, Diagnostic};
use crate::source::Spanned;

/// How deep a source may nest once its `let`s are expanded: the parser's bracket limit.
pub const MAX_LET_DEPTH: usize = 64;
/// How many source nodes `let` references may copy into one file.
pub const MAX_LET_NODES: usize = 100_000;

impl Builder<'_> {
    pub(super) fn let_decl(&mut self, pair: Pair<Rule>) {
        let mut inner = pair.into_inner().skip(1); // `let`
        let (Some(name), Some(src)) = (inner.next(), inner.next()) else {
            unreachable!("grammar: `let` has a name and a source")
        };
        let name = self.ident(name);
        let source = self.source(src);
        let source = self.bounded(source, &name);
        self.lets.push((name.node, source));
    }

    /// `source` if its expansion nests at most [`MAX_LET_DEPTH`] deep, else E0109 and a
    /// placeholder: every tree later phases see stays within the parser's limit.
    pub(super) fn bounded(&mut self, source: Source, owner: &crate::syntax::ast::Ident) -> Source {
        let (depth, _) = measure(&source);
        if depth <= MAX_LET_DEPTH {
            return source;
        }
        self.diags.push(
            Diagnostic::new(
                Code::E0109,
                format!(
                    "the source of `{}` nests {depth} deep once its `let`s are expanded",
                    owner.node
                ),
            )
            .at(owner.span, format!("more than {MAX_LET_DEPTH} deep"))
            .with_help("write the source out flatter, or split it over params"),
        );
        placeholder(source.span)
    }

    /// The source a `let` name stands for, copied in.
    pub(super) fn let_ref(&mut self, pair: Pair<Rule>) -> Source {
        let span = self.span(&pair);
        let name = pair.as_str();
        let Some((_, source)) = self.lets.iter().rev().find(|(n, _)| n == name) else {
            let known: Vec<&str> = self.lets.iter().map(|(n, _)| n.as_str()).collect();
            self.diags.push(
                Diagnostic::new(Code::E0108, format!("no `let {name}` before this source"))
                    .at(span, "not a `let` of this declaration")
                    .with_note("a `let` is visible after its declaration, in its declaration only; a tensor name is written in quotes")
                    .suggest(name, known),
            );
            return placeholder(span);
        };
        let source = source.clone();
        let (_, nodes) = measure(&source);
        self.let_nodes = self.let_nodes.saturating_add(nodes);
        if self.let_nodes > MAX_LET_NODES {
            self.diags.push(
                Diagnostic::new(
                    Code::E0109,
                    format!("`let` references copy more than {MAX_LET_NODES} sources into this file"),
                )
                .at(span, "the limit is reached here")
                .with_help("a `let` used many times over, in `let`s used many times over, grows exponentially"),
            );
            return placeholder(span);
        }
        source
    }
}

fn placeholder(span: crate::source::Span) -> Source {
    let template = Spanned::new(String::new(), span);
    Spanned::new(
        K::Name {
            template,
            shape: None,
        },
        span,
    )
}

/// (depth, nodes) of a source tree. Only trees of bounded depth are measured: the
/// parser's limit with `let`s of at most [`MAX_LET_DEPTH`] copied in.
fn measure(s: &Source) -> (usize, usize) {
    let children: Vec<&Source> = match &s.node {
        K::Name { .. }
        | K::Tied(_)
        | K::Fp8Blocks { .. }
        | K::Mxfp4 { .. }
        | K::Nvfp4(_)
        | K::Bnb4 { .. } => Vec::new(),
        K::Stacked { source, .. } => vec![source],
        K::Try(items) | K::Fuse { parts: items, .. } => items.iter().collect(),
        K::Stack { part, .. } => vec![part],
        K::Slice { source, .. }
        | K::Split { source, .. }
        | K::Reshape { source, .. }
        | K::Squeeze { source, .. }
        | K::Transpose { source, .. } => vec![source],
    };
    let (mut depth, mut nodes) = (0, 1usize);
    for c in children {
        let (d, n) = measure(c);
        depth = depth.max(d);
        nodes = nodes.saturating_add(n);
    }
    (depth + 1, nodes)
}
