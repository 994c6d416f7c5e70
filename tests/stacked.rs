//! Experts already stacked on disk (GPT-OSS `gate_up_proj [E, H, 2I]`, GraniteMoeHybrid
//! `input_linear [E, 2I, H]`): `stacked(expert in 0..E, "…")` reads the tensor whole (no
//! copy, the device layout stays `[E, …]`) and names its slices, so `offload_group =
//! expert` gives one group per (layer, expert) in the IR, the plan and the weight manager.

mod common;

use wmap::driver::{self, ModelSource};
use wmap::offload::{HostBackend, Policy};
use wmap::plan::{Offload, Recipe};
use wmap::quant::{Format, QuantStore};
use wmap::weights::{slice_key, WeightsManager};

const MODEL: &str = r#"
model Moe for "StackedMoe" {
    layers: Layer[layer in 0..num_hidden_layers] at "model.layers.{layer}"
}

block Layer {
    # GPT-OSS: gate and up interleaved on the last dim, stacked over experts.
    param gate_up: [num_local_experts, hidden_size, 2 * intermediate_size]
        quantizable
        offload_group = expert
        from stacked(expert in 0..num_local_experts, "mlp.experts.gate_up_proj")
    # GraniteMoeHybrid: [E, 2I, H].
    param input_linear: [num_local_experts, 2 * intermediate_size, hidden_size]
        quantizable
        offload_group = expert
        from stacked(expert in 0..num_local_experts, "block_sparse_moe.input_linear.weight")
}
"#;

const CONFIG: &str = r#"{"architectures": ["StackedMoe"], "num_hidden_layers": 2,
  "num_local_experts": 4, "hidden_size": 64, "intermediate_size": 32}"#;

/// A folder per call: the tests run in parallel.
fn fresh(what: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    common::tempdir(&format!("stacked-{what}-{n}"))
}

fn compile(text: &str) -> driver::Compilation {
    let dir = fresh("config");
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    let source = ModelSource::Text {
        name: "stacked.wmap".into(),
        text: text.into(),
    };
    driver::compile(&source, Some(&dir.join("config.json"))).unwrap()
}

fn checkpoint() -> std::path::PathBuf {
    let dir = fresh("ckpt");
    let mut specs = Vec::new();
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        specs.push((
            format!("{p}.mlp.experts.gate_up_proj"),
            "BF16",
            vec![4, 64, 64],
        ));
        specs.push((
            format!("{p}.block_sparse_moe.input_linear.weight"),
            "BF16",
            vec![4, 64, 64],
        ));
    }
    common::sparse::write_sparse(&dir, &specs, 1);
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    dir
}

fn rendered(c: &driver::Compilation) -> String {
    wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never)
}

#[test]
fn stacked_on_disk_lowers_to_a_named_slice_variable() {
    let mut c = compile(MODEL);
    assert!(c.diags.is_empty(), "{}", rendered(&c));
    let (ir, _) = c.lowered.take().unwrap();
    insta::with_settings!({ snapshot_path => "snapshots/ir", prepend_module_to_snapshot => false }, {
        insta::assert_json_snapshot!("stacked_experts", ir);
    });
}

#[test]
fn stacked_on_disk_plans_one_read_and_a_group_per_expert() {
    let dir = checkpoint();
    let mut c = compile(MODEL);
    let b = driver::bind(&mut c, &dir, true).unwrap();
    assert!(c.diags.is_empty(), "{}", rendered(&c));
    for name in ["layers.1.gate_up", "layers.1.input_linear"] {
        let t = b.plan.targets.iter().find(|t| t.name == name).unwrap();
        assert!(
            matches!(t.recipe, Recipe::Read { .. }),
            "{name}: read whole, no copy"
        );
        let Some(Offload::PerSlice(groups)) = &t.offload else {
            panic!("{name}: {:?}", t.offload)
        };
        let want: Vec<String> = (0..4).map(|e| format!("layer=1/expert={e}")).collect();
        assert_eq!(groups, &want, "{name}");
    }
    // The weight manager stores each expert slice in its own (layer, expert) group.
    let store = QuantStore::new(Format::Nf4 { blocksize: 64 });
    wmap::load::execute(&b.plan, &b.checkpoint, &store, Default::default(), &|_| {}).unwrap();
    let w = WeightsManager::new(
        HostBackend::default(),
        &b.plan,
        store.into_tensors(),
        1 << 20,
        Policy::Lru,
    )
    .unwrap();
    let g = w.group_of(&slice_key("layers.1.gate_up", 2)).unwrap();
    assert_eq!(w.offload.name(g), "layer=1/expert=2");
    let g = w.group_of(&slice_key("layers.0.input_linear", 3)).unwrap();
    assert_eq!(w.offload.name(g), "layer=0/expert=3");
}

#[test]
fn stacked_count_must_be_the_leading_dim() {
    let c = compile(&MODEL.replace(
        "stacked(expert in 0..num_local_experts, \"mlp",
        "stacked(expert in 0..num_local_experts - 1, \"mlp",
    ));
    let r = rendered(&c);
    assert!(r.contains("error[E0404/stack-count-mismatch]: stack makes 3 slices but the param's leading dim is 4"), "{r}");
}

#[test]
fn the_slice_variable_does_not_name_tensors() {
    let c = compile(&MODEL.replace(
        "\"mlp.experts.gate_up_proj\"",
        "\"mlp.experts.{expert}.gate_up_proj\"",
    ));
    let r = rendered(&c);
    assert!(
        r.contains("error[E0204/unknown-index-variable]: no index variable `expert` is in scope"),
        "{r}"
    );
}
