//! Checkpoint: an HF folder → validated safetensors headers, and tensor bytes on demand.
//!
//! Input: a folder with `model.safetensors`, or shards plus `model.safetensors.index.json`.
//! Output: a [`Checkpoint`]: every tensor's shard, dtype, shape and absolute byte range.
//! The checkpoint is untrusted: every header is validated against its file before use
//! (length, UTF-8, JSON, offsets inside the file and tiling it, shape × dtype = bytes),
//! shard names may not leave the folder, duplicates across shards are refused, pickle
//! files are never read. Memory is bounded by the header size limit. Tensor bytes are
//! read with positioned reads into caller buffers, never the whole file.

mod header;
mod index;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::diag::{Code, Diagnostic};

/// Element types a checkpoint may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
    U8,
    I8,
    I32,
    I64,
    /// A dtype the header may declare but the loader does not convert (F64, BOOL, …).
    Other(&'static str),
}

impl Dtype {
    fn from_safetensors(d: safetensors::Dtype) -> Dtype {
        use safetensors::Dtype as S;
        match d {
            S::F32 => Dtype::F32,
            S::F16 => Dtype::F16,
            S::BF16 => Dtype::Bf16,
            S::F8_E4M3 => Dtype::F8E4M3,
            S::F8_E5M2 => Dtype::F8E5M2,
            S::U8 => Dtype::U8,
            S::I8 => Dtype::I8,
            S::I32 => Dtype::I32,
            S::I64 => Dtype::I64,
            S::BOOL => Dtype::Other("BOOL"),
            S::I16 => Dtype::Other("I16"),
            S::U16 => Dtype::Other("U16"),
            S::U32 => Dtype::Other("U32"),
            S::F64 => Dtype::Other("F64"),
            S::U64 => Dtype::Other("U64"),
            _ => Dtype::Other("unknown"),
        }
    }

    /// The safetensors spelling: `BF16`, `F8_E4M3`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::I32 => "I32",
            Dtype::I64 => "I64",
            Dtype::Other(n) => n,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I64 => 8,
            Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::U8 | Dtype::I8 => 1,
            Dtype::Other(_) => 0,
        }
    }
}

/// Where one tensor lives.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    pub shard: usize,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Absolute byte offset in the shard file.
    pub offset: u64,
    pub len: u64,
}

pub struct Shard {
    /// The file name as the index (or folder) gives it.
    pub name: String,
    pub path: PathBuf,
    file: File,
}

/// A validated checkpoint: headers only, no tensor bytes.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub shards: Vec<Shard>,
    /// Every tensor by name, sorted.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// When set ([`Checkpoint::log_reads`]), every read's `(shard, offset, length)`:
    /// how tests prove a rank reads exactly its plan's bytes.
    read_log: Option<std::sync::Mutex<Vec<(usize, u64, u64)>>>,
}

/// A coded checkpoint error naming the file and, when known, the tensor.
pub(crate) fn bad(code: Code, file: &str, tensor: Option<&str>, what: String) -> Diagnostic {
    let subject = match tensor {
        Some(t) => format!("`{file}`, tensor `{t}`"),
        None => format!("`{file}`"),
    };
    Diagnostic::new(code, format!("{subject}: {what}"))
        .with_note("the checkpoint is refused before any tensor data is read")
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";
const PICKLE_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "ckpt", "pkl"];

impl Checkpoint {
    /// Opens a checkpoint folder, validating every header.
    pub fn open(dir: &Path) -> Result<Checkpoint, Diagnostic> {
        let shown = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Diagnostic::new(
                Code::E0501,
                format!("cannot read checkpoint folder `{shown}`: {e}"),
            )
        })?;
        let mut names: Vec<String> = entries
            .flatten()
            // Special files stay in the list, so that one under a checkpoint file's name
            // is reported (E0512) rather than silently skipped.
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let index = if names.iter().any(|n| n == INDEX) {
            Some(index::read(&dir.join(INDEX), &format!("{shown}/{INDEX}"))?)
        } else {
            None
        };
        let shard_names: Vec<String> = if let Some(index) = &index {
            index.shards.clone()
        } else if names.iter().any(|n| n == SINGLE) {
            vec![SINGLE.to_string()]
        } else {
            let st: Vec<&String> = names
                .iter()
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            match st.as_slice() {
                [one] => vec![(*one).clone()],
                [] => {
                    let pickles: Vec<&String> = names
                        .iter()
                        .filter(|n| {
                            PICKLE_EXTENSIONS
                                .iter()
                                .any(|e| n.ends_with(&format!(".{e}")))
                        })
                        .collect();
                    return Err(if pickles.is_empty() {
                        Diagnostic::new(
                            Code::E0501,
                            format!("`{shown}` holds no safetensors checkpoint"),
                        )
                        .with_help(format!("expected `{SINGLE}` or `{INDEX}` with its shards"))
                    } else {
                        Diagnostic::new(
                            Code::E0502,
                            format!("`{shown}` holds only pickle weights (`{}`)", pickles[0]),
                        )
                        .with_note("pickle files can run arbitrary code when loaded; wmapc never reads them")
                        .with_help("convert them to safetensors (e.g. `save_pretrained(..., safe_serialization=True)`)")
                    });
                }
                _ => {
                    return Err(Diagnostic::new(
                        Code::E0505,
                        format!("`{shown}` holds several safetensors files but no `{INDEX}`"),
                    )
                    .with_help("add the index that says which tensor lives in which shard"))
                }
            }
        };
        let index_map = index.map(|i| i.weight_map);
        let mut shards = Vec::with_capacity(shard_names.len());
        let mut tensors: BTreeMap<String, TensorEntry> = BTreeMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            // A special file under a shard's name is refused by `header::read`.
            if !path.exists() {
                return Err(bad(
                    Code::E0505,
                    &format!("{shown}/{INDEX}"),
                    None,
                    format!("names shard `{name}`, which does not exist"),
                ));
            }
            let display = format!("{shown}/{name}");
            let h = header::read(&path, &display, i)?;
            for (tname, entry) in h.tensors {
                if let Some(prev) = tensors.get(&tname) {
                    return Err(bad(
                        Code::E0506,
                        &display,
                        Some(&tname),
                        format!("is also in `{}`", shard_names[prev.shard]),
                    ));
                }
                tensors.insert(tname, entry);
            }
            shards.push(Shard {
                name: name.clone(),
                path,
                file: h.file,
            });
        }
        if let Some(map) = index_map {
            for (tname, shard) in &map {
                let found = tensors.get(tname).map(|e| shard_names[e.shard].as_str());
                if found != Some(shard.as_str()) {
                    return Err(bad(
                        Code::E0505,
                        &format!("{shown}/{INDEX}"),
                        Some(tname),
                        match found {
                            Some(other) => format!("is mapped to `{shard}` but lives in `{other}`"),
                            None => format!("is mapped to `{shard}`, which does not hold it"),
                        },
                    ));
                }
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            shards,
            tensors,
            read_log: None,
        })
    }

    /// Starts recording every read from now on (see [`Checkpoint::take_read_log`]).
    pub fn log_reads(&mut self) {
        self.read_log = Some(std::sync::Mutex::new(Vec::new()));
    }

    /// The reads recorded since [`Checkpoint::log_reads`] or the last take, in the order
    /// they were made (threads interleave); empty when not recording.
    pub fn take_read_log(&self) -> Vec<(usize, u64, u64)> {
        self.read_log
            .as_ref()
            .map(|l| std::mem::take(&mut *l.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default()
    }

    fn record(&self, shard: usize, offset: u64, len: usize) {
        if let Some(l) = &self.read_log {
            l.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((shard, offset, len as u64));
        }
    }

    /// Reads a tensor's raw bytes into `buf` (which must be exactly `entry.len` long).
    pub fn read_into(&self, entry: &TensorEntry, buf: &mut [u8]) -> Result<(), Diagnostic> {
        self.record(entry.shard, entry.offset, buf.len());
        let shard = &self.shards[entry.shard];
        shard.file.read_exact_at(buf, entry.offset).map_err(|e| {
            Diagnostic::new(
                Code::E0511,
                format!(
                    "reading {} bytes at offset {} of `{}` failed: {e}",
                    buf.len(),
                    entry.offset,
                    shard.path.display()
                ),
            )
            .with_note("the file changed or became unreadable after its header was checked")
        })
    }

    /// Reads `buf.len()` bytes at absolute `offset` of shard `shard`.
    pub fn read_at(&self, shard: usize, offset: u64, buf: &mut [u8]) -> Result<(), Diagnostic> {
        self.record(shard, offset, buf.len());
        let s = &self.shards[shard];
        s.file.read_exact_at(buf, offset).map_err(|e| {
            Diagnostic::new(
                Code::E0511,
                format!(
                    "reading {} bytes at offset {offset} of `{}` failed: {e}",
                    buf.len(),
                    s.path.display()
                ),
            )
            .with_note("the file changed or became unreadable after its header was checked")
        })
    }

    /// The total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.len).sum()
    }
}
