//! Instance arguments against the declaration's parameters, by name: an argument the
//! declaration has no parameter for (E0232), a parameter with no default that an
//! instance leaves out (E0233), an argument given twice (E0232). Values and their
//! types are checked in [`crate::check`], where the config is known.

use std::collections::BTreeMap;

use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::source::Span;
use crate::syntax::ast;

pub fn check(decl: &ast::Decl, inst: &ast::Instance, diags: &mut Diagnostics) {
    let names: Vec<&str> = decl.params.iter().map(|p| p.name.node.as_str()).collect();
    let mut given: BTreeMap<&str, Span> = BTreeMap::new();
    for a in &inst.args {
        let name = a.name.node.as_str();
        if let Some(prev) = given.insert(name, a.name.span) {
            diags.push(
                Diagnostic::new(Code::E0232, format!("argument `{name}` is given twice"))
                    .at(a.name.span, "second value")
                    .with_label(prev, "first given here"),
            );
        } else if !names.contains(&name) {
            let has = if names.is_empty() {
                "it takes no parameters".to_string()
            } else {
                format!("its parameters: {}", names.join(", "))
            };
            diags.push(
                Diagnostic::new(
                    Code::E0232,
                    format!("`{}` has no parameter `{name}`", decl.name.node),
                )
                .at(a.name.span, "unknown argument")
                .with_label(decl.name.span, has)
                .suggest(name, names.iter().copied()),
            );
        }
    }
    for p in decl.params.iter().filter(|p| p.default.is_none()) {
        if !given.contains_key(p.name.node.as_str()) {
            diags.push(
                Diagnostic::new(
                    Code::E0233,
                    format!(
                        "`{}` needs an argument for `{}`",
                        decl.name.node, p.name.node
                    ),
                )
                .at(inst.decl.span, format!("no `{} = …` here", p.name.node))
                .with_label(p.name.span, "a parameter with no default"),
            );
        }
    }
}
