//! Plan: IR + checkpoint headers → a flat load plan, before a byte of tensor data is read.
//!
//! Input: the [`crate::ir::Ir`] (with its span table) and an opened
//! [`crate::checkpoint::Checkpoint`]. Output: a
//! [`Plan`] listing every target tensor — runtime name, shape, dtype, quantizable, offload
//! group — with a [`Recipe`]: the exact reads (shard, byte range, dtype, shape) and the ops
//! that assemble them. Repeats and stacks are expanded here; fallbacks are decided (the
//! first option whose tensors all exist) and recorded. Findings are aggregated by name
//! pattern so a problem in 48 layers is one diagnostic, not 48.

mod bind;
mod groups;
mod positions;
mod ranges;
mod report;
pub mod shard;

pub use bind::bind;
pub(crate) use bind::scale_grid;
pub use report::templatize;

use serde::Serialize;

use crate::checkpoint::Dtype;

/// Bumped on every change to the plan's JSON shape (3: `window` reads and a rank's
/// `rank` summary).
pub const PLAN_VERSION: u32 = 3;

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub plan_version: u32,
    pub model: String,
    /// Shard file names; [`Recipe::Read::file`] indexes this list.
    pub files: Vec<String>,
    pub targets: Vec<Target>,
    /// Checkpoint tensors matched by an `ignore` pattern.
    pub ignored: Vec<String>,
    /// Checkpoint tensors nothing claims or ignores.
    pub unclaimed: Vec<String>,
    /// For one rank's plan ([`shard::for_rank`]): which rank, and what it reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<shard::RankSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The runtime name: the IR path with indices filled in (`layers.3.attention.qkv`).
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: Dtype,
    pub quantizable: bool,
    /// The offload group of the whole tensor, or of each slice along dim 0 of a stacked one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload: Option<Offload>,
    /// For each fallback list met while binding, in order, the option taken.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<Fallback>,
    /// How the target splits across ranks ([`shard::for_rank`] cuts it); not in the
    /// plan's JSON, which describes one rank's reads.
    #[serde(skip)]
    pub shard: Option<crate::ir::shard::Shard>,
    pub recipe: Recipe,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Offload {
    Group(String),
    PerSlice(Vec<String>),
}

#[derive(Clone, Debug, Serialize)]
pub struct Fallback {
    pub chosen: usize,
    pub of: usize,
}

/// How to build a target from checkpoint bytes.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    Read {
        file: usize,
        tensor: String,
        offset: u64,
        length: u64,
        dtype: Dtype,
        shape: Vec<u64>,
    },
    /// A box of a stored tensor (`stored` at `offset`): `start[d]..start[d] + shape[d]`
    /// on every dim, read one contiguous run at a time, so only its own bytes are read.
    /// What a rank's slice of a [`Recipe::Read`] becomes.
    Window {
        file: usize,
        tensor: String,
        offset: u64,
        dtype: Dtype,
        stored: Vec<u64>,
        start: Vec<u64>,
        shape: Vec<u64>,
    },
    /// Concatenate along `dim`.
    Fuse { dim: usize, parts: Vec<Recipe> },
    /// Stack on a new leading dim.
    Stack { parts: Vec<Recipe> },
    /// Take `start..end` by `step` along `dim`.
    Slice {
        dim: usize,
        start: u64,
        end: u64,
        step: u64,
        source: Box<Recipe>,
    },
    /// Same bytes, new shape (also what `squeeze` becomes).
    Reshape {
        shape: Vec<u64>,
        source: Box<Recipe>,
    },
    Transpose {
        dims: [usize; 2],
        source: Box<Recipe>,
    },
    /// The same tensor as another target: no second read, no second copy.
    Tied { target: String },
    /// Fine-grained FP8: E4M3 codes (`weight`, `[rows, cols]`) times the scale of their
    /// `block` tile (`scale_inv`), in f32, then rounded to the target dtype. Both are
    /// [`Recipe::Read`]s of the tensors as stored.
    Fp8Blocks {
        block: [u64; 2],
        weight: Box<Recipe>,
        scale_inv: Box<Recipe>,
    },
    /// bitsandbytes 4-bit: `table[code] × absmax` per `blocksize` elements, in f32, then
    /// rounded to the target dtype. `nested` = [`nested_absmax`, `nested_quant_map`] with
    /// double quant (the absmax are then U8 codes). All are reads as stored.
    /// MXFP4: `e2m1 × 2^(e − 127)` per 32 elements of a row, in f32, then rounded to the
    /// target dtype. `blocks` and `scales` are reads as stored.
    Mxfp4 {
        shape: Vec<u64>,
        blocks: Box<Recipe>,
        scales: Box<Recipe>,
    },
    /// ModelOpt NVFP4: `e2m1 × (block scale × tensor scale)`, in f32, then rounded to the
    /// target dtype. All three are reads as stored.
    Nvfp4 {
        shape: Vec<u64>,
        weight: Box<Recipe>,
        scale: Box<Recipe>,
        scale_2: Box<Recipe>,
    },
    Bnb4 {
        shape: Vec<u64>,
        blocksize: u64,
        fp4: bool,
        packed: Box<Recipe>,
        absmax: Box<Recipe>,
        quant_map: Box<Recipe>,
        quant_state: Box<Recipe>,
        nested: Option<[Box<Recipe>; 2]>,
    },
}

impl Recipe {
    /// The shape this recipe produces (`Tied` takes the shape of its target).
    pub fn shape(&self) -> Vec<u64> {
        match self {
            Recipe::Read { shape, .. }
            | Recipe::Window { shape, .. }
            | Recipe::Reshape { shape, .. }
            | Recipe::Bnb4 { shape, .. }
            | Recipe::Mxfp4 { shape, .. }
            | Recipe::Nvfp4 { shape, .. } => shape.clone(),
            Recipe::Fp8Blocks { weight, .. } => weight.shape(),
            Recipe::Fuse { dim, parts } => {
                let mut s = parts.first().map(Recipe::shape).unwrap_or_default();
                if let Some(d) = s.get_mut(*dim) {
                    *d = parts
                        .iter()
                        .map(|p| p.shape().get(*dim).copied().unwrap_or(0))
                        .sum();
                }
                s
            }
            Recipe::Stack { parts } => {
                let inner = parts.first().map(Recipe::shape).unwrap_or_default();
                [vec![parts.len() as u64], inner].concat()
            }
            Recipe::Slice {
                dim,
                start,
                end,
                step,
                source,
            } => {
                let mut s = source.shape();
                if let Some(d) = s.get_mut(*dim) {
                    *d = (end - start).div_ceil(*step);
                }
                s
            }
            Recipe::Transpose { dims, source } => {
                let mut s = source.shape();
                if dims[0].max(dims[1]) < s.len() {
                    s.swap(dims[0], dims[1]);
                }
                s
            }
            Recipe::Tied { .. } => Vec::new(),
        }
    }

    /// The byte runs `(file, offset, length)` a read leaf reads, in order; none for
    /// other recipes. A window's runs are its contiguous pieces.
    pub fn runs(&self) -> Vec<(usize, u64, u64)> {
        match self {
            Recipe::Read {
                file,
                offset,
                length,
                ..
            } => vec![(*file, *offset, *length)],
            Recipe::Window { file, .. } => shard::window_runs(self)
                .map(|w| w.into_iter().map(|(o, n)| (*file, o, n)).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Bytes this recipe's reads take from the checkpoint.
    pub fn read_bytes(&self) -> u64 {
        self.reads()
            .iter()
            .flat_map(|r| r.runs())
            .fold(0, |a, (_, _, n)| a.saturating_add(n))
    }

    /// Every read (a [`Recipe::Read`] or [`Recipe::Window`]), in order.
    pub fn reads(&self) -> Vec<&Recipe> {
        let mut out = Vec::new();
        self.visit_reads(&mut |r| out.push(r));
        out
    }

    fn visit_reads<'a>(&'a self, f: &mut dyn FnMut(&'a Recipe)) {
        match self {
            Recipe::Read { .. } | Recipe::Window { .. } => f(self),
            Recipe::Fuse { parts, .. } | Recipe::Stack { parts } => {
                parts.iter().for_each(|p| p.visit_reads(f))
            }
            Recipe::Fp8Blocks {
                weight: a,
                scale_inv: b,
                ..
            }
            | Recipe::Mxfp4 {
                blocks: a,
                scales: b,
                ..
            } => {
                a.visit_reads(f);
                b.visit_reads(f);
            }
            Recipe::Nvfp4 {
                weight,
                scale,
                scale_2,
                ..
            } => [weight, scale, scale_2]
                .iter()
                .for_each(|r| r.visit_reads(f)),
            Recipe::Bnb4 {
                packed,
                absmax,
                quant_map,
                quant_state,
                nested,
                ..
            } => {
                for r in [packed, absmax, quant_map, quant_state]
                    .into_iter()
                    .chain(nested.iter().flatten())
                {
                    r.visit_reads(f);
                }
            }
            Recipe::Slice { source, .. }
            | Recipe::Reshape { source, .. }
            | Recipe::Transpose { source, .. } => source.visit_reads(f),
            Recipe::Tied { .. } => {}
        }
    }
}

impl Plan {
    /// Bytes of all targets in their target dtypes (tied targets count once).
    pub fn target_bytes(&self) -> u64 {
        bytes_of_targets(&self.targets)
    }
}

/// Bytes of `targets` in their target dtypes (tied targets count once).
fn bytes_of_targets(targets: &[Target]) -> u64 {
    targets
        .iter()
        .filter(|t| !matches!(t.recipe, Recipe::Tied { .. }))
        .map(|t| crate::ir::byte_size(&t.shape, t.dtype.size() as u64).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add)
}

/// The checkpoint [`Dtype`] a param of IR dtype `d` is loaded as.
pub fn target_dtype(d: crate::ir::DType) -> Dtype {
    use crate::ir::DType as D;
    match d {
        D::Bf16 => Dtype::Bf16,
        D::F16 => Dtype::F16,
        D::F32 => Dtype::F32,
        D::F8E4M3 => Dtype::F8E4M3,
        D::F8E5M2 => Dtype::F8E5M2,
        D::U8 => Dtype::U8,
        D::I8 => Dtype::I8,
        D::I32 => Dtype::I32,
        D::I64 => Dtype::I64,
    }
}
