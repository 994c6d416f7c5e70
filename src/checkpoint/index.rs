//! `model.safetensors.index.json`: which tensor lives in which shard.

use std::collections::BTreeMap;
use std::path::Path;

use super::bad;
use crate::diag::{Code, Diagnostic};

/// Index files larger than this are refused; real ones are a few megabytes.
const MAX_INDEX: u64 = 256 << 20;

pub struct Index {
    /// Shard file names in first-mention order (sorted, for determinism).
    pub shards: Vec<String>,
    pub weight_map: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Raw {
    weight_map: BTreeMap<String, String>,
}

pub fn read(path: &Path, display: &str) -> Result<Index, Diagnostic> {
    let len = std::fs::metadata(path)
        .map_err(|e| bad(Code::E0505, display, None, format!("cannot read: {e}")))?
        .len();
    if len > MAX_INDEX {
        return Err(bad(
            Code::E0505,
            display,
            None,
            format!("{len} bytes is too large for a shard index"),
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| bad(Code::E0505, display, None, format!("cannot read: {e}")))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| bad(Code::E0505, display, None, format!("not UTF-8: {e}")))?;
    let raw: Raw = serde_json::from_str(text).map_err(|e| {
        bad(
            Code::E0505,
            display,
            None,
            format!("not a valid shard index: {e}"),
        )
    })?;
    let mut shards: Vec<String> = Vec::new();
    for (tensor, shard) in &raw.weight_map {
        if !is_plain_file_name(shard) {
            return Err(bad(
                Code::E0505,
                display,
                Some(tensor),
                format!("names shard `{shard}`, which is not a plain file name in the checkpoint folder"),
            )
            .with_help("shard names may not contain `/`, `\\`, `..` or be absolute"));
        }
        if !shards.contains(shard) {
            shards.push(shard.clone());
        }
    }
    shards.sort();
    Ok(Index {
        shards,
        weight_map: raw.weight_map,
    })
}

/// A shard must be a file directly in the checkpoint folder.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && !name.starts_with('~')
}
