//! Quantized export in HF naming. The strongest check: our NF4 export of the `llama`
//! fixture is byte-identical to the checkpoint transformers + bitsandbytes wrote from the
//! same weights (`llama_bnb_nf4`), config included.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wmap::driver::{self, ModelSource};
use wmap::load::output::Staging;
use wmap::quant::Format;

type Tensors = BTreeMap<String, (String, Vec<u64>, Vec<u8>)>;

fn read(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| {
            let shape = t.shape().iter().map(|&d| d as u64).collect();
            (n, (format!("{:?}", t.dtype()), shape, t.data().to_vec()))
        })
        .collect()
}

fn export(fixture: &str, quant: &str) -> PathBuf {
    let dir = common::root().join("tests/fixtures/hf").join(fixture);
    let out = common::tempdir(&format!("export-{fixture}-{quant}")).join("out");
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).unwrap();
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let format = Format::parse(quant).unwrap();
    let staging = Staging::prepare(&out, &dir, false).unwrap();
    let ex =
        wmap::export::Exporter::create(staging, &b.plan, &b.checkpoint, format, &config).unwrap();
    wmap::load::execute(&b.plan, &b.checkpoint, &ex, Default::default(), &|_| {}).unwrap();
    ex.commit().unwrap();
    out
}

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/hf").join(name)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn nf4_export_is_byte_identical_to_bitsandbytes() {
    let out = export("llama", "nf4");
    let ours = read(&out.join("model.safetensors"));
    let theirs = read(&fixture("llama_bnb_nf4").join("model.safetensors"));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (name, t) in &theirs {
        assert_eq!(&ours[name], t, "{name}");
    }
    assert_eq!(
        json(&out.join("config.json")),
        json(&fixture("llama_bnb_nf4").join("config.json"))
    );
    assert!(
        out.join("generation_config.json").is_file(),
        "side files travel along"
    );
}

/// Double quant: every tensor identical; the quant-state JSON is padded with trailing
/// spaces (its offset is known only after quantizing, its length before), so it is
/// compared parsed.
#[test]
fn nf4_dq_export_matches_bitsandbytes() {
    let out = export("llama", "nf4-dq");
    let ours = read(&out.join("model.safetensors"));
    let theirs = read(&fixture("llama_bnb_nf4_dq").join("model.safetensors"));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (name, t) in &theirs {
        if name.contains(".quant_state.") {
            let a: serde_json::Value = serde_json::from_slice(&ours[name].2).unwrap();
            let b: serde_json::Value = serde_json::from_slice(&t.2).unwrap();
            assert_eq!(a, b, "{name}");
        } else {
            assert_eq!(&ours[name], t, "{name}");
        }
    }
    assert_eq!(
        json(&out.join("config.json")),
        json(&fixture("llama_bnb_nf4_dq").join("config.json"))
    );
}

#[test]
fn fp8_block_export_has_the_fine_grained_layout() {
    let out = export("llama", "fp8-block");
    let t = read(&out.join("model.safetensors"));
    let (dtype, shape, _) = &t["model.layers.0.mlp.down_proj.weight"];
    assert_eq!(
        (dtype.as_str(), shape.as_slice()),
        ("F8_E4M3", &[128u64, 256][..])
    );
    let (dtype, shape, _) = &t["model.layers.0.mlp.down_proj.weight_scale_inv"];
    assert_eq!((dtype.as_str(), shape.as_slice()), ("F32", &[1u64, 2][..]));
    assert_eq!(
        t["model.norm.weight"].0, "BF16",
        "norms stay in full precision"
    );
    let q = &json(&out.join("config.json"))["quantization_config"];
    assert_eq!(q["quant_method"], "fp8");
    assert_eq!(q["weight_block_size"], serde_json::json!([128, 128]));
}

#[test]
fn nvfp4_export_has_the_modelopt_layout() {
    let out = export("llama", "nvfp4");
    let t = read(&out.join("model.safetensors"));
    assert_eq!(t["model.layers.1.self_attn.q_proj.weight"].1, vec![128, 64]);
    assert_eq!(
        t["model.layers.1.self_attn.q_proj.weight_scale"].0,
        "F8_E4M3"
    );
    assert_eq!(
        t["model.layers.1.self_attn.q_proj.weight_scale"].1,
        vec![128, 8]
    );
    assert_eq!(
        t["model.layers.1.self_attn.q_proj.weight_scale_2"].1,
        Vec::<u64>::new()
    );
    assert_eq!(
        json(&out.join("config.json"))["quantization_config"]["quant_algo"],
        "NVFP4"
    );
}

/// Stacked experts are cut back into per-expert tensors, each quantized on its own.
#[test]
fn moe_export_writes_per_expert_tensors() {
    let out = export("qwen3_moe", "nf4");
    let t = read(&out.join("model.safetensors"));
    for e in 0..8 {
        let name = format!("model.layers.1.mlp.experts.{e}.gate_proj.weight");
        assert_eq!(t[&name].1, vec![64 * 128 / 2, 1], "{name}");
        let state: serde_json::Value =
            serde_json::from_slice(&t[&format!("{name}.quant_state.bitsandbytes__nf4")].2).unwrap();
        assert_eq!(state["shape"], serde_json::json!([64, 128]));
    }
    assert_eq!(
        t["model.layers.1.mlp.gate.weight"].0, "BF16",
        "routers stay in full precision"
    );
}

#[test]
fn formats_without_a_layout_are_refused_before_writing() {
    let dir = fixture("llama");
    let out = common::tempdir("export-mxfp4").join("out");
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).unwrap();
    let staging = Staging::prepare(&out, &dir, false).unwrap();
    let err = wmap::export::Exporter::create(staging, &b.plan, &b.checkpoint, Format::Mxfp4, "{}")
        .err()
        .unwrap();
    assert_eq!(err.code.as_str(), "E0610");
    assert!(
        err.message.contains("has no export layout"),
        "{}",
        err.message
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .collect();
    assert!(
        left.is_empty(),
        "the temporary folder and the lock are removed: {left:?}"
    );
}
