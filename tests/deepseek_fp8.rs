//! DeepSeek-V3's fine-grained FP8 release layout (`tests/fixtures/hf/deepseek_v3_fp8`, the
//! `deepseek_v3` fixture quantized by transformers' own `Fp8Quantize` in
//! `scripts/make_fp8_checkpoint.py`): the stdlib model binds it from `quantization_config`
//! with no user file, every param loads bit-identical to transformers' `Fp8Dequantize`
//! (`tests/fixtures/golden/deepseek_v3_fp8_dequant.safetensors`), the stored codes pass
//! through to `fp8-block` where a param is whole stored tensors or whole tiles of one (the
//! per-head split of `kv_b`), and stacked experts are requantized from the exact
//! dequantization.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use wmap::checkpoint::{Checkpoint, Dtype};
use wmap::driver::{self, ModelSource};
use wmap::load::{self, HostStore, HostTensor};
use wmap::plan::{Plan, Recipe};
use wmap::quant::{self, Format, QuantStore, Scales, Stored};

/// The fixture's tile (`quantization_config.weight_block_size`).
const TILE: usize = 4;
const HEADS: usize = 4;
const NOPE: usize = 8;
const V: usize = 8;
const KV_RANK: usize = 16;

fn dir() -> PathBuf {
    common::root().join("tests/fixtures/hf/deepseek_v3_fp8")
}

/// Compiles and binds the release with the stdlib model; panics on any diagnostic.
fn plan() -> (Plan, Checkpoint) {
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir().join("config.json"))).unwrap();
    let bound = driver::bind(&mut c, &dir(), true);
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{rendered}");
    let b = bound.unwrap();
    assert!(b.plan.unclaimed.is_empty(), "{:?}", b.plan.unclaimed);
    (b.plan, b.checkpoint)
}

fn load_all(plan: &Plan, ckpt: &Checkpoint) -> BTreeMap<String, HostTensor> {
    let store = HostStore::default();
    load::execute(plan, ckpt, &store, load::Options::default(), &|_| {}).unwrap();
    store.into_tensors()
}

/// Tensors of a safetensors file by name.
fn tensors(path: PathBuf) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| (name, t.data().to_vec()))
        .collect()
}

fn golden() -> BTreeMap<String, Vec<u8>> {
    tensors(common::root().join("tests/fixtures/golden/deepseek_v3_fp8_dequant.safetensors"))
}

/// Rows `[h·(nope+v) + from, … + len)` of every head, in head order: `kv_b`'s k or v part.
fn per_head(kv_b: &[u8], row_bytes: usize, from: usize, len: usize) -> Vec<u8> {
    let rows: Vec<&[u8]> = kv_b.chunks(row_bytes).collect();
    (0..HEADS)
        .flat_map(|h| (from..from + len).map(move |r| h * (NOPE + V) + r))
        .flat_map(|r| rows[r].to_vec())
        .collect()
}

/// (target, golden tensors concatenated) for every param made of whole checkpoint linears.
fn whole_linears(layer: usize) -> Vec<(String, Vec<String>)> {
    let p = format!("model.layers.{layer}");
    let w = |names: &[&str]| -> Vec<String> {
        names.iter().map(|n| format!("{p}.{n}.weight")).collect()
    };
    let mut out = vec![
        ("attention.q_a", w(&["self_attn.q_a_proj"])),
        ("attention.q_b", w(&["self_attn.q_b_proj"])),
        ("attention.kv_a", w(&["self_attn.kv_a_proj_with_mqa"])),
        ("attention.out", w(&["self_attn.o_proj"])),
    ];
    if layer == 0 {
        out.push(("mlp.gate_up", w(&["mlp.gate_proj", "mlp.up_proj"])));
        out.push(("mlp.down", w(&["mlp.down_proj"])));
    } else {
        let shared = ["mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj"];
        out.push(("moe.shared.gate_up", w(&shared)));
        out.push(("moe.shared.down", w(&["mlp.shared_experts.down_proj"])));
    }
    out.into_iter()
        .map(|(t, names)| (format!("layers.{layer}.{t}"), names))
        .collect()
}

#[test]
fn deepseek_fp8_release_loads_bit_identical_to_transformers_dequantization() {
    let (plan, ckpt) = plan();
    let out = load_all(&plan, &ckpt);
    let g = golden();
    let got = |t: &str| -> Vec<u8> {
        let t = &out[t];
        assert_eq!(t.dtype, Dtype::Bf16);
        t.data.to_vec()
    };
    for layer in 0..3 {
        for (target, names) in whole_linears(layer) {
            let want: Vec<u8> = names.iter().flat_map(|n| g[n].clone()).collect();
            assert!(got(&target) == want, "{target} differs from transformers");
        }
        let kv_b = &g[&format!("model.layers.{layer}.self_attn.kv_b_proj.weight")];
        let row = KV_RANK * 2;
        let k_b = per_head(kv_b, row, 0, NOPE);
        assert!(
            got(&format!("layers.{layer}.attention.k_b")) == k_b,
            "k_b {layer}"
        );
        let v_b = per_head(kv_b, row, NOPE, V);
        assert!(
            got(&format!("layers.{layer}.attention.v_b")) == v_b,
            "v_b {layer}"
        );
    }
    for layer in 1..3 {
        let e = |e: usize, n: &str| {
            g[&format!("model.layers.{layer}.mlp.experts.{e}.{n}.weight")].clone()
        };
        let gate_up: Vec<u8> = (0..4)
            .flat_map(|x| [e(x, "gate_proj"), e(x, "up_proj")].concat())
            .collect();
        assert!(got(&format!("layers.{layer}.moe.experts.gate_up")) == gate_up);
        let down: Vec<u8> = (0..4).flat_map(|x| e(x, "down_proj")).collect();
        assert!(got(&format!("layers.{layer}.moe.experts.down")) == down);
    }
}

/// What the release keeps in full precision loads as stored: the router in bf16, its
/// score-correction bias in f32 (as transformers keeps it), norms and embeddings.
#[test]
fn deepseek_fp8_release_keeps_its_full_precision_tensors() {
    let (plan, ckpt) = plan();
    let out = load_all(&plan, &ckpt);
    let raw = tensors(dir().join("model.safetensors"));
    for (target, source, dtype) in [
        (
            "layers.1.moe.router",
            "model.layers.1.mlp.gate.weight",
            Dtype::Bf16,
        ),
        (
            "layers.1.moe.e_score_correction_bias",
            "model.layers.1.mlp.gate.e_score_correction_bias",
            Dtype::F32,
        ),
        (
            "layers.2.attention.kv_a_norm",
            "model.layers.2.self_attn.kv_a_layernorm.weight",
            Dtype::Bf16,
        ),
        ("embed", "model.embed_tokens.weight", Dtype::Bf16),
        ("lm_head", "lm_head.weight", Dtype::Bf16),
    ] {
        assert_eq!(out[target].dtype, dtype, "{target}");
        assert!(*out[target].data == raw[source], "{target}");
    }
}

/// Every linear the release quantizes is read as its E4M3 codes, nothing else is, and no
/// plain fallback is taken.
#[test]
fn deepseek_fp8_release_plans_fp8_reads_for_the_quantized_linears() {
    let (plan, _) = plan();
    let fp8_reads: usize = plan
        .targets
        .iter()
        .flat_map(|t| t.recipe.reads())
        .filter(|r| {
            matches!(
                r,
                Recipe::Read {
                    dtype: Dtype::F8E4M3,
                    ..
                }
            )
        })
        .count();
    // Per layer q_a, q_b, kv_a, o_proj, and kv_b read once for k_b and once for v_b; then
    // the dense MLP's 3, and 3 per expert and 3 shared in each of the 2 sparse layers.
    assert_eq!(fp8_reads, 3 * 6 + 3 + 2 * (4 * 3 + 3));
    let fp8_targets = plan.targets.iter().filter(|t| {
        t.recipe.reads().iter().any(|r| {
            matches!(
                r,
                Recipe::Read {
                    dtype: Dtype::F8E4M3,
                    ..
                }
            )
        })
    });
    assert!(
        fp8_targets.clone().all(|t| t.quantizable),
        "only quantizable params"
    );
    assert_eq!(fp8_targets.count(), 28);
    assert!(plan
        .targets
        .iter()
        .all(|t| t.fallbacks.iter().all(|f| f.chosen == 0)));
}

/// `fp8-block` with the release's own tile: a param made of whole stored tensors keeps the
/// stored codes and scales, byte for byte, and so do `k_b`/`v_b`, whose per-head rows are
/// whole tiles of `kv_b` here (nope = v = 8, tiles of 4 rows); only the stacked experts
/// are requantized from the exact dequantization.
#[test]
fn deepseek_fp8_release_passes_whole_linears_through_to_fp8_block() {
    let (plan, ckpt) = plan();
    let store = QuantStore::new(Format::Fp8Block { block: TILE });
    load::execute(&plan, &ckpt, &store, load::Options::default(), &|_| {}).unwrap();
    let report = store.report();
    assert_eq!((report.quantized, report.passed_through), (28, 24));
    let out = store.into_tensors();
    let raw = tensors(dir().join("model.safetensors"));
    let cat = |names: &[String], suffix: &str| -> Vec<u8> {
        names
            .iter()
            .flat_map(|n| raw[&format!("{n}{suffix}")].clone())
            .collect()
    };
    for layer in 0..3 {
        for (target, names) in whole_linears(layer) {
            let Stored::Quantized(q) = &out[&target] else {
                panic!("{target} is not quantized")
            };
            assert_eq!(q.data, cat(&names, ""), "{target} codes");
            let Scales::F32(s) = &q.scales else {
                panic!("{target}: f32 scales")
            };
            let s: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(s, cat(&names, "_scale_inv"), "{target} scales");
        }
        let kv_b = format!("model.layers.{layer}.self_attn.kv_b_proj.weight");
        let scales = &raw[&format!("{kv_b}_scale_inv")];
        let scale_row = KV_RANK / TILE * 4;
        for (part, from, len) in [("k_b", 0, NOPE), ("v_b", NOPE, V)] {
            let target = format!("layers.{layer}.attention.{part}");
            let Stored::Quantized(q) = &out[&target] else {
                panic!("{target} is not quantized")
            };
            assert_eq!(
                q.data,
                per_head(&raw[&kv_b], KV_RANK, from, len),
                "{target} codes"
            );
            // Scale rows: one per tile of rows, a head's tiles (nope + v) / TILE apart.
            let want: Vec<u8> = (0..HEADS)
                .flat_map(|h| (0..len / TILE).map(move |t| h * (NOPE + V) / TILE + from / TILE + t))
                .flat_map(|r| scales[r * scale_row..(r + 1) * scale_row].to_vec())
                .collect();
            let Scales::F32(s) = &q.scales else {
                panic!("{target}: f32 scales")
            };
            let s: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(s, want, "{target} scales");
            assert_eq!(
                q.scale_shape,
                [(HEADS * len / TILE) as u64, (KV_RANK / TILE) as u64]
            );
        }
    }
    for layer in 1..3 {
        let t = format!("layers.{layer}.moe.experts.gate_up");
        assert!(matches!(out[&t], Stored::Quantized(_)), "{t}: requantized");
    }
}

/// FP8 release → NF4 (QLoRA), through the per-head split: `k_b`'s NF4 is NF4 of the
/// per-head rows of transformers' dequantized `kv_b`.
#[test]
fn deepseek_fp8_release_requantizes_the_split_from_the_exact_dequantization() {
    let (plan, ckpt) = plan();
    let store = QuantStore::new(Format::Nf4 { blocksize: 64 });
    load::execute(&plan, &ckpt, &store, load::Options::default(), &|_| {}).unwrap();
    let out = store.into_tensors();
    let g = golden();
    let k_b = per_head(
        &g["model.layers.2.self_attn.kv_b_proj.weight"],
        KV_RANK * 2,
        0,
        NOPE,
    );
    let shape = [(HEADS * NOPE) as u64, KV_RANK as u64];
    let want = quant::quantize(
        Format::Nf4 { blocksize: 64 },
        &quant::to_f32(Dtype::Bf16, &k_b),
        &shape,
    );
    let Stored::Quantized(q) = &out["layers.2.attention.k_b"] else {
        panic!("k_b is not quantized")
    };
    assert_eq!(*q, want);
}
