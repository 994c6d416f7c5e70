//! Untrusted checkpoints: corrupted copies of the fixtures get coded errors naming the
//! file and tensor, never a panic; and a header-only checkpoint at real scale plans.

mod common;

use std::path::{Path, PathBuf};

use wmap::checkpoint::Checkpoint;
use wmap::driver::{self, ModelSource};

fn llama() -> PathBuf {
    common::root().join("tests/fixtures/hf/llama")
}

/// A copy of the llama fixture whose `model.safetensors` went through `corrupt`.
fn corrupted(name: &str, corrupt: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let dir = common::tempdir(name);
    std::fs::copy(llama().join("config.json"), dir.join("config.json")).unwrap();
    let mut bytes = std::fs::read(llama().join("model.safetensors")).unwrap();
    corrupt(&mut bytes);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir
}

fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// Rewrites the JSON header with `edit`, keeping the data section.
fn edit_header(bytes: &mut Vec<u8>, edit: impl FnOnce(&mut serde_json::Value)) {
    let n = header_len(bytes);
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let data = bytes[8 + n..].to_vec();
    bytes.clear();
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(&data);
}

fn open_err(dir: &Path) -> wmap::diag::Diagnostic {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(d) => d,
    }
}

#[test]
fn truncated_file_is_refused() {
    let dir = corrupted("truncated", |b| b.truncate(b.len() - 100));
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0504");
    assert!(d.message.contains("model.safetensors"), "{}", d.message);
}

#[test]
fn truncated_inside_the_header_is_refused() {
    let dir = corrupted("truncated-header", |b| b.truncate(100));
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0503");
    assert!(d.message.contains("runs past the end"), "{}", d.message);
}

#[test]
fn absurd_header_length_is_refused_without_allocating() {
    let dir = corrupted("huge-header", |b| {
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes())
    });
    assert_eq!(open_err(&dir).code.as_str(), "E0503");
}

#[test]
fn flipped_header_bytes_are_refused() {
    let dir = corrupted("flipped", |b| {
        b[8] = b'[';
        b[20] ^= 0xFF;
    });
    assert_eq!(open_err(&dir).code.as_str(), "E0503");
}

#[test]
fn non_utf8_header_is_refused() {
    let dir = corrupted("non-utf8", |b| b[12] = 0xC3);
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0503");
    assert!(d.message.contains("UTF-8"), "{}", d.message);
}

#[test]
fn offsets_out_of_range_name_the_tensor() {
    let dir = corrupted("offsets", |b| {
        edit_header(b, |h| {
            h["model.norm.weight"]["data_offsets"][1] = 999_999_999.into()
        })
    });
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0504");
    assert!(d.message.contains("model.norm.weight"), "{}", d.message);
}

#[test]
fn overlapping_offsets_are_refused() {
    let dir = corrupted("overlap", |b| {
        edit_header(b, |h| {
            let other = h["lm_head.weight"]["data_offsets"].clone();
            h["model.embed_tokens.weight"]["data_offsets"] = other;
        })
    });
    assert_eq!(open_err(&dir).code.as_str(), "E0504");
}

#[test]
fn shape_disagreeing_with_bytes_is_refused() {
    let dir = corrupted("shape", |b| {
        edit_header(b, |h| {
            h["model.norm.weight"]["shape"] = serde_json::json!([64])
        })
    });
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0504");
    assert!(d.message.contains("needs 128 bytes"), "{}", d.message);
}

#[test]
fn pickle_only_folders_are_never_read() {
    let dir = common::tempdir("pickle");
    std::fs::write(
        dir.join("pytorch_model.bin"),
        b"\x80\x02c__builtin__\neval\n",
    )
    .unwrap();
    assert_eq!(open_err(&dir).code.as_str(), "E0502");
    let empty = common::tempdir("empty");
    assert_eq!(open_err(&empty).code.as_str(), "E0501");
}

/// A copy of the sharded fixture with its index edited.
fn sharded_with_index(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = common::root().join("tests/fixtures/hf/llama_sharded");
    let dir = common::tempdir(name);
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let path = dir.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut index);
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    dir
}

#[test]
fn index_paths_may_not_leave_the_folder() {
    for hostile in [
        "../model-00001-of-00005.safetensors",
        "/etc/passwd",
        "sub/x.safetensors",
        "..",
    ] {
        let dir = sharded_with_index("hostile", |i| {
            i["weight_map"]["model.norm.weight"] = hostile.into()
        });
        let d = open_err(&dir);
        assert_eq!(d.code.as_str(), "E0505", "{hostile}");
        assert!(d.message.contains("model.norm.weight"), "{}", d.message);
    }
}

#[test]
fn index_naming_a_missing_shard_is_refused() {
    let dir = sharded_with_index("missing-shard", |i| {
        i["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors".into()
    });
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0505");
    assert!(d.message.contains("does not exist"), "{}", d.message);
}

#[test]
fn invalid_index_json_is_refused() {
    let dir = sharded_with_index("bad-index", |_| {});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        b"{\"weight_map\": [1, 2",
    )
    .unwrap();
    assert_eq!(open_err(&dir).code.as_str(), "E0505");
}

#[test]
fn duplicate_tensors_across_shards_are_refused() {
    let dir = sharded_with_index("dup", |_| {});
    // Shard 5 gets a second copy of shard 1's contents under its own name.
    let first = std::fs::read(dir.join("model-00001-of-00005.safetensors")).unwrap();
    std::fs::write(dir.join("model-00005-of-00005.safetensors"), first).unwrap();
    // Shards are read in name order, so shard 5 meets shard 1's tensors before the
    // index is compared with the headers.
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0506", "{d:?}");
    // Without an index, two safetensors files cannot be told apart: an index error.
    let d2 = common::tempdir("dup2");
    let one = std::fs::read(llama().join("model.safetensors")).unwrap();
    std::fs::write(d2.join("a.safetensors"), &one).unwrap();
    std::fs::write(d2.join("b.safetensors"), &one).unwrap();
    assert_eq!(open_err(&d2).code.as_str(), "E0505");
}

#[test]
fn a_missing_tensor_is_reported_by_pattern_with_a_suggestion() {
    let dir = corrupted("renamed", |b| {
        edit_header(b, |h| {
            for l in 0..2 {
                let obj = h.as_object_mut().unwrap();
                let v = obj
                    .remove(&format!("model.layers.{l}.self_attn.k_proj.weight"))
                    .unwrap();
                obj.insert(format!("model.layers.{l}.self_attn.k_prj.weight"), v);
            }
        })
    });
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    assert!(driver::bind(&mut c, &dir, false).is_none());
    let missing: Vec<_> = c
        .diags
        .items
        .iter()
        .filter(|d| d.code.as_str() == "E0508")
        .collect();
    assert_eq!(
        missing.len(),
        1,
        "aggregated over layers: {:?}",
        c.diags.items
    );
    let d = missing[0];
    assert!(
        d.message.contains(
            "missing tensor `model.layers.{layer}.self_attn.k_proj.weight` for layer = 0…1"
        ),
        "{}",
        d.message
    );
    assert_eq!(
        d.help.as_deref(),
        Some("did you mean `model.layers.0.self_attn.k_prj.weight`?")
    );
    assert!(d.primary.is_some(), "points at the .wmap rule");
    // The renamed tensors are unclaimed.
    assert!(c.diags.items.iter().any(|d| d.code.as_str() == "W0501"));
}

#[test]
fn a_shape_mismatch_shows_expected_and_actual_with_config_labels() {
    let dir = corrupted("kv-heads", |_| {});
    // The config claims 4 kv heads; the checkpoint has 2.
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    assert!(driver::bind(&mut c, &dir, false).is_none());
    let d = c
        .diags
        .items
        .iter()
        .find(|d| d.code.as_str() == "E0509")
        .expect("shape mismatch");
    assert!(
        d.message
            .contains("is [64, 128] but the mapping expects [128, 128]"),
        "{}",
        d.message
    );
    assert!(
        d.secondary
            .iter()
            .any(|l| l.message == "`num_key_value_heads` is 4 here"),
        "{:?}",
        d.secondary
    );
}

#[test]
fn random_byte_corruption_never_panics() {
    let base = std::fs::read(llama().join("model.safetensors")).unwrap();
    let n = header_len(&base);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for case in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let dir = common::tempdir("random");
        std::fs::copy(llama().join("config.json"), dir.join("config.json")).unwrap();
        let mut bytes = base.clone();
        let at = (state as usize) % (n + 8);
        bytes[at] = (state >> 32) as u8;
        if case % 7 == 0 {
            bytes.truncate((state >> 40) as usize % bytes.len());
        }
        std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
        let r = std::panic::catch_unwind(|| {
            let mut c =
                driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
            if let Some(b) = driver::bind(&mut c, &dir, false) {
                let store = wmap::load::HostStore::default();
                let _ = wmap::load::execute(
                    &b.plan,
                    &b.checkpoint,
                    &store,
                    Default::default(),
                    &|_| {},
                );
            }
        });
        assert!(r.is_ok(), "case {case} panicked");
    }
}

/// Qwen3-30B-A3B's real names and shapes (48 layers × 128 experts), header only: the
/// plan binds all of it without reading data.
#[test]
fn header_only_qwen3_30b_a3b_plans() {
    use common::sparse::*;
    let dir = common::tempdir("qwen3-30b");
    let dims = MoeDims {
        layers: 48,
        experts: 128,
        hidden: 2048,
        moe_inter: 768,
        heads: 32,
        kv: 4,
        head_dim: 128,
        vocab: 151936,
    };
    let specs = qwen3_moe_specs(dims);
    assert_eq!(specs.len(), 3 + 48 * (9 + 128 * 3));
    write_sparse(&dir, &specs, 16);
    std::fs::write(dir.join("config.json"), qwen3_moe_config(dims)).unwrap();
    let t = std::time::Instant::now();
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).expect("binds");
    println!("plan of {} tensors took {:?}", specs.len(), t.elapsed());
    assert!(c.diags.is_empty());
    // Per layer: two norms, qkv, out, q_norm, k_norm, router, stacked gate_up and down.
    assert_eq!(b.plan.targets.len(), 3 + 48 * 9);
    let experts = b
        .plan
        .targets
        .iter()
        .find(|t| t.name == "layers.47.moe.experts.gate_up")
        .unwrap();
    assert_eq!(experts.shape, vec![128, 1536, 2048]);
    assert!(b.plan.target_bytes() > 60_000_000_000);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file that shrinks after its header was checked fails the read with E0511.
#[test]
fn a_file_truncated_during_the_load_fails_cleanly() {
    let dir = corrupted("shrinks", |_| {});
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, false).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("model.safetensors"))
        .unwrap();
    f.set_len(4096).unwrap();
    let store = wmap::load::HostStore::default();
    let err = wmap::load::execute(&b.plan, &b.checkpoint, &store, Default::default(), &|_| {})
        .unwrap_err();
    assert_eq!(err.code.as_str(), "E0511");
    assert!(err.message.contains("model.safetensors"), "{}", err.message);
}

/// An index that is a FIFO with no writer is refused at once (it used to block forever).
#[test]
fn a_fifo_index_is_refused_without_blocking() {
    let dir = sharded_with_index("fifo-index", |_| {});
    let index = dir.join("model.safetensors.index.json");
    std::fs::remove_file(&index).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&index)
        .status()
        .unwrap();
    assert!(made.success());
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0512");
    assert!(
        d.message.ends_with("is a FIFO, not a regular file"),
        "{}",
        d.message
    );
}

/// A shard symlinked to `/dev/zero` is refused unread; so is a folder under a shard's name.
#[test]
fn special_files_under_shard_names_are_refused() {
    let dir = sharded_with_index("dev-zero-shard", |_| {});
    let shard = dir.join("model-00002-of-00005.safetensors");
    std::fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &shard).unwrap();
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0512");
    assert!(d.message.contains("is a device"), "{}", d.message);
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0512");
    assert!(d.message.contains("is a folder"), "{}", d.message);
}

/// `config.json` symlinked to `/dev/zero` ends as a coded error, not a read that never ends.
#[test]
fn a_config_that_is_a_device_is_refused() {
    let dir = common::tempdir("dev-zero-config");
    let config = dir.join("config.json");
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    let err = driver::compile(&ModelSource::Detect, Some(&config))
        .err()
        .unwrap();
    assert_eq!(err.code.as_str(), "E0512");
    assert!(
        err.message.starts_with("config `")
            && err
                .message
                .ends_with("config.json` is a device, not a regular file"),
        "{}",
        err.message
    );
}

/// An index with `n` tensors spread over `shards` shard names (none of which exist).
fn index_with(name: &str, n: usize, shards: usize) -> PathBuf {
    let dir = common::tempdir(name);
    let map: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            (
                format!("t.{i}"),
                format!("s{}.safetensors", i % shards).into(),
            )
        })
        .collect();
    let index = serde_json::json!({ "weight_map": map });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    dir
}

/// 200 000 tensors over 10 000 shards: collecting the shard names is O(n log n), so this
/// is quick even in a debug build (a linear scan per tensor took 2·10⁹ comparisons),
/// and it gets as far as the first missing shard.
#[test]
fn a_large_index_is_read_in_n_log_n() {
    let dir = index_with("large-index", 200_000, 10_000);
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0505");
    assert!(
        d.message
            .ends_with("names shard `s0.safetensors`, which does not exist"),
        "{}",
        d.message
    );
}

#[test]
fn an_index_naming_too_many_shards_is_refused() {
    let dir = index_with("too-many-shards", 10_001, 10_001);
    let d = open_err(&dir);
    assert_eq!(d.code.as_str(), "E0514");
    assert!(
        d.message.ends_with("names more than 10000 shard files"),
        "{}",
        d.message
    );
}

/// Tensors of layers the config does not count are grouped into one pattern with
/// ranges, and the warning says they lie past `num_hidden_layers`.
#[test]
fn unclaimed_layers_past_the_count_are_grouped_and_explained() {
    let dir = corrupted("one-layer", |_| {});
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    std::fs::write(dir.join("config.json"), config).unwrap();
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    assert!(driver::bind(&mut c, &dir, false).is_some());
    let unclaimed: Vec<&wmap::diag::Diagnostic> = c
        .diags
        .items
        .iter()
        .filter(|d| d.code.as_str() == "W0501")
        .collect();
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(!unclaimed.is_empty(), "{rendered}");
    for d in &unclaimed {
        assert!(
            d.message.starts_with("checkpoint tensor `model.layers.1."),
            "{}",
            d.message
        );
        assert_eq!(
            d.notes,
            ["layer 1 ≥ num_hidden_layers = 1: a layer the model does not have (a multi-token-prediction head?); `ignore \"model.layers.{num_hidden_layers}.*\"` says so"]
        );
    }
}

/// A typo in a user's prefix over stdlib blocks: one error, at the user's line.
#[test]
fn a_prefix_typo_is_one_error_at_the_users_line() {
    let text = r#"
use "models/llama.wmap"
model MyLlama for "LlamaForCausalLM" {
    param embed: [vocab_size, hidden_size] from "model.embed_tokens.weight"
    layers: DecoderBlock[layer in 0..num_hidden_layers] at "model.layer.{layer}"
}
"#;
    let source = ModelSource::Text {
        name: "my.wmap".into(),
        text: text.into(),
    };
    let mut c = driver::compile(&source, Some(&llama().join("config.json"))).unwrap();
    assert!(driver::bind(&mut c, &llama(), false).is_none());
    let errors: Vec<&wmap::diag::Diagnostic> = c
        .diags
        .items
        .iter()
        .filter(|d| d.severity() == wmap::diag::Severity::Error)
        .collect();
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert_eq!(errors.len(), 1, "{rendered}");
    let primary = errors[0].primary.as_ref().unwrap();
    assert_eq!(c.sources.get(primary.span.file).name, "my.wmap");
    assert!(rendered.contains("5 other param(s) under this prefix miss their tensors too"));
}

/// A stack missing every expert in every layer counts them all, layers × experts, and
/// names the positions by the repeat's and the stack's variables.
#[test]
fn missing_stacked_tensors_are_counted_in_full() {
    let text = r#"
use "modules/moe.wmap"
block Block {
    experts: GatedExperts(gate = "gate_prj") at "mlp"
}
model Moe for "Qwen3MoeForCausalLM" {
    layers: Block[layer in 0..num_hidden_layers] at "model.layers.{layer}"
}
"#;
    let source = ModelSource::Text {
        name: "moe.wmap".into(),
        text: text.into(),
    };
    let dir = common::root().join("tests/fixtures/hf/qwen3_moe");
    let mut c = driver::compile(&source, Some(&dir.join("config.json"))).unwrap();
    assert!(driver::bind(&mut c, &dir, false).is_none());
    let missing: Vec<&wmap::diag::Diagnostic> = c
        .diags
        .items
        .iter()
        .filter(|d| d.code.as_str() == "E0508")
        .collect();
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert_eq!(missing.len(), 1, "{rendered}");
    assert_eq!(
        missing[0].message,
        "missing tensor `model.layers.{layer}.mlp.experts.{expert}.gate_prj.weight` for layer = 0…1, expert = 0…7"
    );
    assert!(
        missing[0]
            .notes
            .contains(&"16 tensors of this param are missing".to_string()),
        "{rendered}"
    );
}
