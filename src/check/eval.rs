//! Expression evaluation against a config, with the config keys behind every value.
//!
//! Names resolve, innermost first: index variables of the enclosing repeats and stacks;
//! `config` items of the enclosing declarations (a declaration sees the items of every
//! declaration that instantiates it, nearer ones shadowing outer ones); top-level
//! `config` items; finally the raw `config.json` key. Inside its own alternatives a
//! `config` item's name means the next definition outward (usually the raw key), so
//! `config head_dim = head_dim | hidden_size / num_attention_heads` reads naturally.

use std::collections::{BTreeMap, BTreeSet};

use super::value::{Origin, Val, Value};
use crate::config::Config;
use crate::diag::{Code, Diagnostic};
use crate::resolve::Program;
use crate::source::Span;
use crate::syntax::ast::{self, BinOp, ExprKind, UnOp};

/// How an index variable is bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Binding {
    /// A repeat variable, bound to the current index.
    Index(i64),
    /// A stack variable: it names tensors and offload groups but has no single value.
    Stack,
}

/// One level of instantiation: the `config` items its declaration holds and the
/// index variable it binds.
#[derive(Clone, Debug)]
pub struct Frame<'p> {
    /// The declaration's name: scoped `config` items are recorded as `Decl.item`.
    pub owner: &'p str,
    pub configs: Vec<&'p ast::ConfigItem>,
    pub vars: Vec<(String, Binding)>,
    /// The declaration's parameters with their values (arguments or defaults): seen
    /// by this frame's own expressions only, never by the frames it instantiates.
    pub params: Vec<(String, Val)>,
}

#[derive(Clone, Debug, Default)]
pub struct Scope<'p> {
    pub frames: Vec<Frame<'p>>,
}

impl<'p> Scope<'p> {
    pub fn var(&self, name: &str) -> Option<Binding> {
        self.frames
            .iter()
            .rev()
            .flat_map(|f| f.vars.iter().rev())
            .find(|(n, _)| n == name)
            .map(|(_, b)| *b)
    }

    /// A parameter of the innermost declaration: parameters are lexical.
    pub fn param(&self, name: &str) -> Option<&Val> {
        let frame = self.frames.last()?;
        frame.params.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn var_names(&self) -> Vec<&str> {
        self.frames
            .iter()
            .flat_map(|f| f.vars.iter().map(|(n, _)| n.as_str()))
            .collect()
    }

    /// The repeat variables in scope with their current values, outermost first.
    pub fn indices(&self) -> Vec<(String, i64)> {
        self.frames
            .iter()
            .flat_map(|f| f.vars.iter())
            .filter_map(|(n, b)| match b {
                Binding::Index(i) => Some((n.clone(), *i)),
                Binding::Stack => None,
            })
            .collect()
    }

    pub fn with_var(&self, name: &str, b: Binding) -> Scope<'p> {
        let mut s = self.clone();
        if let Some(f) = s.frames.last_mut() {
            f.vars.push((name.to_string(), b));
        }
        s
    }
}

/// Why an evaluation stopped.
#[derive(Debug)]
pub enum Stop {
    /// A name has no definition and no config key; config alternatives skip past this.
    Missing {
        name: String,
        span: Span,
    },
    Diag(Box<Diagnostic>),
}

impl From<Diagnostic> for Stop {
    fn from(d: Diagnostic) -> Stop {
        Stop::Diag(Box::new(d))
    }
}

pub type EvalResult = Result<Val, Stop>;

pub struct Evaluator<'a> {
    pub program: &'a Program,
    pub config: &'a Config,
    /// Every config symbol and key an evaluation read, with its value: the IR's `config`.
    pub used: BTreeMap<String, Value>,
    /// `config` items that fell through to a non-key default (reported once each).
    pub defaults: Vec<Diagnostic>,
    /// Defaults the stdlib's own `config` items fell back to: the config's schema, not news,
    /// so reported as notes (`key = value`) rather than warnings.
    pub schema_defaults: BTreeMap<String, String>,
    defaults_seen: BTreeSet<Span>,
    /// (rebinding item, reading declaration) pairs already reported as W0202.
    rebinds_seen: BTreeSet<(Span, String)>,
    /// `config` items being evaluated: they do not see themselves.
    active: Vec<Span>,
    /// Expression levels being evaluated, through `config` items: see [`MAX_EVAL_DEPTH`].
    depth: u32,
    /// Nodes evaluated since the outermost evaluation began: see [`MAX_EVAL_STEPS`].
    steps: u64,
    /// Index variables whose value an evaluation read. The checker clears it around a
    /// repeated body: a body that reads no index variable is the same at every index.
    pub index_reads: BTreeSet<String>,
}

/// How deep evaluation may nest, counting every expression level and every `config`
/// item it passes through. The parser bounds one expression at 256 levels; this bounds
/// chains of items (`config a2 = a1 + 1`, `config a1 = a0 + 1`, …) so that hostile
/// input ends in E0305 rather than a stack overflow.
pub const MAX_EVAL_DEPTH: u32 = 256;

/// How many expression nodes one outermost evaluation may visit. `config` items are
/// not memoised (their value depends on the scope), so `config a2 = a1 + a1` chains
/// grow exponentially; this bounds them (E0306).
pub const MAX_EVAL_STEPS: u64 = 1_000_000;

impl<'a> Evaluator<'a> {
    pub fn new(program: &'a Program, config: &'a Config) -> Evaluator<'a> {
        Evaluator {
            program,
            config,
            used: BTreeMap::new(),
            defaults: Vec::new(),
            schema_defaults: BTreeMap::new(),
            defaults_seen: BTreeSet::new(),
            rebinds_seen: BTreeSet::new(),
            active: Vec::new(),
            depth: 0,
            steps: 0,
            index_reads: BTreeSet::new(),
        }
    }

    /// Turns a missing name into E0301 with a suggestion.
    pub fn finish<T>(&self, r: Result<T, Stop>, scope: &Scope) -> Result<T, Diagnostic> {
        r.map_err(|stop| match stop {
            Stop::Diag(d) => *d,
            Stop::Missing { name, span } => {
                let mut candidates: Vec<&str> = self.config.keys();
                candidates.extend(scope.var_names());
                for f in &scope.frames {
                    candidates.extend(f.configs.iter().map(|c| c.name.node.as_str()));
                }
                candidates.extend(self.program.globals.iter().map(|c| c.name.node.as_str()));
                Diagnostic::new(Code::E0301, format!("unknown config symbol `{name}`"))
                    .at(span, "not a config key, `config` item or index variable")
                    .with_note("config.json has no such key, and no `config` item defines it")
                    .suggest(&name, candidates)
            }
        })
    }

    /// Evaluates `e`, within the depth and step limits.
    pub fn eval(&mut self, e: &ast::Expr, scope: &Scope<'a>) -> EvalResult {
        if self.depth == 0 {
            self.steps = 0;
        }
        self.steps += 1;
        if self.depth >= MAX_EVAL_DEPTH {
            return Err(self.too_deep(e.span));
        }
        if self.steps > MAX_EVAL_STEPS {
            return Err(too_long(e.span));
        }
        self.depth += 1;
        let r = self.eval_node(e, scope);
        self.depth -= 1;
        r
    }

    fn too_deep(&self, span: Span) -> Stop {
        let d = Diagnostic::new(
            Code::E0305,
            format!("evaluation nests more than {MAX_EVAL_DEPTH} levels deep"),
        )
        .at(span, "given up here");
        let d = match self.active.len() {
            0 | 1 => d,
            n => d.with_note(format!(
                "reached through a chain of {n} `config` items, each using the next"
            )),
        };
        d.into()
    }

    // Deep evaluation recurses through here: arms that build diagnostics live in their
    // own functions so that this frame (unoptimised builds give every temporary its own
    // slot) stays small.
    fn eval_node(&mut self, e: &ast::Expr, scope: &Scope<'a>) -> EvalResult {
        match &e.node {
            ExprKind::Int(i) => Ok(Val::plain(Value::Int(*i))),
            ExprKind::Float(f) => Ok(Val::plain(Value::Float(*f))),
            ExprKind::Str(s) => Ok(Val::plain(Value::Str(s.clone()))),
            ExprKind::Bool(b) => Ok(Val::plain(Value::Bool(*b))),
            ExprKind::Null => Ok(Val::plain(Value::Null)),
            ExprKind::List(items) => self.list(items, scope),
            ExprKind::Name(path) => self.name(path, e.span, scope),
            ExprKind::Unary(op, inner) => self.unary(*op, inner, e.span, scope),
            ExprKind::Binary(op, a, b) => self.binary(*op, a, b, e.span, scope),
            ExprKind::Call(func, args) => self.call(func, args, e.span, scope),
            ExprKind::Index(base, index) => self.index(base, index, e.span, scope),
            ExprKind::Cond(c, yes, no) => self.cond(c, yes, no, scope),
            ExprKind::Is(inner, test) => self.is(inner, *test, scope),
        }
    }

    /// `if c then yes else no`: the branch not taken is never evaluated, so it may
    /// name keys the config does not have.
    fn cond(
        &mut self,
        c: &ast::Expr,
        yes: &ast::Expr,
        no: &ast::Expr,
        scope: &Scope<'a>,
    ) -> EvalResult {
        let v = self.eval(c, scope)?;
        let Value::Bool(b) = v.value else {
            return Err(type_error(c.span, "a boolean condition", &v).into());
        };
        let chosen = self.eval(if b { yes } else { no }, scope)?;
        Ok(chosen.with_origins(&v.origins))
    }

    /// `x is [not] type`. A name with no definition tests as `null`: config.json
    /// writes an absent optional key either way (`q_lora_rank: null` or no key).
    fn is(&mut self, inner: &ast::Expr, test: ast::TypeTest, scope: &Scope<'a>) -> EvalResult {
        let (holds, origins) = match self.eval(inner, scope) {
            Ok(v) => (type_matches(&v.value, test.ty), v.origins),
            Err(Stop::Missing { .. }) => (test.ty == ast::TypeName::Null, Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(Val::plain(Value::Bool(holds != test.negated)).with_origins(&origins))
    }

    fn unary(&mut self, op: UnOp, inner: &ast::Expr, span: Span, scope: &Scope<'a>) -> EvalResult {
        let v = self.eval(inner, scope)?;
        unary(op, v, inner.span, span)
    }

    fn index(
        &mut self,
        base: &ast::Expr,
        index: &ast::Expr,
        span: Span,
        scope: &Scope<'a>,
    ) -> EvalResult {
        let b = self.eval(base, scope)?;
        let i = self.eval(index, scope)?;
        index_into(b, i, base.span, index.span, span)
    }

    fn list(&mut self, items: &[ast::Expr], scope: &Scope<'a>) -> EvalResult {
        let mut out = Vec::with_capacity(items.len());
        let mut origins = Vec::new();
        for i in items {
            let v = self.eval(i, scope)?;
            origins.extend(v.origins);
            out.push(v.value);
        }
        Ok(Val::plain(Value::List(out)).with_origins(&origins))
    }

    fn name(&mut self, path: &[String], span: Span, scope: &Scope<'a>) -> EvalResult {
        if let [name] = path {
            if let Some(v) = scope.param(name) {
                return Ok(v.clone());
            }
            match scope.var(name) {
                Some(Binding::Index(i)) => {
                    if !self.index_reads.contains(name) {
                        self.index_reads.insert(name.clone());
                    }
                    return Ok(Val::plain(Value::Int(i)));
                }
                Some(Binding::Stack) => return Err(stack_var(name, span)),
                None => {}
            }
            if let Some((depth, item)) = self.find_item(name, scope) {
                self.note_inherited(item, depth, span, scope);
                return self.scoped_item(item, depth, span, scope);
            }
        }
        self.config_key(path, span)
    }

    /// W0202: an expression of one declaration reads a `config` item that an enclosing
    /// declaration rebinds (one that shadows a top-level item or a config key). The
    /// rebinding reaches it by dynamic scope, not because it asked: pass a module
    /// parameter instead. Reported once per item and reading declaration.
    fn note_inherited(
        &mut self,
        item: &'a ast::ConfigItem,
        depth: usize,
        span: Span,
        scope: &Scope<'a>,
    ) {
        let Some(owner) = depth.checked_sub(1).and_then(|d| scope.frames.get(d)) else {
            return; // A top-level item: visible everywhere by design.
        };
        // The reader is the declaration whose text holds the name: an instance's `when`
        // is evaluated with the child's frame innermost but written in the parent.
        let program = self.program;
        let holds = |f: &&Frame| {
            program.lookup(f.owner).is_some_and(|id| {
                let d = program.decl(id).span;
                d.file == span.file && d.start <= span.start && span.end <= d.end
            })
        };
        let Some(at) = scope.frames.iter().rposition(|f| holds(&f)) else {
            return;
        };
        let reader = &scope.frames[at];
        if at < depth || owner.owner == reader.owner {
            return; // The declaration's own item, or an outer one reading it.
        }
        let name = item.name.node.as_str();
        let shadows = self.config.lookup(&[name.to_string()]).is_some()
            || self.program.globals.iter().any(|g| g.name.node == name);
        if !shadows
            || !self
                .rebinds_seen
                .insert((item.span, reader.owner.to_string()))
        {
            return;
        }
        self.defaults.push(
            Diagnostic::new(
                Code::W0202,
                format!(
                    "`{}` reads `{name}` as rebound by `{}`, not the config's",
                    reader.owner, owner.owner
                ),
            )
            .at(
                span,
                format!("`{name}` here is `{}`'s rebinding", owner.owner),
            )
            .with_label(item.name.span, "rebound here, for everything below")
            .with_help(format!(
                "give `{}` a parameter and pass the value (`{}({name} = …)`), or rename the item",
                reader.owner, reader.owner
            )),
        );
    }

    /// A `config` item that sees the first `depth` frames of `scope`.
    fn scoped_item(
        &mut self,
        item: &'a ast::ConfigItem,
        depth: usize,
        span: Span,
        scope: &Scope<'a>,
    ) -> EvalResult {
        let inner = Scope {
            frames: scope.frames[..depth].to_vec(),
        };
        let v = self.item(item, span, &inner)?;
        let name = &item.name.node;
        let key = match depth {
            0 => name.clone(),
            d => format!("{}.{name}", scope.frames[d - 1].owner),
        };
        self.used.insert(key, v.value.clone());
        Ok(v)
    }

    fn config_key(&mut self, path: &[String], span: Span) -> EvalResult {
        match self.config.lookup(path) {
            Some(found) => {
                let value = Value::from_json(found.value);
                self.used.insert(found.key.clone(), value.clone());
                let shown = value.to_string();
                Ok(Val::plain(value).with_origins(&[Origin {
                    key: found.key,
                    span: found.key_span,
                    shown,
                }]))
            }
            None => Err(Stop::Missing {
                name: path.join("."),
                span,
            }),
        }
    }

    /// The innermost visible, not-currently-evaluating `config` item called `name`, and
    /// how many frames its evaluation may see.
    fn find_item(&self, name: &str, scope: &Scope<'a>) -> Option<(usize, &'a ast::ConfigItem)> {
        for (depth, frame) in scope.frames.iter().enumerate().rev() {
            if let Some(item) = frame
                .configs
                .iter()
                .find(|c| c.name.node == name && !self.active.contains(&c.span))
            {
                return Some((depth + 1, item));
            }
        }
        self.program
            .globals
            .iter()
            .find(|c| c.name.node == name && !self.active.contains(&c.span))
            .map(|c| (0, c))
    }

    fn item(&mut self, item: &'a ast::ConfigItem, use_span: Span, scope: &Scope<'a>) -> EvalResult {
        self.active.push(item.span);
        let result = self.alternatives(item, use_span, scope);
        self.active.pop();
        result
    }

    fn alternatives(
        &mut self,
        item: &'a ast::ConfigItem,
        use_span: Span,
        scope: &Scope<'a>,
    ) -> EvalResult {
        // Whether the first alternative was a `null` rather than absent: the warning
        // must not say "no key" for a key that is there.
        let mut first_null = false;
        for (i, alt) in item.alternatives.iter().enumerate() {
            match self.eval(alt, scope) {
                Ok(v) if v.value == Value::Null => first_null |= i == 0,
                Ok(v) => {
                    if i > 0 {
                        self.note_default(item, alt, &v, first_null);
                    }
                    return Ok(v);
                }
                Err(Stop::Missing { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Stop::Missing {
            name: item.name.node.clone(),
            span: use_span,
        })
    }

    /// Records that `item` fell back to its `alt`ernative: a note for the stdlib's own
    /// schema defaults, a warning (once per item) for a user's.
    fn note_default(&mut self, item: &'a ast::ConfigItem, alt: &ast::Expr, v: &Val, null: bool) {
        let first_is_key = matches!(item.alternatives[0].node, ExprKind::Name(_));
        let is_key = matches!(alt.node, ExprKind::Name(_));
        if !first_is_key || is_key {
            return;
        }
        // The stdlib's defaults are the schema's (Mistral has no `attention_bias`
        // key because it has no biases); only a user's defaults are news.
        let user_item = !self.program.stdlib_files.contains(&item.span.file);
        if !user_item {
            self.schema_defaults
                .insert(item.alternatives[0].node.to_string(), v.value.to_string());
        } else if self.defaults_seen.insert(item.span) {
            let shown = if v.origins.is_empty() {
                format!("`{}`", alt.node)
            } else {
                format!("`{}` = {}", alt.node, v.value)
            };
            let key = &item.alternatives[0].node;
            let what = if null {
                format!("`{key}` is null in config.json")
            } else {
                format!("config.json has no `{key}`")
            };
            self.defaults.push(
                Diagnostic::new(Code::W0301, format!("{what}; using the default {shown}"))
                    .at(alt.span, "default used")
                    .with_labels(v.labels()),
            );
        }
    }

    fn call(
        &mut self,
        func: &ast::Ident,
        args: &[ast::Expr],
        span: Span,
        scope: &Scope<'a>,
    ) -> EvalResult {
        let mut vals = Vec::with_capacity(args.len());
        for a in args {
            vals.push(self.eval(a, scope)?);
        }
        let origins: Vec<Origin> = vals.iter().flat_map(|v| v.origins.clone()).collect();
        let arity = |n: usize| -> Result<(), Stop> {
            if vals.len() == n {
                Ok(())
            } else {
                Err(Diagnostic::new(
                    Code::E0405,
                    format!("`{}` takes {n} argument(s), got {}", func.node, vals.len()),
                )
                .at(span, "wrong number of arguments")
                .into())
            }
        };
        let value = match func.node.as_str() {
            "len" => {
                arity(1)?;
                match &vals[0].value {
                    Value::Str(s) => Value::Int(s.chars().count() as i64),
                    Value::List(l) => Value::Int(l.len() as i64),
                    _ => return Err(type_error(args[0].span, "a string or list", &vals[0]).into()),
                }
            }
            "min" | "max" => {
                arity(2)?;
                match (&vals[0].value, &vals[1].value) {
                    (Value::Int(a), Value::Int(b)) => Value::Int(if func.node == "min" {
                        *a.min(b)
                    } else {
                        *a.max(b)
                    }),
                    (Value::Int(_), _) => {
                        return Err(type_error(args[1].span, "an integer", &vals[1]).into())
                    }
                    _ => return Err(type_error(args[0].span, "an integer", &vals[0]).into()),
                }
            }
            "ceil_div" => {
                arity(2)?;
                ceil_div(&vals[0], &vals[1], args[0].span, args[1].span)?
            }
            other => {
                return Err(
                    Diagnostic::new(Code::E0405, format!("unknown function `{other}`"))
                        .at(
                            func.span,
                            "built-in functions are `len`, `min`, `max` and `ceil_div`",
                        )
                        .suggest(other, ["len", "min", "max", "ceil_div"])
                        .into(),
                )
            }
        };
        Ok(Val::plain(value).with_origins(&origins))
    }

    fn binary(
        &mut self,
        op: BinOp,
        a: &ast::Expr,
        b: &ast::Expr,
        span: Span,
        scope: &Scope<'a>,
    ) -> EvalResult {
        let x = self.eval(a, scope)?;
        if matches!(op, BinOp::And | BinOp::Or) {
            return self.logic(op, x, a.span, b, scope);
        }
        let y = self.eval(b, scope)?;
        combine(op, x, y, a.span, b.span, span)
    }

    /// `and` / `or` short-circuit, so a guard can protect a lookup: `n > 0 and xs[n - 1] == 1`.
    fn logic(
        &mut self,
        op: BinOp,
        x: Val,
        sa: Span,
        b: &ast::Expr,
        scope: &Scope<'a>,
    ) -> EvalResult {
        let Value::Bool(l) = x.value else {
            return Err(type_error(sa, "a boolean", &x).into());
        };
        if (op == BinOp::And && !l) || (op == BinOp::Or && l) {
            return Ok(x);
        }
        let y = self.eval(b, scope)?;
        match y.value {
            Value::Bool(_) => Ok(y.with_origins(&x.origins)),
            _ => Err(type_error(b.span, "a boolean", &y).into()),
        }
    }
}

fn type_matches(v: &Value, ty: ast::TypeName) -> bool {
    use ast::TypeName as T;
    matches!(
        (v, ty),
        (Value::Null, T::Null)
            | (Value::Int(_), T::Int)
            | (Value::Float(_), T::Float)
            | (Value::Str(_), T::String)
            | (Value::Bool(_), T::Bool)
            | (Value::List(_), T::List)
            | (Value::Object, T::Object)
    )
}

fn combine(op: BinOp, x: Val, y: Val, sa: Span, sb: Span, span: Span) -> EvalResult {
    let origins: Vec<Origin> = x.origins.iter().chain(&y.origins).cloned().collect();
    let value = super::ops::apply(op, &x, &y, sa, sb, span)?;
    Ok(Val::plain(value).with_origins(&origins))
}

/// `ceil_div(a, b)`: ⌈a / b⌉ for a ≥ 0 and b > 0, as Mamba's `"auto"` dt rank
/// (⌈hidden / 16⌉) needs; `/` itself only divides exactly.
fn ceil_div(a: &Val, b: &Val, sa: Span, sb: Span) -> Result<Value, Stop> {
    let Value::Int(x) = a.value else {
        return Err(type_error(sa, "an integer", a).into());
    };
    let Value::Int(y) = b.value else {
        return Err(type_error(sb, "an integer", b).into());
    };
    if x < 0 || y <= 0 {
        let d = Diagnostic::new(Code::E0405, "`ceil_div` takes a ≥ 0 and b > 0")
            .at(if x < 0 { sa } else { sb }, "out of range")
            .with_labels(a.labels())
            .with_labels(b.labels());
        return Err(d.into());
    }
    // x ≥ 0 and y ≥ 1, so x / y + (x % y != 0) cannot overflow.
    Ok(Value::Int(x / y + i64::from(x % y != 0)))
}

fn too_long(span: Span) -> Stop {
    Diagnostic::new(
        Code::E0306,
        format!("evaluating this takes more than {MAX_EVAL_STEPS} steps"),
    )
    .at(span, "given up here")
    .with_note("`config` items are re-evaluated at every use; a chain that uses each item twice doubles the work per link")
    .into()
}

fn stack_var(name: &str, span: Span) -> Stop {
    Diagnostic::new(
        Code::E0204,
        format!("stack variable `{name}` has no single value here"),
    )
    .at(span, "only tensor names and `offload_group` may use it")
    .into()
}

fn unary(op: UnOp, v: Val, inner: Span, span: Span) -> EvalResult {
    let value = match (op, &v.value) {
        (UnOp::Neg, Value::Int(i)) => {
            Value::Int(i.checked_neg().ok_or_else(|| overflow(span, &v))?)
        }
        (UnOp::Neg, Value::Float(f)) => Value::Float(-f),
        (UnOp::Not, Value::Bool(b)) => Value::Bool(!b),
        _ => {
            let want = if op == UnOp::Not {
                "a boolean"
            } else {
                "a number"
            };
            return Err(type_error(inner, want, &v).into());
        }
    };
    Ok(Val {
        value,
        origins: v.origins,
    })
}

/// `base[index]` on a string (by character) or a list.
fn index_into(b: Val, i: Val, base: Span, index: Span, span: Span) -> EvalResult {
    let Value::Int(ix) = i.value else {
        return Err(type_error(index, "an integer index", &i).into());
    };
    let origins: Vec<Origin> = b.origins.iter().chain(&i.origins).cloned().collect();
    let (len, item) = match &b.value {
        Value::Str(s) => {
            let c = usize::try_from(ix).ok().and_then(|k| s.chars().nth(k));
            (s.chars().count(), c.map(|c| Value::Str(c.to_string())))
        }
        Value::List(l) => {
            let v = usize::try_from(ix).ok().and_then(|k| l.get(k)).cloned();
            (l.len(), v)
        }
        _ => return Err(type_error(base, "a string or list", &b).into()),
    };
    match item {
        Some(v) => Ok(Val::plain(v).with_origins(&origins)),
        None => Err(Diagnostic::new(
            Code::E0406,
            format!(
                "index {ix} is out of range for a {} of length {len}",
                b.value.type_name()
            ),
        )
        .at(span, format!("valid indices are 0..{len}"))
        .with_labels(Val::plain(Value::Null).with_origins(&origins).labels())
        .into()),
    }
}

pub fn overflow(span: Span, v: &Val) -> Diagnostic {
    Diagnostic::new(Code::E0411, "integer overflow")
        .at(span, "this overflows 64-bit integers")
        .with_labels(v.labels())
}

/// A value of the wrong type: E0303 when it came straight from the config, else E0405.
pub fn type_error(span: Span, want: &str, got: &Val) -> Diagnostic {
    // A raw config value passing through unchanged: the config, not the .wmap, is at odds.
    let from_config = matches!(got.origins.as_slice(), [o] if o.shown == got.value.to_string());
    let code = if from_config {
        Code::E0303
    } else {
        Code::E0405
    };
    let found = match got.value {
        Value::Null => "`null`".to_string(),
        _ => format!("{} `{}`", got.value.type_name(), got.value),
    };
    let name = got.value.type_name();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    Diagnostic::new(code, format!("expected {want}, found {found}"))
        .at(span, format!("this is {article} {name}"))
        .with_labels(got.labels())
}
