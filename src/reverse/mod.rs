//! Reverse mapping: a runtime-layout store → the checkpoint it was loaded from, in the
//! checkpoint's own naming, dtypes, shapes and shard files.
//!
//! Input: a [`Plan`] bound to the original checkpoint (`--like`: its config and headers),
//! that checkpoint, and a [`Store`] (what `wmapc load CK --out DIR` writes, or the same
//! layout written after training). Output: a folder, written atomically through
//! [`FileLayout`]/[`Staging`], holding every checkpoint tensor under its original name,
//! dtype and shape in its original shard file (plus `model.safetensors.index.json` when
//! the source had one), `config.json` and the tokenizer and generation files.
//! Every recipe is inverted by [`trace`]: fuses split, stacks unstack, slices scatter
//! back, reshapes and transposes undo, widened values narrow back (exactly, else E0523);
//! a tied param writes its source once. Tensors the plan does not read (`ignore`d or
//! unclaimed) are copied from the checkpoint, and the [`Report`] lists them.
//! Memory: one runtime param in flight (its bytes, and an id table of 8 bytes an element
//! only when its recipe moves elements), plus the checkpoint tensors still missing
//! elements; a tensor is written as soon as the last param reading it has been scattered.
//! Errors: E0520 a tensor not wholly read by the mapping, E0521 a param missing from the
//! store, E0522 a param of another shape or dtype, E0523 an inexact narrowing, E0524 two
//! params that disagree on shared elements (a tie broken), E0525 a store of another model.

mod scatter;
mod trace;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use scatter::{Assembler, Tensor};
pub use trace::{numel, trace, Ids, Leaf, Trace};

use crate::checkpoint::{Checkpoint, Dtype};
use crate::diag::{Code, Diagnostic};
use crate::load::output::Staging;
use crate::load::{Entry, FileLayout};
use crate::plan::{Plan, Recipe, Target};

/// The index file of a sharded checkpoint.
const INDEX: &str = "model.safetensors.index.json";

/// The most header bytes read for the store's `__metadata__` (the checkpoint reader's cap).
const MAX_HEADER: u64 = 100_000_000;

/// A runtime-layout store: its tensors and its `__metadata__`.
pub struct Store {
    pub tensors: Checkpoint,
    pub metadata: BTreeMap<String, String>,
}

impl Store {
    /// Opens a store folder; its headers are validated as a checkpoint's are.
    pub fn open(dir: &Path) -> Result<Store, Diagnostic> {
        let tensors = Checkpoint::open(dir)?;
        let mut metadata = BTreeMap::new();
        for shard in &tensors.shards {
            metadata.extend(read_metadata(&shard.path)?);
        }
        Ok(Store { tensors, metadata })
    }
}

/// A safetensors file's `__metadata__` (string values only, as the format defines it).
fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, Diagnostic> {
    use std::io::Read;
    let failed = |e: String| {
        Diagnostic::new(
            Code::E0511,
            format!("cannot read the header of `{}`: {e}", path.display()),
        )
    };
    let mut file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| failed(e.to_string()))?;
    let len = u64::from_le_bytes(len).min(MAX_HEADER);
    let mut text = Vec::new();
    file.take(len)
        .read_to_end(&mut text)
        .map_err(|e| failed(e.to_string()))?;
    let header: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| failed(e.to_string()))?;
    let meta = header.get("__metadata__").and_then(|m| m.as_object());
    Ok(meta
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect())
}

/// What a save wrote.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Checkpoint tensors written, in all.
    pub tensors: usize,
    /// Of those, the ones rebuilt from the runtime store.
    pub from_store: usize,
    /// Of those, the ones copied from the checkpoint (`ignore`d or unclaimed), by name.
    pub copied: Vec<String>,
    /// Tensors of the runtime store that no param of the mapping is, so not saved.
    pub not_saved: Vec<String>,
    /// Params tied to another (written once, as their source).
    pub tied: usize,
    /// The weight files written, in shard order.
    pub files: Vec<String>,
    pub index: bool,
    /// Tensor bytes written.
    pub bytes: u64,
}

/// Writes `store` back in `like`'s layout into `staging`; returns the folder once moved
/// into place.
pub fn save(
    plan: &Plan,
    like: &Checkpoint,
    store: &Store,
    staging: Staging,
) -> Result<(PathBuf, Report), Diagnostic> {
    check_store(plan, store)?;
    let mut report = Report::default();
    let layout = lay_out(like, staging, &mut report)?;
    let mut assembler = Assembler::default();
    let mut owned = Vec::new();
    for t in &plan.targets {
        if let Recipe::Tied { target } = &t.recipe {
            check_tie(store, t, target)?;
            report.tied += 1;
        } else {
            assembler.expect(t.recipe.reads().into_iter().filter_map(read_name));
            owned.push(t);
        }
    }
    // One target in flight: its bytes and its trace (8 bytes an element) are dropped
    // before the next; only checkpoint tensors still missing elements are held.
    let mut written = BTreeSet::new();
    for t in owned {
        let data = read_whole(&store.tensors, &t.name)?;
        for tensor in assembler.add(&t.name, &trace(&t.recipe)?, t.dtype, &data)? {
            layout.write(&tensor.name, &tensor.bytes)?;
            written.insert(tensor.name);
        }
    }
    assembler.finish()?;
    report.from_store = written.len();
    for name in like.tensors.keys().filter(|n| !written.contains(*n)) {
        layout.write(name, &read_whole(like, name)?)?;
        report.copied.push(name.clone());
    }
    let built: BTreeSet<&str> = plan.targets.iter().map(|t| t.name.as_str()).collect();
    report.not_saved = (store.tensors.tensors.keys())
        .filter(|n| !built.contains(n.as_str()))
        .cloned()
        .collect();
    write_side_files(like, &layout, &mut report)?;
    let dir = layout.commit()?;
    Ok((dir, report))
}

fn read_name(r: &Recipe) -> Option<&str> {
    match r {
        Recipe::Read { tensor, .. } => Some(tensor.as_str()),
        _ => None,
    }
}

/// The store holds every param the plan builds, in its shape and dtype, for its model.
fn check_store(plan: &Plan, store: &Store) -> Result<(), Diagnostic> {
    if let Some(model) = store.metadata.get("wmap_model") {
        if *model != plan.model {
            return Err(Diagnostic::new(
                Code::E0525,
                format!(
                    "the runtime store was written for model `{model}`, but --like binds model `{}`",
                    plan.model
                ),
            )
            .with_help("pass the checkpoint the store was loaded from as --like (and the same --model)"));
        }
    }
    for t in plan
        .targets
        .iter()
        .filter(|t| !matches!(t.recipe, Recipe::Tied { .. }))
    {
        let Some(e) = store.tensors.tensors.get(&t.name) else {
            return Err(Diagnostic::new(
                Code::E0521,
                format!("the runtime store has no param `{}`, which the mapping builds", t.name),
            )
            .with_help("save the store that `wmapc load --out` wrote for this checkpoint, with every param"));
        };
        if e.dtype != t.dtype || e.shape != t.shape {
            return Err(Diagnostic::new(
                Code::E0522,
                format!(
                    "param `{}` is {} {:?} in the runtime store, but the mapping builds {} {:?}",
                    t.name,
                    e.dtype.name(),
                    e.shape,
                    t.dtype.name(),
                    t.shape
                ),
            )
            .with_help(
                "write the param back in the runtime layout's shape and dtype before saving",
            ));
        }
    }
    Ok(())
}

/// A tied param, when the store holds it, must still equal its source.
fn check_tie(store: &Store, t: &Target, to: &str) -> Result<(), Diagnostic> {
    if !store.tensors.tensors.contains_key(&t.name) {
        return Ok(());
    }
    if read_whole(&store.tensors, &t.name)? != read_whole(&store.tensors, to)? {
        return Err(Diagnostic::new(
            Code::E0524,
            format!("`{}` is tied to `{to}` in the checkpoint, but the runtime store holds different values for them", t.name),
        )
        .with_note("the checkpoint stores the tied tensor once; saving would lose one of the two")
        .with_help("keep the tie during training, or save against a checkpoint that stores both"));
    }
    Ok(())
}

/// A tensor's bytes, whole.
fn read_whole(ckpt: &Checkpoint, name: &str) -> Result<Vec<u8>, Diagnostic> {
    let e = ckpt.tensors.get(name).ok_or_else(|| {
        Diagnostic::new(
            Code::E0901,
            format!("`{name}` vanished; this is a bug in wmapc"),
        )
    })?;
    let n = usize::try_from(e.len).unwrap_or(usize::MAX);
    let mut buf = Vec::new();
    buf.try_reserve_exact(n).map_err(|err| {
        Diagnostic::new(
            Code::E0515,
            format!(
                "`{name}` needs a {}-byte buffer, which cannot be allocated: {err}",
                e.len
            ),
        )
    })?;
    buf.resize(n, 0);
    ckpt.read_into(e, &mut buf)?;
    Ok(buf)
}

/// One file per shard of `like`, each with the tensors it held.
fn lay_out(
    like: &Checkpoint,
    staging: Staging,
    report: &mut Report,
) -> Result<FileLayout, Diagnostic> {
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut staging = Some(staging);
    let mut layout: Option<FileLayout> = None;
    for (i, shard) in like.shards.iter().enumerate() {
        let mut entries = Vec::new();
        for (name, e) in like.tensors.iter().filter(|(_, e)| e.shard == i) {
            entries.push(entry(name, e.dtype, &e.shape)?);
            report.tensors += 1;
            report.bytes = report.bytes.saturating_add(e.len);
        }
        match (&mut layout, staging.take()) {
            (Some(l), _) => l.add_file(&shard.name, &entries, &meta)?,
            (None, Some(s)) => layout = Some(FileLayout::create(s, &shard.name, &entries, &meta)?),
            (None, None) => {}
        }
        report.files.push(shard.name.clone());
    }
    layout.ok_or_else(|| {
        Diagnostic::new(
            Code::E0901,
            "the checkpoint has no shard; this is a bug in wmapc",
        )
    })
}

/// A layout entry, its byte count checked.
fn entry(name: &str, dtype: Dtype, shape: &[u64]) -> Result<Entry, Diagnostic> {
    let bytes = numel(shape)
        .and_then(|n| n.checked_mul(dtype.size() as u64))
        .ok_or_else(|| {
            Diagnostic::new(
                Code::E0515,
                format!("`{name}` of shape {shape:?} has more bytes than 64 bits count"),
            )
        })?;
    Ok(Entry {
        name: name.to_string(),
        dtype: dtype.name(),
        shape: shape.to_vec(),
        bytes,
    })
}

/// `config.json` as it was, the index when the source was sharded, and the tokenizer
/// and generation files.
fn write_side_files(
    like: &Checkpoint,
    layout: &FileLayout,
    report: &mut Report,
) -> Result<(), Diagnostic> {
    let config = std::fs::read(like.dir.join("config.json")).map_err(|e| {
        Diagnostic::new(
            Code::E0806,
            format!(
                "cannot read `{}`: {e}",
                like.dir.join("config.json").display()
            ),
        )
    })?;
    layout.side_file("config.json", &config)?;
    if like.dir.join(INDEX).is_file() {
        let weight_map: serde_json::Map<String, serde_json::Value> = like
            .tensors
            .iter()
            .map(|(n, e)| (n.clone(), like.shards[e.shard].name.clone().into()))
            .collect();
        let index = serde_json::json!({
            "metadata": { "total_size": report.bytes },
            "weight_map": weight_map,
        });
        let text = serde_json::to_string_pretty(&index).unwrap_or_default() + "\n";
        layout.side_file(INDEX, text.as_bytes())?;
        report.index = true;
    }
    crate::export::copy_side_files(&like.dir, layout)
}
