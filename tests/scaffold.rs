//! `wmapc new`: scaffolds for every fixture family with that family's own stdlib model
//! hidden, counted honestly: an unedited scaffold either plans clean with `--strict`
//! against its fixture or it does not.

use std::path::{Path, PathBuf};

use wmap::driver::{self, ModelSource};

/// Fixtures whose unedited scaffold plans clean with `--strict` (measured: 45 of 48).
const MEASURED_CLEAN: usize = 45;
/// Families (fixtures grouped by the stdlib model serving them) all of whose fixtures
/// plan clean (measured: 32 of 35).
const MEASURED_CLEAN_FAMILIES: usize = 32;

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The stdlib model serving the fixture's architecture: the one to hide.
fn own_model(dir: &Path) -> Option<String> {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let arch = config["architectures"][0].as_str()?.to_string();
    driver::stdlib_models()
        .into_iter()
        .find(|m| m.architectures.contains(&arch))
        .map(|m| m.name)
}

fn scaffold(dir: &Path) -> (Option<String>, String) {
    let own = own_model(dir);
    let hidden: Vec<String> = own.iter().cloned().collect();
    let text = wmap::scaffold::scaffold(dir, &hidden).unwrap();
    (own, text)
}

fn text_source(text: &str) -> ModelSource {
    ModelSource::Text {
        name: "scaffold.wmap".into(),
        text: text.into(),
    }
}

/// Whether the scaffold binds to its fixture with `--strict` without an error.
fn plans_clean(text: &str, dir: &Path) -> bool {
    let mut c = driver::compile(&text_source(text), Some(&dir.join("config.json"))).unwrap();
    let bound = driver::bind(&mut c, dir, true);
    bound.is_some() && c.ok()
}

#[test]
fn scaffolds_with_their_own_model_hidden_plan_clean() {
    let mut clean = 0;
    // Family → whether every fixture of it planned clean.
    let mut families: std::collections::BTreeMap<String, bool> = Default::default();
    let mut table = String::from("| fixture | hidden model | strict plan |\n|---|---|---|\n");
    let all = fixtures();
    for dir in &all {
        let (own, text) = scaffold(dir);
        // Every scaffold parses and resolves, clean or not.
        let c = driver::compile(&text_source(&text), None).unwrap();
        assert!(c.program.is_some() && c.ok(), "{}:\n{text}", dir.display());
        let ok = plans_clean(&text, dir);
        clean += usize::from(ok);
        let name = dir.file_name().unwrap().to_string_lossy();
        let own = own.unwrap_or_else(|| "-".into());
        *families.entry(own.clone()).or_insert(true) &= ok;
        table.push_str(&format!(
            "| {name} | {own} | {} |\n",
            if ok { "clean" } else { "errors" }
        ));
    }
    let clean_families = families.values().filter(|&&ok| ok).count();
    println!(
        "{table}\n{clean} of {} fixtures, {clean_families} of {} families plan clean with --strict",
        all.len(),
        families.len()
    );
    assert!(
        clean_families >= MEASURED_CLEAN_FAMILIES,
        "{clean_families} of {} families plan clean, fewer than the measured {MEASURED_CLEAN_FAMILIES}",
        families.len()
    );
    assert!(
        clean >= MEASURED_CLEAN,
        "{clean} of {} scaffolds plan clean, fewer than the measured {MEASURED_CLEAN}",
        all.len()
    );
}

#[test]
fn scaffold_is_deterministic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/qwen3_moe");
    assert_eq!(scaffold(&dir).1, scaffold(&dir).1);
}

#[test]
fn scaffold_mixes_layer_kinds_of_a_hybrid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/nemotron_h");
    insta::assert_snapshot!(scaffold(&dir).1);
}

#[test]
fn scaffold_covers_a_segment_with_two_modules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/gemma3_text");
    insta::assert_snapshot!(scaffold(&dir).1);
}

fn wmapc(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wmapc"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_prints_the_scaffold_and_hiding_changes_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/gpt_neox");
    let dir = dir.to_str().unwrap();
    let shown = wmapc(&["new", "--checkpoint", dir]);
    assert!(shown.status.success());
    // The family's own block answers when visible, and cannot when hidden.
    assert!(String::from_utf8(shown.stdout)
        .unwrap()
        .contains("neox_block: NeoxBlock\n"));
    let hidden = wmapc(&["new", "--checkpoint", dir, "--hide-stdlib-model", "GptNeox"]);
    assert!(hidden.status.success());
    let hidden = String::from_utf8(hidden.stdout).unwrap();
    assert!(!hidden.contains("Neox"), "{hidden}");
    assert_eq!(
        hidden,
        wmap::scaffold::scaffold(Path::new(dir), &["GptNeox".into()]).unwrap()
    );
}

#[test]
fn cli_refuses_to_hide_a_model_the_stdlib_lacks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let out = wmapc(&[
        "new",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--hide-stdlib-model",
        "Lama",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("[E0805/"), "{stderr}");
}
