//! Fine-grained FP8 releases of stdlib families (`scripts/make_fp8_checkpoint.py`: the
//! bf16 fixtures quantized by transformers' own `Fp8Quantize`) load, param by param, to
//! exactly what the same stdlib model loads from transformers' `Fp8Dequantize` of the
//! release written as a plain bf16 checkpoint. So every gather, split and fuse the model
//! does over a dequantized FP8 source (Qwen3-Next's per-key-head `in_proj_qkvz`, its
//! per-head query/gate split, DeepSeek's `kv_b`) is checked against the reference tool.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use wmap::driver::{self, ModelSource};
use wmap::load::{self, HostStore, HostTensor};

/// Loads `dir` through the stdlib model; panics on any diagnostic or unclaimed tensor.
fn load_dir(dir: &Path) -> BTreeMap<String, HostTensor> {
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let bound = driver::bind(&mut c, dir, true);
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{}: {rendered}", dir.display());
    let b = bound.unwrap();
    assert!(b.plan.unclaimed.is_empty(), "{:?}", b.plan.unclaimed);
    let store = HostStore::default();
    load::execute(
        &b.plan,
        &b.checkpoint,
        &store,
        load::Options::default(),
        &|_| {},
    )
    .unwrap();
    store.into_tensors()
}

/// The release with each quantized linear replaced by its golden dequantization (BF16)
/// and its scales dropped, and the config without `quantization_config`: what a
/// full-precision checkpoint of the same values looks like.
fn dequantized_copy(release: &Path, golden: &Path, work: &Path) -> PathBuf {
    let bytes = std::fs::read(release.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let gbytes = std::fs::read(golden).unwrap();
    let g = safetensors::SafeTensors::deserialize(&gbytes).unwrap();
    let mut views = Vec::new();
    for (name, t) in st.tensors() {
        if name.ends_with("_scale_inv") {
            continue;
        }
        let t = g.tensor(&name).unwrap_or(t);
        let view = TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).unwrap();
        views.push((name, view));
    }
    let out = work.join("dequantized");
    std::fs::create_dir_all(&out).unwrap();
    let data = safetensors::serialize(views, &None).unwrap();
    std::fs::write(out.join("model.safetensors"), data).unwrap();
    let text = std::fs::read_to_string(release.join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out
}

fn check_release(name: &str, quantized_params: usize) {
    let release = common::root().join("tests/fixtures/hf").join(name);
    let golden = common::root().join(format!("tests/fixtures/golden/{name}_dequant.safetensors"));
    let work = common::tempdir(name);
    let plain = dequantized_copy(&release, &golden, &work);
    let got = load_dir(&release);
    let want = load_dir(&plain);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{name}: the same params"
    );
    for (param, t) in &got {
        let w = &want[param];
        assert_eq!((t.dtype, &t.shape), (w.dtype, &w.shape), "{name}: {param}");
        assert!(
            *t.data == *w.data,
            "{name}: {param} differs from transformers"
        );
    }
    // The release really is quantized where the model reads FP8 (not a plain copy).
    let bytes = std::fs::read(release.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let fp8 = st
        .tensors()
        .iter()
        .filter(|(_, t)| t.dtype() == safetensors::Dtype::F8_E4M3)
        .count();
    assert_eq!(fp8, quantized_params, "{name}: FP8 tensors in the release");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn qwen3_next_fp8_release_loads_as_transformers_dequantizes_it() {
    // Per linear-attention layer (0–2): in_proj_qkvz, out_proj; attention layer 3: q, k,
    // v, o; the dense MLP (layer 1): 3; three MoE layers × (4 experts × 3 + shared 3).
    check_release("qwen3_next_fp8", 3 * 2 + 4 + 3 + 3 * (4 * 3 + 3));
}

#[test]
fn deepseek_v3_fp8_release_loads_as_transformers_dequantizes_it() {
    // Three layers × 5 attention linears, the dense MLP, two MoE layers × (4 × 3 + 3).
    check_release("deepseek_v3_fp8", 3 * 5 + 3 + 2 * (4 * 3 + 3));
}
