//! One safetensors file: its header, parsed with the `safetensors` crate and validated
//! against the file's real length before anything trusts it.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use safetensors::tensor::Metadata;

use super::{bad, Dtype, TensorEntry};
use crate::diag::{Code, Diagnostic};

/// Headers larger than this are refused (the `safetensors` crate's own limit).
pub const MAX_HEADER: u64 = 100_000_000;

/// A parsed, validated shard.
pub struct ShardHeader {
    pub file: File,
    pub tensors: BTreeMap<String, TensorEntry>,
}

/// Reads and validates the header of `path`; `shard` is the index the entries get.
pub fn read(path: &Path, display: &str, shard: usize) -> Result<ShardHeader, Diagnostic> {
    let (file, len) = crate::source::open_regular(path).map_err(|e| {
        e.diagnostic("safetensors file", display)
            .unwrap_or_else(|| {
                Diagnostic::new(Code::E0501, format!("cannot open `{display}`: {e}"))
            })
    })?;
    let mut prefix = [0u8; 8];
    if len < 8 || file.read_exact_at(&mut prefix, 0).is_err() {
        return Err(bad(
            Code::E0503,
            display,
            None,
            format!("file is {len} bytes, too short for a safetensors header"),
        ));
    }
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER {
        return Err(bad(
            Code::E0503,
            display,
            None,
            format!("header length {n} exceeds the {MAX_HEADER}-byte limit"),
        ));
    }
    if 8 + n > len {
        return Err(bad(
            Code::E0503,
            display,
            None,
            format!("header length {n} runs past the end of the {len}-byte file"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8).map_err(|e| {
        bad(
            Code::E0503,
            display,
            None,
            format!("cannot read the header: {e}"),
        )
    })?;
    let text = std::str::from_utf8(&header).map_err(|e| {
        bad(
            Code::E0503,
            display,
            None,
            format!("header is not UTF-8: {e}"),
        )
    })?;
    let meta: Metadata = serde_json::from_str(text).map_err(|e| {
        bad(
            Code::E0503,
            display,
            None,
            format!("header is not a valid safetensors header: {e}"),
        )
    })?;
    let data_start = 8 + n;
    let data_len = len - data_start;
    let tensors = validate(&meta, data_len, display, shard, data_start)?;
    Ok(ShardHeader { file, tensors })
}

/// Every tensor's bytes must lie inside the data section, tile it without gaps or
/// overlaps, and have exactly shape × dtype bytes.
fn validate(
    meta: &Metadata,
    data_len: u64,
    display: &str,
    shard: usize,
    data_start: u64,
) -> Result<BTreeMap<String, TensorEntry>, Diagnostic> {
    let mut by_offset: Vec<(String, &safetensors::tensor::TensorInfo)> =
        meta.tensors().into_iter().collect();
    by_offset.sort_by(|a, b| a.1.data_offsets.cmp(&b.1.data_offsets).then(a.0.cmp(&b.0)));
    let mut out = BTreeMap::new();
    let mut cursor = 0u64;
    for (name, info) in by_offset {
        let (s, e) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        if e < s || e > data_len {
            return Err(bad(
                Code::E0504,
                display,
                Some(&name),
                format!("data offsets [{s}, {e}) lie outside the {data_len}-byte data section"),
            ));
        }
        if s != cursor {
            let what = if s < cursor {
                "overlaps the previous tensor"
            } else {
                "leaves a gap after the previous tensor"
            };
            return Err(bad(
                Code::E0504,
                display,
                Some(&name),
                format!("data offsets [{s}, {e}) {what}"),
            ));
        }
        let elems = info
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| {
                bad(
                    Code::E0504,
                    display,
                    Some(&name),
                    "shape overflows 64 bits".to_string(),
                )
            })?;
        let want = elems.checked_mul(info.dtype.size() as u64).ok_or_else(|| {
            bad(
                Code::E0504,
                display,
                Some(&name),
                "byte size overflows 64 bits".to_string(),
            )
        })?;
        if want != e - s {
            return Err(bad(
                Code::E0504,
                display,
                Some(&name),
                format!(
                    "shape {:?} of {:?} needs {want} bytes but its offsets span {}",
                    info.shape,
                    info.dtype,
                    e - s
                ),
            ));
        }
        cursor = e;
        out.insert(
            name,
            TensorEntry {
                shard,
                dtype: Dtype::from_safetensors(info.dtype),
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                offset: data_start + s,
                len: e - s,
            },
        );
    }
    if cursor != data_len {
        return Err(bad(
            Code::E0504,
            display,
            None,
            format!("tensors cover {cursor} bytes but the data section holds {data_len}"),
        ));
    }
    Ok(out)
}
