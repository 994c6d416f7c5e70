//! Loading the transformers-written fixtures: plans are clean, and every loaded tensor is
//! bit-identical to the source tensors, assembled in the declared layout. The reference
//! bytes come from the `safetensors` crate reading the files directly, not from wmap.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use wmap::driver::{self, ModelSource};
use wmap::load::{self, HostStore, HostTensor};
use wmap::plan::Plan;

fn fixture(name: &str) -> std::path::PathBuf {
    common::root().join("tests/fixtures/hf").join(name)
}

/// Compiles, binds and loads `dir` into host memory; panics on any diagnostic.
fn load_dir(dir: &Path, model: &ModelSource) -> (Plan, BTreeMap<String, HostTensor>) {
    let mut c = driver::compile(model, Some(&dir.join("config.json"))).unwrap();
    let bound = driver::bind(&mut c, dir, true);
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{}: {rendered}", dir.display());
    let b = bound.unwrap();
    assert!(b.plan.unclaimed.is_empty());
    let store = HostStore::default();
    load::execute(
        &b.plan,
        &b.checkpoint,
        &store,
        load::Options::default(),
        &|_| {},
    )
    .unwrap();
    (b.plan, store.into_tensors())
}

/// The raw bytes and shape of a checkpoint tensor, read with the `safetensors` crate.
fn raw(dir: &Path, name: &str) -> (Vec<u8>, Vec<u64>) {
    let files = common::sparse::safetensors_files(dir);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        if let Ok(t) = st.tensor(name) {
            return (
                t.data().to_vec(),
                t.shape().iter().map(|&d| d as u64).collect(),
            );
        }
    }
    panic!("{name} not in {}", dir.display());
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn bytes(store: &BTreeMap<String, HostTensor>, name: &str) -> Vec<u8> {
    store
        .get(name)
        .unwrap_or_else(|| panic!("no target {name}"))
        .data
        .to_vec()
}

#[test]
fn every_fixture_plans_clean_with_nothing_unclaimed() {
    for name in [
        "llama",
        "llama_tied",
        "llama_sharded",
        "mistral",
        "qwen3",
        "qwen3_moe",
        "phi3",
        "mamba2",
        "nemotron_h",
        "nemotron_h_moe",
    ]
    .into_iter()
    .chain(FAMILIES)
    {
        let (plan, store) = load_dir(&fixture(name), &ModelSource::Detect);
        assert_eq!(plan.targets.len(), store.len(), "{name}");
        for t in &plan.targets {
            let n: u64 = t.shape.iter().product::<u64>() * t.dtype.size() as u64;
            assert_eq!(store[&t.name].data.len() as u64, n, "{name}: {}", t.name);
        }
    }
}

/// The fixtures of `scripts/make_fixtures.py` (one per stdlib family, plus config variants).
const FAMILIES: [&str; 33] = [
    "qwen2",
    "qwen2_moe",
    "granite",
    "olmo2",
    "olmoe",
    "gemma",
    "gemma2",
    "mixtral",
    "starcoder2",
    "phi",
    "stablelm",
    "stablelm_parallel",
    "cohere",
    "cohere_qk_norm",
    "gemma3_text",
    "phimoe",
    "glm4",
    "smollm3",
    "olmo3",
    "gpt_neox",
    "qwen2_moe_sparse_step",
    "seed_oss",
    "exaone4",
    "arcee",
    "ernie4_5",
    "mamba",
    "jamba",
    "bamba",
    "falcon_h1",
    "gpt_oss",
    "deepseek_v3",
    "granitemoehybrid",
    "qwen3_next",
];

/// (fixture, target, checkpoint tensors whose bytes, concatenated, the target must be).
/// `{l}` is each layer (0 and 1), `{e}` each expert (0..4) in an expanded part.
const EXPECTED: &[(&str, &str, &[&str])] = &[
    ("qwen2", "layers.{l}.attention.qkv_bias", &[
        "model.layers.{l}.self_attn.q_proj.bias",
        "model.layers.{l}.self_attn.k_proj.bias",
        "model.layers.{l}.self_attn.v_proj.bias",
    ]),
    ("qwen2", "layers.{l}.attention.out", &["model.layers.{l}.self_attn.o_proj.weight"]),
    ("qwen2", "lm_head", &["lm_head.weight"]),
    ("granite", "layers.{l}.mlp.gate_up", &[
        "model.layers.{l}.mlp.gate_proj.weight",
        "model.layers.{l}.mlp.up_proj.weight",
    ]),
    ("granite", "lm_head", &["model.embed_tokens.weight"]),
    ("olmo2", "layers.{l}.qk_norm.q_norm", &["model.layers.{l}.self_attn.q_norm.weight"]),
    ("olmo2", "layers.{l}.qk_norm.k_norm", &["model.layers.{l}.self_attn.k_norm.weight"]),
    ("olmo2", "layers.{l}.post_feedforward_norm.weight", &[
        "model.layers.{l}.post_feedforward_layernorm.weight",
    ]),
    ("gemma", "layers.{l}.attention.qkv", &[
        "model.layers.{l}.self_attn.q_proj.weight",
        "model.layers.{l}.self_attn.k_proj.weight",
        "model.layers.{l}.self_attn.v_proj.weight",
    ]),
    ("gemma", "lm_head", &["model.embed_tokens.weight"]),
    ("gemma2", "layers.{l}.pre_feedforward_norm.weight", &[
        "model.layers.{l}.pre_feedforward_layernorm.weight",
    ]),
    ("gemma2", "layers.{l}.post_feedforward_norm.weight", &[
        "model.layers.{l}.post_feedforward_layernorm.weight",
    ]),
    ("olmoe", "layers.{l}.moe.experts.gate_up", &[
        "model.layers.{l}.mlp.experts.{e}.gate_proj.weight+model.layers.{l}.mlp.experts.{e}.up_proj.weight",
    ]),
    ("olmoe", "layers.{l}.moe.experts.down", &["model.layers.{l}.mlp.experts.{e}.down_proj.weight"]),
    ("olmoe", "layers.{l}.moe.router", &["model.layers.{l}.mlp.gate.weight"]),
    ("olmoe", "layers.{l}.qk_norm.q_norm", &["model.layers.{l}.self_attn.q_norm.weight"]),
    ("mixtral", "layers.{l}.moe.experts.gate_up", &[
        "model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight+model.layers.{l}.block_sparse_moe.experts.{e}.w3.weight",
    ]),
    ("mixtral", "layers.{l}.moe.experts.down", &[
        "model.layers.{l}.block_sparse_moe.experts.{e}.w2.weight",
    ]),
    ("mixtral", "layers.{l}.moe.router", &["model.layers.{l}.block_sparse_moe.gate.weight"]),
    ("qwen2_moe", "layers.{l}.moe.experts.gate_up", &[
        "model.layers.{l}.mlp.experts.{e}.gate_proj.weight+model.layers.{l}.mlp.experts.{e}.up_proj.weight",
    ]),
    ("qwen2_moe", "layers.{l}.moe.shared.gate_up", &[
        "model.layers.{l}.mlp.shared_expert.gate_proj.weight",
        "model.layers.{l}.mlp.shared_expert.up_proj.weight",
    ]),
    ("qwen2_moe", "layers.{l}.moe.shared_gate", &["model.layers.{l}.mlp.shared_expert_gate.weight"]),
    ("qwen2_moe", "layers.{l}.attention.qkv_bias", &[
        "model.layers.{l}.self_attn.q_proj.bias",
        "model.layers.{l}.self_attn.k_proj.bias",
        "model.layers.{l}.self_attn.v_proj.bias",
    ]),
    ("starcoder2", "layers.{l}.attention.out_bias", &["model.layers.{l}.self_attn.o_proj.bias"]),
    ("starcoder2", "layers.{l}.mlp.up", &["model.layers.{l}.mlp.c_fc.weight"]),
    ("starcoder2", "layers.{l}.mlp.up_bias", &["model.layers.{l}.mlp.c_fc.bias"]),
    ("starcoder2", "layers.{l}.mlp.down_bias", &["model.layers.{l}.mlp.c_proj.bias"]),
    ("starcoder2", "layers.{l}.input_norm.bias", &["model.layers.{l}.input_layernorm.bias"]),
    ("starcoder2", "final_norm.bias", &["model.norm.bias"]),
    ("phi", "layers.{l}.attention.out", &["model.layers.{l}.self_attn.dense.weight"]),
    ("phi", "layers.{l}.attention.out_bias", &["model.layers.{l}.self_attn.dense.bias"]),
    ("phi", "layers.{l}.mlp.down", &["model.layers.{l}.mlp.fc2.weight"]),
    ("phi", "final_norm.weight", &["model.final_layernorm.weight"]),
    ("phi", "lm_head_bias", &["lm_head.bias"]),
    ("stablelm", "layers.{l}.post_attention_norm.bias", &[
        "model.layers.{l}.post_attention_layernorm.bias",
    ]),
    ("stablelm_parallel", "layers.{l}.qk_norm.q_norm", &[
        "model.layers.{l}.self_attn.q_layernorm.norms.0.weight",
        "model.layers.{l}.self_attn.q_layernorm.norms.1.weight",
        "model.layers.{l}.self_attn.q_layernorm.norms.2.weight",
        "model.layers.{l}.self_attn.q_layernorm.norms.3.weight",
    ]),
    ("stablelm_parallel", "layers.{l}.qk_norm.k_norm", &[
        "model.layers.{l}.self_attn.k_layernorm.norms.0.weight",
        "model.layers.{l}.self_attn.k_layernorm.norms.1.weight",
    ]),
    ("cohere", "layers.{l}.mlp.down", &["model.layers.{l}.mlp.down_proj.weight"]),
    ("cohere", "lm_head", &["model.embed_tokens.weight"]),
    ("cohere_qk_norm", "layers.{l}.qk_norm.q_norm", &["model.layers.{l}.self_attn.q_norm.weight"]),
    ("cohere_qk_norm", "layers.{l}.qk_norm.k_norm", &["model.layers.{l}.self_attn.k_norm.weight"]),
    ("gemma3_text", "layers.{l}.qk_norm.q_norm", &["model.layers.{l}.self_attn.q_norm.weight"]),
    ("gemma3_text", "layers.{l}.pre_feedforward_norm.weight", &[
        "model.layers.{l}.pre_feedforward_layernorm.weight",
    ]),
    ("gemma3_text", "lm_head", &["model.embed_tokens.weight"]),
    ("phimoe", "layers.{l}.moe.experts.gate_up", &[
        "model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight+model.layers.{l}.block_sparse_moe.experts.{e}.w3.weight",
    ]),
    ("phimoe", "layers.{l}.attention.out_bias", &["model.layers.{l}.self_attn.o_proj.bias"]),
    ("phimoe", "layers.{l}.post_attention_norm.bias", &[
        "model.layers.{l}.post_attention_layernorm.bias",
    ]),
    ("phimoe", "lm_head_bias", &["lm_head.bias"]),
    ("glm4", "layers.{l}.mlp.gate_up", &["model.layers.{l}.mlp.gate_up_proj.weight"]),
    ("glm4", "layers.{l}.attention.qkv_bias", &[
        "model.layers.{l}.self_attn.q_proj.bias",
        "model.layers.{l}.self_attn.k_proj.bias",
        "model.layers.{l}.self_attn.v_proj.bias",
    ]),
    ("glm4", "layers.{l}.post_self_attention_norm.weight", &[
        "model.layers.{l}.post_self_attn_layernorm.weight",
    ]),
    ("glm4", "layers.{l}.post_mlp_norm.weight", &["model.layers.{l}.post_mlp_layernorm.weight"]),
    ("smollm3", "layers.{l}.attention.qkv", &[
        "model.layers.{l}.self_attn.q_proj.weight",
        "model.layers.{l}.self_attn.k_proj.weight",
        "model.layers.{l}.self_attn.v_proj.weight",
    ]),
    ("smollm3", "lm_head", &["model.embed_tokens.weight"]),
    ("olmo3", "layers.{l}.qk_norm.k_norm", &["model.layers.{l}.self_attn.k_norm.weight"]),
    ("gpt_neox", "layers.{l}.attention.out", &["gpt_neox.layers.{l}.attention.dense.weight"]),
    ("gpt_neox", "layers.{l}.mlp.up_bias", &["gpt_neox.layers.{l}.mlp.dense_h_to_4h.bias"]),
    ("gpt_neox", "lm_head", &["embed_out.weight"]),
    // Layer 0 is dense (`decoder_sparse_step` 2), layer 1 sparse.
    ("qwen2_moe_sparse_step", "layers.0.mlp.gate_up", &[
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
    ]),
    ("qwen2_moe_sparse_step", "layers.1.moe.experts.down", &[
        "model.layers.1.mlp.experts.{e}.down_proj.weight",
    ]),
    ("qwen2_moe_sparse_step", "layers.1.moe.shared.down", &[
        "model.layers.1.mlp.shared_expert.down_proj.weight",
    ]),
    ("seed_oss", "layers.{l}.attention.qkv_bias", &[
        "model.layers.{l}.self_attn.q_proj.bias",
        "model.layers.{l}.self_attn.k_proj.bias",
        "model.layers.{l}.self_attn.v_proj.bias",
    ]),
    ("exaone4", "layers.{l}.qk_norm.q_norm", &["model.layers.{l}.self_attn.q_norm.weight"]),
    ("exaone4", "layers.{l}.post_feedforward_norm.weight", &[
        "model.layers.{l}.post_feedforward_layernorm.weight",
    ]),
    ("arcee", "layers.{l}.mlp.up", &["model.layers.{l}.mlp.up_proj.weight"]),
    ("arcee", "layers.{l}.mlp.down", &["model.layers.{l}.mlp.down_proj.weight"]),
    ("ernie4_5", "layers.{l}.mlp.gate_up", &[
        "model.layers.{l}.mlp.gate_proj.weight",
        "model.layers.{l}.mlp.up_proj.weight",
    ]),
    ("ernie4_5", "lm_head", &["model.embed_tokens.weight"]),
    ("mamba", "layers.{l}.norm", &["backbone.layers.{l}.norm.weight"]),
    ("mamba", "layers.{l}.mixer.in_proj", &["backbone.layers.{l}.mixer.in_proj.weight"]),
    ("mamba", "layers.{l}.mixer.conv_weight", &["backbone.layers.{l}.mixer.conv1d.weight"]),
    ("mamba", "layers.{l}.mixer.conv_bias", &["backbone.layers.{l}.mixer.conv1d.bias"]),
    ("mamba", "layers.{l}.mixer.x_proj", &["backbone.layers.{l}.mixer.x_proj.weight"]),
    ("mamba", "layers.{l}.mixer.dt_proj", &["backbone.layers.{l}.mixer.dt_proj.weight"]),
    ("mamba", "layers.{l}.mixer.out_proj", &["backbone.layers.{l}.mixer.out_proj.weight"]),
    ("mamba", "lm_head", &["backbone.embeddings.weight"]),
    ("jamba", "layers.{l}.input_norm.weight", &["model.layers.{l}.input_layernorm.weight"]),
    ("jamba", "layers.{l}.pre_ff_norm.weight", &["model.layers.{l}.pre_ff_layernorm.weight"]),
    ("jamba", "lm_head", &["lm_head.weight"]),
    ("bamba", "layers.{l}.input_norm.weight", &["model.layers.{l}.input_layernorm.weight"]),
    ("bamba", "layers.{l}.mlp.gate_up", &[
        "model.layers.{l}.feed_forward.gate_proj.weight",
        "model.layers.{l}.feed_forward.up_proj.weight",
    ]),
    ("bamba", "lm_head", &["lm_head.weight"]),
    // Falcon-H1 runs attention and the mixer side by side in every layer.
    ("falcon_h1", "layers.{l}.attention.qkv", &[
        "model.layers.{l}.self_attn.q_proj.weight",
        "model.layers.{l}.self_attn.k_proj.weight",
        "model.layers.{l}.self_attn.v_proj.weight",
    ]),
    ("falcon_h1", "layers.{l}.mamba.in_proj", &["model.layers.{l}.mamba.in_proj.weight"]),
    ("falcon_h1", "layers.{l}.mamba.norm", &["model.layers.{l}.mamba.norm.weight"]),
    ("falcon_h1", "layers.{l}.mlp.down", &["model.layers.{l}.feed_forward.down_proj.weight"]),
    ("falcon_h1", "lm_head", &["lm_head.weight"]),
    // Stacked on disk: each expert param is the whole [E, …] tensor, gate/up still interleaved.
    ("gpt_oss", "layers.{l}.moe.experts.gate_up", &["model.layers.{l}.mlp.experts.gate_up_proj"]),
    ("gpt_oss", "layers.{l}.moe.experts.gate_up_bias", &["model.layers.{l}.mlp.experts.gate_up_proj_bias"]),
    ("gpt_oss", "layers.{l}.moe.experts.down", &["model.layers.{l}.mlp.experts.down_proj"]),
    ("gpt_oss", "layers.{l}.moe.experts.down_bias", &["model.layers.{l}.mlp.experts.down_proj_bias"]),
    ("gpt_oss", "layers.{l}.moe.router_bias", &["model.layers.{l}.mlp.router.bias"]),
    ("gpt_oss", "layers.{l}.sinks.sinks", &["model.layers.{l}.self_attn.sinks"]),
    ("gpt_oss", "layers.{l}.attention.out_bias", &["model.layers.{l}.self_attn.o_proj.bias"]),
    // Layer 0 is dense (`first_k_dense_replace` 1), layers 1 and 2 sparse.
    ("deepseek_v3", "layers.{l}.attention.q_a", &["model.layers.{l}.self_attn.q_a_proj.weight"]),
    ("deepseek_v3", "layers.{l}.attention.q_b", &["model.layers.{l}.self_attn.q_b_proj.weight"]),
    ("deepseek_v3", "layers.{l}.attention.kv_a", &[
        "model.layers.{l}.self_attn.kv_a_proj_with_mqa.weight",
    ]),
    ("deepseek_v3", "layers.{l}.attention.kv_a_norm", &[
        "model.layers.{l}.self_attn.kv_a_layernorm.weight",
    ]),
    ("deepseek_v3", "layers.0.mlp.gate_up", &[
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
    ]),
    ("deepseek_v3", "layers.1.moe.experts.gate_up", &[
        "model.layers.1.mlp.experts.{e}.gate_proj.weight+model.layers.1.mlp.experts.{e}.up_proj.weight",
    ]),
    ("deepseek_v3", "layers.1.moe.router", &["model.layers.1.mlp.gate.weight"]),
    // Layer 0 is Mamba2, layer 1 attention; experts stacked on disk in both.
    ("granitemoehybrid", "layers.{l}.moe.experts.gate_up", &[
        "model.layers.{l}.block_sparse_moe.input_linear.weight",
    ]),
    ("granitemoehybrid", "layers.{l}.moe.experts.down", &[
        "model.layers.{l}.block_sparse_moe.output_linear.weight",
    ]),
    ("granitemoehybrid", "layers.{l}.moe.router", &[
        "model.layers.{l}.block_sparse_moe.router.layer.weight",
    ]),
    ("granitemoehybrid", "layers.{l}.shared_mlp.gate_up", &[
        "model.layers.{l}.shared_mlp.input_linear.weight",
    ]),
    ("granitemoehybrid", "layers.0.mamba.in_proj", &["model.layers.0.mamba.in_proj.weight"]),
    ("granitemoehybrid", "layers.1.attention.qkv", &[
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
    ]),
    // Layers 0–2 are linear attention, 3 full attention; layer 1 is dense (`mlp_only_layers`).
    ("qwen3_next", "layers.{l}.linear_attention.conv_weight", &[
        "model.layers.{l}.linear_attn.conv1d.weight",
    ]),
    ("qwen3_next", "layers.{l}.linear_attention.norm", &["model.layers.{l}.linear_attn.norm.weight"]),
    ("qwen3_next", "layers.{l}.linear_attention.out_proj", &[
        "model.layers.{l}.linear_attn.out_proj.weight",
    ]),
    ("qwen3_next", "layers.3.attention.out", &["model.layers.3.self_attn.o_proj.weight"]),
    ("qwen3_next", "layers.3.attention.qk_norm.q_norm", &["model.layers.3.self_attn.q_norm.weight"]),
    ("qwen3_next", "layers.3.attention.qk_norm.k_norm", &["model.layers.3.self_attn.k_norm.weight"]),
    ("qwen3_next", "layers.1.mlp.gate_up", &[
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
    ]),
    ("qwen3_next", "layers.3.moe.experts.gate_up", &[
        "model.layers.3.mlp.experts.{e}.gate_proj.weight+model.layers.3.mlp.experts.{e}.up_proj.weight",
    ]),
    ("qwen3_next", "layers.3.moe.router", &["model.layers.3.mlp.gate.weight"]),
    ("qwen3_next", "layers.3.moe.shared_gate", &["model.layers.3.mlp.shared_expert_gate.weight"]),
    ("qwen3_next", "layers.3.moe.shared.down", &["model.layers.3.mlp.shared_expert.down_proj.weight"]),
    ("deepseek_v3", "layers.1.moe.shared.gate_up", &[
        "model.layers.1.mlp.shared_experts.gate_proj.weight",
        "model.layers.1.mlp.shared_experts.up_proj.weight",
    ]),
];

/// The source names of one EXPECTED part for layer `l`: a part with `{e}` is one name per
/// expert (its `+`-joined names fused per expert), in expert order.
fn expand(part: &str, l: usize) -> Vec<String> {
    let part = part.replace("{l}", &l.to_string());
    if !part.contains("{e}") {
        return vec![part];
    }
    (0..4)
        .flat_map(|e| {
            part.split('+')
                .map(|p| p.replace("{e}", &e.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn family_fixtures_load_bit_identical_to_their_sources() {
    for name in FAMILIES {
        let dir = fixture(name);
        let (_, store) = load_dir(&dir, &ModelSource::Detect);
        let cases: Vec<_> = EXPECTED.iter().filter(|(f, _, _)| *f == name).collect();
        assert!(!cases.is_empty(), "{name}: no byte expectations");
        for (_, target, parts) in cases {
            for l in 0..2 {
                let sources: Vec<String> = parts.iter().flat_map(|p| expand(p, l)).collect();
                let want: Vec<Vec<u8>> = sources.iter().map(|s| raw(&dir, s).0).collect();
                let target = target.replace("{l}", &l.to_string());
                assert_eq!(bytes(&store, &target), cat(&want), "{name}: {target}");
            }
        }
    }
}

/// Across the family fixtures: only the projection matrices are quantizable (never a
/// norm, embedding, router, bias or `lm_head`), and every expert param has one offload
/// group per (layer, expert) while everything else stays resident.
#[test]
fn family_fixtures_quantize_matrices_and_offload_experts() {
    const MATRICES: [&str; 15] = [
        "qkv", "out", "gate_up", "up", "down", "q_a", "q_b", "kv_a", "k_b", "v_b", "in_proj",
        "x_proj", "out_proj", "q_gate", "z",
    ];
    for name in FAMILIES {
        let (plan, _) = load_dir(&fixture(name), &ModelSource::Detect);
        for t in &plan.targets {
            let last = t.name.rsplit('.').next().unwrap_or_default();
            let matrix = t.name.starts_with("layers.") && MATRICES.contains(&last);
            assert_eq!(t.quantizable, matrix, "{name}: {}", t.name);
            let offload = serde_json::to_value(&t.offload).unwrap();
            if t.name.contains(".experts.") {
                let layer = t.name.split('.').nth(1).unwrap();
                let groups: Vec<String> = (0..4)
                    .map(|e| format!("layer={layer}/expert={e}"))
                    .collect();
                assert_eq!(
                    offload["per_slice"],
                    serde_json::json!(groups),
                    "{name}: {}",
                    t.name
                );
            } else {
                assert!(offload.is_null(), "{name}: {} is resident", t.name);
            }
        }
    }
}

/// A quantizing load reads a quantizable target that is plain reads (fused, stacked or
/// not) a piece at a time straight from the file: the codes, scales and double-quant
/// state are exactly those of quantizing the assembled tensor, for every format that
/// streams, across the family fixtures and a sharded checkpoint.
#[test]
fn quantizing_from_the_file_gives_the_bytes_of_the_assembled_tensor() {
    use wmap::quant::{self, Format, QuantStore, Stored};
    let mut streamed = 0;
    for name in FAMILIES.into_iter().chain(["llama", "llama_sharded"]) {
        let dir = fixture(name);
        let (_, full) = load_dir(&dir, &ModelSource::Detect);
        let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
        let b = driver::bind(&mut c, &dir, false).unwrap();
        for f in ["nf4", "nf4-dq", "fp4", "fp8", "fp8-channel", "fp8-block"] {
            let format = Format::parse(f).unwrap();
            let store = QuantStore::new(format);
            load::execute(&b.plan, &b.checkpoint, &store, Default::default(), &|_| {}).unwrap();
            let got = store.into_tensors();
            for t in b.plan.targets.iter().filter(|t| t.quantizable) {
                let Stored::Quantized(q) = &got[&t.name] else {
                    panic!("{name} {f}: {} not quantized", t.name)
                };
                let host = &full[&t.name];
                let (want, _) = quant::quantize_bytes(format, host.dtype, &host.data, &host.shape);
                assert!(*q == want, "{name} {f}: {}", t.name);
                if load::Runs::of(&b.checkpoint, &t.recipe, t.dtype).is_some() {
                    streamed += 1;
                }
            }
        }
    }
    // Fused, stacked and plain reads all stream; the count guards against none doing so.
    assert!(streamed > 1000, "{streamed} targets streamed");
}

/// A checkpoint cut short after its header was checked: the quantizing load that reads
/// it a piece at a time reports E0511, as an assembled read would.
#[test]
fn a_file_cut_short_during_a_streamed_quantization_is_e0511() {
    let src = fixture("llama");
    let dir = common::tempdir(&format!("load-cut-{}", std::process::id()));
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, false).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("model.safetensors"))
        .unwrap();
    file.set_len(file.metadata().unwrap().len() / 2).unwrap();
    let only_quantizable = b.plan.targets.iter().filter(|t| t.quantizable).cloned();
    let plan = Plan {
        targets: only_quantizable.collect(),
        ..b.plan.clone()
    };
    let store = wmap::quant::QuantStore::new(wmap::quant::Format::Nf4 { blocksize: 64 });
    let err = load::execute(&plan, &b.checkpoint, &store, Default::default(), &|_| {}).unwrap_err();
    assert_eq!(err.code.as_str(), "E0511", "{}", err.message);
}

/// DeepSeek-V3 stores `kv_b` per head, rows [heads, nope + v]; the loaded `k_b` gathers
/// each head's first `qk_nope_head_dim` rows, `v_b` the remaining `v_head_dim`.
#[test]
fn deepseek_v3_splits_kv_b_per_head() {
    let dir = fixture("deepseek_v3");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let (heads, nope, v, rank) = (4, 8, 8, 16);
    for l in 0..3 {
        let (src, _) = raw(
            &dir,
            &format!("model.layers.{l}.self_attn.kv_b_proj.weight"),
        );
        let rows: Vec<&[u8]> = src.chunks(rank * 2).collect();
        let (mut k_want, mut v_want) = (Vec::new(), Vec::new());
        for h in 0..heads {
            for r in 0..nope + v {
                let into = if r < nope { &mut k_want } else { &mut v_want };
                into.extend_from_slice(rows[h * (nope + v) + r]);
            }
        }
        assert_eq!(bytes(&store, &format!("layers.{l}.attention.k_b")), k_want);
        assert_eq!(bytes(&store, &format!("layers.{l}.attention.v_b")), v_want);
    }
}

/// Qwen3-Next stores the linear attention's projections grouped by key head:
/// `in_proj_qkvz` rows [k_heads, q | k | v | z] (each group's v and z rows are those of its
/// v_heads / k_heads value heads), `in_proj_ba` rows [k_heads, b | a]. The loaded `qkv`, `z`,
/// `b` and `a` gather each role across groups; `A_log` and `dt_bias` are widened exactly to
/// f32. Expected bytes are gathered here row by row.
#[test]
fn qwen3_next_gathers_linear_attention_rows_per_key_head() {
    let dir = fixture("qwen3_next");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let (k_heads, k_dim, v_per_k, v_dim, row) = (2, 8, 2, 8, 32 * 2);
    let gather = |src: &[u8], per: usize, parts: &[(usize, usize)]| -> Vec<u8> {
        let rows: Vec<&[u8]> = src.chunks(row).collect();
        let mut out = Vec::new();
        for &(from, len) in parts {
            for g in 0..k_heads {
                for r in from..from + len {
                    out.extend_from_slice(rows[g * per + r]);
                }
            }
        }
        out
    };
    let widen = |b: Vec<u8>| -> Vec<u8> {
        b.chunks(2)
            .flat_map(|p| ((u16::from_le_bytes([p[0], p[1]]) as u32) << 16).to_le_bytes())
            .collect()
    };
    let per = 2 * k_dim + 2 * v_per_k * v_dim;
    let z_from = 2 * k_dim + v_per_k * v_dim;
    for l in [0, 1, 2] {
        let src = |name: &str| raw(&dir, &format!("model.layers.{l}.linear_attn.{name}")).0;
        let target = |name: &str| bytes(&store, &format!("layers.{l}.linear_attention.{name}"));
        let qkvz = src("in_proj_qkvz.weight");
        let qkv = [(0, k_dim), (k_dim, k_dim), (2 * k_dim, v_per_k * v_dim)];
        assert_eq!(target("qkv"), gather(&qkvz, per, &qkv), "layer {l} qkv");
        assert_eq!(
            target("z"),
            gather(&qkvz, per, &[(z_from, v_per_k * v_dim)]),
            "layer {l} z"
        );
        let ba = src("in_proj_ba.weight");
        assert_eq!(
            target("b"),
            gather(&ba, 2 * v_per_k, &[(0, v_per_k)]),
            "layer {l} b"
        );
        assert_eq!(
            target("a"),
            gather(&ba, 2 * v_per_k, &[(v_per_k, v_per_k)]),
            "layer {l} a"
        );
        for f32_param in ["A_log", "dt_bias"] {
            let t = &store[&format!("layers.{l}.linear_attention.{f32_param}")];
            assert_eq!(t.dtype.name(), "F32", "{f32_param}");
            assert_eq!(
                t.data.to_vec(),
                widen(src(f32_param)),
                "layer {l} {f32_param}"
            );
        }
        assert!(!store.contains_key(&format!("layers.{l}.attention.qkv")));
    }
}

/// Qwen3-Next's gated attention stores each head's query rows then its gate rows in
/// `q_proj` ([heads, 2·head_dim, hidden]); the loaded `qkv` is [every head's q; k; v] and
/// `q_gate` every head's gate rows.
#[test]
fn qwen3_next_splits_query_and_gate_per_head() {
    let dir = fixture("qwen3_next");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let (heads, head_dim, row) = (4, 8, 32 * 2);
    let src = |name: &str| raw(&dir, &format!("model.layers.3.self_attn.{name}.weight")).0;
    let q_proj = src("q_proj");
    let rows: Vec<&[u8]> = q_proj.chunks(row).collect();
    let (mut query, mut gate) = (Vec::new(), Vec::new());
    for h in 0..heads {
        for r in 0..2 * head_dim {
            let into = if r < head_dim { &mut query } else { &mut gate };
            into.extend_from_slice(rows[h * 2 * head_dim + r]);
        }
    }
    let qkv = cat(&[query, src("k_proj"), src("v_proj")]);
    assert_eq!(bytes(&store, "layers.3.attention.qkv"), qkv);
    assert_eq!(bytes(&store, "layers.3.attention.q_gate"), gate);
    assert!(!store.contains_key("layers.3.linear_attention.qkv"));
}

/// GPT-NeoX stores q/k/v per head, rows [heads, 3, head_dim]; the loaded `qkv` gathers
/// each of q, k, v across heads. Expected bytes are gathered here row by row.
#[test]
fn gpt_neox_gathers_per_head_qkv_rows() {
    let dir = fixture("gpt_neox");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let (heads, head_dim, hidden) = (4, 8, 32);
    for l in 0..2 {
        for (suffix, row) in [("weight", hidden * 2), ("bias", 2)] {
            let (src, _) = raw(
                &dir,
                &format!("gpt_neox.layers.{l}.attention.query_key_value.{suffix}"),
            );
            let rows: Vec<&[u8]> = src.chunks(row).collect();
            let mut want = Vec::new();
            for part in 0..3 {
                for h in 0..heads {
                    for r in 0..head_dim {
                        want.extend_from_slice(rows[(h * 3 + part) * head_dim + r]);
                    }
                }
            }
            let target = match suffix {
                "weight" => format!("layers.{l}.attention.qkv"),
                _ => format!("layers.{l}.attention.qkv_bias"),
            };
            assert_eq!(bytes(&store, &target), want, "{target}");
        }
    }
}

#[test]
fn llama_fuses_qkv_and_gate_up_in_declared_order() {
    let dir = fixture("llama");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        let q = raw(&dir, &format!("{p}.self_attn.q_proj.weight")).0;
        let k = raw(&dir, &format!("{p}.self_attn.k_proj.weight")).0;
        let v = raw(&dir, &format!("{p}.self_attn.v_proj.weight")).0;
        assert_eq!(
            bytes(&store, &format!("layers.{l}.attention.qkv")),
            cat(&[q, k, v])
        );
        let g = raw(&dir, &format!("{p}.mlp.gate_proj.weight")).0;
        let u = raw(&dir, &format!("{p}.mlp.up_proj.weight")).0;
        assert_eq!(
            bytes(&store, &format!("layers.{l}.mlp.gate_up")),
            cat(&[g, u])
        );
        let d = raw(&dir, &format!("{p}.mlp.down_proj.weight")).0;
        assert_eq!(bytes(&store, &format!("layers.{l}.mlp.down")), d);
        let n = raw(&dir, &format!("{p}.input_layernorm.weight")).0;
        assert_eq!(bytes(&store, &format!("layers.{l}.input_norm.weight")), n);
    }
    assert_eq!(bytes(&store, "lm_head"), raw(&dir, "lm_head.weight").0);
    assert_eq!(store["layers.0.attention.qkv"].shape, vec![256, 128]);
}

#[test]
fn tied_lm_head_shares_the_embedding() {
    let dir = fixture("llama_tied");
    let (plan, store) = load_dir(&dir, &ModelSource::Detect);
    let lm = &store["lm_head"];
    let embed = &store["embed"];
    assert!(
        std::sync::Arc::ptr_eq(&lm.data, &embed.data),
        "no second copy"
    );
    assert_eq!(lm.data.to_vec(), raw(&dir, "model.embed_tokens.weight").0);
    let t = plan.targets.iter().find(|t| t.name == "lm_head").unwrap();
    assert!(t.recipe.reads().is_empty(), "no second read");
}

#[test]
fn qwen3_moe_stacks_experts_in_expert_order() {
    let dir = fixture("qwen3_moe");
    let (plan, store) = load_dir(&dir, &ModelSource::Detect);
    for l in 0..2 {
        let p = format!("model.layers.{l}.mlp");
        let mut gate_up = Vec::new();
        let mut down = Vec::new();
        for e in 0..8 {
            gate_up.push(raw(&dir, &format!("{p}.experts.{e}.gate_proj.weight")).0);
            gate_up.push(raw(&dir, &format!("{p}.experts.{e}.up_proj.weight")).0);
            down.push(raw(&dir, &format!("{p}.experts.{e}.down_proj.weight")).0);
        }
        let t = &store[&format!("layers.{l}.moe.experts.gate_up")];
        assert_eq!(t.shape, vec![8, 128, 128]);
        assert_eq!(t.data.to_vec(), cat(&gate_up));
        assert_eq!(
            bytes(&store, &format!("layers.{l}.moe.experts.down")),
            cat(&down)
        );
        assert_eq!(
            bytes(&store, &format!("layers.{l}.moe.router")),
            raw(&dir, &format!("{p}.gate.weight")).0
        );
        let q_norm = raw(&dir, &format!("model.layers.{l}.self_attn.q_norm.weight")).0;
        assert_eq!(bytes(&store, &format!("layers.{l}.qk_norm.q_norm")), q_norm);
    }
    // One offload group per (layer, expert); routers and attention stay resident.
    let experts = plan
        .targets
        .iter()
        .find(|t| t.name == "layers.1.moe.experts.down")
        .unwrap();
    let json = serde_json::to_value(&experts.offload).unwrap();
    assert_eq!(json["per_slice"][3], "layer=1/expert=3");
    let router = plan
        .targets
        .iter()
        .find(|t| t.name == "layers.1.moe.router")
        .unwrap();
    assert!(router.offload.is_none() && !router.quantizable);
    assert!(experts.quantizable);
}

#[test]
fn phi3_passes_fused_tensors_through() {
    let dir = fixture("phi3");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let qkv = raw(&dir, "model.layers.0.self_attn.qkv_proj.weight").0;
    assert_eq!(bytes(&store, "layers.0.attention.qkv"), qkv);
    let gu = raw(&dir, "model.layers.1.mlp.gate_up_proj.weight").0;
    assert_eq!(bytes(&store, "layers.1.mlp.gate_up"), gu);
}

/// Splitting Phi-3's fused tensors (the features fixture): contiguous slices, equal
/// splits, interleaved rows, a transpose and a reshape, each checked by hand.
#[test]
fn phi3_splits_as_declared() {
    let dir = fixture("phi3");
    let file = common::root().join("tests/fixtures/lang/features.wmap");
    let (_, store) = load_dir(&dir, &ModelSource::File(file));
    let (qkv, _) = raw(&dir, "model.layers.0.self_attn.qkv_proj.weight");
    let row = 128 * 2; // bytes per row of [_, 128] bf16
    assert_eq!(
        bytes(&store, "layers.0.attention.q"),
        qkv[..128 * row].to_vec()
    );
    assert_eq!(
        bytes(&store, "layers.0.attention.k"),
        qkv[128 * row..192 * row].to_vec()
    );
    assert_eq!(
        bytes(&store, "layers.0.attention.v"),
        qkv[192 * row..256 * row].to_vec()
    );
    let (gu, _) = raw(&dir, "model.layers.0.mlp.gate_up_proj.weight");
    assert_eq!(bytes(&store, "layers.0.mlp.gate"), gu[..256 * row].to_vec());
    assert_eq!(bytes(&store, "layers.0.mlp.up"), gu[256 * row..].to_vec());
    let even: Vec<u8> = gu.chunks(row).step_by(2).flatten().copied().collect();
    assert_eq!(bytes(&store, "layers.0.mlp.even_rows"), even);
    let (o, _) = raw(&dir, "model.layers.0.self_attn.o_proj.weight");
    let o_t = bytes(&store, "layers.0.attention.o_t");
    for i in 0..128 {
        for j in 0..128 {
            assert_eq!(
                o_t[(j * 128 + i) * 2..(j * 128 + i) * 2 + 2],
                o[(i * 128 + j) * 2..(i * 128 + j) * 2 + 2]
            );
        }
    }
    let down = raw(&dir, "model.layers.0.mlp.down_proj.weight").0;
    assert_eq!(bytes(&store, "layers.0.mlp.down_heads"), down);
    assert_eq!(store["layers.0.mlp.down_heads"].shape, vec![128, 4, 64]);
    // f32 target from bf16: exact widening.
    let (embed, _) = raw(&dir, "model.embed_tokens.weight");
    let wide = bytes(&store, "head.embed_copy");
    for (i, pair) in embed.chunks(2).enumerate() {
        let bits = (u16::from_le_bytes([pair[0], pair[1]]) as u32) << 16;
        assert_eq!(&wide[i * 4..i * 4 + 4], &bits.to_le_bytes());
    }
    // Layer 1 stacks both layers' fused gate_up tensors (absolute names).
    let stacked = bytes(&store, "layers.1.mlp_stack");
    let l1 = raw(&dir, "model.layers.1.mlp.gate_up_proj.weight").0;
    assert_eq!(stacked, cat(&[gu, l1]));
}

#[test]
fn mamba2_squeezes_conv_and_keeps_f32_params() {
    let dir = fixture("mamba2");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let (conv, shape) = raw(&dir, "backbone.layers.0.mixer.conv1d.weight");
    assert_eq!(shape, vec![320, 1, 4]);
    let t = &store["layers.0.mixer.conv_weight"];
    assert_eq!(t.shape, vec![320, 4]);
    assert_eq!(t.data.to_vec(), conv);
    let (a_log, _) = raw(&dir, "backbone.layers.1.mixer.A_log");
    let t = &store["layers.1.mixer.A_log"];
    assert_eq!(t.dtype.name(), "F32");
    let widened: Vec<u8> = a_log
        .chunks(2)
        .flat_map(|p| ((u16::from_le_bytes([p[0], p[1]]) as u32) << 16).to_le_bytes())
        .collect();
    assert_eq!(t.data.to_vec(), widened);
}

/// Mamba (v1): `A_log` is 2-D [inner, state] and, with `D` and the `dt_proj` bias, widened
/// exactly from bf16 to f32; the conv is squeezed from [C, 1, K] to [C, K].
#[test]
fn mamba_keeps_its_state_space_params_f32() {
    let dir = fixture("mamba");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let widen = |b: Vec<u8>| -> Vec<u8> {
        b.chunks(2)
            .flat_map(|p| ((u16::from_le_bytes([p[0], p[1]]) as u32) << 16).to_le_bytes())
            .collect()
    };
    for (target, source, shape) in [
        ("A_log", "A_log", vec![64, 4]),
        ("D", "D", vec![64]),
        ("dt_bias", "dt_proj.bias", vec![64]),
    ] {
        let t = &store[&format!("layers.1.mixer.{target}")];
        assert_eq!(t.dtype.name(), "F32", "{target}");
        assert_eq!(t.shape, shape, "{target}");
        let (raw_bytes, _) = raw(&dir, &format!("backbone.layers.1.mixer.{source}"));
        assert_eq!(t.data.to_vec(), widen(raw_bytes), "{target}");
    }
    assert_eq!(store["layers.0.mixer.conv_weight"].shape, vec![64, 4]);
}

/// GPT-OSS keeps its norms in f32 (transformers' `_keep_in_fp32_modules`): the bf16
/// checkpoint norms widen exactly; the other params stay bf16.
#[test]
fn gpt_oss_keeps_its_norms_f32() {
    let dir = fixture("gpt_oss");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let widen = |b: Vec<u8>| -> Vec<u8> {
        b.chunks(2)
            .flat_map(|p| ((u16::from_le_bytes([p[0], p[1]]) as u32) << 16).to_le_bytes())
            .collect()
    };
    for (target, source) in [
        (
            "layers.1.input_norm.weight",
            "model.layers.1.input_layernorm.weight",
        ),
        (
            "layers.0.post_attention_norm.weight",
            "model.layers.0.post_attention_layernorm.weight",
        ),
        ("final_norm.weight", "model.norm.weight"),
    ] {
        let t = &store[target];
        assert_eq!(t.dtype.name(), "F32", "{target}");
        assert_eq!(t.data.to_vec(), widen(raw(&dir, source).0), "{target}");
    }
    assert_eq!(store["layers.0.sinks.sinks"].dtype.name(), "BF16");
}

/// Jamba (4 layers; attention and MoE at period 2, offset 1): layers 0 and 2 bind a Mamba
/// mixer with its dt/B/C norms and a dense MLP, layers 1 and 3 attention and routed
/// experts, each byte-identical to its sources; no layer binds the other kind.
#[test]
fn jamba_binds_mamba_attention_and_moe_by_period() {
    let dir = fixture("jamba");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let src = |l: usize, name: &str| raw(&dir, &format!("model.layers.{l}.{name}")).0;
    for l in [0, 2] {
        let x_proj = bytes(&store, &format!("layers.{l}.mamba.x_proj"));
        assert_eq!(x_proj, src(l, "mamba.x_proj.weight"));
        let dt_norm = bytes(&store, &format!("layers.{l}.mamba_norms.dt_norm"));
        assert_eq!(dt_norm, src(l, "mamba.dt_layernorm.weight"));
        let gate_up = bytes(&store, &format!("layers.{l}.mlp.gate_up"));
        let want = cat(&[
            src(l, "feed_forward.gate_proj.weight"),
            src(l, "feed_forward.up_proj.weight"),
        ]);
        assert_eq!(gate_up, want);
        assert_eq!(store[&format!("layers.{l}.mamba.A_log")].shape, vec![64, 4]);
        assert!(!store.contains_key(&format!("layers.{l}.attention.qkv")));
        assert!(!store.contains_key(&format!("layers.{l}.moe.router")));
    }
    for l in [1, 3] {
        let qkv = bytes(&store, &format!("layers.{l}.attention.qkv"));
        let want = cat(&[
            src(l, "self_attn.q_proj.weight"),
            src(l, "self_attn.k_proj.weight"),
            src(l, "self_attn.v_proj.weight"),
        ]);
        assert_eq!(qkv, want);
        let router = bytes(&store, &format!("layers.{l}.moe.router"));
        assert_eq!(router, src(l, "feed_forward.router.weight"));
        let experts: Vec<Vec<u8>> = (0..4)
            .flat_map(|e| {
                [
                    src(l, &format!("feed_forward.experts.{e}.gate_proj.weight")),
                    src(l, &format!("feed_forward.experts.{e}.up_proj.weight")),
                ]
            })
            .collect();
        assert_eq!(
            bytes(&store, &format!("layers.{l}.moe.experts.gate_up")),
            cat(&experts)
        );
        assert!(!store.contains_key(&format!("layers.{l}.mamba.in_proj")));
        assert!(!store.contains_key(&format!("layers.{l}.mlp.gate_up")));
    }
}

/// Bamba (3 layers, `attn_layer_indices = [1]`): layers 0 and 2 bind a Mamba2 mixer sized
/// by Bamba's `mamba_*` keys, layer 1 attention, each byte-identical to its sources.
#[test]
fn bamba_binds_attention_at_its_indices() {
    let dir = fixture("bamba");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let src = |l: usize, name: &str| raw(&dir, &format!("model.layers.{l}.{name}")).0;
    for l in [0, 2] {
        let in_proj = bytes(&store, &format!("layers.{l}.mamba.in_proj"));
        assert_eq!(in_proj, src(l, "mamba.in_proj.weight"));
        assert_eq!(
            store[&format!("layers.{l}.mamba.conv_weight")].shape,
            vec![72, 4]
        );
        assert_eq!(
            store[&format!("layers.{l}.mamba.A_log")].dtype.name(),
            "F32"
        );
        assert!(!store.contains_key(&format!("layers.{l}.attention.qkv")));
    }
    let qkv = bytes(&store, "layers.1.attention.qkv");
    let want = cat(&[
        src(1, "self_attn.q_proj.weight"),
        src(1, "self_attn.k_proj.weight"),
        src(1, "self_attn.v_proj.weight"),
    ]);
    assert_eq!(qkv, want);
    assert!(!store.contains_key("layers.1.mamba.in_proj"));
}

#[test]
fn nemotron_h_moe_binds_each_layer_kind() {
    let dir = fixture("nemotron_h_moe");
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    // Layers: M E M * E.
    assert!(store.contains_key("layers.0.mamba.in_proj"));
    assert!(store.contains_key("layers.3.attention.qkv"));
    let mut up = Vec::new();
    for e in 0..8 {
        up.push(
            raw(
                &dir,
                &format!("backbone.layers.4.mixer.experts.{e}.up_proj.weight"),
            )
            .0,
        );
    }
    assert_eq!(bytes(&store, "layers.4.moe.experts.up"), cat(&up));
    let shared = raw(
        &dir,
        "backbone.layers.1.mixer.shared_experts.up_proj.weight",
    )
    .0;
    assert_eq!(bytes(&store, "layers.1.moe.shared.up"), shared);
    assert_eq!(
        store["layers.1.moe.e_score_correction_bias"].dtype.name(),
        "F32"
    );
}

/// The sharded fixture, merged into one file by the `safetensors` crate, loads to the
/// same bytes as the shards.
#[test]
fn sharded_and_unsharded_give_the_same_bytes() {
    let sharded = fixture("llama_sharded");
    let merged = common::tempdir("merged");
    std::fs::copy(sharded.join("config.json"), merged.join("config.json")).unwrap();
    let mut all: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for e in std::fs::read_dir(&sharded).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "safetensors") {
            let b = std::fs::read(e.path()).unwrap();
            let st = safetensors::SafeTensors::deserialize(&b).unwrap();
            for (n, t) in st.tensors() {
                all.push((n, t.data().to_vec(), t.shape().to_vec(), t.dtype()));
            }
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = all
        .iter()
        .map(|(n, d, s, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &merged.join("model.safetensors")).unwrap();
    let (_, a) = load_dir(&sharded, &ModelSource::Detect);
    let (_, b) = load_dir(&merged, &ModelSource::Detect);
    assert_eq!(a.len(), 4 * 6 + 3);
    for (name, t) in &a {
        assert_eq!(t.data, b[name].data, "{name}");
    }
}

/// `--out` writes the runtime layout atomically; reading it back gives the loaded bytes.
#[test]
fn out_writes_the_runtime_layout_atomically() {
    let dir = fixture("llama_tied");
    let out = common::tempdir("out").join("runtime");
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, false).unwrap();
    let staging = load::output::Staging::prepare(&out, &dir, false).unwrap();
    let writer = load::SafetensorsWriter::create(staging, &b.plan).unwrap();
    load::execute(
        &b.plan,
        &b.checkpoint,
        &writer,
        load::Options::default(),
        &|_| {},
    )
    .unwrap();
    writer.commit().unwrap();
    let (_, store) = load_dir(&dir, &ModelSource::Detect);
    let bytes_out = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes_out).unwrap();
    assert_eq!(st.len(), store.len());
    for (name, t) in &store {
        let v = st.tensor(name).unwrap();
        assert_eq!(v.data(), t.data.as_slice(), "{name}");
    }
    // An existing destination is refused without --force, and nothing is left behind.
    let err = load::output::Staging::prepare(&out, &dir, false)
        .err()
        .unwrap();
    assert_eq!(err.code.as_str(), "E0601");
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

/// One thread gives the same bytes as all of them.
#[test]
fn one_thread_gives_the_same_result() {
    let dir = fixture("qwen3_moe");
    let (_, wide) = load_dir(&dir, &ModelSource::Detect);
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, false).unwrap();
    let store = HostStore::default();
    let stats = load::execute(
        &b.plan,
        &b.checkpoint,
        &store,
        load::Options {
            threads: 1,
            ..Default::default()
        },
        &|_| {},
    )
    .unwrap();
    assert_eq!(stats.bytes_read, b.checkpoint.data_bytes());
    let narrow = store.into_tensors();
    for (name, t) in &wide {
        assert_eq!(t.data, narrow[name].data);
    }
}

/// Binds a one-param model `w: [rows, cols]` of `dtype` to a sparse checkpoint holding
/// `w` as `src` of that shape, in a fresh folder under the target dir.
fn one_tensor(name: &str, src: &'static str, dtype: &str, shape: [u64; 2]) -> driver::Bound {
    let dir = std::env::temp_dir().join(format!("wmap-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::sparse::write_sparse(&dir, &[("w".into(), src, shape.to_vec())], 1);
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"architectures": ["X"], "rows": {}, "cols": {}}}"#,
            shape[0], shape[1]
        ),
    )
    .unwrap();
    let text = format!(r#"model M for "X" {{ param w: [rows, cols] dtype = {dtype} from "w" }}"#);
    let model = ModelSource::Text {
        name: "m.wmap".into(),
        text,
    };
    let mut c = driver::compile(&model, Some(&dir.join("config.json"))).unwrap();
    let bound = driver::bind(&mut c, &dir, true);
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    bound.unwrap_or_else(|| panic!("{rendered}"))
}

/// A 1 TiB tensor in a sparse checkpoint plans, and the load refuses it with E0515
/// before allocating or reading anything.
#[test]
fn a_1_tib_tensor_is_refused_before_allocation() {
    let b = one_tensor("tib", "BF16", "bf16", [1 << 29, 1 << 10]);
    let options = load::Options {
        threads: 1,
        memory_budget: Some(64 << 30),
    };
    let read = std::sync::atomic::AtomicU64::new(0);
    let err = load::execute(
        &b.plan,
        &b.checkpoint,
        &HostStore::default(),
        options,
        &|n| {
            read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .unwrap_err();
    assert_eq!(err.code.as_str(), "E0515");
    assert_eq!(
        err.message,
        "target `w` needs 1099511627776 bytes to assemble, more than the memory budget of this load (physical memory unless set)"
    );
    assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// A conversion streams through fixed chunks: a tensor larger than one chunk converts
/// element for element as a whole-tensor conversion would.
#[test]
fn a_conversion_larger_than_one_chunk_is_exact() {
    let b = one_tensor("chunks", "BF16", "f32", [3, (1 << 20) / 3 + 7]);
    let n = (3 * ((1 << 20) / 3 + 7)) as usize;
    // The sparse file's data is zero; write a ramp of bf16 values over it.
    let src: Vec<u8> = (0..n)
        .flat_map(|i| half::bf16::from_f32((i % 1000) as f32).to_le_bytes())
        .collect();
    let path = &b.checkpoint.shards[0].path;
    let mut file = std::fs::read(path).unwrap();
    let start = file.len() - src.len();
    file[start..].copy_from_slice(&src);
    std::fs::write(path, &file).unwrap();
    let store = HostStore::default();
    load::execute(
        &b.plan,
        &b.checkpoint,
        &store,
        load::Options::default(),
        &|_| {},
    )
    .unwrap();
    let got = bytes(&store.into_tensors(), "w");
    let want: Vec<u8> = (0..n)
        .flat_map(|i| {
            half::bf16::from_f32((i % 1000) as f32)
                .to_f32()
                .to_le_bytes()
        })
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "converted bytes differ");
}

/// Runs `wmapc` with `args`; (exit code, stdout, stderr).
fn wmapc(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wmapc"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// A Qwen2-style checkpoint (Llama plus q/k/v biases) loaded as Llama would lose every
/// bias: `load` refuses it, `--allow-unclaimed` loads with a warning, `plan` warns.
#[test]
fn load_refuses_unclaimed_tensors_unless_allowed() {
    let ck = "tests/fixtures/errors/checkpoints/E0510-unclaimed-tensor-refused-2";
    let (code, _, err) = wmapc(&[
        "load", ck, "--model", "Llama", "--quiet", "--color", "never",
    ]);
    assert_eq!(code, 1, "{err}");
    for p in ["q", "k", "v"] {
        assert!(
            err.contains(&format!(
                "error[E0510/unclaimed-tensor-refused]: checkpoint tensor `model.layers.0.self_attn.{p}_proj.bias` is not loaded"
            )),
            "{err}"
        );
    }
    assert!(err.ends_with("3 errors, 0 warnings\n"), "{err}");

    let (code, out, err) = wmapc(&[
        "load",
        ck,
        "--model",
        "Llama",
        "--quiet",
        "--color",
        "never",
        "--allow-unclaimed",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.matches("warning[W0501/unclaimed-tensor]").count(),
        3,
        "{err}"
    );
    assert!(out.starts_with("loaded model `Llama`: "), "{out}");

    let (code, _, err) = wmapc(&[
        "plan",
        "--model",
        "Llama",
        "--checkpoint",
        ck,
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.matches("warning[W0501/unclaimed-tensor]").count(),
        3,
        "{err}"
    );
}
