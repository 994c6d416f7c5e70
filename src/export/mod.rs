//! Export: a loaded checkpoint, quantized, written back in **HF naming** in the layouts
//! other tools read — bitsandbytes 4-bit (`nf4`, `nf4-dq`, `fp4`), fine-grained FP8
//! (`fp8-block`), ModelOpt NVFP4 (`nvfp4`).
//!
//! Input: a plan, its checkpoint, a format, the original `config.json`. Output: a folder
//! with `model.safetensors` and a `config.json` carrying `quantization_config`, written
//! atomically. The mapping is reversed: a fused or stacked target is cut back into the
//! checkpoint tensors it was assembled from, and each is quantized on its own (as the
//! tools quantize each linear layer). Params that are not `quantizable` are copied
//! verbatim. Streaming: targets are quantized and written as the loader delivers them.

mod layouts;
mod pyrepr;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use layouts::Layout;
pub use pyrepr::py_repr;

use crate::checkpoint::{Checkpoint, Dtype};
use crate::diag::{Code, Diagnostic};
use crate::load::output::Staging;
use crate::load::{Entry, FileLayout, Sink};
use crate::plan::{Plan, Recipe, Target};
use crate::quant::{self, Format};

/// A checkpoint tensor inside an assembled target: its elements
/// `offset..offset + numel` (row-major), with its own shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub name: String,
    pub offset: usize,
    pub numel: usize,
    pub shape: Vec<u64>,
}

/// Cuts a recipe back into whole checkpoint tensors, when it is only reads, reshapes,
/// fuses on dim 0, stacks (contiguous concatenations) and pre-quantized sources; `None`
/// otherwise.
pub fn parts(recipe: &Recipe) -> Option<Vec<Part>> {
    fn walk(r: &Recipe, at: &mut usize, out: &mut Vec<Part>) -> bool {
        match r {
            Recipe::Read { tensor, shape, .. } => {
                // The header check bounded a tensor's size by its file; sizes that do not
                // fit still end the walk instead of wrapping.
                let Some(numel) = crate::ir::numel(shape).and_then(|n| usize::try_from(n).ok())
                else {
                    return false;
                };
                let Some(next) = at.checked_add(numel) else {
                    return false;
                };
                out.push(Part {
                    name: tensor.clone(),
                    offset: *at,
                    numel,
                    shape: shape.clone(),
                });
                *at = next;
                true
            }
            Recipe::Reshape { source, .. } => walk(source, at, out),
            // A pre-quantized tensor is one part: its codes' name and shape, its
            // elements dequantized (the scales travel with it).
            Recipe::Fp8Blocks { weight, .. } => walk(weight, at, out),
            // bnb 4-bit: the packed tensor's name, the logical shape.
            Recipe::Bnb4 { packed, shape, .. } => {
                let Recipe::Read { tensor, .. } = packed.as_ref() else {
                    return false;
                };
                let logical = Recipe::Read {
                    file: 0,
                    tensor: tensor.clone(),
                    offset: 0,
                    length: 0,
                    dtype: crate::checkpoint::Dtype::U8,
                    shape: shape.clone(),
                };
                walk(&logical, at, out)
            }
            Recipe::Fuse { dim: 0, parts } | Recipe::Stack { parts } => {
                parts.iter().all(|p| walk(p, at, out))
            }
            _ => false,
        }
    }
    let mut out = Vec::new();
    walk(recipe, &mut 0, &mut out).then_some(out)
}

/// The formats `--out` can write, and the error for the others.
pub fn layout_for(format: Format) -> Result<Layout, Diagnostic> {
    match format {
        Format::Nf4 { .. } | Format::Nf4Dq { .. } | Format::Fp4 { .. } => Ok(Layout::Bnb),
        Format::Fp8Block { .. } => Ok(Layout::Fp8Block),
        Format::Nvfp4 => Ok(Layout::ModelOptNvfp4),
        other => Err(Diagnostic::new(
            Code::E0610,
            format!(
                "`--out` writes nf4, nf4-dq, fp4, fp8-block and nvfp4; `{}` has no export layout yet",
                other.name()
            ),
        )
        .with_help("pick a format with an export layout, or drop --out to quantize in memory")),
    }
}

/// What an export writes for one target.
enum Plan1 {
    /// Quantized, part by part.
    Quantized(Vec<Part>),
    /// Copied verbatim from the checkpoint.
    Raw(Vec<String>),
    /// Tied: HF checkpoints do not store the tied copy.
    Skip,
}

/// The sink that quantizes and writes each target as it arrives.
pub struct Exporter<'c> {
    format: Format,
    layout: Layout,
    ckpt: &'c Checkpoint,
    file: FileLayout,
    what: BTreeMap<String, Plan1>,
    /// What was quantized and how well, as the in-memory store reports it.
    report: std::sync::Mutex<quant::QuantReport>,
}

impl<'c> Exporter<'c> {
    /// Lays out the output from the plan in `staging`'s folder. Errors (E0610): a format
    /// without an export layout; a quantizable target whose recipe is not a concatenation
    /// of whole tensors (a slice, a transpose) cannot be written back.
    pub fn create(
        staging: Staging,
        plan: &Plan,
        ckpt: &'c Checkpoint,
        format: Format,
        config_json: &str,
    ) -> Result<Exporter<'c>, Diagnostic> {
        let layout = layout_for(format)?;
        let mut entries: Vec<Entry> = Vec::new();
        let mut what = BTreeMap::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut quantized_modules = Vec::new();
        let mut kept_modules = Vec::new();
        for t in &plan.targets {
            if matches!(t.recipe, Recipe::Tied { .. }) {
                what.insert(t.name.clone(), Plan1::Skip);
                continue;
            }
            if t.quantizable {
                let ps = parts(&t.recipe).ok_or_else(|| {
                    Diagnostic::new(
                        Code::E0610,
                        format!("`{}` slices or transposes its sources, so it cannot be written back in HF naming", t.name),
                    )
                })?;
                for p in &ps {
                    if seen.insert(p.name.clone()) {
                        entries.extend(layouts::entries(layout, format, p, t.dtype));
                        quantized_modules.push(p.name.trim_end_matches(".weight").to_string());
                    }
                }
                what.insert(t.name.clone(), Plan1::Quantized(ps));
            } else {
                let mut names = Vec::new();
                for r in t.recipe.reads() {
                    if let Recipe::Read { tensor, .. } = r {
                        if seen.insert(tensor.clone()) {
                            let e = &ckpt.tensors[tensor];
                            entries.push(Entry::new(tensor.clone(), e.dtype, e.shape.clone()));
                            kept_modules.push(tensor.trim_end_matches(".weight").to_string());
                            names.push(tensor.clone());
                        }
                    }
                }
                what.insert(t.name.clone(), Plan1::Raw(names));
            }
        }
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let file = FileLayout::create(staging, "model.safetensors", &entries, &meta)?;
        let config = layouts::config_with_quantization(config_json, layout, format, &kept_modules)
            .map_err(|e| Diagnostic::new(Code::E0302, e))?;
        file.side_file("config.json", config.as_bytes())?;
        copy_side_files(&ckpt.dir, &file)?;
        Ok(Exporter {
            format,
            layout,
            ckpt,
            file,
            what,
            report: Default::default(),
        })
    }

    /// The quantization so far: parts quantized, bytes before and after, the error.
    pub fn report(&self) -> quant::QuantReport {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn commit(self) -> Result<std::path::PathBuf, Diagnostic> {
        self.file.commit()
    }

    /// Adds one quantized part and its reconstruction error to the report.
    fn record(&self, q: &quant::QuantizedTensor, err: &quant::ErrorStats, source_bytes: u64) {
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.quantized += 1;
        r.bytes_before += source_bytes;
        r.bytes_after += q.byte_size();
        r.error.merge(err);
    }

    pub fn abandon(self) {
        self.file.abandon()
    }
}

/// Tokenizer and generation files travel with the weights; weights and the index do not.
pub(crate) fn copy_side_files(dir: &Path, file: &FileLayout) -> Result<(), Diagnostic> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let skip = n == "config.json"
            || n.ends_with(".safetensors")
            || n.ends_with(".index.json")
            || [".bin", ".pt", ".pth", ".ckpt", ".pkl"]
                .iter()
                .any(|e| n.ends_with(e));
        if !skip {
            let bytes = std::fs::read(dir.join(&n))
                .map_err(|e| Diagnostic::new(Code::E0511, format!("cannot read `{n}`: {e}")))?;
            file.side_file(&n, &bytes)?;
        }
    }
    Ok(())
}

impl Sink for Exporter<'_> {
    fn tensor(&self, target: &Target, data: Vec<u8>) -> Result<Option<Vec<u8>>, Diagnostic> {
        match self.what.get(&target.name) {
            Some(Plan1::Quantized(ps)) => {
                // Each part straight from its bytes, widened a run at a time: a float32
                // copy of the whole target was most of the CPU time of `--quant nf4 --out`.
                let es = target.dtype.size();
                for p in ps {
                    let part = p
                        .offset
                        .checked_add(p.numel)
                        .and_then(|end| data.get(p.offset.checked_mul(es)?..end.checked_mul(es)?))
                        .ok_or_else(|| {
                            Diagnostic::new(
                                Code::E0901,
                                format!(
                                    "`{}` lies outside `{}`; this is a bug in wmapc",
                                    p.name, target.name
                                ),
                            )
                        })?;
                    let (q, err) = quant::quantize_bytes(self.format, target.dtype, part, &p.shape);
                    self.record(&q, &err, part.len() as u64);
                    for (name, bytes) in layouts::tensors(self.layout, &q, p, target.dtype) {
                        self.file.write(&name, &bytes)?;
                    }
                }
            }
            Some(Plan1::Raw(names)) => {
                for n in names {
                    let e = &self.ckpt.tensors[n];
                    let mut buf = crate::load::zeroed(e.len as usize);
                    self.ckpt.read_into(e, &mut buf)?;
                    self.file.write(n, &buf)?;
                    let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
                    r.full += 1;
                    r.full_bytes += e.len;
                }
            }
            Some(Plan1::Skip) | None => {}
        }
        Ok(Some(data))
    }

    fn quantizes_to(&self) -> Option<Format> {
        Some(self.format)
    }

    /// A target stored in the export's format already: each part's stored codes and
    /// scales are written back under its own name, untouched.
    fn stored_quantized(
        &self,
        target: &Target,
        q: quant::QuantizedTensor,
    ) -> Result<(), Diagnostic> {
        let Some(Plan1::Quantized(ps)) = self.what.get(&target.name) else {
            return Ok(());
        };
        for p in ps {
            let part = cut(&q, p).ok_or_else(|| {
                Diagnostic::new(
                    Code::E0610,
                    format!(
                        "`{}`: its stored blocks do not split at `{}`",
                        target.name, p.name
                    ),
                )
            })?;
            {
                let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
                r.quantized += 1;
                r.passed_through += 1;
                r.bytes_before += (p.numel * target.dtype.size()) as u64;
                r.bytes_after += part.byte_size();
            }
            for (name, bytes) in layouts::tensors(self.layout, &part, p, target.dtype) {
                self.file.write(&name, &bytes)?;
            }
        }
        Ok(())
    }

    fn tied(&self, _: &Target, _: &str) -> Result<(), Diagnostic> {
        Ok(())
    }
}

/// The blocks of `q` that hold part `p` (elements `p.offset..p.offset + p.numel`), when
/// the part starts and ends on block boundaries: bnb 4-bit without double quant, FP8 in
/// square tiles, or the whole tensor. `None` otherwise.
fn cut(q: &quant::QuantizedTensor, p: &Part) -> Option<quant::QuantizedTensor> {
    if p.offset == 0 && p.numel == q.numel() {
        let mut whole = q.clone();
        whole.shape = p.shape.clone();
        return Some(whole);
    }
    let (end, mut out) = (p.offset.checked_add(p.numel)?, q.clone());
    out.shape = p.shape.clone();
    match (q.format, &q.scales) {
        (Format::Nf4 { blocksize } | Format::Fp4 { blocksize }, quant::Scales::F32(a)) => {
            if p.offset % blocksize != 0 || p.offset % 2 != 0 {
                return None;
            }
            out.data = q.data.get(p.offset / 2..end.div_ceil(2))?.to_vec();
            let absmax = a
                .get(p.offset / blocksize..end.div_ceil(blocksize))?
                .to_vec();
            out.scale_shape = vec![absmax.len() as u64];
            out.scales = quant::Scales::F32(absmax);
        }
        (Format::Fp8Block { block }, quant::Scales::F32(s)) => {
            let cols = *q.shape.last()? as usize;
            let gcols = cols.div_ceil(block);
            let (r0, r1) = (p.offset / cols, end / cols);
            if p.offset % cols != 0 || r0 % block != 0 {
                return None;
            }
            out.data = q.data.get(p.offset..end)?.to_vec();
            let scales = s
                .get(r0 / block * gcols..r1.div_ceil(block) * gcols)?
                .to_vec();
            out.scale_shape = vec![(r1.div_ceil(block) - r0 / block) as u64, gcols as u64];
            out.scales = quant::Scales::F32(scales);
        }
        _ => return None,
    }
    Some(out)
}

/// The compute dtype bitsandbytes records in its quant state.
pub fn torch_dtype(d: Dtype) -> &'static str {
    match d {
        Dtype::F16 => "float16",
        Dtype::F32 => "float32",
        _ => "bfloat16",
    }
}
