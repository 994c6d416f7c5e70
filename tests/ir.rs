//! The IR of every stdlib model × every fixture config is snapshotted: the main
//! regression net for the language, the checker and the stdlib.

mod common;

use wmap::driver::{self, ModelSource};

fn lower(source: &ModelSource, config: &std::path::Path) -> (wmap::ir::Ir, driver::Compilation) {
    let mut c = driver::compile(source, Some(config)).expect("no I/O error");
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    let (ir, _) = c
        .lowered
        .take()
        .unwrap_or_else(|| panic!("{}: {rendered}", config.display()));
    (ir, c)
}

#[test]
fn fixture_configs_check_clean_and_lower_to_snapshots() {
    let configs = common::hf_configs();
    assert_eq!(configs.len(), 52, "fixture configs: {configs:?}");
    for (name, config) in configs {
        let (ir, c) = lower(&ModelSource::Detect, &config);
        let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
        assert!(c.diags.is_empty(), "{name} must check clean:\n{rendered}");
        insta::with_settings!({ snapshot_path => "snapshots/ir", prepend_module_to_snapshot => false }, {
            insta::assert_json_snapshot!(name, ir);
        });
    }
}

#[test]
fn detection_picks_the_model_serving_the_architecture() {
    let expect = [
        ("llama", "Llama"),
        ("mistral", "Llama"),
        ("phi3", "Phi3"),
        ("qwen3", "Qwen3"),
        ("qwen3_moe", "Qwen3Moe"),
        ("mamba2", "Mamba2"),
        ("nemotron_h", "NemotronH"),
        ("qwen2", "Qwen2"),
        ("qwen2_moe", "Qwen2Moe"),
        ("granite", "Granite"),
        ("olmo2", "Olmo2"),
        ("olmoe", "Olmoe"),
        ("gemma", "Gemma"),
        ("gemma2", "Gemma2"),
        ("mixtral", "Mixtral"),
        ("starcoder2", "Starcoder2"),
        ("phi", "Phi"),
        ("stablelm", "StableLm"),
        ("stablelm_parallel", "StableLm"),
        ("cohere", "Cohere"),
        ("cohere_qk_norm", "Cohere"),
        ("gemma3_text", "Gemma3"),
        ("phimoe", "Phimoe"),
        ("glm4", "Glm4"),
        ("smollm3", "SmolLm3"),
        ("olmo3", "Olmo2"),
        ("gpt_neox", "GptNeox"),
        ("qwen2_moe_sparse_step", "Qwen2Moe"),
        ("seed_oss", "SeedOss"),
        ("exaone4", "Exaone4"),
        ("arcee", "Arcee"),
        ("ernie4_5", "Ernie45"),
        ("mamba", "Mamba"),
        ("jamba", "Jamba"),
        ("bamba", "Bamba"),
        ("falcon_h1", "FalconH1"),
        ("gpt_oss", "GptOss"),
        ("deepseek_v3", "DeepseekV3"),
        ("granitemoehybrid", "GraniteMoeHybrid"),
        ("qwen3_next", "Qwen3Next"),
    ];
    for (dir, model) in expect {
        let config = common::root().join(format!("tests/fixtures/hf/{dir}/config.json"));
        let (ir, _) = lower(&ModelSource::Detect, &config);
        assert_eq!(ir.model, model, "{dir}");
    }
}

/// Each family's released, full-size config (`config.full.json`, no weights) checks clean
/// with the model detection picks, and sizes come from the config: the embedding is
/// [vocab_size, hidden_size] at full size.
#[test]
fn full_size_configs_check_clean() {
    let mut seen = 0;
    for (name, small) in common::hf_configs() {
        let full = common::root().join(small.with_file_name("config.full.json"));
        if name.contains('.') || !full.exists() {
            continue;
        }
        let (ir, c) = lower(&ModelSource::Detect, &common::rel(&full));
        let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
        assert!(
            c.diags.is_empty(),
            "{name} full size must check clean:\n{rendered}"
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&full).unwrap()).unwrap();
        let json = serde_json::to_value(&ir).unwrap();
        assert_eq!(
            json["config"]["vocab_size"], cfg["vocab_size"],
            "{name}: the IR records the full vocabulary"
        );
        assert!(
            cfg["hidden_size"].as_u64().unwrap() >= 1024,
            "{name}: full size"
        );
        seen += 1;
    }
    assert_eq!(seen, 33, "fixtures with a config.full.json");
}

/// Mamba configs write `time_step_rank` as a number or as `"auto"` (⌈hidden_size / 16⌉);
/// both forms bind the same model, and a wrong number does not.
#[test]
fn mamba_time_step_rank_auto_is_ceil_of_hidden_over_16() {
    let real = common::root().join("tests/fixtures/hf/mamba/config.json");
    let text = std::fs::read_to_string(&real).unwrap();
    assert!(
        text.contains("\"time_step_rank\": 2,"),
        "the fixture has hidden 32"
    );
    let dir = common::tempdir("mamba_auto");
    let root = |name: &str, rank: &str| {
        let path = dir.join(format!("{name}.json"));
        let replaced = text.replace(
            "\"time_step_rank\": 2,",
            &format!("\"time_step_rank\": {rank},"),
        );
        std::fs::write(&path, replaced).unwrap();
        serde_json::to_value(&lower(&ModelSource::Detect, &path).0.root).unwrap()
    };
    let number = root("number", "2");
    assert_eq!(root("auto", "\"auto\""), number);
    assert_ne!(root("three", "3"), number);
}

#[test]
fn lowering_is_deterministic() {
    let config = common::root().join("tests/fixtures/hf/nemotron_h_moe/config.json");
    let a = serde_json::to_string(&lower(&ModelSource::Detect, &config).0).unwrap();
    let b = serde_json::to_string(&lower(&ModelSource::Detect, &config).0).unwrap();
    assert_eq!(a, b);
}

#[test]
fn both_nemotron_config_forms_give_the_same_layers() {
    for dir in ["nemotron_h", "nemotron_h_moe"] {
        let base = common::root().join(format!("tests/fixtures/hf/{dir}"));
        let (a, _) = lower(&ModelSource::Detect, &base.join("config.json"));
        let (b, _) = lower(&ModelSource::Detect, &base.join("config.hub.json"));
        assert_eq!(
            a.root, b.root,
            "{dir}: layer_kind from either key must bind the same model"
        );
    }
}

/// Qwen3-Next's hub configs say `full_attention_interval`; transformers 5 writes the same
/// layers as `layer_types`. Both bind the same model: full attention in every fourth layer,
/// the dense MLP in layer 1 (`mlp_only_layers`).
#[test]
fn both_qwen3_next_config_forms_give_the_same_layers() {
    let base = common::root().join("tests/fixtures/hf/qwen3_next");
    let (a, _) = lower(&ModelSource::Detect, &base.join("config.json"));
    let (b, _) = lower(&ModelSource::Detect, &base.join("config.hub.json"));
    assert_eq!(a.root, b.root);
    let layers = &b.root.instances[0];
    assert_eq!(
        layers.kinds,
        [
            "linear_attention+moe",
            "linear_attention+mlp",
            "linear_attention+moe",
            "attention+moe"
        ]
    );
}

#[test]
fn hybrid_layers_record_their_kind() {
    let config = common::root().join("tests/fixtures/hf/nemotron_h_moe/config.hub.json");
    let (ir, _) = lower(&ModelSource::Detect, &config);
    let layers = &ir.root.instances[0];
    assert_eq!(layers.kinds, ["mamba", "moe", "mamba", "attention", "moe"]);
}

/// A Qwen3-MoE config at full size (48 layers × 128 experts) lowers to a few kilobytes:
/// repeats and stacks are not unrolled.
#[test]
fn large_moe_config_lowers_compactly() {
    let dir = tempdir("qwen3_moe_large");
    let text =
        std::fs::read_to_string(common::root().join("tests/fixtures/hf/qwen3_moe/config.json"))
            .unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["num_hidden_layers"] = 48.into();
    cfg["num_local_experts"] = 128.into();
    cfg["hidden_size"] = 2048.into();
    cfg["moe_intermediate_size"] = 768.into();
    cfg["num_attention_heads"] = 32.into();
    cfg["num_key_value_heads"] = 4.into();
    cfg["head_dim"] = 128.into();
    cfg["vocab_size"] = 151936.into();
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let (ir, _) = lower(&ModelSource::Detect, &path);
    let json = serde_json::to_string(&ir).unwrap();
    assert!(json.len() < 8 * 1024, "IR is {} bytes", json.len());
    let layers = &ir.root.instances[0];
    assert_eq!(layers.repeat.as_ref().unwrap().count, 48);
    assert_eq!(layers.variants.len(), 1);
    assert!(json.contains("\"count\":128"), "experts stack over 128");
}

/// Every language feature the stdlib does not use, on one model: slices (contiguous and
/// interleaved), split, reshape, transpose, squeeze, tied through an instance, optional,
/// `when` with membership, `%` and indexing, stacks of already-fused tensors.
#[test]
fn language_features_lower_as_declared() {
    let file = common::root().join("tests/fixtures/lang/features.wmap");
    let config = common::root().join("tests/fixtures/hf/phi3/config.json");
    let (ir, c) = lower(&ModelSource::File(common::rel(&file)), &config);
    assert!(c.diags.is_empty());
    insta::with_settings!({ snapshot_path => "snapshots/ir", prepend_module_to_snapshot => false }, {
        insta::assert_json_snapshot!("lang_features", ir);
    });
}

/// A user file can override a stdlib declaration by name.
#[test]
fn user_declaration_overrides_stdlib() {
    let text = r#"
use "models/llama.wmap"
module GatedMlp {
    param gate: [intermediate_size, hidden_size] quantizable from "gate_proj.weight"
    param up: [intermediate_size, hidden_size] quantizable from "up_proj.weight"
    param down: [hidden_size, intermediate_size] quantizable from "down_proj.weight"
}
model MyLlama for "LlamaForCausalLM" {
    param embed: [vocab_size, hidden_size] from "model.embed_tokens.weight"
    layers: DecoderBlock[layer in 0..num_hidden_layers] at "model.layers.{layer}"
}
"#;
    let source = ModelSource::Text {
        name: "my.wmap".into(),
        text: text.into(),
    };
    let config = common::root().join("tests/fixtures/hf/llama/config.json");
    let (ir, _) = lower(&source, &config);
    let json = serde_json::to_string(&ir).unwrap();
    assert!(
        json.contains("\"name\":\"gate\""),
        "the user's GatedMlp is used"
    );
    assert!(!json.contains("gate_up"));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wmap-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Layers are checked once per signature, not once per index: the variants must still
/// be exactly the ones a per-index walk gives. With `mlp_only_layers = [1, 3]` and
/// `decoder_sparse_step = 2`, layers 5 and 7 are sparse, the rest dense.
#[test]
fn index_dependent_layers_split_into_exact_variants() {
    let base = common::root().join("tests/fixtures/hf/qwen3_moe/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base).unwrap()).unwrap();
    json["num_hidden_layers"] = 8.into();
    json["mlp_only_layers"] = serde_json::json!([1, 3]);
    json["decoder_sparse_step"] = 2.into();
    let config = common::tempdir("ir-signatures").join("config.json");
    std::fs::write(&config, json.to_string()).unwrap();
    let (ir, _) = lower(&ModelSource::Detect, &config);
    let layers = ir
        .root
        .instances
        .iter()
        .find(|i| i.repeat.is_some())
        .expect("a repeated layer instance");
    let shown: Vec<(String, Vec<[i64; 2]>)> = layers
        .variants
        .iter()
        .map(|v| (v.kind.clone(), v.indices.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            ("mlp".to_string(), vec![[0, 5], [6, 7]]),
            ("moe".to_string(), vec![[5, 6], [7, 8]]),
        ]
    );
    assert_eq!(layers.kinds.len(), 8);
    assert_eq!(layers.kinds[5], "moe");
    assert_eq!(layers.kinds[4], "mlp");
}

/// Every IR the compiler writes reads back through validation unchanged.
#[test]
fn written_irs_validate_and_read_back() {
    for (name, config) in common::hf_configs() {
        let (ir, _) = lower(&ModelSource::Detect, &config);
        let text = serde_json::to_string(&ir).unwrap();
        let back = wmap::ir::validate::from_json(&text)
            .unwrap_or_else(|d| panic!("{name}: {}", d.message));
        assert_eq!(back, ir, "{name}");
    }
}

/// An IR from elsewhere is checked before use: each broken invariant is E0413.
#[test]
fn hostile_irs_are_refused_with_e0413() {
    let config = common::root().join("tests/fixtures/hf/qwen3_moe/config.json");
    let (ir, _) = lower(&ModelSource::Detect, &config);
    let good = serde_json::to_value(&ir).unwrap();
    let layers = "/root/instances/0";
    let cases = [
        ("version", "/ir_version".to_string(), serde_json::json!(1)),
        (
            "zero dim",
            "/root/params/0/shape/0".into(),
            serde_json::json!(0),
        ),
        (
            "huge shape",
            "/root/params/0/shape".into(),
            serde_json::json!([896u64, 7905747460161236407u64]),
        ),
        (
            "huge repeat",
            format!("{layers}/repeat/count"),
            serde_json::json!(1_000_000_000u64),
        ),
        (
            "range outside",
            format!("{layers}/variants/0/indices/0/1"),
            serde_json::json!(99),
        ),
        (
            "overlap",
            format!("{layers}/variants/0/indices"),
            serde_json::json!([[0, 2], [1, 2]]),
        ),
        ("not an IR", String::new(), serde_json::json!("nope")),
        // `embed` splits by vocabulary: its rule must fit its shape.
        (
            "shard parts",
            "/root/params/0/shard/tp/parts".into(),
            serde_json::json!([1]),
        ),
        (
            "shard unit",
            "/root/params/0/shard/tp/unit".into(),
            serde_json::json!(0),
        ),
        (
            "column on dim 1",
            "/root/params/0/shard/tp/dim".into(),
            serde_json::json!(1),
        ),
    ];
    for (what, pointer, value) in cases {
        let mut v = good.clone();
        *v.pointer_mut(&pointer).expect(what) = value;
        assert_ne!(v, good, "{what}: the mutation must apply");
        let err = wmap::ir::validate::from_json(&v.to_string()).unwrap_err();
        assert_eq!(err.code.as_str(), "E0413", "{what}: {}", err.message);
    }
    // An offload group over a variable nothing binds.
    let text =
        serde_json::to_string(&good)
            .unwrap()
            .replacen(r#""var":"expert""#, r#""var":"nobody""#, 1);
    assert_ne!(text, serde_json::to_string(&good).unwrap());
    let err = wmap::ir::validate::from_json(&text).unwrap_err();
    assert!(err.message.contains("unbound `nobody`"), "{}", err.message);
    // Nesting deeper than serde_json's recursion limit is an error, not a crash.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        wmap::ir::validate::from_json(&deep)
            .unwrap_err()
            .code
            .as_str(),
        "E0413"
    );
}

/// `if … then … else`, `is` and `ceil_div`: Mamba's `time_step_rank: "auto"` gives
/// ⌈hidden / 16⌉, and `q_lora_rank` absent, `null` or set picks the query params.
#[test]
fn conditionals_choose_by_type_and_null() {
    let file = common::root().join("tests/fixtures/lang/conditionals.wmap");
    let source = ModelSource::File(common::rel(&file));
    let real = common::root().join("tests/fixtures/hf/mamba2/config.json");
    let (ir, c) = lower(&source, &real);
    assert!(c.diags.is_empty());
    insta::with_settings!({ snapshot_path => "snapshots/ir", prepend_module_to_snapshot => false }, {
        insta::assert_json_snapshot!("lang_conditionals", ir);
    });
    let text = std::fs::read_to_string(&real).unwrap();
    let dir = common::tempdir("conditionals");
    let variant = |name: &str, from: &str, to: &str| {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, text.replace(from, to)).unwrap();
        let (ir, _) = lower(&source, &path);
        serde_json::to_value(&ir.root.instances[0]).unwrap()
    };
    let layer_params = |v: &serde_json::Value| -> Vec<String> {
        let mixer = &v["variants"][0]["body"]["instances"][0]["variants"][0]["body"]["params"];
        let names = mixer.as_array().unwrap().iter();
        names
            .map(|p| format!("{}{}", p["name"], p["shape"]))
            .collect()
    };
    // hidden_size 128: "auto" is ⌈128 / 16⌉ = 8, as the written value; 200 → ⌈12.5⌉ = 13.
    let auto = variant(
        "auto",
        "\"time_step_rank\": 8",
        "\"time_step_rank\": \"auto\"",
    );
    assert!(layer_params(&auto).contains(&"\"dt_proj\"[256,8]".to_string()));
    let wide = variant(
        "wide",
        "\"time_step_rank\": 8,",
        "\"time_step_rank\": \"auto\", \"hidden_size\": 200,",
    );
    let wide = layer_params(&wide);
    assert!(
        wide.contains(&"\"dt_proj\"[400,13]".to_string()),
        "{wide:?}"
    );
    let null = variant(
        "null",
        "\"use_bias\"",
        "\"q_lora_rank\": null, \"use_bias\"",
    );
    let set = variant("set", "\"use_bias\"", "\"q_lora_rank\": 64, \"use_bias\"");
    assert!(layer_params(&null).contains(&"\"q_proj\"[128,128]".to_string()));
    assert!(layer_params(&set).contains(&"\"q_a_proj\"[64,128]".to_string()));
    assert!(!layer_params(&set)
        .iter()
        .any(|p| p.starts_with("\"q_proj\"")));
}

/// `ignore` holes: config symbols are written in, index variables stay holes.
#[test]
fn ignore_patterns_take_config_values() {
    let file = common::root().join("tests/fixtures/lang/patterns.wmap");
    let config = common::root().join("tests/fixtures/hf/llama/config.json");
    let (ir, c) = lower(&ModelSource::File(common::rel(&file)), &config);
    assert!(c.diags.is_empty());
    assert_eq!(ir.root.ignore, ["model.layers.2.*", "lm_head.llama"]);
    let layer = &ir.root.instances[0].variants[0].body;
    assert_eq!(
        layer.ignore,
        [
            "model.layers.{layer}.{layer}_rotary.inv_freq",
            "model.layers.{layer}.*"
        ]
    );
}

/// `use "file" { A }` brings `A` (and what it needs); an imported file's unused
/// declarations do not warn.
#[test]
fn selective_imports_check_clean() {
    let file = common::root().join("tests/fixtures/lang/imports.wmap");
    let config = common::root().join("tests/fixtures/hf/llama/config.json");
    let (ir, c) = lower(&ModelSource::File(common::rel(&file)), &config);
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{rendered}");
    let layer = &ir.root.instances[0].variants[0].body;
    let modules: Vec<&str> = layer.instances.iter().map(|i| i.module.as_str()).collect();
    assert_eq!(modules, ["Norm", "Attention", "GatedMlp"]);
}

/// A `match` picks each layer's module by kind; the IR names the module per variant.
#[test]
fn match_picks_the_module_per_layer_kind() {
    let file = common::root().join("tests/fixtures/lang/layer_kinds.wmap");
    let config = common::root().join("tests/fixtures/hf/nemotron_h/config.json");
    let (ir, c) = lower(&ModelSource::File(common::rel(&file)), &config);
    assert!(c.diags.is_empty());
    let layers = &ir.root.instances[0];
    let mut modules: Vec<(i64, &str)> = Vec::new();
    for v in &layers.variants {
        for [a, b] in &v.indices {
            let module = v.body.instances[0].module.as_str();
            modules.extend((*a..*b).map(|i| (i, module)));
        }
    }
    modules.sort();
    let want = [
        (0, "Mamba2Mixer"),
        (1, "ReluSquaredMlp"),
        (2, "Mamba2Mixer"),
        (3, "Attention"),
        (4, "ReluSquaredMlp"),
    ];
    assert_eq!(modules, want);
    insta::with_settings!({ snapshot_path => "snapshots/ir", prepend_module_to_snapshot => false }, {
        insta::assert_json_snapshot!("lang_layer_kinds", ir);
    });
}

/// Nemotron-H with a kind the stdlib does not know: E0430 at `check`, naming the key,
/// the layer and the value, once for the two layers that have it.
#[test]
fn unknown_layer_kind_is_an_error_not_a_missing_mixer() {
    let real = common::root().join("tests/fixtures/hf/nemotron_h/config.json");
    let text = std::fs::read_to_string(real).unwrap();
    let bad = text.replacen("\"mlp\"", "\"X\"", 2);
    assert_ne!(bad, text);
    let dir = common::tempdir("layer-kind");
    let path = dir.join("config.json");
    std::fs::write(&path, bad).unwrap();
    let c = driver::compile(&ModelSource::Detect, Some(&path)).expect("no I/O error");
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    let errors: Vec<String> = c.diags.items.iter().map(|d| d.message.clone()).collect();
    assert_eq!(
        errors,
        ["`layer_kind[layer]` is \"X\" at layer = 1, which no arm matches"],
        "{rendered}"
    );
    assert!(c.lowered.is_none());
}

/// Module parameters: names written into tensor names, a flag switching a param per
/// layer, a size, and the defaults when nothing is passed.
#[test]
fn module_parameters_bind_names_sizes_and_flags() {
    let file = common::root().join("tests/fixtures/lang/params.wmap");
    let config = common::root().join("tests/fixtures/hf/qwen3_moe/config.json");
    let (ir, c) = lower(&ModelSource::File(common::rel(&file)), &config);
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{rendered}");
    let json = serde_json::to_string(&ir).unwrap();
    for name in [
        "experts.{expert}.w1.weight",
        "experts.{expert}.w3.weight",
        "experts.{expert}.w2.weight",
    ] {
        assert!(json.contains(name), "{name}");
    }
    assert!(!json.contains("{gate}") && !json.contains("gate_proj"));
    // Even layers have the mixer's norm, odd ones do not: two variants.
    let layers = &ir.root.instances[0];
    let mut mixers: Vec<(i64, Vec<String>)> = Vec::new();
    for v in &layers.variants {
        let mixer = v.body.instances.iter().find(|i| i.name == "mixer").unwrap();
        let params = &mixer.variants[0].body.params;
        let shown: Vec<String> = params
            .iter()
            .map(|p| format!("{}{:?}", p.name, p.shape))
            .collect();
        for [a, b] in &v.indices {
            mixers.extend((*a..*b).map(|i| (i, shown.clone())));
        }
    }
    mixers.sort();
    let even = vec!["in_proj[256, 128]".to_string(), "norm[256]".to_string()];
    let odd = vec!["in_proj[256, 128]".to_string()];
    let want: Vec<(i64, Vec<String>)> = (0..mixers.len() as i64)
        .map(|i| {
            (
                i,
                if i % 2 == 0 {
                    even.clone()
                } else {
                    odd.clone()
                },
            )
        })
        .collect();
    assert_eq!(mixers, want);
    // `plain` takes every default: a norm, and the model's width.
    let plain = ir
        .root
        .instances
        .iter()
        .find(|i| i.name == "plain")
        .unwrap();
    let params: Vec<String> = plain.variants[0]
        .body
        .params
        .iter()
        .map(|p| format!("{}{:?}", p.name, p.shape))
        .collect();
    assert_eq!(params, ["in_proj[128, 128]", "norm[128]"]);
    insta::with_settings!({ snapshot_path => "snapshots/ir", prepend_module_to_snapshot => false }, {
        insta::assert_json_snapshot!("lang_params", ir);
    });
}

/// `let` is a name for a source: the IR is the one of the file written out in full.
#[test]
fn lets_expand_to_the_written_out_sources() {
    let file = common::root().join("tests/fixtures/lang/lets.wmap");
    let config = common::root().join("tests/fixtures/hf/phi3/config.json");
    let (with_lets, c) = lower(&ModelSource::File(common::rel(&file)), &config);
    assert!(c.diags.is_empty());
    let text = std::fs::read_to_string(&file).unwrap();
    let qkv = r#""qkv_proj.weight": [q_rows + 2 * kv_rows, hidden_size]"#;
    let by_head = format!("reshape({qkv}, [heads, head_dim, hidden_size])");
    let written: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("let "))
        .map(|l| {
            l.replace("by_head", &by_head)
                .replace("(qkv,", &format!("({qkv},"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!written.contains("let "), "{written}");
    let source = ModelSource::Text {
        name: "written.wmap".into(),
        text: written,
    };
    let (plain, _) = lower(&source, &config);
    assert_eq!(
        serde_json::to_value(&with_lets.root).unwrap(),
        serde_json::to_value(&plain.root).unwrap()
    );
    assert!(serde_json::to_string(&with_lets)
        .unwrap()
        .contains("reshape"));
}

/// One string-typed config key read by nine shapes is one error, with the count.
#[test]
fn one_bad_config_value_is_one_error() {
    let real = common::root().join("tests/fixtures/hf/llama/config.json");
    let text = std::fs::read_to_string(real).unwrap();
    let bad = text.replace("\"hidden_size\": 128", "\"hidden_size\": \"128\"");
    assert_ne!(bad, text);
    let dir = common::tempdir("string-key");
    let path = dir.join("config.json");
    std::fs::write(&path, bad).unwrap();
    let c = driver::compile(&ModelSource::Detect, Some(&path)).expect("no I/O error");
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert_eq!(c.diags.items.len(), 1, "{rendered}");
    let d = &c.diags.items[0];
    assert_eq!(d.code, wmap::diag::Code::E0303);
    assert_eq!(
        d.notes,
        ["8 more use(s) of the same value fail the same way; fixing config.json fixes them all"]
    );
}

/// Parameters are lexical: an instance's own `when` (the caller's text) does not see
/// the parameters of the declaration it instantiates.
#[test]
fn an_instance_when_does_not_see_the_callees_parameters() {
    let text = r#"
module M(flag = true) {
    param w: [hidden_size] when flag from "w"
}
model T for "LlamaForCausalLM" {
    m: M when flag
}
"#;
    let source = ModelSource::Text {
        name: "t.wmap".into(),
        text: text.into(),
    };
    let config = common::root().join("tests/fixtures/hf/llama/config.json");
    let c = driver::compile(&source, Some(&config)).expect("no I/O error");
    let codes: Vec<&str> = c.diags.items.iter().map(|d| d.code.as_str()).collect();
    assert_eq!(codes, ["E0301"]);
    assert_eq!(c.diags.items[0].message, "unknown config symbol `flag`");
}
