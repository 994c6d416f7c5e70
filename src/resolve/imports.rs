//! Selective imports: `use "models/llama.wmap" { Llama, DecoderBlock }`.
//!
//! Input: the program and, per importing file, the files it imports by name with the
//! names listed. Checks that each listed name is declared in that file (E0230) and that
//! the importing file instantiates no declaration of that file it did not list (E0231).
//! The unlisted declarations are still loaded: the listed ones may need them.

use std::collections::BTreeSet;

use super::Program;
use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::source::FileId;
use crate::syntax::ast;

/// One `use "path" { … }`, with the files on both sides resolved.
#[derive(Debug)]
pub struct Selective {
    pub importer: FileId,
    pub file: FileId,
    pub list: ast::UseList,
}

pub fn check(program: &Program, imports: &[Selective], diags: &mut Diagnostics) {
    for s in imports {
        let declared: Vec<&str> = program
            .decls
            .iter()
            .map(|info| &info.decl)
            .filter(|d| d.span.file == s.file)
            .map(|d| d.name.node.as_str())
            .collect();
        for name in &s.list.names {
            if !declared.contains(&name.node.as_str()) {
                diags.push(
                    Diagnostic::new(
                        Code::E0230,
                        format!("`{}` declares no `{}`", s.list.path.node, name.node),
                    )
                    .at(name.span, "not declared in the imported file")
                    .with_note(format!("it declares: {}", declared.join(", ")))
                    .suggest(&name.node, declared.iter().copied()),
                );
            }
        }
    }
    for s in imports {
        check_unlisted(program, s, imports, diags);
    }
}

/// Instances in `s.importer` of a declaration of `s.file` that no list names.
fn check_unlisted(program: &Program, s: &Selective, all: &[Selective], diags: &mut Diagnostics) {
    // Two selective `use`s of one file add up.
    let listed: BTreeSet<&str> = all
        .iter()
        .filter(|o| o.importer == s.importer && o.file == s.file)
        .flat_map(|o| o.list.names.iter().map(|n| n.node.as_str()))
        .collect();
    let first = all
        .iter()
        .find(|o| o.importer == s.importer && o.file == s.file)
        .map(|o| o.list.path.span);
    if first != Some(s.list.path.span) {
        return; // Reported once, for the first `use` of the file.
    }
    let importer_decls = program
        .decls
        .iter()
        .map(|info| &info.decl)
        .filter(|d| d.span.file == s.importer);
    for d in importer_decls {
        for inst in d.members.iter().flat_map(ast::Member::instances) {
            let Some(id) = program.lookup(&inst.decl.node) else {
                continue; // E0201, reported by the caller.
            };
            let target = program.decl(id);
            if target.span.file == s.file && !listed.contains(inst.decl.node.as_str()) {
                diags.push(
                    Diagnostic::new(
                        Code::E0231,
                        format!(
                            "`{}` is declared in `{}` but not imported from it",
                            inst.decl.node, s.list.path.node
                        ),
                    )
                    .at(inst.decl.span, "not in the import list")
                    .with_label(s.list.path.span, "this `use` lists what it imports")
                    .with_help(format!("add `{}` to the list", inst.decl.node)),
                );
            }
        }
    }
}
