//! The IR: a model bound to one config, hierarchical and compact.
//!
//! Model → instances (repeated ones keep a count and their distinct bodies, not one copy
//! per index) → params with concrete shapes and a source tree. Stacks stay symbolic.
//! Serialization is deterministic (ordered fields, ordered maps) and versioned by
//! [`IR_VERSION`]; spans live in a side table ([`Spans`]), not in the JSON, so
//! reformatting a `.wmap` file does not change the IR.
//!
//! Everything that crosses into later phases is typed: dtypes are a [`DType`] enum and
//! offload groups a [`GroupExpr`] tree, never text to re-parse. Sizes go through the
//! checked [`numel`] / [`byte_size`]; [`limits`] holds the caps the checker enforces,
//! and [`validate`] re-establishes them for an IR read from JSON.

pub mod shard;
pub mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped on every change to the JSON shape of the IR.
pub const IR_VERSION: u32 = 4;

/// Limits on what a config may ask for. Config values are untrusted numbers: without
/// caps, `num_hidden_layers = 1e9` would have the checker and the planner allocate per
/// layer. Each is far above any real model; exceeding one is E0412.
pub mod limits {
    /// Indices of one repeat (`layers: Block[layer in 0..num_hidden_layers]`).
    pub const MAX_REPEAT: u64 = 65_536;
    /// Slices of one `stack(expert in 0..num_experts, …)`.
    pub const MAX_STACK: u64 = 65_536;
    /// Elements of one tensor: 2^48, so that a byte size (at most 8 bytes an element)
    /// and any offset into it fit comfortably in 64 bits.
    pub const MAX_NUMEL: u64 = 1 << 48;
    /// Checkpoint tensors one model may name, after expanding repeats and stacks.
    pub const MAX_TENSORS: u64 = 4_194_304;
}

/// The element count of a shape, or `None` when it overflows 64 bits. Every phase
/// computes sizes through this (or [`byte_size`]) rather than a bare `product()`.
pub fn numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// Bytes of a tensor of `shape` with `elem` bytes an element, or `None` on overflow.
pub fn byte_size(shape: &[u64], elem: u64) -> Option<u64> {
    numel(shape)?.checked_mul(elem)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ir {
    pub ir_version: u32,
    pub model: String,
    pub architectures: Vec<String>,
    /// Every config key and `config` item the model read, with its value. Items declared
    /// inside a declaration are keyed `Decl.item`; top-level items and raw keys by name.
    pub config: BTreeMap<String, serde_json::Value>,
    pub root: Body,
}

/// What one instance (or the model) holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Body {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<Instance>,
    /// Checkpoint-name patterns deliberately not loaded (`*` matches anything).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub module: String,
    /// Checkpoint-name prefix (a template: `model.layers.{layer}`).
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Repeat>,
    /// One variant for a plain instance; for a repeat, one per distinct body with the
    /// indices that have it. Indices whose `when` is false appear in none.
    pub variants: Vec<Variant>,
    /// For repeats with several variants: each index's kind (see [`Variant::kind`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Repeat {
    pub var: String,
    pub start: i64,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Half-open index ranges `[start, end)` that have this body; empty for a plain instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indices: Vec<[i64; 2]>,
    /// The names of the `when`-guarded members present, joined by `+` (`mamba`, `moe`);
    /// empty when the body has no guarded members.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Param {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: DType,
    pub quantizable: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_group: Option<OffloadGroup>,
    /// How the param splits across TP / EP ranks; `None`: replicated (version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<shard::Shard>,
    pub source: Source,
}

/// The dtype a param is loaded as (`dtype = f32`; bf16 by default). Serialized as the
/// name the language uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DType {
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f8_e4m3")]
    F8E4M3,
    #[serde(rename = "f8_e5m2")]
    F8E5M2,
    #[serde(rename = "u8")]
    U8,
    #[serde(rename = "i8")]
    I8,
    #[serde(rename = "i32")]
    I32,
    #[serde(rename = "i64")]
    I64,
}

impl DType {
    pub const ALL: &'static [DType] = &[
        DType::Bf16,
        DType::F16,
        DType::F32,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::U8,
        DType::I8,
        DType::I32,
        DType::I64,
    ];

    /// The name in `.wmap` source and in the IR's JSON.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
            DType::F8E4M3 => "f8_e4m3",
            DType::F8E5M2 => "f8_e5m2",
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.name() == name)
    }
}

/// Which offload group a param (or each slice of a stacked param) belongs to.
/// Groups are keyed by the repeat indices in scope plus the expression's value, so
/// `offload_group = expert` gives one group per (layer, expert).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OffloadGroup {
    /// The expression over index variables; config values are already folded in.
    pub expr: GroupExpr,
    /// Stack variables the expression reads: the group varies along those stack dims.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per: Vec<String>,
    /// The value, when it depends on no index variable (else the plan evaluates `expr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
}

/// An offload-group expression: integers and index variables under `+ - * / %`. The
/// checker builds it and evaluates it with [`GroupExpr::eval`]; the plan evaluates the
/// same tree with the same function. No phase re-parses text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupExpr {
    Int(i64),
    /// A repeat or stack variable.
    Var(String),
    Neg(Box<GroupExpr>),
    Op(IntOp, Box<GroupExpr>, Box<GroupExpr>),
}

/// Integer operators, with the language's rules: exact division, Euclidean remainder,
/// every overflow an error. `check` evaluates shapes with the same [`IntOp::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// Why integer arithmetic failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntError {
    DivisionByZero,
    /// `a / b` with a remainder: shapes must divide exactly.
    Inexact,
    Overflow,
}

impl IntOp {
    pub fn apply(self, a: i64, b: i64) -> Result<i64, IntError> {
        if matches!(self, IntOp::Div | IntOp::Mod) && b == 0 {
            return Err(IntError::DivisionByZero);
        }
        let r = match self {
            IntOp::Add => a.checked_add(b),
            IntOp::Sub => a.checked_sub(b),
            IntOp::Mul => a.checked_mul(b),
            IntOp::Mod => a.checked_rem_euclid(b),
            // `checked_rem` first: `i64::MIN % -1` overflows like the division does.
            IntOp::Div => match a.checked_rem(b) {
                Some(0) => a.checked_div(b),
                Some(_) => return Err(IntError::Inexact),
                None => None,
            },
        };
        r.ok_or(IntError::Overflow)
    }

    pub fn symbol(self) -> &'static str {
        match self {
            IntOp::Add => "+",
            IntOp::Sub => "-",
            IntOp::Mul => "*",
            IntOp::Div => "/",
            IntOp::Mod => "%",
        }
    }
}

impl std::fmt::Display for IntError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IntError::DivisionByZero => "division by zero",
            IntError::Inexact => "a division leaves a remainder",
            IntError::Overflow => "integer overflow",
        })
    }
}

impl GroupExpr {
    /// The value with the variables bound in `env` (innermost last).
    pub fn eval(&self, env: &[(String, i64)]) -> Result<i64, String> {
        match self {
            GroupExpr::Int(i) => Ok(*i),
            GroupExpr::Var(v) => env
                .iter()
                .rev()
                .find(|(n, _)| n == v)
                .map(|(_, i)| *i)
                .ok_or_else(|| format!("index variable `{v}` is not bound here")),
            GroupExpr::Neg(a) => a
                .eval(env)?
                .checked_neg()
                .ok_or_else(|| IntError::Overflow.to_string()),
            GroupExpr::Op(op, a, b) => op
                .apply(a.eval(env)?, b.eval(env)?)
                .map_err(|e| format!("{e} in `{self}`")),
        }
    }

    /// Whether the value depends on an index variable.
    pub fn has_vars(&self) -> bool {
        match self {
            GroupExpr::Int(_) => false,
            GroupExpr::Var(_) => true,
            GroupExpr::Neg(a) => a.has_vars(),
            GroupExpr::Op(_, a, b) => a.has_vars() || b.has_vars(),
        }
    }
}

impl OffloadGroup {
    /// The first index and the count of the stack a per-slice group varies along: the
    /// param's own stack when its source is one, else its leading dim from 0.
    pub fn slices(source: &Source, shape: &[u64]) -> (i64, u64) {
        let start = match source {
            Source::Stack { start, .. } | Source::Stacked { start, .. } => *start,
            _ => 0,
        };
        (start, shape.first().copied().unwrap_or(0))
    }
}

impl std::fmt::Display for GroupExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupExpr::Int(i) => write!(f, "{i}"),
            GroupExpr::Var(v) => f.write_str(v),
            GroupExpr::Neg(a) => write!(f, "-({a})"),
            GroupExpr::Op(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
        }
    }
}

/// Where a param's data comes from. `shape` is the expected shape where the checker
/// could derive it; binding to a checkpoint checks it against the real tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Tensor {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shape: Option<Vec<u64>>,
    },
    Try {
        options: Vec<Source>,
    },
    Fuse {
        dim: usize,
        parts: Vec<Source>,
    },
    Stack {
        var: String,
        start: i64,
        count: u64,
        part: Box<Source>,
    },
    /// Already stacked on disk: `source` is the whole `[count, …]` tensor, read as it is;
    /// `var` (from `start`) names its slices along dim 0 for per-slice offload groups.
    Stacked {
        var: String,
        start: i64,
        count: u64,
        source: Box<Source>,
    },
    Slice {
        dim: usize,
        start: u64,
        end: u64,
        step: u64,
        source: Box<Source>,
    },
    Split {
        dim: usize,
        part: u64,
        of: u64,
        source: Box<Source>,
    },
    Reshape {
        shape: Vec<u64>,
        source: Box<Source>,
    },
    Squeeze {
        dim: usize,
        source: Box<Source>,
    },
    Transpose {
        dims: [usize; 2],
        source: Box<Source>,
    },
    Tied {
        param: String,
    },
    /// Fine-grained FP8 on disk: E4M3 codes in `name` (shape `[rows, cols]`) and the f32
    /// dequantization multipliers in `scale_inv`, one per `block` tile
    /// (`[⌈rows/block[0]⌉, ⌈cols/block[1]⌉]`). Loads as `codes × scale`.
    Fp8Blocks {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shape: Option<Vec<u64>>,
        scale_inv: String,
        block: [u64; 2],
    },
    /// bitsandbytes 4-bit on disk: packed codes in `name` (two per byte), one absmax per
    /// `blocksize` elements, and the companions transformers saves beside it
    /// (`name.absmax`, `name.quant_map`, `name.quant_state.bitsandbytes__<type>`, and with
    /// double quant `name.nested_absmax`, `name.nested_quant_map`). Loads as bitsandbytes'
    /// dequantization.
    /// MXFP4 on disk (GPT-OSS): `blocks` U8 `[..., rows, cols/32, 16]` (two E2M1 codes a
    /// byte, low nibble first) and `scales` U8 E8M0 `[..., rows, cols/32]` for a
    /// `[..., rows, cols]` tensor. Loads as `e2m1 × 2^(e − 127)`.
    Mxfp4 {
        blocks: String,
        scales: String,
        shape: Vec<u64>,
    },
    /// ModelOpt NVFP4 on disk: packed E2M1 codes in `name` `[.., rows, cols/2]`, E4M3
    /// block scales `weight_scale` `[.., rows, cols/16]` and the f32 tensor scale
    /// `weight_scale_2` beside it (ModelOpt's names). Loads as `e2m1 × (scale × scale_2)`.
    Nvfp4 {
        name: String,
        shape: Vec<u64>,
    },
    Bnb4 {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shape: Option<Vec<u64>>,
        blocksize: u64,
    },
}

/// Where a param was declared, and the config keys behind its shape (secondary labels
/// in `config.json` for errors found later, when binding to a checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSite {
    pub span: crate::source::Span,
    pub shape_labels: Vec<crate::diag::Label>,
    /// For a param declared in the stdlib: the innermost `at` prefix the user wrote on
    /// the way to it, where a typo in a name most likely is.
    pub user_prefix: Option<crate::source::Span>,
}

/// The side table, keyed by IR path (`layers.{layer}.attention.qkv`).
pub type Spans = BTreeMap<String, ParamSite>;
