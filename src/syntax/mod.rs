//! Syntax: `.wmap` text → AST.
//!
//! Input: one file's text and its [`FileId`]. Output: an [`ast::File`] with a span on
//! every node, or diagnostics (E01xx). Only this module touches pest types.
//! It knows nothing of configs or checkpoints; names are not resolved here.
//!
//! Naming guide: `parse_x` consumes a pair of rule `x` and builds its node.

pub mod ast;
mod expr;
mod lets;
mod matching;
mod params;

use pest::iterators::Pair;
use pest::Parser as _;

use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::source::{FileId, Span, Spanned};
use ast::*;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/wmap.pest"]
struct WmapParser;

/// Parses one file. Syntax errors stop at the first one (the rest of the text
/// cannot be trusted); attribute errors are collected.
pub fn parse(file: FileId, text: &str) -> Result<ast::File, Diagnostics> {
    let mut diags = Diagnostics::default();
    if let Some(at) = too_deep(text) {
        diags.push(
            Diagnostic::new(
                Code::E0104,
                format!("brackets nested more than {MAX_NESTING} deep"),
            )
            .at(Span::new(file, at..at + 1), "nesting limit reached here"),
        );
        return Err(diags);
    }
    let pairs = match WmapParser::parse(Rule::file, text) {
        Ok(p) => p,
        Err(e) => {
            diags.push(syntax_error(file, text, e));
            return Err(diags);
        }
    };
    let mut b = Builder {
        file,
        diags: &mut diags,
        too_deep_reported: false,
        lets: Vec::new(),
        let_nodes: 0,
    };
    let mut out = ast::File {
        id: file,
        uses: Vec::new(),
        configs: Vec::new(),
        decls: Vec::new(),
        use_lists: Vec::new(),
    };
    for pair in pairs.flatten().take(1) {
        for item in pair.into_inner() {
            match item.as_rule() {
                Rule::use_decl => {
                    let mut inner = item.into_inner();
                    let s = inner.next().expect("grammar: use has a string");
                    if let Some(path) = b.string(s) {
                        if let Some(list) = inner.next() {
                            let names = list.into_inner().map(|n| b.ident(n)).collect();
                            let path = path.clone();
                            out.use_lists.push(ast::UseList { path, names });
                        }
                        out.uses.push(path);
                    }
                }
                Rule::config_decl => out.configs.push(b.config(item)),
                Rule::decl => out.decls.push(b.decl(item)),
                _ => {}
            }
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(out)
    }
}

/// pest recurses once per bracket level while it matches the grammar, before any
/// tree exists to count; cap it so hostile input cannot exhaust the stack. Operator
/// chains and prefix runs are limited where the tree is built (`expr::MAX_EXPR_DEPTH`).
const MAX_NESTING: usize = 64;

/// The offset where bracket nesting first exceeds [`MAX_NESTING`], skipping strings
/// and comments.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut in_str, mut in_comment, mut escaped) = (0usize, false, false, false);
    for (i, b) in text.bytes().enumerate() {
        if in_comment {
            in_comment = b != b'\n';
        } else if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else {
            match b {
                b'#' => in_comment = true,
                b'"' => in_str = true,
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Some(i);
                    }
                }
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
}

fn syntax_error(file: FileId, text: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    let (start, end) = match e.location {
        pest::error::InputLocation::Pos(p) => (p, p),
        pest::error::InputLocation::Span((s, e)) => (s, e),
    };
    // Point at the whole offending token when there is one.
    let end = if end > start {
        end
    } else {
        let rest = &text[start..];
        let len = rest
            .char_indices()
            .find(|(_, c)| c.is_whitespace())
            .map_or(rest.len(), |(i, _)| i);
        start + len.max(rest.chars().next().map_or(0, char::len_utf8))
    };
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| rule_name(*r)).collect();
            names.sort_unstable();
            names.dedup();
            // A string is a source; naming both reads as a stutter.
            if names.contains(&"a source") {
                names.retain(|n| *n != "a string");
            }
            names
        }
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let found = if start >= text.len() {
        "end of file".to_string()
    } else {
        format!("`{}`", &text[start..end])
    };
    let label = if expected.is_empty() {
        "unexpected text".to_string()
    } else {
        format!("expected {}", join_or(&expected))
    };
    // pest reports where the failing rule began; when that rule is one the parser
    // expected, the problem is inside it, not the token itself.
    let inside = expected.iter().any(|e| *e == found);
    let (message, label) = if inside {
        (
            format!("syntax error in this {found} declaration"),
            "does not follow the grammar from here".to_string(),
        )
    } else {
        (format!("syntax error: unexpected {found}"), label)
    };
    Diagnostic::new(Code::E0101, message).at(Span::new(file, start..end), label)
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// Words for the rules a user can be told were expected.
fn rule_name(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::use_decl => "`use`",
        Rule::decl | Rule::decl_kind => "a declaration (`module`, `block` or `model`)",
        Rule::config_decl => "`config`",
        Rule::param_decl => "`param`",
        Rule::ignore_decl => "`ignore`",
        Rule::instance_decl => "an instance (`name: Module`)",
        Rule::match_decl => "`match`",
        Rule::let_decl => "`let`",
        Rule::match_arm => "a match arm (`\"value\" => Module`)",
        Rule::ident | Rule::key_path | Rule::path => "a name",
        Rule::string => "a string",
        Rule::int | Rule::float => "a number",
        Rule::shape => "a shape `[…]`",
        Rule::expr => "an expression",
        Rule::attr_quantizable
        | Rule::attr_optional
        | Rule::attr_dtype
        | Rule::attr_offload
        | Rule::attr_shard
        | Rule::attr_when
        | Rule::attr_from => "a param attribute",
        Rule::attr_at => "`at`",
        Rule::repeat => "a repeat `[var in a..b]`",
        Rule::range => "a range `a..b`",
        Rule::src_try
        | Rule::src_name
        | Rule::src_fuse
        | Rule::src_stack
        | Rule::src_slice
        | Rule::src_split
        | Rule::src_reshape
        | Rule::src_squeeze
        | Rule::src_transpose
        | Rule::src_tied
        | Rule::src_fp8_blocks
        | Rule::src_bnb4
        | Rule::src_stacked
        | Rule::src_mxfp4
        | Rule::src_nvfp4
        | Rule::src_let => "a source",
        Rule::fp8_scale_inv => "`scale_inv =`",
        Rule::op_or
        | Rule::op_and
        | Rule::op_eq
        | Rule::op_ne
        | Rule::op_le
        | Rule::op_ge
        | Rule::op_lt
        | Rule::op_gt
        | Rule::op_in
        | Rule::op_not_in
        | Rule::op_add
        | Rule::op_sub
        | Rule::op_mul
        | Rule::op_div
        | Rule::op_mod => "an operator",
        Rule::index => "`[`",
        Rule::slice_step => "`step =`",
        _ => return None,
    })
}

/// The next child of a pair whose grammar rule guarantees one.
fn nx<'i>(it: &mut pest::iterators::Pairs<'i, Rule>) -> Pair<'i, Rule> {
    it.next().expect("grammar: missing child")
}

struct Builder<'d> {
    file: FileId,
    diags: &'d mut Diagnostics,
    /// E0104 is reported once: past the limit every further fold would repeat it.
    too_deep_reported: bool,
    /// The `let`s of the declaration being built, in order, already expanded.
    lets: Vec<(String, Source)>,
    /// Source nodes copied in by `let` references in this file: see `lets.rs`.
    let_nodes: usize,
}

impl Builder<'_> {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, s.start()..s.end())
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Spanned::new(pair.as_str().to_string(), self.span(&pair))
    }

    /// A string literal with its escapes decoded; the span covers the quotes.
    fn string(&mut self, pair: Pair<Rule>) -> Option<Spanned<String>> {
        let span = self.span(&pair);
        let raw = pair.into_inner().next().map_or("", |p| p.as_str());
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\')) => out.push(c),
                _ => {
                    self.diags.push(
                        Diagnostic::new(Code::E0102, "invalid escape in string literal")
                            .at(span, "this string"),
                    );
                    return None;
                }
            }
        }
        Some(Spanned::new(out, span))
    }

    fn decl(&mut self, pair: Pair<Rule>) -> Decl {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let kind = match inner
            .next()
            .and_then(|k| k.into_inner().next())
            .map(|k| k.as_rule())
        {
            Some(Rule::kw_model) => DeclKind::Model,
            Some(Rule::kw_block) => DeclKind::Block,
            _ => DeclKind::Module,
        };
        let name = self.ident(inner.next().expect("grammar: decl has a name"));
        // `let`s are the declaration's own.
        self.lets.clear();
        let mut decl = Decl {
            kind,
            name,
            serves: Vec::new(),
            params: Vec::new(),
            members: Vec::new(),
            span,
        };
        for p in inner {
            match p.as_rule() {
                Rule::serves => {
                    for s in p.into_inner() {
                        if let Some(s) = self.string(s) {
                            decl.serves.push(s);
                        }
                    }
                }
                Rule::decl_params => decl.params = self.decl_params(p),
                Rule::let_decl => self.let_decl(p),
                Rule::config_decl => decl.members.push(Member::Config(self.config(p))),
                Rule::param_decl => decl.members.push(Member::Param(Box::new(self.param(p)))),
                Rule::instance_decl => decl
                    .members
                    .push(Member::Instance(Box::new(self.instance(p)))),
                Rule::ignore_decl => {
                    let pats = p.into_inner().filter_map(|s| self.string(s)).collect();
                    decl.members.push(Member::Ignore(pats));
                }
                Rule::match_decl => decl.members.push(Member::Match(Box::new(self.matching(p)))),
                _ => {}
            }
        }
        decl
    }

    fn config(&mut self, pair: Pair<Rule>) -> ConfigItem {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let name = self.ident(inner.next().expect("grammar: config has a name"));
        let alternatives = inner.map(|e| self.expr(e)).collect();
        ConfigItem {
            name,
            alternatives,
            span,
        }
    }

    fn once<T>(&mut self, slot: &mut Option<T>, value: T, span: Span, what: &str) {
        if slot.is_some() {
            self.diags.push(
                Diagnostic::new(Code::E0103, format!("`{what}` is given twice"))
                    .at(span, "second occurrence")
                    .with_help(format!("keep one `{what}`")),
            );
        } else {
            *slot = Some(value);
        }
    }

    fn param(&mut self, pair: Pair<Rule>) -> Param {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let name = self.ident(inner.next().expect("grammar: param has a name"));
        let shape = self.shape(inner.next().expect("grammar: param has a shape"));
        let mut p = Param {
            name,
            shape,
            quantizable: None,
            optional: None,
            dtype: None,
            offload_group: None,
            shard: None,
            when: None,
            source: None,
            span,
        };
        for attr in inner {
            let aspan = self.span(&attr);
            match attr.as_rule() {
                Rule::attr_quantizable => {
                    self.once(&mut p.quantizable, aspan, aspan, "quantizable")
                }
                Rule::attr_optional => self.once(&mut p.optional, aspan, aspan, "optional"),
                Rule::attr_dtype => {
                    let d = self.ident(attr.into_inner().next().expect("grammar: dtype"));
                    self.once(&mut p.dtype, d, aspan, "dtype");
                }
                Rule::attr_offload => {
                    let e = self.expr(attr.into_inner().next().expect("grammar: offload"));
                    self.once(&mut p.offload_group, e, aspan, "offload_group");
                }
                Rule::attr_shard => {
                    let rules = attr.into_inner().skip(1).map(|r| self.shard_rule(r));
                    let rules = rules.collect();
                    self.once(&mut p.shard, rules, aspan, "shard");
                }
                Rule::attr_when => {
                    let e = self.expr(attr.into_inner().nth(1).expect("grammar: when"));
                    self.once(&mut p.when, e, aspan, "when");
                }
                Rule::attr_from => {
                    let s = self.source(attr.into_inner().nth(1).expect("grammar: from"));
                    let s = self.bounded(s, &p.name);
                    self.once(&mut p.source, s, aspan, "from");
                }
                _ => {}
            }
        }
        p
    }

    fn instance(&mut self, pair: Pair<Rule>) -> Instance {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let name = self.ident(inner.next().expect("grammar: instance name"));
        let decl = self.ident(inner.next().expect("grammar: instance type"));
        let mut inst = Instance {
            name,
            decl,
            args: Vec::new(),
            repeat: None,
            at: None,
            when: None,
            span,
        };
        for attr in inner {
            let aspan = self.span(&attr);
            match attr.as_rule() {
                Rule::inst_args => inst.args = self.args(attr),
                Rule::repeat => {
                    let mut r = attr.into_inner();
                    let var = self.ident(r.next().expect("grammar: repeat var"));
                    let range = self.range(r.nth(1).expect("grammar: repeat range"));
                    inst.repeat = Some(Repeat { var, range });
                }
                Rule::attr_at => {
                    let s = attr.into_inner().nth(1).expect("grammar: at string");
                    if let Some(s) = self.string(s) {
                        self.once(&mut inst.at, s, aspan, "at");
                    }
                }
                Rule::attr_when => {
                    let e = self.expr(attr.into_inner().nth(1).expect("grammar: when"));
                    self.once(&mut inst.when, e, aspan, "when");
                }
                _ => {}
            }
        }
        inst
    }

    /// `column(parts = [a, b], unit = u)`: a kind and its arguments.
    fn shard_rule(&mut self, pair: Pair<Rule>) -> ShardRule {
        let mut inner = pair.into_inner();
        let kind = self.ident(inner.next().expect("grammar: shard rule kind"));
        let args = inner.next().map(|a| self.args(a)).unwrap_or_default();
        ShardRule { kind, args }
    }

    fn range(&mut self, pair: Pair<Rule>) -> Range {
        let mut r = pair.into_inner();
        let start = self.expr(r.next().expect("grammar: range start"));
        let end = self.expr(r.next().expect("grammar: range end"));
        Range { start, end }
    }

    fn shape(&mut self, pair: Pair<Rule>) -> Shape {
        let span = self.span(&pair);
        let dims = pair.into_inner().map(|e| self.expr(e)).collect();
        Spanned::new(dims, span)
    }

    fn source(&mut self, pair: Pair<Rule>) -> Source {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        if rule == Rule::src_let {
            return self.let_ref(pair);
        }
        let mut inner = pair.into_inner();
        let kind = match rule {
            Rule::src_name => {
                let template = self
                    .string(nx(&mut inner))
                    .unwrap_or_else(|| Spanned::new(String::new(), span));
                let shape = inner.next().map(|s| self.shape(s));
                SourceKind::Name { template, shape }
            }
            Rule::src_try => SourceKind::Try(inner.map(|s| self.source(s)).collect()),
            Rule::src_fuse => {
                let dim = self.expr(nx(&mut inner));
                let parts = inner.map(|s| self.source(s)).collect();
                SourceKind::Fuse { dim, parts }
            }
            Rule::src_stack => {
                let var = self.ident(nx(&mut inner));
                let _in = nx(&mut inner);
                let range = self.range(nx(&mut inner));
                let part = Box::new(self.source(nx(&mut inner)));
                SourceKind::Stack { var, range, part }
            }
            Rule::src_slice => {
                let source = Box::new(self.source(nx(&mut inner)));
                let dim = self.expr(nx(&mut inner));
                let range = self.range(nx(&mut inner));
                let step = inner
                    .next()
                    .map(|s| self.expr(s.into_inner().next().expect("grammar: step")));
                SourceKind::Slice {
                    source,
                    dim,
                    range,
                    step,
                }
            }
            Rule::src_split => {
                let source = Box::new(self.source(nx(&mut inner)));
                let dim = self.expr(nx(&mut inner));
                let part = self.expr(nx(&mut inner));
                let of = self.expr(nx(&mut inner));
                SourceKind::Split {
                    source,
                    dim,
                    part,
                    of,
                }
            }
            Rule::src_reshape => {
                let source = Box::new(self.source(nx(&mut inner)));
                let shape = self.shape(nx(&mut inner));
                SourceKind::Reshape { source, shape }
            }
            Rule::src_squeeze => {
                let source = Box::new(self.source(nx(&mut inner)));
                let dim = self.expr(nx(&mut inner));
                SourceKind::Squeeze { source, dim }
            }
            Rule::src_transpose => {
                let source = Box::new(self.source(nx(&mut inner)));
                let a = self.expr(nx(&mut inner));
                let b = self.expr(nx(&mut inner));
                SourceKind::Transpose { source, a, b }
            }
            Rule::src_tied => {
                let path = nx(&mut inner);
                let pspan = self.span(&path);
                let parts = path.into_inner().map(|p| p.as_str().to_string()).collect();
                SourceKind::Tied(Spanned::new(parts, pspan))
            }
            Rule::src_fp8_blocks => self.fp8_blocks(inner, span),
            Rule::src_stacked => {
                let var = self.ident(nx(&mut inner));
                let _in = nx(&mut inner);
                let range = self.range(nx(&mut inner));
                let source = Box::new(self.source(nx(&mut inner)));
                SourceKind::Stacked { var, range, source }
            }
            Rule::src_mxfp4 => {
                let blocks = self.string(nx(&mut inner));
                let scales = self.string(nx(&mut inner));
                let empty = || Spanned::new(String::new(), span);
                SourceKind::Mxfp4 {
                    blocks: blocks.unwrap_or_else(empty),
                    scales: scales.unwrap_or_else(empty),
                }
            }
            Rule::src_nvfp4 => SourceKind::Nvfp4(
                self.string(nx(&mut inner))
                    .unwrap_or_else(|| Spanned::new(String::new(), span)),
            ),
            Rule::src_bnb4 => {
                let mut name = nx(&mut inner).into_inner();
                let template = self
                    .string(nx(&mut name))
                    .unwrap_or_else(|| Spanned::new(String::new(), span));
                let shape = name.next().map(|s| self.shape(s));
                let blocksize = inner.next().map(|e| self.expr(e));
                SourceKind::Bnb4 {
                    template,
                    shape,
                    blocksize,
                }
            }
            _ => unreachable!("grammar: {rule:?} is not a source"),
        };
        Spanned::new(kind, span)
    }

    /// `fp8_blocks("name": [shape], scale_inv = "name", block = expr)`.
    fn fp8_blocks(&mut self, mut inner: pest::iterators::Pairs<Rule>, span: Span) -> SourceKind {
        let mut name = nx(&mut inner).into_inner();
        let template = self
            .string(nx(&mut name))
            .unwrap_or_else(|| Spanned::new(String::new(), span));
        let shape = name.next().map(|s| self.shape(s));
        let mut next = nx(&mut inner);
        let mut scale_inv = None;
        if next.as_rule() == Rule::fp8_scale_inv {
            scale_inv = next.into_inner().next().and_then(|s| self.string(s));
            next = nx(&mut inner);
        }
        let block = self.expr(next);
        SourceKind::Fp8Blocks {
            template,
            shape,
            scale_inv,
            block,
        }
    }
}
