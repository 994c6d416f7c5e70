//! `wmapc save`: HF → runtime → HF is byte-identical for every fixture that loads, and the
//! saved folder has the source's shard layout, index and side files.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use wmap::checkpoint::Checkpoint;

fn wmapc(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wmapc"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {:?}\n{text}", out.status);
    text
}

/// Every tensor: (shard file, dtype, shape, bytes), by name.
type Tensors = BTreeMap<String, (String, String, Vec<u64>, Vec<u8>)>;

fn tensors(dir: &Path) -> Tensors {
    let ck = Checkpoint::open(dir).unwrap();
    ck.tensors
        .iter()
        .map(|(n, e)| {
            let mut buf = vec![0u8; e.len as usize];
            ck.read_into(e, &mut buf).unwrap();
            let file = ck.shards[e.shard].name.clone();
            (
                n.clone(),
                (file, e.dtype.name().to_string(), e.shape.clone(), buf),
            )
        })
        .collect()
}

/// The fixtures under tests/fixtures/hf, with the ones skipped and why.
fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(common::root().join("tests/fixtures/hf"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Pre-quantized checkpoints (bitsandbytes, FP8, …): loading dequantizes (or
/// requantizes) them, so the runtime store holds other values than the file by design,
/// and a byte-identical round trip is not what saving them means.
fn pre_quantized(dir: &Path) -> bool {
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    config.contains("\"quantization_config\"")
}

/// Loads `dir` to a runtime store, saves it back, and compares every tensor.
fn round_trip(dir: &Path, work: &Path, model: Option<&str>) -> String {
    let (rt, hf) = (work.join("rt"), work.join("hf"));
    let d = dir.to_str().unwrap();
    let mut load = vec!["load", d, "--out", rt.to_str().unwrap(), "--quiet"];
    let mut save = vec![
        "save",
        rt.to_str().unwrap(),
        "--like",
        d,
        "--out",
        hf.to_str().unwrap(),
    ];
    if let Some(m) = model {
        load.extend(["--model", m, "--allow-unclaimed"]);
        save.extend(["--model", m]);
    }
    ok(&wmapc(&load, work), &format!("load {d}"));
    let summary = ok(&wmapc(&save, work), &format!("save {d}"));
    let (want, got) = (tensors(dir), tensors(&hf));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{d}: tensor names"
    );
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(
            (&w.0, &w.1, &w.2),
            (&g.0, &g.1, &g.2),
            "{d}: `{name}` file, dtype, shape"
        );
        assert!(w.3 == g.3, "{d}: `{name}` bytes differ");
    }
    for side in ["config.json", "generation_config.json"] {
        if dir.join(side).exists() {
            assert_eq!(
                std::fs::read(dir.join(side)).unwrap(),
                std::fs::read(hf.join(side)).unwrap(),
                "{d}: {side}"
            );
        }
    }
    summary
}

#[test]
fn every_fixture_round_trips_byte_identical() {
    let mut checked = Vec::new();
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if pre_quantized(&dir) {
            continue;
        }
        let work = common::tempdir(&format!("reverse-{name}"));
        round_trip(&dir, &work, None);
        let _ = std::fs::remove_dir_all(&work);
        checked.push(name);
    }
    // The stdlib fixtures of today, at least: a loop that checks nothing must fail.
    for must in [
        "llama",
        "llama_sharded",
        "llama_tied",
        "mamba2",
        "qwen3_moe",
        "phi3",
    ] {
        assert!(
            checked.iter().any(|c| c == must),
            "{must} not checked: {checked:?}"
        );
    }
}

#[test]
fn a_sharded_checkpoint_keeps_its_shards_and_index() {
    let dir = common::root().join("tests/fixtures/hf/llama_sharded");
    let work = common::tempdir("reverse-shards");
    let summary = round_trip(&dir, &work, None);
    assert!(summary.contains("in 5 file(s) + index"), "{summary}");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(work.join("hf/model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let source: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(index["weight_map"], source["weight_map"]);
    let _ = std::fs::remove_dir_all(&work);
}

/// Every inverse op at once: the language-features model over Phi-3 slices (with a
/// step), splits, transposes, reshapes and stacks one fused tensor many ways.
#[test]
fn the_language_features_model_round_trips() {
    let dir = common::root().join("tests/fixtures/hf/phi3");
    let model = common::root().join("tests/fixtures/lang/features.wmap");
    let work = common::tempdir("reverse-features");
    let summary = round_trip(&dir, &work, Some(model.to_str().unwrap()));
    assert!(
        summary.contains("11 rebuilt from the runtime store"),
        "{summary}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// Tensors the mapping ignores are not in the store: they are copied from --like, and
/// the summary names them.
#[test]
fn ignored_tensors_are_copied_from_like() {
    let dir = common::root().join("tests/fixtures/hf/llama");
    let work = common::tempdir("reverse-ignored");
    let model = work.join("embed_only.wmap");
    std::fs::write(
        &model,
        "model EmbedOnly for \"LlamaForCausalLM\" {\n    param embed: [vocab_size, hidden_size] from \"model.embed_tokens.weight\"\n    ignore \"model.layers.*\"\n    ignore \"model.norm.weight\"\n    ignore \"lm_head.weight\"\n}\n",
    )
    .unwrap();
    let summary = round_trip(&dir, &work, Some(model.to_str().unwrap()));
    assert!(
        summary.contains("1 rebuilt from the runtime store")
            && summary.contains("20 copied from --like"),
        "{summary}"
    );
    assert!(summary.contains("copied unchanged from --like (the mapping ignores them or does not claim them): lm_head.weight, model.layers.0."), "{summary}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn save_refuses_to_write_into_the_store() {
    let dir = common::root().join("tests/fixtures/hf/llama");
    let work = common::tempdir("reverse-overlap");
    let d = dir.to_str().unwrap();
    ok(
        &wmapc(&["load", d, "--out", "rt", "--quiet"], &work),
        "load",
    );
    let out = wmapc(&["save", "rt", "--like", d, "--out", "rt/hf"], &work);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[E0603/"), "{stderr}");
    let _ = std::fs::remove_dir_all(&work);
}

/// A second save replaces the first only with --force, through the same marker checks as
/// `load --out`.
#[test]
fn a_second_save_needs_force() {
    let dir = common::root().join("tests/fixtures/hf/llama_tied");
    let work = common::tempdir("reverse-force");
    let d = dir.to_str().unwrap();
    ok(
        &wmapc(&["load", d, "--out", "rt", "--quiet"], &work),
        "load",
    );
    let save = ["save", "rt", "--like", d, "--out", "hf"];
    let first = ok(&wmapc(&save, &work), "first save");
    assert!(first.contains("1 tied params written once"), "{first}");
    let again = wmapc(&save, &work);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[E0601/"), "{stderr}");
    ok(
        &wmapc(&[&save[..], &["--force"]].concat(), &work),
        "save --force",
    );
    assert_eq!(tensors(&dir), tensors(&work.join("hf")));
    let marker = std::fs::read_to_string(work.join("hf/.wmapc-output")).unwrap();
    assert!(marker.contains("\"model.safetensors\""), "{marker}");
    let _ = std::fs::remove_dir_all(&work);
}

/// Runtime tensors the mapping builds no param for are named in the summary, not dropped
/// silently: a full Llama store saved with a mapping (of the same model name) that reads
/// only the embedding.
#[test]
fn store_tensors_outside_the_mapping_are_named() {
    let dir = common::root().join("tests/fixtures/hf/llama");
    let work = common::tempdir("reverse-not-saved");
    std::fs::write(
        work.join("embed.wmap"),
        "model Llama for \"LlamaForCausalLM\" {\n    param embed: [vocab_size, hidden_size] from \"model.embed_tokens.weight\"\n    ignore \"model.layers.*\"\n    ignore \"model.norm.weight\"\n    ignore \"lm_head.weight\"\n}\n",
    )
    .unwrap();
    let d = dir.to_str().unwrap();
    ok(
        &wmapc(&["load", d, "--out", "rt", "--quiet"], &work),
        "load",
    );
    let save = [
        "save",
        "rt",
        "--like",
        d,
        "--out",
        "hf",
        "--model",
        "embed.wmap",
    ];
    let summary = ok(&wmapc(&save, &work), "save");
    assert!(
        summary.contains("not saved (the runtime store holds them, but the mapping builds no such param): final_norm.weight, layers.0.attention.out"),
        "{summary}"
    );
    assert_eq!(tensors(&dir), tensors(&work.join("hf")));
    let _ = std::fs::remove_dir_all(&work);
}
