//! Resolve: parsed files → a [`Program`] whose names all point somewhere.
//!
//! Input: a root `.wmap` file (on disk, in memory, or in the stdlib). `use` imports are
//! followed: relative to the importing file first, then in the embedded stdlib.
//! Output: every declaration by name, every instance's declaration, checked `tied`
//! paths and dtypes. Invariants after success: instance types exist, the instance graph
//! has no cycles, every param has a source, every `tied` path names a param.
//! A declaration in a user file may override a stdlib declaration of the same name
//! (that is how users adapt a stdlib model); any other duplicate is an error.
//! Index variables are dynamically scoped, so they are checked in [`crate::check`].

mod args;
mod arms;
mod imports;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::source::{FileId, SourceMap, Span};
use crate::syntax::{self, ast};

/// Where a loaded file came from, which decides where its `use`s look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Disk(PathBuf),
    Stdlib(String),
    /// A user's text held in memory: its `use`s resolve in the stdlib.
    Memory,
}

/// Index into [`Program::decls`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeclId(pub usize);

#[derive(Debug)]
pub struct DeclInfo {
    pub decl: ast::Decl,
    pub from_stdlib: bool,
}

/// The resolved program: all declarations reachable from the root file.
#[derive(Debug)]
pub struct Program {
    pub root: FileId,
    pub decls: Vec<DeclInfo>,
    pub by_name: BTreeMap<String, DeclId>,
    /// Top-level `config` items of all files: visible everywhere, after declaration-local ones.
    pub globals: Vec<ast::ConfigItem>,
    /// Files that came from the embedded stdlib.
    pub stdlib_files: BTreeSet<FileId>,
}

impl Program {
    pub fn decl(&self, id: DeclId) -> &ast::Decl {
        &self.decls[id.0].decl
    }

    pub fn lookup(&self, name: &str) -> Option<DeclId> {
        self.by_name.get(name).copied()
    }

    /// The models declared in the root file, in source order.
    pub fn root_models(&self) -> Vec<DeclId> {
        (0..self.decls.len())
            .map(DeclId)
            .filter(|&id| {
                let d = self.decl(id);
                d.kind == ast::DeclKind::Model && d.span.file == self.root
            })
            .collect()
    }

    /// The member of `decl` called `name`, if any (params and instances share a namespace).
    pub fn member<'p>(&'p self, decl: DeclId, name: &str) -> Option<&'p ast::Member> {
        self.decl(decl)
            .members
            .iter()
            .find(|m| member_name(m) == Some(name))
    }
}

/// The name a member introduces, if it introduces one.
pub fn member_name(m: &ast::Member) -> Option<&str> {
    match m {
        ast::Member::Param(p) => Some(&p.name.node),
        ast::Member::Instance(i) => Some(&i.name.node),
        // A match declares one of several instances: no single member to follow.
        ast::Member::Config(_) | ast::Member::Ignore(_) | ast::Member::Match(_) => None,
    }
}

/// Loads `root` and everything it uses, then resolves names. The program is `Some`
/// exactly when the diagnostics hold no error (warnings may be there).
pub fn resolve(
    sources: &mut SourceMap,
    root_name: &str,
    root_text: &str,
    origin: Origin,
) -> (Option<Program>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let root = sources.add(root_name, root_text);
    let mut files: Vec<(ast::File, bool)> = Vec::new();
    let mut queue = vec![(root, origin)];
    // Every loaded file by the name `load_use` gives it: a second `use` of one file
    // finds the first's id.
    let mut seen: BTreeMap<String, FileId> = BTreeMap::from([(root_name.to_string(), root)]);
    let mut selective = Vec::new();
    while let Some((id, origin)) = queue.pop() {
        let parsed = match syntax::parse(id, &sources.get(id).text.clone()) {
            Ok(f) => f,
            Err(d) => {
                diags.extend(d);
                continue;
            }
        };
        for u in &parsed.uses {
            match load_use(&origin, &u.node) {
                Err(d) => diags.push(d.at(u.span, "imported here")),
                Ok(Some((name, text, o))) => {
                    let fid = *seen.entry(name.clone()).or_insert_with(|| {
                        let fid = sources.add(name, text);
                        queue.push((fid, o));
                        fid
                    });
                    let lists = parsed.use_lists.iter().filter(|l| l.path.span == u.span);
                    selective.extend(lists.map(|list| imports::Selective {
                        importer: id,
                        file: fid,
                        list: list.clone(),
                    }));
                }
                Ok(None) => diags.push(
                    Diagnostic::new(Code::E0203, format!("cannot find `{}`", u.node))
                        .at(u.span, "no such file beside this one or in the stdlib")
                        .suggest(&u.node, crate::stdlib::FILES.iter().map(|(p, _)| *p)),
                ),
            }
        }
        files.push((parsed, matches!(origin, Origin::Stdlib(_))));
    }
    if diags.has_errors() {
        return (None, diags);
    }
    // Files were loaded root-first; keep source order within files for determinism.
    files.sort_by_key(|(f, _)| f.id);
    let program = collect(root, files, &mut diags);
    check_members(&program, &mut diags);
    imports::check(&program, &selective, &mut diags);
    check_cycles(&program, &mut diags);
    warn_unused(&program, &mut diags);
    let program = (!diags.has_errors()).then_some(program);
    (program, diags)
}

/// The file a `use` names: beside the importer, else in the stdlib. A file that exists
/// but is special or too large is an error, not a fall-through to the stdlib.
fn load_use(from: &Origin, path: &str) -> Result<Option<(String, String, Origin)>, Diagnostic> {
    if let Origin::Disk(p) = from {
        let candidate = p.parent().unwrap_or(Path::new(".")).join(path);
        let shown = candidate.display().to_string();
        match crate::source::read_capped(&candidate, crate::source::MAX_WMAP) {
            Ok(bytes) => {
                if let Ok(text) = String::from_utf8(bytes) {
                    return Ok(Some((shown, text, Origin::Disk(candidate))));
                }
            }
            Err(e) => {
                if let Some(d) = e.diagnostic("imported file", &shown) {
                    return Err(d);
                }
            }
        }
    }
    // In the stdlib, a path is relative to the importing file's folder, then to the root.
    let mut keys = Vec::new();
    if let Origin::Stdlib(p) = from {
        if let Some((dir, _)) = p.rsplit_once('/') {
            keys.push(format!("{dir}/{}", path.trim_start_matches("./")));
        }
    }
    keys.push(path.trim_start_matches("./").to_string());
    Ok(keys.into_iter().find_map(|key| {
        crate::stdlib::get(&key).map(|t| {
            (
                format!("<stdlib>/{key}"),
                t.to_string(),
                Origin::Stdlib(key),
            )
        })
    }))
}

fn collect(root: FileId, files: Vec<(ast::File, bool)>, diags: &mut Diagnostics) -> Program {
    let mut program = Program {
        root,
        decls: Vec::new(),
        by_name: BTreeMap::new(),
        globals: Vec::new(),
        stdlib_files: BTreeSet::new(),
    };
    for (file, from_stdlib) in files {
        if from_stdlib {
            program.stdlib_files.insert(file.id);
        }
        program.globals.extend(file.configs);
        for decl in file.decls {
            let name = decl.name.node.clone();
            let id = DeclId(program.decls.len());
            if let Some(&prev) = program.by_name.get(&name) {
                let prev_info = &program.decls[prev.0];
                if prev_info.from_stdlib && !from_stdlib {
                    // A user declaration overrides the stdlib one.
                    program.by_name.insert(name, id);
                } else if !from_stdlib || prev_info.from_stdlib {
                    diags.push(
                        Diagnostic::new(Code::E0202, format!("`{name}` is declared twice"))
                            .at(decl.name.span, "second declaration")
                            .with_label(prev_info.decl.name.span, "first declared here"),
                    );
                }
            } else {
                program.by_name.insert(name, id);
            }
            program.decls.push(DeclInfo { decl, from_stdlib });
        }
    }
    program
}

fn check_members(program: &Program, diags: &mut Diagnostics) {
    for info in &program.decls {
        let decl = &info.decl;
        if decl.kind != ast::DeclKind::Model && !decl.serves.is_empty() {
            let span = decl.serves[0].span;
            diags.push(
                Diagnostic::new(
                    Code::E0210,
                    format!(
                        "only a model can serve architectures; `{}` is a {}",
                        decl.name.node,
                        decl.kind.word()
                    ),
                )
                .at(span, "`for` on a non-model declaration")
                .with_help("declare it with `model`, or drop the `for` clause"),
            );
        }
        let mut names: BTreeMap<&str, Span> = BTreeMap::new();
        let mut configs: BTreeMap<&str, Span> = BTreeMap::new();
        for m in &decl.members {
            let (name, span) = match m {
                ast::Member::Param(p) => (p.name.node.as_str(), p.name.span),
                ast::Member::Instance(i) => (i.name.node.as_str(), i.name.span),
                ast::Member::Config(c) => {
                    if let Some(prev) = configs.insert(&c.name.node, c.name.span) {
                        diags.push(duplicate_member(&c.name.node, c.name.span, prev));
                    }
                    continue;
                }
                ast::Member::Ignore(_) => continue,
                ast::Member::Match(mm) => {
                    // Arms may share a name (`mixer`); it clashes only with other members.
                    let arm_names: BTreeMap<&str, Span> = mm
                        .arms
                        .iter()
                        .map(|a| (a.instance.name.node.as_str(), a.instance.name.span))
                        .collect();
                    for (name, span) in arm_names {
                        if let Some(prev) = names.insert(name, span) {
                            diags.push(duplicate_member(name, span, prev));
                        }
                    }
                    continue;
                }
            };
            if let Some(prev) = names.insert(name, span) {
                diags.push(duplicate_member(name, span, prev));
            }
        }
        for m in &decl.members {
            match m {
                ast::Member::Param(p) => check_param(program, decl, p, diags),
                ast::Member::Instance(_) | ast::Member::Match(_) => {
                    if let ast::Member::Match(mm) = m {
                        arms::check(mm, diags);
                    }
                    for i in m.instances() {
                        check_instance(program, i, diags);
                    }
                }
                _ => {}
            }
        }
    }
}

fn duplicate_member(name: &str, span: Span, prev: Span) -> Diagnostic {
    Diagnostic::new(
        Code::E0202,
        format!("`{name}` is declared twice in this declaration"),
    )
    .at(span, "second declaration")
    .with_label(prev, "first declared here")
}

fn check_instance(program: &Program, inst: &ast::Instance, diags: &mut Diagnostics) {
    match program.lookup(&inst.decl.node) {
        None => diags.push(
            Diagnostic::new(
                Code::E0201,
                format!("no module, block or model is called `{}`", inst.decl.node),
            )
            .at(inst.decl.span, "unknown declaration")
            .suggest(&inst.decl.node, program.by_name.keys().map(String::as_str)),
        ),
        Some(id) if program.decl(id).kind == ast::DeclKind::Model => diags.push(
            Diagnostic::new(
                Code::E0210,
                format!("`{}` is a model and cannot be instantiated", inst.decl.node),
            )
            .at(inst.decl.span, "a model is a root, not a part")
            .with_help("declare the shared part as a `module` or `block`"),
        ),
        Some(id) => args::check(program.decl(id), inst, diags),
    }
}

fn check_param(program: &Program, decl: &ast::Decl, p: &ast::Param, diags: &mut Diagnostics) {
    if let Some(d) = &p.dtype {
        // A declaration parameter may hold the dtype's name; `check` reads its value.
        let is_param = decl.params.iter().any(|dp| dp.name.node == d.node);
        if crate::ir::DType::from_name(&d.node).is_none() && !is_param {
            let names: Vec<&str> = crate::ir::DType::ALL.iter().map(|d| d.name()).collect();
            diags.push(
                Diagnostic::new(Code::E0208, format!("unknown dtype `{}`", d.node))
                    .at(d.span, format!("expected one of {}", names.join(", ")))
                    .suggest(&d.node, names.iter().copied()),
            );
        }
    }
    match &p.source {
        None => diags.push(
            Diagnostic::new(
                Code::E0206,
                format!("param `{}` has no source", p.name.node),
            )
            .at(p.name.span, "no `from` clause")
            .with_help("add `from \"<checkpoint tensor name>\"`"),
        ),
        Some(s) => visit_tied(s, &mut |path| check_tied(program, decl, path, diags)),
    }
}

fn visit_tied(s: &ast::Source, f: &mut dyn FnMut(&crate::source::Spanned<Vec<String>>)) {
    use ast::SourceKind as K;
    match &s.node {
        K::Tied(path) => f(path),
        K::Name { .. } | K::Fp8Blocks { .. } | K::Bnb4 { .. } | K::Mxfp4 { .. } | K::Nvfp4(_) => {}
        K::Try(items) => items.iter().for_each(|i| visit_tied(i, f)),
        K::Fuse { parts, .. } => parts.iter().for_each(|i| visit_tied(i, f)),
        K::Stack { part, .. } | K::Stacked { source: part, .. } => visit_tied(part, f),
        K::Slice { source, .. }
        | K::Split { source, .. }
        | K::Reshape { source, .. }
        | K::Squeeze { source, .. }
        | K::Transpose { source, .. } => visit_tied(source, f),
    }
}

/// A `tied` path walks members from the declaration that holds the param:
/// `embed` or `layers.attn.q`; the last segment must be a param.
fn check_tied(
    program: &Program,
    decl: &ast::Decl,
    path: &crate::source::Spanned<Vec<String>>,
    diags: &mut Diagnostics,
) {
    let mut current: &ast::Decl = decl;
    for (i, seg) in path.node.iter().enumerate() {
        let last = i + 1 == path.node.len();
        let found = current.members.iter().find(|m| member_name(m) == Some(seg));
        match (found, last) {
            (Some(ast::Member::Param(_)), true) => return,
            (Some(ast::Member::Instance(inst)), false) => match program.lookup(&inst.decl.node) {
                Some(id) => current = program.decl(id),
                None => return, // reported as E0201
            },
            _ => {
                let candidates: Vec<&str> =
                    current.members.iter().filter_map(member_name).collect();
                diags.push(
                    Diagnostic::new(
                        Code::E0207,
                        format!("`tied({})` names no param", path.node.join(".")),
                    )
                    .at(
                        path.span,
                        format!("`{seg}` is not a param of `{}`", current.name.node),
                    )
                    .suggest(seg, candidates),
                );
                return;
            }
        }
    }
}

fn edges(program: &Program, id: DeclId) -> Vec<(DeclId, Span)> {
    program
        .decl(id)
        .members
        .iter()
        .flat_map(|m| m.instances())
        .filter_map(|i| program.lookup(&i.decl.node).map(|d| (d, i.decl.span)))
        .collect()
}

/// How deep instances may nest (model → block → module → …). Checking walks the
/// instance tree recursively; real models nest a handful of levels.
pub const MAX_INSTANCE_DEPTH: usize = 32;

/// Reports instance cycles (E0205) and chains deeper than [`MAX_INSTANCE_DEPTH`] (E0211).
/// Iterative, with an explicit stack: a chain of 20 000 modules must not exhaust ours.
fn check_cycles(program: &Program, diags: &mut Diagnostics) {
    // Colours: 0 unvisited, 1 on the stack, 2 done. Both tables are as long as the
    // list of declarations, which the parsed text already holds.
    let mut colour = vec![0u8; program.decls.len()];
    // The longest instance chain below each finished declaration, itself included.
    let mut height = vec![0usize; program.decls.len()];
    let mut cyclic = false;
    for root in 0..program.decls.len() {
        if colour[root] != 0 {
            continue;
        }
        colour[root] = 1;
        let mut stack = vec![(DeclId(root), edges(program, DeclId(root)), 0usize)];
        while let Some((id, out, next)) = stack.last_mut() {
            if let Some(&(child, span)) = out.get(*next) {
                *next += 1;
                match colour[child.0] {
                    0 => {
                        colour[child.0] = 1;
                        stack.push((child, edges(program, child), 0));
                    }
                    1 => {
                        cyclic = true;
                        diags.push(
                            Diagnostic::new(
                                Code::E0205,
                                format!("`{}` instantiates itself", program.decl(child).name.node),
                            )
                            .at(span, "this instance closes a cycle")
                            .with_note("a model must be a finite tree of modules"),
                        );
                    }
                    _ => {}
                }
            } else {
                let below = out.iter().map(|(c, _)| height[c.0]).max().unwrap_or(0);
                height[id.0] = below.saturating_add(1);
                colour[id.0] = 2;
                stack.pop();
            }
        }
    }
    if !cyclic {
        check_depth(program, &height, diags);
    }
}

/// Reports the declaration with the deepest instance chain, when it is too deep.
fn check_depth(program: &Program, height: &[usize], diags: &mut Diagnostics) {
    let deepest = (0..height.len()).max_by_key(|&i| (height[i], std::cmp::Reverse(i)));
    let Some(id) = deepest.filter(|&i| height[i] > MAX_INSTANCE_DEPTH) else {
        return;
    };
    let d = program.decl(DeclId(id));
    diags.push(
        Diagnostic::new(
            Code::E0211,
            format!(
                "instances below `{}` nest {} deep, more than {MAX_INSTANCE_DEPTH}",
                d.name.node, height[id]
            ),
        )
        .at(d.name.span, "the deepest instance chain starts here")
        .with_help("flatten the chain: a model is a shallow tree of blocks and modules"),
    );
}

fn warn_unused(program: &Program, diags: &mut Diagnostics) {
    let roots = program.root_models();
    if roots.is_empty() {
        return; // A library of modules: nothing says what is used.
    }
    let mut used = BTreeSet::new();
    let mut stack = roots;
    while let Some(id) = stack.pop() {
        if used.insert(id) {
            stack.extend(edges(program, id).into_iter().map(|(d, _)| d));
        }
    }
    for (i, info) in program.decls.iter().enumerate() {
        let d = &info.decl;
        // Only the root file's own declarations: an imported file is a library, and
        // the importer may want one block of it.
        let own = d.span.file == program.root;
        if own && d.kind != ast::DeclKind::Model && !used.contains(&DeclId(i)) {
            diags.push(
                Diagnostic::new(
                    Code::W0201,
                    format!("`{}` is never instantiated", d.name.node),
                )
                .at(d.name.span, "unused declaration"),
            );
        }
    }
}
