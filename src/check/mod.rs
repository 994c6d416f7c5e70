//! Check: a resolved program + a config → a config-bound model.
//!
//! Input: a [`Program`], the model to check and a [`Config`]. Output: the model's body
//! with every shape evaluated to positive integers, every `when` decided, every source
//! tree shape-checked (fuse parts add up, stack counts match, slices fit), plus the
//! config values read. Errors are collected: one bad param does not hide the next.
//! Never reads tensor bytes or checkpoint headers.
//!
//! Repeated instances are walked once per distinct *signature*, not once per index: a
//! body that reads no index variable is walked once; one that does is walked again only
//! at an index where the evaluations that read the variable (its trace) give different
//! values. Memory and time grow with the distinct bodies, so a config cannot make the
//! checker allocate per layer.
//!
//! Limits, each a coded error: repeat and stack counts, tensor sizes and the model's
//! total tensor count ([`ir::limits`], E0412); evaluation depth and steps (E0305,
//! E0306, see `eval::MAX_EVAL_DEPTH`). Expression depth is bounded by the parser, instance depth by
//! [`crate::resolve`], so every recursion here fits a 2 MiB stack in a debug build.

mod eval;
mod matching;
mod offload;
mod ops;
mod params;
mod pattern;
mod prequant;
mod repeat;
mod shard;
mod source;
mod value;

use std::collections::BTreeMap;

pub use eval::{Binding, Frame, Scope};
pub use value::Value;

use crate::config::Config;
use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::ir;
use crate::ir::limits::{MAX_NUMEL, MAX_TENSORS};
use crate::resolve::{DeclId, Program};
use crate::source::Span;
use crate::syntax::ast;

/// The result of checking: a bound, not yet compacted, model.
#[derive(Debug)]
pub struct Checked {
    pub model: DeclId,
    /// Repeated instances carry one variant per index, in order.
    pub root: ir::Body,
    pub config: BTreeMap<String, Value>,
    /// Config keys absent from config.json whose stdlib default was used (`key` → value).
    pub defaults: BTreeMap<String, String>,
    pub spans: ir::Spans,
}

/// Checks `model` against `config`. `Checked` is `Some` exactly when there is no error.
pub fn check(program: &Program, model: DeclId, config: &Config) -> (Option<Checked>, Diagnostics) {
    let mut w = Walker {
        ev: eval::Evaluator::new(program, config),
        diags: Diagnostics::default(),
        spans: BTreeMap::new(),
        shape_labels: Vec::new(),
        traces: Vec::new(),
        visits: 0,
        walks: 0,
        prefixes: Vec::new(),
    };
    let scope = Scope {
        frames: vec![frame(program.decl(model), Vec::new())],
    };
    let root = w.body(model, &scope, "", "");
    if !w.diags.has_errors() {
        let tensors = ir::validate::tensor_count(&root);
        if tensors > MAX_TENSORS {
            let name = &program.decl(model).name;
            w.diags.push(
                Diagnostic::new(
                    Code::E0412,
                    format!(
                        "`{}` names {tensors} checkpoint tensors, more than {MAX_TENSORS}",
                        name.node
                    ),
                )
                .at(name.span, "after expanding every repeat and stack")
                .with_note(
                    "wmapc caps counts from the config so that a wrong value cannot exhaust memory",
                ),
            );
        }
    }
    let mut diags = Diagnostics {
        items: merge_repeats(w.diags.items),
    };
    for d in w.ev.defaults {
        diags.push(d);
    }
    let checked = (!diags.has_errors()).then_some(Checked {
        model,
        root,
        defaults: w.ev.schema_defaults,
        config: w.ev.used,
        spans: w.spans,
    });
    (checked, diags)
}

fn frame(decl: &ast::Decl, vars: Vec<(String, Binding)>) -> Frame<'_> {
    Frame {
        owner: &decl.name.node,
        configs: decl
            .members
            .iter()
            .filter_map(|m| match m {
                ast::Member::Config(c) => Some(c),
                _ => None,
            })
            .collect(),
        vars,
        params: Vec::new(),
    }
}

/// One mistake, one error: identical diagnostics (one expression reached twice) are
/// dropped, and E0303s about the same config value (a string `hidden_size` read by nine
/// shapes) become the first with a count, since fixing config.json fixes them all.
fn merge_repeats(items: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::with_capacity(items.len());
    let mut uses: Vec<usize> = Vec::new();
    for d in items {
        let same_value = |o: &Diagnostic| {
            o.code == Code::E0303
                && d.code == Code::E0303
                && o.message == d.message
                && o.secondary == d.secondary
        };
        match out.iter().position(|o| *o == d || same_value(o)) {
            Some(at) if out[at] != d => uses[at] += 1,
            Some(_) => {}
            None => {
                out.push(d);
                uses.push(0);
            }
        }
    }
    for (d, n) in out.iter_mut().zip(uses) {
        if n > 0 {
            d.notes.push(format!(
                "{n} more use(s) of the same value fail the same way; fixing config.json fixes them all"
            ));
        }
    }
    out
}

/// Joins checkpoint-name pieces with `.`; a piece starting with `/` is absolute.
pub fn join_name(prefix: &str, name: &str) -> String {
    if let Some(abs) = name.strip_prefix('/') {
        abs.to_string()
    } else if prefix.is_empty() {
        name.to_string()
    } else if name.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

struct Walker<'a> {
    ev: eval::Evaluator<'a>,
    diags: Diagnostics,
    spans: ir::Spans,
    /// Config keys behind the shapes of the param being checked: attached to shape errors.
    shape_labels: Vec<crate::diag::Label>,
    /// One trace per repeated body being walked, innermost last.
    traces: Vec<repeat::Trace<'a>>,
    /// Repeat indices visited so far, across nested repeats: see [`MAX_TENSORS`].
    visits: u64,
    /// Full walks of repeated bodies so far: see [`MAX_WALKS`].
    walks: u64,
    /// The `at` prefixes of the instances being walked, outermost first.
    prefixes: Vec<Span>,
}

/// Where the walk is: the declaration, the scope, the checkpoint prefix and the IR path.
#[derive(Clone)]
struct Ctx<'a, 's> {
    decl: DeclId,
    scope: &'s Scope<'a>,
    prefix: &'s str,
    path: &'s str,
}

impl<'a> Walker<'a> {
    fn program(&self) -> &'a Program {
        self.ev.program
    }

    /// Reports a shape disagreement with the config keys behind the shapes involved.
    fn shape_error(&mut self, d: Diagnostic) {
        let labels = self.shape_labels.clone();
        self.diags.push(d.with_labels(labels));
    }

    fn report<T>(&mut self, r: Result<T, eval::Stop>, scope: &Scope<'a>) -> Option<T> {
        match self.ev.finish(r, scope) {
            Ok(v) => Some(v),
            Err(d) => {
                self.diags.push(d);
                None
            }
        }
    }

    /// Evaluates `e`, recording it in every open trace whose variable it read.
    fn evaluate(&mut self, e: &ast::Expr, scope: &Scope<'a>) -> eval::EvalResult {
        let outer = std::mem::take(&mut self.ev.index_reads);
        let r = self.ev.eval(e, scope);
        let reads = std::mem::replace(&mut self.ev.index_reads, outer);
        if let Ok(v) = &r {
            for t in self.traces.iter_mut().filter(|t| reads.contains(&t.var)) {
                t.entries.push(repeat::Reading {
                    expr: e.clone(),
                    scope: scope.clone(),
                    value: v.value.clone(),
                });
            }
        }
        self.ev.index_reads.extend(reads);
        r
    }

    fn int(&mut self, e: &ast::Expr, scope: &Scope<'a>) -> Option<(i64, value::Val)> {
        let v = self.evaluate(e, scope);
        let v = self.report(v, scope)?;
        match v.value {
            Value::Int(i) => Some((i, v)),
            _ => {
                self.diags.push(eval::type_error(e.span, "an integer", &v));
                None
            }
        }
    }

    /// A `when` condition: `None` after reporting a problem.
    fn condition(&mut self, e: &ast::Expr, scope: &Scope<'a>) -> Option<bool> {
        let v = self.evaluate(e, scope);
        let v = self.report(v, scope)?;
        match v.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.diags.push(
                    eval::type_error(e.span, "a boolean condition", &v)
                        .with_help("compare explicitly, e.g. `x > 0` or `x != null`"),
                );
                None
            }
        }
    }

    fn body(&mut self, decl: DeclId, scope: &Scope<'a>, prefix: &str, path: &str) -> ir::Body {
        let program = self.program();
        let d = program.decl(decl);
        let ctx = Ctx {
            decl,
            scope,
            prefix,
            path,
        };
        let mut body = ir::Body::default();
        for m in &d.members {
            match m {
                ast::Member::Param(p) => {
                    let on = match &p.when {
                        Some(w) => self.condition(w, scope).unwrap_or(false),
                        None => true,
                    };
                    if on {
                        if let Some(param) = self.param(p, &ctx) {
                            body.params.push(param);
                        }
                    }
                }
                ast::Member::Instance(i) => {
                    if let Some(inst) = self.instance(i, &ctx) {
                        body.instances.push(inst);
                    }
                }
                ast::Member::Ignore(patterns) => {
                    for pat in patterns {
                        if let Some(filled) = self.ignore_pattern(pat, scope) {
                            body.ignore.push(join_name(prefix, &filled));
                        }
                    }
                }
                ast::Member::Match(mm) => {
                    if let Some(inst) = self.match_instance(mm, &ctx) {
                        body.instances.push(inst);
                    }
                }
                ast::Member::Config(_) => {}
            }
        }
        body
    }

    /// The names of `decl`'s `when`-guarded members present in `body`.
    fn kind(&self, decl: DeclId, body: &ir::Body) -> String {
        let present = |name: &str| {
            body.params.iter().any(|p| p.name == name)
                || body.instances.iter().any(|i| i.name == name)
        };
        let mut kinds: Vec<String> = Vec::new();
        for m in &self.program().decl(decl).members {
            let names = match m {
                ast::Member::Param(p) if p.when.is_some() => vec![p.name.node.as_str()],
                ast::Member::Instance(i) if i.when.is_some() => vec![i.name.node.as_str()],
                ast::Member::Match(mm) => {
                    kinds.extend(matching::kind(mm, body));
                    continue;
                }
                _ => Vec::new(),
            };
            kinds.extend(names.into_iter().filter(|n| present(n)).map(String::from));
        }
        kinds.join("+")
    }

    fn instance(&mut self, i: &'a ast::Instance, ctx: &Ctx<'a, '_>) -> Option<ir::Instance> {
        let at = i.at.as_ref().map(|a| a.span);
        self.prefixes.extend(at);
        let inst = self.instance_body(i, ctx);
        if at.is_some() {
            self.prefixes.pop();
        }
        inst
    }

    fn instance_body(&mut self, i: &'a ast::Instance, ctx: &Ctx<'a, '_>) -> Option<ir::Instance> {
        let program = self.program();
        let child = program.lookup(&i.decl.node)?;
        let child_decl = program.decl(child);
        let mut inst = ir::Instance {
            name: i.name.node.clone(),
            module: child_decl.name.node.clone(),
            prefix: String::new(),
            repeat: None,
            variants: Vec::new(),
            kinds: Vec::new(),
        };
        // The prefix is the caller's text: its parameter holes take the caller's values.
        let at = match &i.at {
            Some(a) => Some(self.fill_params(a, ctx.scope)?),
            None => None,
        };
        inst.prefix = join_name(ctx.prefix, at.as_ref().map_or("", |a| a.node.as_str()));
        let params = self.module_args(i, child_decl, ctx.scope)?;
        let Some(rep) = &i.repeat else {
            let mut scope = Scope {
                frames: [
                    ctx.scope.frames.clone(),
                    vec![frame(child_decl, Vec::new())],
                ]
                .concat(),
            };
            if let Some(at) = &at {
                self.template(at, &scope);
            }
            let on = match &i.when {
                Some(w) => self.condition(w, &scope)?,
                None => true,
            };
            if !on {
                return None;
            }
            // The instance's own `when` is the caller's text: it does not see the
            // parameters, which belong to the body.
            if let Some(f) = scope.frames.last_mut() {
                f.params = params;
            }
            let path = join_name(ctx.path, &i.name.node);
            let body = self.body(child, &scope, &inst.prefix, &path);
            inst.variants.push(ir::Variant {
                indices: Vec::new(),
                kind: self.kind(child, &body),
                body,
            });
            return Some(inst);
        };
        let call = repeat::Call {
            at: at.as_ref(),
            params,
        };
        self.repeat(i, rep, ctx, child, inst, call)
    }

    /// The innermost prefix written in a user's file, for a param declared in the stdlib.
    fn user_prefix(&self, param: Span) -> Option<Span> {
        let stdlib = &self.program().stdlib_files;
        if !stdlib.contains(&param.file) {
            return None;
        }
        self.prefixes
            .iter()
            .rev()
            .find(|s| !stdlib.contains(&s.file))
            .copied()
    }

    /// Checks the `{var}` holes of a name template against the scope.
    fn template(&mut self, t: &crate::source::Spanned<String>, scope: &Scope<'a>) -> bool {
        let mut ok = true;
        let mut rest = t.node.as_str();
        let mut offset = 0;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                self.diags.push(
                    Diagnostic::new(Code::E0204, "unclosed `{` in a name template")
                        .at(t.span, "add the closing `}`"),
                );
                return false;
            };
            let name = &rest[open + 1..open + close];
            if scope.var(name).is_none() {
                // +1 skips the opening quote of the string literal.
                let start = t.span.start + 1 + offset + open;
                let span = Span::new(t.span.file, start..start + close + 1);
                let span = if span.end <= t.span.end { span } else { t.span };
                self.diags.push(
                    Diagnostic::new(
                        Code::E0204,
                        format!("no index variable `{name}` is in scope"),
                    )
                    .at(span, "unknown index variable")
                    .with_note(format!(
                        "index variables here: {}",
                        none_if_empty(&scope.var_names())
                    ))
                    .suggest(name, scope.var_names()),
                );
                ok = false;
            }
            offset += open + close + 1;
            rest = &rest[open + close + 1..];
        }
        ok
    }

    fn param(&mut self, p: &'a ast::Param, ctx: &Ctx<'a, '_>) -> Option<ir::Param> {
        self.shape_labels.clear();
        let shape = self.shape(&p.shape, ctx.scope)?;
        let path = join_name(ctx.path, &p.name.node);
        let dtype = self.param_dtype(p, ctx.scope)?;
        let src = p.source.as_ref()?;
        let source = self.source(src, Some(&shape), ctx)?;
        let offload_group = match &p.offload_group {
            Some(e) => self.offload(e, ctx.scope, src, &source, &shape)?,
            None => None,
        };
        let shard = match &p.shard {
            Some(rules) => Some(self.shard(rules, ctx.scope, &shape)?),
            None => None,
        };
        self.spans.insert(
            path,
            ir::ParamSite {
                span: p.name.span,
                shape_labels: self.shape_labels.clone(),
                user_prefix: self.user_prefix(p.name.span),
            },
        );
        Some(ir::Param {
            name: p.name.node.clone(),
            shape,
            dtype,
            quantizable: p.quantizable.is_some(),
            optional: p.optional.is_some(),
            offload_group,
            shard,
            source,
        })
    }

    /// A param's runtime dtype: a dtype name, or a declaration parameter whose value names
    /// one (`module RmsNorm(weight_dtype = "bf16")` with `dtype = weight_dtype`), checked
    /// per instance (E0208). `resolve` refused any other unknown name.
    fn param_dtype(&mut self, p: &ast::Param, scope: &Scope<'a>) -> Option<ir::DType> {
        let Some(d) = &p.dtype else {
            return Some(ir::DType::Bf16);
        };
        if let Some(t) = ir::DType::from_name(&d.node) {
            return Some(t);
        }
        let val = scope.param(&d.node);
        let named = val.and_then(|v| match &v.value {
            Value::Str(s) => ir::DType::from_name(s),
            _ => None,
        });
        if named.is_none() {
            let names: Vec<&str> = ir::DType::ALL.iter().map(|t| t.name()).collect();
            let given = val.map_or("no value".to_string(), |v| v.value.to_string());
            let text = match val.map(|v| &v.value) {
                Some(Value::Str(s)) => s.as_str(),
                _ => "",
            };
            self.diags.push(
                Diagnostic::new(
                    Code::E0208,
                    format!(
                        "the parameter `{}` is {given}, which names no runtime dtype",
                        d.node
                    ),
                )
                .at(d.span, format!("expected one of {}", names.join(", ")))
                .with_labels(val.map(|v| v.labels()).unwrap_or_default())
                .suggest(text, names.iter().copied()),
            );
        }
        named
    }

    /// Evaluates a shape; every dimension must be a positive integer.
    fn shape(&mut self, shape: &ast::Shape, scope: &Scope<'a>) -> Option<Vec<u64>> {
        let mut out = Vec::with_capacity(shape.node.len());
        let mut ok = true;
        for dim in &shape.node {
            match self.int(dim, scope) {
                Some((v, val)) if v > 0 => {
                    for l in val.labels() {
                        if !self.shape_labels.iter().any(|x| x.span == l.span) {
                            self.shape_labels.push(l);
                        }
                    }
                    out.push(v as u64);
                }
                Some((v, val)) => {
                    self.diags.push(
                        Diagnostic::new(
                            Code::E0401,
                            format!("shape dimension `{}` is {v}", dim.node),
                        )
                        .at(dim.span, format!("evaluates to {v}"))
                        .with_labels(val.labels())
                        .with_help("every dimension must be a positive integer for this config"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if ok {
            self.numel_in_range(&out, shape.span)?;
        }
        ok.then_some(out)
    }

    /// Checks that a shape's element count fits: E0411 past 64 bits, E0412 past
    /// [`MAX_NUMEL`]. Every size computed later (bytes, offsets) then fits too.
    fn numel_in_range(&mut self, shape: &[u64], span: Span) -> Option<u64> {
        let d = match ir::numel(shape) {
            Some(n) if n <= MAX_NUMEL => return Some(n),
            Some(n) => Diagnostic::new(
                Code::E0412,
                format!("shape {shape:?} has {n} elements, more than {MAX_NUMEL}"),
            )
            .at(span, "too large for one tensor"),
            None => Diagnostic::new(
                Code::E0411,
                format!("the element count of shape {shape:?} overflows 64 bits"),
            )
            .at(span, "this shape's size overflows"),
        };
        self.shape_error(d);
        None
    }
}

fn none_if_empty(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Calls `f` with every single-segment name an expression reads.
pub(crate) fn collect_names(e: &ast::Expr, f: &mut dyn FnMut(&str)) {
    use ast::ExprKind as K;
    match &e.node {
        K::Name(path) if path.len() == 1 => f(&path[0]),
        K::List(items) => items.iter().for_each(|i| collect_names(i, f)),
        K::Unary(_, a) => collect_names(a, f),
        K::Call(_, args) => args.iter().for_each(|a| collect_names(a, f)),
        K::Binary(_, a, b) | K::Index(a, b) => {
            collect_names(a, f);
            collect_names(b, f);
        }
        _ => {}
    }
}
