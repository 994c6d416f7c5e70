//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root: where the crate was built, or the working directory when the
/// test binary runs on another machine (the GPU box runs binaries built here).
pub fn root() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("Cargo.toml").is_file() {
        built
    } else {
        std::env::current_dir().unwrap()
    }
}

/// A path relative to the repository root, as diagnostics show it.
pub fn rel(path: &Path) -> PathBuf {
    path.strip_prefix(root()).unwrap_or(path).to_path_buf()
}

/// The `hf/` fixtures: (name, config file) for every config variant.
pub fn hf_configs() -> Vec<(String, PathBuf)> {
    let dir = root().join("tests/fixtures/hf");
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for d in entries {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        for (variant, file) in [("", "config.json"), (".hub", "config.hub.json")] {
            let p = d.join(file);
            if p.exists() {
                out.push((format!("{name}{variant}"), rel(&p)));
            }
        }
    }
    out
}

pub mod hashgen;
pub mod sparse;

/// A fresh, empty temporary folder for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wmap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Equal slices, or a short message: how many differ and the first few.
pub fn same<T: PartialEq + std::fmt::Debug>(got: &[T], want: &[T], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    let shown: Vec<String> = bad
        .iter()
        .take(5)
        .map(|&i| format!("[{i}] {:?} vs {:?}", got[i], want[i]))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} differ: {}",
        bad.len(),
        got.len(),
        shown.join(", ")
    );
}
