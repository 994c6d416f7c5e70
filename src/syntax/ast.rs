//! The abstract syntax tree. Every node carries the span of its text.

use std::fmt;

use crate::source::{FileId, Span, Spanned};

pub type Ident = Spanned<String>;
pub type Expr = Spanned<ExprKind>;
pub type Source = Spanned<SourceKind>;
pub type Shape = Spanned<Vec<Expr>>;

/// One parsed `.wmap` file.
#[derive(Clone, Debug)]
pub struct File {
    pub id: FileId,
    pub uses: Vec<Spanned<String>>,
    /// `config` items at the top level: visible to every declaration.
    pub configs: Vec<ConfigItem>,
    pub decls: Vec<Decl>,
    /// The `use`s that name what they import, in source order (a subset of `uses`).
    pub use_lists: Vec<UseList>,
}

/// `use "path" { A, B }`: the path as in [`File::uses`] and the names it imports.
#[derive(Clone, Debug, PartialEq)]
pub struct UseList {
    pub path: Spanned<String>,
    pub names: Vec<Ident>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclKind {
    Module,
    Block,
    Model,
}

impl DeclKind {
    pub fn word(self) -> &'static str {
        match self {
            DeclKind::Module => "module",
            DeclKind::Block => "block",
            DeclKind::Model => "model",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Decl {
    pub kind: DeclKind,
    pub name: Ident,
    /// The HF `architectures` a model serves (`model Llama for "LlamaForCausalLM"`).
    pub serves: Vec<Spanned<String>>,
    /// Lexical parameters, in order: `module GatedExperts(gate = "gate_proj")`.
    pub params: Vec<DeclParam>,
    pub members: Vec<Member>,
    pub span: Span,
}

/// A declaration's parameter: a name and, unless every instance must give it, a default.
#[derive(Clone, Debug)]
pub struct DeclParam {
    pub name: Ident,
    pub default: Option<Expr>,
}

/// `name = value` at an instantiation.
#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Clone, Debug)]
pub enum Member {
    Config(ConfigItem),
    Param(Box<Param>),
    Instance(Box<Instance>),
    Ignore(Vec<Spanned<String>>),
    /// `match expr { pattern => Decl at "x", … }`: one instance chosen by value.
    Match(Box<Match>),
}

impl Member {
    /// The instances a member may declare: an instance's one, every arm of a match.
    pub fn instances(&self) -> Vec<&Instance> {
        match self {
            Member::Instance(i) => vec![i],
            Member::Match(m) => m.arms.iter().map(|a| &a.instance).collect(),
            Member::Config(_) | Member::Param(_) | Member::Ignore(_) => Vec::new(),
        }
    }
}

/// A `match` member. Every arm's instance carries its name (the match's, or the arm's
/// own), so checking an arm is checking an instance.
#[derive(Clone, Debug)]
pub struct Match {
    pub scrutinee: Expr,
    pub arms: Vec<MatchArm>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct MatchArm {
    pub patterns: Vec<Spanned<Pattern>>,
    pub instance: Instance,
}

/// What one arm matches: a string, an integer, or anything (`_`).
#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    Str(String),
    Int(i64),
    Any,
}

/// `config name = alt | alt | …`: the first alternative whose config keys are all present wins.
#[derive(Clone, Debug)]
pub struct ConfigItem {
    pub name: Ident,
    pub alternatives: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: Ident,
    pub shape: Shape,
    pub quantizable: Option<Span>,
    pub optional: Option<Span>,
    pub dtype: Option<Ident>,
    pub offload_group: Option<Expr>,
    /// `shard column(parts = […], unit = …)`, `shard experts, row`: the rules in order.
    pub shard: Option<Vec<ShardRule>>,
    pub when: Option<Expr>,
    pub source: Option<Source>,
    pub span: Span,
}

/// One rule of a `shard` attribute: its kind (`column`, `row`, `experts`) and its
/// arguments (`parts`, `unit`), checked by `check`.
#[derive(Clone, Debug)]
pub struct ShardRule {
    pub kind: Ident,
    pub args: Vec<Arg>,
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub name: Ident,
    pub decl: Ident,
    /// Arguments for the declaration's parameters, by name.
    pub args: Vec<Arg>,
    pub repeat: Option<Repeat>,
    pub at: Option<Spanned<String>>,
    pub when: Option<Expr>,
    pub span: Span,
}

/// `[layer in 0..num_hidden_layers]`
#[derive(Clone, Debug)]
pub struct Repeat {
    pub var: Ident,
    pub range: Range,
}

#[derive(Clone, Debug)]
pub struct Range {
    pub start: Expr,
    pub end: Expr,
}

#[derive(Clone, Debug)]
pub enum SourceKind {
    /// A checkpoint tensor name (a template with `{var}` holes), with an optional expected shape.
    Name {
        template: Spanned<String>,
        shape: Option<Shape>,
    },
    /// Fallbacks: the first alternative whose tensors all exist wins.
    Try(Vec<Source>),
    Fuse {
        dim: Expr,
        parts: Vec<Source>,
    },
    Stack {
        var: Ident,
        range: Range,
        part: Box<Source>,
    },
    Slice {
        source: Box<Source>,
        dim: Expr,
        range: Range,
        step: Option<Expr>,
    },
    Split {
        source: Box<Source>,
        dim: Expr,
        part: Expr,
        of: Expr,
    },
    Reshape {
        source: Box<Source>,
        shape: Shape,
    },
    Squeeze {
        source: Box<Source>,
        dim: Expr,
    },
    Transpose {
        source: Box<Source>,
        a: Expr,
        b: Expr,
    },
    Tied(Spanned<Vec<String>>),
    /// Fine-grained FP8 stored on disk: E4M3 codes in `template` and their f32
    /// dequantization multipliers in `scale_inv`, one per `block` tile (`[rows, cols]`).
    Fp8Blocks {
        template: Spanned<String>,
        shape: Option<Shape>,
        /// `None`: the name with `_scale_inv` appended (transformers' convention).
        scale_inv: Option<Spanned<String>>,
        block: Expr,
    },
    /// bitsandbytes 4-bit stored on disk: packed codes in `template`, the companions
    /// (`absmax`, `quant_map`, `quant_state.*`, `nested_*`) beside it.
    /// A tensor already stacked on disk: `source` gives the whole `[count, …]` tensor and
    /// `var` names its slices along dim 0 (for per-slice offload groups).
    Stacked {
        var: Ident,
        range: Range,
        source: Box<Source>,
    },
    /// MXFP4 stored on disk: E2M1 codes in `blocks`, E8M0 scales in `scales`.
    Mxfp4 {
        blocks: Spanned<String>,
        scales: Spanned<String>,
    },
    /// ModelOpt NVFP4 stored on disk: packed codes in `template`, the scales beside it.
    Nvfp4(Spanned<String>),
    Bnb4 {
        template: Spanned<String>,
        shape: Option<Shape>,
        /// `None`: bitsandbytes' default, 64.
        blocksize: Option<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    List(Vec<Expr>),
    /// A config symbol, an index variable, or a dotted config key path.
    Name(Vec<String>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Index(Box<Expr>, Box<Expr>),
    /// A built-in function: `len`, `min`, `max`, `ceil_div`.
    Call(Ident, Vec<Expr>),
    /// `if cond then yes else no`: only the chosen branch is evaluated.
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `value is [not] type`.
    Is(Box<Expr>, TypeTest),
}

/// The right side of `is`: a type, possibly negated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeTest {
    pub negated: bool,
    pub ty: TypeName,
}

/// The types a config value can have, as `is` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeName {
    /// `null`, or a key config.json does not have.
    Null,
    Int,
    Float,
    String,
    Bool,
    List,
    Object,
}

impl TypeName {
    /// Every type name with its spelling, for parsing and suggestions.
    pub const ALL: [(&'static str, TypeName); 7] = [
        ("null", TypeName::Null),
        ("int", TypeName::Int),
        ("float", TypeName::Float),
        ("string", TypeName::String),
        ("bool", TypeName::Bool),
        ("list", TypeName::List),
        ("object", TypeName::Object),
    ];

    pub fn from_name(name: &str) -> Option<TypeName> {
        TypeName::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
    }

    pub fn name(self) -> &'static str {
        TypeName::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("null", |(n, _)| n)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::NotIn => "not in",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }

    /// Binding strength; higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 4,
            BinOp::In | BinOp::NotIn => 4,
            BinOp::Add | BinOp::Sub => 5,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 6,
        }
    }
}

/// Canonical text of an expression: fully parenthesised only where needed.
impl fmt::Display for ExprKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn operand(
            f: &mut fmt::Formatter<'_>,
            e: &ExprKind,
            outer: u8,
            right: bool,
        ) -> fmt::Result {
            match e {
                ExprKind::Binary(op, ..)
                    if op.precedence() < outer || (right && op.precedence() == outer) =>
                {
                    write!(f, "({e})")
                }
                // `is` binds between comparisons (4) and `+` (5).
                ExprKind::Is(..) if outer > 4 || (right && outer == 4) => write!(f, "({e})"),
                // The `else` branch would swallow whatever follows.
                ExprKind::Cond(..) if outer > 0 => write!(f, "({e})"),
                _ => write!(f, "{e}"),
            }
        }
        match self {
            ExprKind::Int(v) => write!(f, "{v}"),
            ExprKind::Float(v) => write!(f, "{v:?}"),
            ExprKind::Str(s) => write!(f, "{s:?}"),
            ExprKind::Bool(b) => write!(f, "{b}"),
            ExprKind::Null => write!(f, "null"),
            ExprKind::List(items) => {
                write!(f, "[")?;
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}", e.node)?;
                }
                write!(f, "]")
            }
            ExprKind::Name(path) => write!(f, "{}", path.join(".")),
            ExprKind::Unary(UnOp::Neg, e) => {
                write!(f, "-")?;
                operand(f, &e.node, 7, false)
            }
            ExprKind::Unary(UnOp::Not, e) => {
                write!(f, "not ")?;
                operand(f, &e.node, 3, false)
            }
            ExprKind::Binary(op, a, b) => {
                operand(f, &a.node, op.precedence(), false)?;
                write!(f, " {} ", op.symbol())?;
                operand(f, &b.node, op.precedence(), true)
            }
            ExprKind::Call(func, args) => {
                let args: Vec<String> = args.iter().map(|a| a.node.to_string()).collect();
                write!(f, "{}({})", func.node, args.join(", "))
            }
            ExprKind::Index(a, i) => {
                operand(f, &a.node, 8, false)?;
                write!(f, "[{}]", i.node)
            }
            ExprKind::Cond(c, a, b) => {
                write!(f, "if {} then {} else {}", c.node, a.node, b.node)
            }
            ExprKind::Is(e, test) => {
                operand(f, &e.node, 5, false)?;
                let not = if test.negated { "not " } else { "" };
                write!(f, " is {not}{}", test.ty.name())
            }
        }
    }
}
