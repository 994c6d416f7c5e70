//! `model.safetensors.index.json`: which tensor lives in which shard.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::bad;
use crate::diag::{Code, Diagnostic};
use crate::source::MAX_INDEX;

/// Indexes naming more shards than this are refused. Real checkpoints have at most a
/// few hundred; every shard stays open while the checkpoint is, one descriptor each.
pub const MAX_SHARDS: usize = 10_000;

pub struct Index {
    /// Shard file names, sorted and distinct.
    pub shards: Vec<String>,
    pub weight_map: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Raw {
    weight_map: BTreeMap<String, String>,
}

/// Reads and validates the index: a regular file of at most [`MAX_INDEX`] bytes naming
/// at most [`MAX_SHARDS`] plain file names. O(n log n) in the number of tensors.
pub fn read(path: &Path, display: &str) -> Result<Index, Diagnostic> {
    let bytes = crate::source::read_capped(path, MAX_INDEX).map_err(|e| {
        e.diagnostic("shard index", display)
            .unwrap_or_else(|| bad(Code::E0505, display, None, format!("cannot read: {e}")))
    })?;
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
    let mut shards: BTreeSet<&str> = BTreeSet::new();
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
        if shards.insert(shard) && shards.len() > MAX_SHARDS {
            return Err(bad(
                Code::E0514,
                display,
                None,
                format!("names more than {MAX_SHARDS} shard files"),
            ));
        }
    }
    let shards = shards.into_iter().map(str::to_string).collect();
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
