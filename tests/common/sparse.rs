//! Writes header-only safetensors checkpoints: real names and shapes, a hole for data.
//! A 60 GB checkpoint costs a few megabytes of headers on disk.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// (name, dtype, shape) of one tensor.
pub type Spec = (String, &'static str, Vec<u64>);

fn dtype_size(d: &str) -> u64 {
    match d {
        "F32" | "I32" => 4,
        "BF16" | "F16" => 2,
        "I64" | "F64" => 8,
        _ => 1,
    }
}

/// The `.safetensors` files in `dir`, sorted by name.
pub fn safetensors_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

/// Writes `specs` into `shards` files plus an index (one file and no index when 1).
pub fn write_sparse(dir: &Path, specs: &[Spec], shards: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let per = specs.len().div_ceil(shards.max(1));
    let mut weight_map = BTreeMap::new();
    for (i, chunk) in specs.chunks(per.max(1)).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, shards)
        };
        let mut header = serde_json::Map::new();
        let mut cursor = 0u64;
        for (name, dtype, shape) in chunk {
            let len = shape.iter().product::<u64>() * dtype_size(dtype);
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [cursor, cursor + len]}),
            );
            cursor += len;
            weight_map.insert(name.clone(), file.clone());
        }
        let text = serde_json::to_string(&header).unwrap();
        let mut f = std::fs::File::create(dir.join(&file)).unwrap();
        f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.set_len(8 + text.len() as u64 + cursor).unwrap();
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

/// The tensors of a Qwen3-MoE checkpoint with the given sizes.
/// Sizes of a Qwen3-MoE checkpoint.
#[derive(Clone, Copy)]
pub struct MoeDims {
    pub layers: u64,
    pub experts: u64,
    pub hidden: u64,
    pub moe_inter: u64,
    pub heads: u64,
    pub kv: u64,
    pub head_dim: u64,
    pub vocab: u64,
}

pub fn qwen3_moe_specs(d: MoeDims) -> Vec<Spec> {
    let MoeDims {
        layers,
        experts,
        hidden,
        moe_inter,
        heads,
        kv,
        head_dim,
        vocab,
    } = d;
    let mut s: Vec<Spec> = vec![
        (
            "model.embed_tokens.weight".into(),
            "BF16",
            vec![vocab, hidden],
        ),
        ("model.norm.weight".into(), "BF16", vec![hidden]),
        ("lm_head.weight".into(), "BF16", vec![vocab, hidden]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        s.push((format!("{p}.input_layernorm.weight"), "BF16", vec![hidden]));
        s.push((
            format!("{p}.post_attention_layernorm.weight"),
            "BF16",
            vec![hidden],
        ));
        s.push((
            format!("{p}.self_attn.q_proj.weight"),
            "BF16",
            vec![heads * head_dim, hidden],
        ));
        s.push((
            format!("{p}.self_attn.k_proj.weight"),
            "BF16",
            vec![kv * head_dim, hidden],
        ));
        s.push((
            format!("{p}.self_attn.v_proj.weight"),
            "BF16",
            vec![kv * head_dim, hidden],
        ));
        s.push((
            format!("{p}.self_attn.o_proj.weight"),
            "BF16",
            vec![hidden, heads * head_dim],
        ));
        s.push((
            format!("{p}.self_attn.q_norm.weight"),
            "BF16",
            vec![head_dim],
        ));
        s.push((
            format!("{p}.self_attn.k_norm.weight"),
            "BF16",
            vec![head_dim],
        ));
        s.push((
            format!("{p}.mlp.gate.weight"),
            "BF16",
            vec![experts, hidden],
        ));
        for e in 0..experts {
            s.push((
                format!("{p}.mlp.experts.{e}.gate_proj.weight"),
                "BF16",
                vec![moe_inter, hidden],
            ));
            s.push((
                format!("{p}.mlp.experts.{e}.up_proj.weight"),
                "BF16",
                vec![moe_inter, hidden],
            ));
            s.push((
                format!("{p}.mlp.experts.{e}.down_proj.weight"),
                "BF16",
                vec![hidden, moe_inter],
            ));
        }
    }
    s
}

/// A Qwen3-MoE `config.json` with the given sizes (transformers 5 key names).
pub fn qwen3_moe_config(d: MoeDims) -> String {
    let MoeDims {
        layers,
        experts,
        hidden,
        moe_inter,
        heads,
        kv,
        head_dim,
        vocab,
    } = d;
    serde_json::json!({
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "num_hidden_layers": layers,
        "num_local_experts": experts,
        "hidden_size": hidden,
        "moe_intermediate_size": moe_inter,
        "intermediate_size": moe_inter * 8,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "tie_word_embeddings": false,
    })
    .to_string()
}
