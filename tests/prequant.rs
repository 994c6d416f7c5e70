//! Pre-quantized sources: a fine-grained FP8 release written by transformers'
//! `Fp8Quantize` (`tests/fixtures/hf/qwen3_fp8`, made by `scripts/make_fp8_checkpoint.py`)
//! loads through the stdlib with no user file, each param bit-identical to what
//! transformers' `Fp8Dequantize` gives (`tests/fixtures/golden/qwen3_fp8_dequant.safetensors`),
//! and can be requantized on the way.

mod common;

use std::collections::BTreeMap;

use wmap::checkpoint::Dtype;
use wmap::driver::{self, ModelSource};
use wmap::load::{self, HostStore, HostTensor};
use wmap::plan::{Plan, Recipe};

fn fp8_dir() -> std::path::PathBuf {
    common::root().join("tests/fixtures/hf/qwen3_fp8")
}

/// Compiles and binds `dir` with the stdlib model for its config; panics on a diagnostic.
fn plan(dir: &std::path::Path) -> (Plan, wmap::checkpoint::Checkpoint) {
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let bound = driver::bind(&mut c, dir, true);
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{rendered}");
    let b = bound.unwrap();
    (b.plan, b.checkpoint)
}

fn load_all(plan: &Plan, ckpt: &wmap::checkpoint::Checkpoint) -> BTreeMap<String, HostTensor> {
    let store = HostStore::default();
    load::execute(plan, ckpt, &store, load::Options::default(), &|_| {}).unwrap();
    store.into_tensors()
}

/// The golden dequantizations, by checkpoint name.
fn golden() -> BTreeMap<String, Vec<u8>> {
    let path = common::root().join("tests/fixtures/golden/qwen3_fp8_dequant.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| (name, t.data().to_vec()))
        .collect()
}

#[test]
fn fp8_release_loads_bit_identical_to_transformers_dequantization() {
    let (plan, ckpt) = plan(&fp8_dir());
    assert!(plan.unclaimed.is_empty(), "{:?}", plan.unclaimed);
    let out = load_all(&plan, &ckpt);
    let g = golden();
    let cat = |names: &[&str], layer: usize| -> Vec<u8> {
        let p = format!("model.layers.{layer}");
        names
            .iter()
            .flat_map(|n| g[&format!("{p}.{n}.weight")].clone())
            .collect()
    };
    for layer in 0..2 {
        let expect = [
            (
                "attention.qkv",
                cat(
                    &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                    layer,
                ),
            ),
            ("attention.out", cat(&["self_attn.o_proj"], layer)),
            ("mlp.gate_up", cat(&["mlp.gate_proj", "mlp.up_proj"], layer)),
            ("mlp.down", cat(&["mlp.down_proj"], layer)),
        ];
        for (param, want) in expect {
            let t = &out[&format!("layers.{layer}.{param}")];
            assert_eq!(t.dtype, Dtype::Bf16);
            assert!(
                *t.data == want,
                "layers.{layer}.{param} differs from transformers"
            );
        }
    }
}

/// Every quantized linear binds to the FP8 form; the BF16 tensors (norms, embeddings,
/// lm_head) stay plain reads, and no fallback is taken for either.
#[test]
fn fp8_release_plans_fp8_reads_for_linears_only() {
    let (plan, _) = plan(&fp8_dir());
    let fp8: Vec<&str> = plan
        .targets
        .iter()
        .filter(|t| {
            t.recipe.reads().iter().any(|r| {
                matches!(
                    r,
                    Recipe::Read {
                        dtype: Dtype::F8E4M3,
                        ..
                    }
                )
            })
        })
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(fp8.len(), 8, "{fp8:?}");
    assert!(fp8.iter().all(|n| n.ends_with("qkv")
        || n.ends_with("out")
        || n.ends_with("gate_up")
        || n.ends_with("down")));
    assert!(plan
        .targets
        .iter()
        .all(|t| t.fallbacks.iter().all(|f| f.chosen == 0)));
    let qkv = plan
        .targets
        .iter()
        .find(|t| t.name == "layers.0.attention.qkv")
        .unwrap();
    let Recipe::Fuse { parts, .. } = &qkv.recipe else {
        panic!("{:?}", qkv.recipe)
    };
    let Recipe::Fp8Blocks {
        block, scale_inv, ..
    } = &parts[1]
    else {
        panic!("{:?}", parts[1])
    };
    assert_eq!(*block, [128, 128]);
    assert_eq!(
        scale_inv.shape(),
        [1, 2],
        "k_proj [128, 256] in 128×128 tiles"
    );
}

/// FP8 release → NF4 (QLoRA): the dequantized bf16 is what gets quantized, so the
/// result equals NF4 of transformers' dequantization.
#[test]
fn fp8_release_requantizes_from_the_exact_dequantization() {
    use wmap::quant::{self, Format};
    let (plan, ckpt) = plan(&fp8_dir());
    let out = load_all(&plan, &ckpt);
    let g = golden();
    let down = &out["layers.1.mlp.down"];
    let want = &g["model.layers.1.mlp.down_proj.weight"];
    let format = Format::Nf4 { blocksize: 64 };
    let from_load = quant::quantize(format, &quant::to_f32(Dtype::Bf16, &down.data), &down.shape);
    let from_golden = quant::quantize(format, &quant::to_f32(Dtype::Bf16, want), &down.shape);
    assert_eq!(from_load, from_golden);
}

/// Raw bytes of checkpoint tensors, concatenated.
fn raw_cat(names: &[String]) -> Vec<u8> {
    let bytes = std::fs::read(fp8_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    names
        .iter()
        .flat_map(|n| st.tensor(n).unwrap().data().to_vec())
        .collect()
}

/// `--quant fp8-block` on an FP8 release: the stored codes and scales pass through
/// untouched (fused q/k/v too, their parts ending on tile boundaries); nothing is
/// dequantized and requantized.
#[test]
fn fp8_release_loaded_as_fp8_block_keeps_the_stored_bytes() {
    use wmap::quant::{Format, QuantStore, Scales, Stored};
    let (plan, ckpt) = plan(&fp8_dir());
    let store = QuantStore::new(Format::Fp8Block { block: 128 });
    load::execute(&plan, &ckpt, &store, load::Options::default(), &|_| {}).unwrap();
    // Requantizing would measure a reconstruction error; passing through measures none.
    // (On this data wmap's fp8-block quantizer happens to give the stored codes back, so
    // the bytes alone would not tell the two apart.)
    let report = store.report();
    assert_eq!((report.quantized, report.error.count), (8, 0));
    let out = store.into_tensors();
    let cases = [
        (
            "layers.0.attention.qkv",
            vec!["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ),
        ("layers.1.mlp.gate_up", vec!["mlp.gate_proj", "mlp.up_proj"]),
        ("layers.1.mlp.down", vec!["mlp.down_proj"]),
    ];
    for (target, parts) in cases {
        let layer = &target[7..8];
        let names = |suffix: &str| -> Vec<String> {
            parts
                .iter()
                .map(|p| format!("model.layers.{layer}.{p}.{suffix}"))
                .collect()
        };
        let Stored::Quantized(q) = &out[target] else {
            panic!("{target} is not quantized")
        };
        assert_eq!(q.data, raw_cat(&names("weight")), "{target} codes");
        let Scales::F32(s) = &q.scales else {
            panic!("{target}: f32 scales")
        };
        let s: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(s, raw_cat(&names("weight_scale_inv")), "{target} scales");
    }
    // Norms and embeddings stay full precision.
    assert!(matches!(out["layers.0.input_norm.weight"], Stored::Full(_)));
}

/// FP8 release → NF4 checkpoint in HF naming (QLoRA): each linear is cut back into its
/// checkpoint tensors and quantized from the exact dequantization.
#[test]
fn fp8_release_exports_as_nf4_in_hf_naming() {
    let out = common::tempdir("prequant-nf4-export").join("out");
    let dir = fp8_dir();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_wmapc"))
        .args([
            "load",
            dir.to_str().unwrap(),
            "--quant",
            "nf4",
            "--quiet",
            "--force",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().cloned().collect();
    let k = "model.layers.0.self_attn.k_proj.weight";
    assert_eq!(st.tensor(k).unwrap().dtype(), safetensors::Dtype::U8);
    assert!(names.contains(&format!("{k}.absmax")));
    assert!(
        !names.iter().any(|n| n.ends_with("weight_scale_inv")),
        "{names:?}"
    );
}

fn bnb_dir(name: &str) -> std::path::PathBuf {
    common::root().join("tests/fixtures/hf").join(name)
}

/// transformers + bitsandbytes' NF4 checkpoints of the `llama` fixture (with and without
/// double quant) load through the stdlib's `bnb4(...)` forms into exactly the bf16 that
/// bitsandbytes' dequantization gives: our quantizer is byte-identical to bitsandbytes
/// (tests/quant.rs, tests/export.rs), so dequantizing our NF4 of the original weights is
/// the reference.
#[test]
fn bnb_checkpoints_load_as_their_exact_dequantization() {
    use wmap::quant::{self, Format};
    let (plain, ckpt) = plan(&bnb_dir("llama"));
    let original = load_all(&plain, &ckpt);
    for (dir, format) in [
        ("llama_bnb_nf4", Format::Nf4 { blocksize: 64 }),
        ("llama_bnb_nf4_dq", Format::Nf4Dq { blocksize: 64 }),
    ] {
        let (p, ckpt) = plan(&bnb_dir(dir));
        assert!(p.unclaimed.is_empty(), "{dir}: {:?}", p.unclaimed);
        let out = load_all(&p, &ckpt);
        for t in plain.targets.iter().filter(|t| t.quantizable) {
            // bitsandbytes quantized each checkpoint tensor on its own (a double-quant
            // offset per tensor), so the reference does too, part by part.
            let x = quant::to_f32(Dtype::Bf16, &original[&t.name].data);
            let mut want = Vec::new();
            for part in wmap::export::parts(&t.recipe).unwrap() {
                let q = quant::quantize(
                    format,
                    &x[part.offset..part.offset + part.numel],
                    &part.shape,
                );
                let mut d = vec![half::bf16::ZERO; part.numel];
                q.dequantize_bf16(&mut d);
                want.extend(d.iter().flat_map(|v| v.to_le_bytes()));
            }
            assert!(*out[&t.name].data == want, "{dir}: {}", t.name);
        }
    }
}

/// `--quant nf4` on transformers' NF4 checkpoint: every linear's packed codes and absmax
/// pass through (fused q/k/v and gate/up too: their parts end on block boundaries), with
/// nothing requantized. With double quant the stored tensors pass through one by one; a
/// fuse of them (one offset per stored tensor) is requantized.
#[test]
fn bnb_checkpoint_loaded_as_its_own_format_keeps_the_stored_bytes() {
    use wmap::quant::{Format, QuantStore, Scales, Stored};
    for (dir, format, through) in [
        ("llama_bnb_nf4", Format::Nf4 { blocksize: 64 }, 8),
        ("llama_bnb_nf4_dq", Format::Nf4Dq { blocksize: 64 }, 4),
    ] {
        let dir_path = bnb_dir(dir);
        let (plan, ckpt) = plan(&dir_path);
        let store = QuantStore::new(format);
        load::execute(&plan, &ckpt, &store, load::Options::default(), &|_| {}).unwrap();
        assert_eq!(store.report().passed_through, through, "{dir}");
        let out = store.into_tensors();
        let bytes = std::fs::read(dir_path.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let raw = |names: &[String]| -> Vec<u8> {
            names
                .iter()
                .flat_map(|n| st.tensor(n).unwrap().data().to_vec())
                .collect()
        };
        for t in plan.targets.iter().filter(|t| t.quantizable) {
            let parts: Vec<String> = wmap::export::parts(&t.recipe)
                .unwrap()
                .into_iter()
                .map(|p| p.name)
                .collect();
            if matches!(format, Format::Nf4Dq { .. }) && parts.len() > 1 {
                continue;
            }
            let Stored::Quantized(q) = &out[&t.name] else {
                panic!("{}", t.name)
            };
            assert_eq!(q.data, raw(&parts), "{dir}: {} codes", t.name);
            let absmax: Vec<String> = parts.iter().map(|p| format!("{p}.absmax")).collect();
            let got = match &q.scales {
                Scales::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Scales::U8(v) => v.clone(),
            };
            assert_eq!(got, raw(&absmax), "{dir}: {} absmax", t.name);
        }
    }
}

/// `wmapc load --quant F --out` of a checkpoint stored in F writes every tensor back with
/// the bytes it was read with (transformers' NF4 checkpoint; the FP8 release).
#[test]
fn loading_a_quantized_checkpoint_into_its_own_format_writes_the_same_tensors() {
    for (dir, format) in [("llama_bnb_nf4", "nf4"), ("qwen3_fp8", "fp8-block")] {
        let out = common::tempdir(&format!("prequant-same-{format}")).join("out");
        let input = bnb_dir(dir);
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_wmapc"))
            .args(["load", input.to_str().unwrap(), "--quant", format, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(stdout.contains("passed through untouched"), "{stdout}");
        let a = std::fs::read(input.join("model.safetensors")).unwrap();
        let b = std::fs::read(out.join("model.safetensors")).unwrap();
        let (a, b) = (
            safetensors::SafeTensors::deserialize(&a).unwrap(),
            safetensors::SafeTensors::deserialize(&b).unwrap(),
        );
        let mut names = a.names();
        names.sort();
        let mut theirs = b.names();
        theirs.sort();
        assert_eq!(names, theirs, "{dir}");
        for n in names {
            let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
            assert_eq!(
                (x.dtype(), x.shape(), x.data()),
                (y.dtype(), y.shape(), y.data()),
                "{dir}: {n}"
            );
        }
    }
}

/// A matrix that does not fill its last tiles (DeepSeek's `[576, 7168]` has a 4.5-tile
/// height): the scale grid rounds up, and each element takes its own tile's scale.
#[test]
fn fp8_partial_tiles_take_their_own_scale() {
    use safetensors::tensor::TensorView;
    let (rows, cols) = (130usize, 129usize);
    let codes: Vec<u8> = (0..rows * cols)
        .map(|i| (i * 37 % 251) as u8 & 0x7E) // no NaN codes
        .collect();
    let scales: [f32; 4] = [0.5, 0.25, 3.0, 0.125];
    let sbytes: Vec<u8> = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
    let dir = common::tempdir("prequant-partial");
    let file = safetensors::serialize(
        [
            (
                "w",
                TensorView::new(safetensors::Dtype::F8_E4M3, vec![rows, cols], &codes).unwrap(),
            ),
            (
                "w_scale_inv",
                TensorView::new(safetensors::Dtype::F32, vec![2, 2], &sbytes).unwrap(),
            ),
        ],
        &None,
    )
    .unwrap();
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"architectures": ["X"]}"#).unwrap();
    let model = ModelSource::Text {
        name: "m.wmap".into(),
        text: r#"model M for "X" { param w: [130, 129] from fp8_blocks("w", block = [128, 128]) }"#
            .into(),
    };
    let mut c = driver::compile(&model, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).unwrap();
    let out = load_all(&b.plan, &b.checkpoint);
    let got = &out["w"].data;
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            let want = wmap::load::e4m3_to_f32(codes[i]) * scales[(r / 128) * 2 + c / 128];
            let want = half::bf16::from_f32(want).to_le_bytes();
            assert_eq!(got[2 * i..2 * i + 2], want, "({r}, {c})");
        }
    }
}

/// GPT-OSS's MXFP4 experts (made by `scripts/make_mxfp4_checkpoint.py`) mapped in plain
/// `.wmap`: `mxfp4(...)` names the blocks and their E8M0 scales, `stacked(...)` keeps one
/// offload group per expert, `transpose` gives GPT-OSS's `[E, in, out]`. Every value is
/// bit-identical to transformers' `convert_moe_packed_tensors`.
#[test]
fn gpt_oss_mxfp4_experts_load_as_transformers_dequantizes_them() {
    let dir = common::root().join("tests/fixtures/prequant/gpt_oss_mxfp4");
    let text = r#"
model GptOss for "GptOssForCausalLM" {
    layers: Layer[layer in 0..num_hidden_layers] at "model.layers.{layer}.mlp.experts"
}
block Layer {
    param gate_up: [num_local_experts, hidden_size, 2 * intermediate_size]
        quantizable
        offload_group = expert
        from stacked(expert in 0..num_local_experts,
                     transpose(mxfp4("gate_up_proj_blocks", scales = "gate_up_proj_scales"), 1, 2))
    param down: [num_local_experts, intermediate_size, hidden_size]
        quantizable
        offload_group = expert
        from stacked(expert in 0..num_local_experts,
                     transpose(mxfp4("down_proj_blocks", scales = "down_proj_scales"), 1, 2))
}
"#;
    let model = ModelSource::Text {
        name: "gpt_oss.wmap".into(),
        text: text.into(),
    };
    let mut c = driver::compile(&model, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).unwrap();
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{rendered}");
    let out = load_all(&b.plan, &b.checkpoint);
    let golden = std::fs::read(
        common::root().join("tests/fixtures/golden/gpt_oss_mxfp4_dequant.safetensors"),
    )
    .unwrap();
    let golden = safetensors::SafeTensors::deserialize(&golden).unwrap();
    for layer in 0..2 {
        for (param, name) in [("gate_up", "gate_up_proj"), ("down", "down_proj")] {
            let want = golden
                .tensor(&format!("model.layers.{layer}.mlp.experts.{name}"))
                .unwrap();
            let got = &out[&format!("layers.{layer}.{param}")];
            assert!(*got.data == want.data(), "layers.{layer}.{param}");
        }
    }
}

/// ModelOpt's NVFP4 as it stores it (`weight` packed E2M1, `weight_scale` E4M3,
/// `weight_scale_2` f32; the four golden cases of `tests/fixtures/golden/scales.safetensors`,
/// quantized by nvidia-modelopt) loads through `nvfp4(...)` bit-identical to ModelOpt's
/// own dequantization.
#[test]
fn modelopt_nvfp4_loads_as_modelopt_dequantizes_it() {
    let golden =
        std::fs::read(common::root().join("tests/fixtures/golden/scales.safetensors")).unwrap();
    let golden = safetensors::SafeTensors::deserialize(&golden).unwrap();
    let mut tensors = Vec::new();
    let mut params = String::new();
    for case in 0..4 {
        let shape = golden
            .tensor(&format!("nvfp4.case{case}.input"))
            .unwrap()
            .shape()
            .to_vec();
        for part in ["weight", "weight_scale", "weight_scale_2"] {
            let t = golden.tensor(&format!("nvfp4.case{case}.{part}")).unwrap();
            tensors.push((format!("c{case}.{part}"), t));
        }
        params += &format!(
            "    param c{case}: [{}, {}] quantizable from nvfp4(\"c{case}.weight\")\n",
            shape[0], shape[1]
        );
    }
    let dir = common::tempdir("prequant-nvfp4");
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(tensors, &None).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), r#"{"architectures": ["X"]}"#).unwrap();
    let model = ModelSource::Text {
        name: "nvfp4.wmap".into(),
        text: format!("model M for \"X\" {{\n{params}}}\n"),
    };
    let mut c = driver::compile(&model, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).unwrap();
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{rendered}");
    let out = load_all(&b.plan, &b.checkpoint);
    for case in 0..4 {
        let want = golden.tensor(&format!("nvfp4.case{case}.dequant")).unwrap();
        assert!(*out[&format!("c{case}")].data == want.data(), "case {case}");
    }
    // `--quant nvfp4` hands ModelOpt's codes, scales and tensor scale over untouched.
    let store = wmap::quant::QuantStore::new(wmap::quant::Format::Nvfp4);
    load::execute(&b.plan, &b.checkpoint, &store, Default::default(), &|_| {}).unwrap();
    assert_eq!(store.report().passed_through, 4);
    let stored = store.into_tensors();
    for case in 0..4 {
        let part = |p: &str| golden.tensor(&format!("nvfp4.case{case}.{p}")).unwrap();
        let wmap::quant::Stored::Quantized(q) = &stored[&format!("c{case}")] else {
            panic!("case {case} is not quantized")
        };
        assert_eq!(q.data, part("weight").data(), "case {case}");
        let scales = wmap::quant::Scales::U8(part("weight_scale").data().to_vec());
        assert_eq!(q.scales, scales, "case {case}");
        let ws2 = part("weight_scale_2")
            .data()
            .try_into()
            .map(f32::from_le_bytes);
        assert_eq!(q.tensor_scale, ws2.ok(), "case {case}");
    }
}

/// The GPT-OSS release layout of the whole tiny model (`scripts/make_mxfp4_checkpoint.py`
/// from `tests/fixtures/hf/gpt_oss`): the stdlib model, detected from the config, takes its
/// MXFP4 expert alternative, plans clean with `--strict`, and loads the experts as
/// transformers dequantizes them and every other tensor as it is stored.
#[test]
fn gpt_oss_release_layout_loads_through_the_stdlib_model() {
    let dir = common::root().join("tests/fixtures/prequant/gpt_oss_release");
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).unwrap();
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{rendered}");
    let out = load_all(&b.plan, &b.checkpoint);
    let golden = std::fs::read(
        common::root().join("tests/fixtures/golden/gpt_oss_release_dequant.safetensors"),
    )
    .unwrap();
    let golden = safetensors::SafeTensors::deserialize(&golden).unwrap();
    let stored = std::fs::read(dir.join("model.safetensors")).unwrap();
    let stored = safetensors::SafeTensors::deserialize(&stored).unwrap();
    for layer in 0..2 {
        let prefix = format!("model.layers.{layer}");
        for (param, name) in [("gate_up", "gate_up_proj"), ("down", "down_proj")] {
            let want = golden
                .tensor(&format!("{prefix}.mlp.experts.{name}"))
                .unwrap();
            let got = &out[&format!("layers.{layer}.moe.experts.{param}")];
            assert!(
                *got.data == want.data(),
                "layers.{layer}.moe.experts.{param}"
            );
        }
        for (param, name) in [
            ("moe.experts.gate_up_bias", "mlp.experts.gate_up_proj_bias"),
            ("moe.experts.down_bias", "mlp.experts.down_proj_bias"),
            ("moe.router", "mlp.router.weight"),
            ("sinks.sinks", "self_attn.sinks"),
            ("attention.out", "self_attn.o_proj.weight"),
        ] {
            let want = stored.tensor(&format!("{prefix}.{name}")).unwrap();
            let got = &out[&format!("layers.{layer}.{param}")];
            assert!(*got.data == want.data(), "layers.{layer}.{param}");
        }
    }
}

/// `--quant mxfp4` / `nvfp4` on a source stored in that format hands the stored codes,
/// scales and (NVFP4) tensor scale over untouched: MXFP4 experts in their stored
/// orientation, and ModelOpt's NVFP4 golden cases.
#[test]
fn fp4_sources_loaded_as_their_own_format_keep_the_stored_bytes() {
    use wmap::quant::{Format, QuantStore, Scales, Stored};
    let dir = common::root().join("tests/fixtures/prequant/gpt_oss_mxfp4");
    let text = r#"
model GptOss for "GptOssForCausalLM" {
    layers: Layer[layer in 0..num_hidden_layers] at "model.layers.{layer}.mlp.experts"
}
block Layer {
    param down: [num_local_experts, hidden_size, intermediate_size]
        quantizable
        from mxfp4("down_proj_blocks", scales = "down_proj_scales")
}
"#;
    let model = ModelSource::Text {
        name: "gpt_oss.wmap".into(),
        text: text.into(),
    };
    let mut c = driver::compile(&model, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, false).unwrap();
    let store = QuantStore::new(Format::Mxfp4);
    load::execute(&b.plan, &b.checkpoint, &store, Default::default(), &|_| {}).unwrap();
    assert_eq!(store.report().passed_through, 2);
    let stored = std::fs::read(dir.join("model.safetensors")).unwrap();
    let stored = safetensors::SafeTensors::deserialize(&stored).unwrap();
    let raw = |name: &str| stored.tensor(name).unwrap().data().to_vec();
    for (layer, t) in store.into_tensors() {
        let Stored::Quantized(q) = t else {
            panic!("{layer} is not quantized")
        };
        let p = format!(
            "model.{}.mlp.experts.down_proj",
            layer.trim_end_matches(".down")
        );
        assert_eq!(q.data, raw(&format!("{p}_blocks")), "{layer}");
        assert_eq!(q.scales, Scales::U8(raw(&format!("{p}_scales"))), "{layer}");
        let rows = q.shape[..2].iter().product::<u64>();
        assert_eq!(q.scale_shape, [rows, q.shape[2] / 32], "{layer}");
    }
}
