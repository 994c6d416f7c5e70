//! `wmapc` as a user runs it: exit codes, stdout/stderr, `--format json`, `explain`.

mod common;

use std::process::Command;

/// Runs `wmapc` from the repository root; returns (exit code, stdout, stderr).
fn wmapc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wmapc"))
        .args(args)
        .current_dir(common::root())
        .env("NO_COLOR", "1")
        .output()
        .expect("wmapc runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn snapshot(name: &str, run: (i32, String, String)) {
    let (code, stdout, stderr) = run;
    let text = format!("exit: {code}\n----- stdout -----\n{stdout}----- stderr -----\n{stderr}");
    insta::with_settings!({ snapshot_path => "snapshots/cli", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn check_detects_the_model_and_exits_0() {
    let run = wmapc(&[
        "check",
        "--config",
        "tests/fixtures/hf/qwen3_moe/config.json",
    ]);
    assert_eq!(run.0, 0);
    snapshot("check_ok", run);
}

#[test]
fn check_a_file_with_errors_exits_1() {
    let run = wmapc(&[
        "check",
        "tests/fixtures/errors/E0301-unknown-config-symbol.wmap",
        "--config",
        "tests/fixtures/hf/llama/config.json",
        "--color",
        "never",
    ]);
    assert_eq!(run.0, 1);
    snapshot("check_error", run);
}

#[test]
fn check_json_format_is_machine_readable() {
    let run = wmapc(&[
        "check",
        "tests/fixtures/errors/E0301-unknown-config-symbol.wmap",
        "--config",
        "tests/fixtures/hf/llama/config.json",
        "--format",
        "json",
    ]);
    assert_eq!(run.0, 1);
    let v: serde_json::Value = serde_json::from_str(&run.1).expect("stdout is JSON");
    assert_eq!(v["errors"], 1);
    assert_eq!(v["diagnostics"][0]["code"], "E0301");
    assert_eq!(v["diagnostics"][0]["labels"][0]["line"], 5);
    snapshot("check_json", run);
}

#[test]
fn check_without_config_resolves_names_only() {
    let run = wmapc(&["check", "tests/fixtures/lang/features.wmap"]);
    assert_eq!(run.0, 0);
    snapshot("check_no_config", run);
}

#[test]
fn lower_prints_the_ir_with_an_optional_span_table() {
    let run = wmapc(&[
        "lower",
        "--model",
        "llama",
        "--config",
        "tests/fixtures/hf/llama_tied/config.json",
        "--spans",
    ]);
    assert_eq!(run.0, 0);
    let v: serde_json::Value = serde_json::from_str(&run.1).expect("stdout is JSON");
    assert_eq!(v["ir_version"], wmap::ir::IR_VERSION);
    assert_eq!(v["spans"]["lm_head"], "<stdlib>/models/llama.wmap:10:11");
}

#[test]
fn lower_needs_a_config() {
    let (code, _, stderr) = wmapc(&["lower", "--model", "llama"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("lower needs --config"), "{stderr}");
}

#[test]
fn missing_files_are_io_errors_exit_2() {
    let (code, _, stderr) = wmapc(&[
        "check",
        "nope.wmap",
        "--config",
        "tests/fixtures/hf/llama/config.json",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read model file `nope.wmap`"),
        "{stderr}"
    );
    let (code, _, stderr) = wmapc(&["check", "--config", "missing/config.json"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read config"), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(wmapc(&["frobnicate"]).0, 2);
    assert_eq!(wmapc(&["check", "--format", "yaml"]).0, 2);
}

#[test]
fn explain_prints_a_page() {
    let run = wmapc(&["explain", "E0301"]);
    assert_eq!(run.0, 0);
    assert!(run.1.starts_with("# E0301: unknown-config-symbol"));
    let by_name = wmapc(&["explain", "unknown-config-symbol"]);
    assert_eq!(by_name.1, run.1);
}

#[test]
fn explain_lists_codes_and_rejects_unknown_ones() {
    let (code, stdout, _) = wmapc(&["explain"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), wmap::diag::Code::ALL.len());
    let run = wmapc(&["explain", "E0302x"]);
    assert_eq!(run.0, 2);
    assert!(run.2.contains("unknown diagnostic code"), "{}", run.2);
}

#[test]
fn stdlib_lists_models() {
    let run = wmapc(&["stdlib"]);
    assert_eq!(run.0, 0);
    snapshot("stdlib", run);
}

#[test]
fn unknown_architecture_is_an_input_error() {
    let dir = std::env::temp_dir().join(format!("wmap-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        r#"{"architectures": ["LlamaForCausalLm"], "hidden_size": 8}"#,
    )
    .unwrap();
    let (code, _, stderr) = wmapc(&[
        "check",
        "--config",
        cfg.to_str().unwrap(),
        "--color",
        "never",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("E0304"), "{stderr}");
    assert!(
        stderr.contains("did you mean `LlamaForCausalLM`?"),
        "{stderr}"
    );
}

#[test]
fn check_with_a_checkpoint_binds_headers() {
    let (code, stdout, _) = wmapc(&["check", "--checkpoint", "tests/fixtures/hf/llama_tied"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        "ok: model `Llama` binds to `tests/fixtures/hf/llama_tied`: 15 targets from 20 tensors in 1 file(s), headers only\n"
    );
}

#[test]
fn plan_reports_fallbacks_and_prints_json() {
    let run = wmapc(&["plan", "--checkpoint", "tests/fixtures/hf/llama_tied"]);
    assert_eq!(run.0, 0);
    snapshot("plan_human", run);
    let (code, stdout, _) = wmapc(&[
        "plan",
        "--checkpoint",
        "tests/fixtures/hf/qwen3_moe",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["targets"].as_array().unwrap().len(), 21);
    let qkv = plan["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "layers.0.attention.qkv")
        .unwrap();
    let parts = qkv["recipe"]["fuse"]["parts"].as_array().unwrap();
    assert_eq!(
        parts[1]["read"]["tensor"],
        "model.layers.0.self_attn.k_proj.weight"
    );
    assert_eq!(parts[1]["read"]["length"], 64 * 128 * 2);
}

/// A bnb NF4 checkpoint binds through the stdlib's `bnb4(...)` forms: the codes and
/// every companion are claimed, nothing is left over.
/// One rank of a TP × EP load: its byte totals beside the whole load's, per shard file.
#[test]
fn plan_of_one_rank_reports_its_bytes() {
    let run = wmapc(&[
        "plan",
        "--checkpoint",
        "tests/fixtures/hf/qwen3_moe",
        "--tp-size",
        "2",
        "--tp-rank",
        "1",
        "--ep-size",
        "2",
        "--ep-rank",
        "1",
    ]);
    assert_eq!(run.0, 0);
    snapshot("plan_rank", run);
    // `check` needs only the sizes; 3 divides no head count of the fixture.
    let run = wmapc(&[
        "check",
        "--checkpoint",
        "tests/fixtures/hf/qwen3_moe",
        "--tp-size",
        "3",
    ]);
    assert_eq!(run.0, 1);
    assert!(run.2.contains("[E0450/"), "{}", run.2);
}

#[test]
fn plan_of_a_bnb_checkpoint_binds_its_companions() {
    let (code, stdout, stderr) = wmapc(&[
        "plan",
        "--checkpoint",
        "tests/fixtures/hf/llama_bnb_nf4_dq",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["unclaimed"].as_array().unwrap().len(), 0);
    let down = plan["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "layers.1.mlp.down")
        .unwrap();
    let bnb = &down["recipe"]["bnb4"];
    assert_eq!(bnb["blocksize"], 64);
    assert_eq!(
        bnb["nested"][0]["read"]["tensor"],
        "model.layers.1.mlp.down_proj.weight.nested_absmax"
    );
}

#[test]
fn load_prints_a_summary_and_writes_out() {
    let out = std::env::temp_dir().join(format!("wmap-cli-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_str().unwrap();
    let (code, stdout, stderr) =
        wmapc(&["load", "tests/fixtures/hf/qwen3_moe", "--quiet", "--out", o]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with(
            "loaded model `Qwen3Moe`: 21 tensors (0 tied), 1.2 MB read, 1.2 MB written"
        ),
        "{stdout}"
    );
    assert!(out.join("model.safetensors").is_file());
    // A second run refuses to overwrite, then --force replaces.
    let (code, _, stderr) = wmapc(&["load", "tests/fixtures/hf/qwen3_moe", "--quiet", "--out", o]);
    assert_eq!(code, 2);
    assert!(stderr.contains("already exists"), "{stderr}");
    let (code, _, _) = wmapc(&[
        "load",
        "tests/fixtures/hf/qwen3_moe",
        "--quiet",
        "--out",
        o,
        "--force",
    ]);
    assert_eq!(code, 0);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn load_with_an_explicit_model() {
    let (code, stdout, _) = wmapc(&[
        "load",
        "tests/fixtures/hf/phi3",
        "--quiet",
        "--model",
        "tests/fixtures/lang/features.wmap",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("loaded model `Features`"), "{stdout}");
    let (code, _, stderr) = wmapc(&[
        "load",
        "tests/fixtures/hf/phi3",
        "--quiet",
        "--model",
        "Nope",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no stdlib model is called `Nope`"),
        "{stderr}"
    );
}

#[test]
fn load_quant_reports_bytes_and_error() {
    let (code, stdout, stderr) = wmapc(&[
        "load",
        "tests/fixtures/hf/llama",
        "--quiet",
        "--quant",
        "nf4",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[1], "quantized 8 tensors to nf4: 0.59 MB → 0.17 MB (28.1 %); 7 kept in full precision (0.17 MB)");
    // The report samples one run of 16 Ki elements in 8; on this fixture's Gaussian
    // weights the sampled error must still sit at NF4's Gaussian figure.
    let unit: f64 = lines[2]
        .split(" (")
        .nth(1)
        .and_then(|s| s.split(" × rms(w)").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    assert!((unit - 0.0728).abs() < 0.001, "{}", lines[2]);
    assert!(
        lines[2].contains("nf4 on unit Gaussian data: 0.0728)")
            && lines[2].contains("one 16 Ki-element run in 8"),
        "{}",
        lines[2]
    );
    let (code, _, stderr) = wmapc(&["load", "tests/fixtures/hf/llama", "--quant", "int3"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("possible values"), "{stderr}");
}

#[test]
fn load_quant_out_writes_a_bnb_checkpoint() {
    let out = std::env::temp_dir().join(format!("wmap-cli-nf4-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_str().unwrap();
    let (code, stdout, stderr) = wmapc(&[
        "load",
        "tests/fixtures/hf/llama",
        "--quiet",
        "--quant",
        "nf4",
        "--out",
        o,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.ends_with("model.safetensors\n"), "{stdout}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["bnb_4bit_quant_type"], "nf4");
    let (code, _, stderr) = wmapc(&[
        "load",
        "tests/fixtures/hf/llama",
        "--quiet",
        "--quant",
        "mxfp4",
        "--out",
        &format!("{o}-mx"),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("`mxfp4` has no"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn load_with_an_offload_budget_reports_the_sweep() {
    let (code, stdout, stderr) = wmapc(&[
        "load",
        "tests/fixtures/hf/qwen3_moe",
        "--quiet",
        "--quant",
        "nf4",
        "--offload-budget",
        "100KiB",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("offload (OrderAware, host backend): 16 groups, budget 0.10 MB"),
        "{last}"
    );
    let (_, lru, _) = wmapc(&[
        "load",
        "tests/fixtures/hf/qwen3_moe",
        "--quiet",
        "--quant",
        "nf4",
        "--offload-budget",
        "100KiB",
        "--offload-policy",
        "lru",
    ]);
    assert!(
        lru.lines().last().unwrap().contains(" 0 hits"),
        "LRU thrashes on a sweep larger than the budget: {lru}"
    );
    let (code, _, stderr) = wmapc(&[
        "load",
        "tests/fixtures/hf/qwen3_moe",
        "--quant",
        "nf4",
        "--offload-budget",
        "lots",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("error[E0802/invalid-flag-value]: invalid value 'lots' for '--offload-budget <SIZE>': unknown unit `lots`"),
        "{stderr}"
    );
}

/// Keys a config leaves out and the stdlib defaults are reported as a note (not a warning:
/// Mistral has no `attention_bias` because it has no biases).
#[test]
fn check_notes_the_stdlib_defaults_a_config_relied_on() {
    let (code, stdout, stderr) =
        wmapc(&["check", "--config", "tests/fixtures/hf/mistral/config.json"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.is_empty(), "no warnings: {stderr}");
    assert!(stdout.ends_with("note: config.json lacks these keys; their stdlib defaults were used: attention_bias = false, mlp_bias = false\n"), "{stdout}");
}
