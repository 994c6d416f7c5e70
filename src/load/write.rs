//! Writing safetensors files atomically: [`FileLayout`] lays out a file whose tensors are
//! all known up front and takes their bytes as they come, from any thread; everything goes
//! to the temporary folder of an [`output::Staging`], moved into place by
//! [`FileLayout::commit`], so a failed run leaves no half-written output (and replaces
//! only an earlier wmapc output; see [`super::output`]).
//! [`SafetensorsWriter`] is the sink that writes a plan's targets in the runtime layout.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::output::{self, write_failed as io};
use super::Sink;
use crate::checkpoint::Dtype;
use crate::diag::{Code, Diagnostic};
use crate::plan::{Plan, Recipe, Target};

/// One tensor of a file being written.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    /// The safetensors dtype name (`BF16`, `U8`, `F8_E4M3`).
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub bytes: u64,
}

impl Entry {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<u64>) -> Entry {
        // Shapes were checked to at most 2^48 elements; should one slip through, u64::MAX
        // makes the write fail instead of wrapping to a small, wrong size.
        let bytes = crate::ir::byte_size(&shape, dtype.size() as u64).unwrap_or(u64::MAX);
        Entry {
            name: name.into(),
            dtype: dtype.name(),
            shape,
            bytes,
        }
    }
}

/// Safetensors files laid out in a temporary folder, filled tensor by tensor: one file,
/// or the shards of a sharded checkpoint (tensor names are unique across them).
pub struct FileLayout {
    staging: output::Staging,
    files: Vec<File>,
    /// The file, absolute offset and length of each tensor's bytes.
    slots: BTreeMap<String, (usize, u64, u64)>,
}

impl FileLayout {
    /// Lays out `<file_name>` in the staging folder.
    pub fn create(
        staging: output::Staging,
        file_name: &str,
        entries: &[Entry],
        metadata: &BTreeMap<String, String>,
    ) -> Result<FileLayout, Diagnostic> {
        let mut layout = FileLayout {
            staging,
            files: Vec::new(),
            slots: BTreeMap::new(),
        };
        layout.add_file(file_name, entries, metadata)?;
        Ok(layout)
    }

    /// Lays out one more file beside the first (a shard); its tensors' names must not
    /// be in an earlier file.
    pub fn add_file(
        &mut self,
        file_name: &str,
        entries: &[Entry],
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), Diagnostic> {
        let index = self.files.len();
        let mut header = serde_json::Map::new();
        let mut slots = Vec::new();
        let mut cursor = 0u64;
        let mut sorted: Vec<&Entry> = entries.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for e in sorted {
            if self.slots.contains_key(&e.name) {
                return Err(Diagnostic::new(
                    Code::E0901,
                    format!("`{}` is laid out twice; this is a bug in wmapc", e.name),
                ));
            }
            header.insert(
                e.name.clone(),
                serde_json::json!({
                    "dtype": e.dtype,
                    "shape": e.shape,
                    "data_offsets": [cursor, cursor + e.bytes],
                }),
            );
            slots.push((e.name.clone(), cursor, e.bytes));
            cursor += e.bytes;
        }
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        header.insert("__metadata__".into(), meta.into());
        let mut text = serde_json::to_string(&header)
            .unwrap_or_default()
            .into_bytes();
        // Pad the header so tensor data starts 8-byte aligned.
        while (8 + text.len()) % 8 != 0 {
            text.push(b' ');
        }
        let data_start = 8 + text.len() as u64;
        let shown = self.staging.shown(file_name);
        let path = self.staging.dir().join(file_name);
        // Read access too: tied targets are copied back out of the file.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(format!("cannot create `{}`", shown.display())))?;
        file.write_all(&(text.len() as u64).to_le_bytes())
            .and_then(|_| file.write_all(&text))
            .and_then(|_| file.set_len(data_start + cursor))
            .map_err(io(format!("cannot write `{}`", shown.display())))?;
        for (name, at, len) in slots {
            self.slots.insert(name, (index, data_start + at, len));
        }
        self.files.push(file);
        Ok(())
    }

    fn slot(&self, name: &str) -> Result<(usize, u64, u64), Diagnostic> {
        self.slots.get(name).copied().ok_or_else(|| {
            Diagnostic::new(
                Code::E0901,
                format!("`{name}` is not in the layout; this is a bug in wmapc"),
            )
        })
    }

    /// Writes one tensor's bytes (exactly its laid-out length).
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), Diagnostic> {
        let (file, at, len) = self.slot(name)?;
        if bytes.len() as u64 != len {
            return Err(Diagnostic::new(
                Code::E0901,
                format!(
                    "`{name}` has {} bytes, {len} were laid out; this is a bug in wmapc",
                    bytes.len()
                ),
            ));
        }
        self.files[file]
            .write_all_at(bytes, at)
            .map_err(io(format!("cannot write `{name}`")))?;
        start_writeback(&self.files[file], at, len);
        Ok(())
    }

    /// Copies an already written tensor's bytes to another (same length).
    pub fn copy(&self, from: &str, to: &str) -> Result<(), Diagnostic> {
        let (file, src, len) = self.slot(from)?;
        let mut buf = vec![0u8; len as usize];
        self.files[file]
            .read_exact_at(&mut buf, src)
            .map_err(io(format!("cannot read back `{from}`")))?;
        self.write(to, &buf)
    }

    /// A side file (e.g. `config.json`) in the output folder.
    pub fn side_file(&self, name: &str, bytes: &[u8]) -> Result<(), Diagnostic> {
        std::fs::write(self.staging.dir().join(name), bytes)
            .map_err(io(format!("cannot write `{name}`")))
    }

    /// Flushes the file and moves the finished folder into place (see
    /// [`output::Staging::commit`]).
    pub fn commit(self) -> Result<PathBuf, Diagnostic> {
        for file in &self.files {
            file.sync_all().map_err(io(format!(
                "cannot flush `{}`",
                self.staging.shown("").display()
            )))?;
        }
        self.staging.commit()
    }

    /// Removes the temporary folder after a failure (dropping does the same).
    pub fn abandon(self) {}
}

/// The runtime layout of a plan, one tensor per target (tied targets as copies, so the
/// file stands alone; `__metadata__.wmap_tied` records the ties).
/// Starts writing `len` bytes at `at` back to disk without waiting for them, so the disk
/// works while later tensors are read and the `fsync` of [`FileLayout::commit`] has little
/// left to do; with all of it left to the end, `load --out` plus `sync` took up to twice
/// as long as `dd` plus `sync` of the same bytes. Only a hint: a failure here (a file
/// system without it) leaves the data to that `fsync`, which reports real errors.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(at), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is the open file `file` borrows for this call; the call
    // only queues writeback of that range and touches no memory of this process.
    unsafe { libc::sync_file_range(file.as_raw_fd(), at, len, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _at: u64, _len: u64) {}

pub struct SafetensorsWriter {
    layout: FileLayout,
}

impl SafetensorsWriter {
    pub fn create(staging: output::Staging, plan: &Plan) -> Result<SafetensorsWriter, Diagnostic> {
        let entries: Vec<Entry> = plan
            .targets
            .iter()
            .map(|t| Entry::new(t.name.clone(), t.dtype, t.shape.clone()))
            .collect();
        let ties: BTreeMap<String, String> = plan
            .targets
            .iter()
            .filter_map(|t| match &t.recipe {
                Recipe::Tied { target } => Some((t.name.clone(), target.clone())),
                _ => None,
            })
            .collect();
        let mut meta = BTreeMap::from([
            ("format".to_string(), "pt".to_string()),
            ("wmap_model".to_string(), plan.model.clone()),
        ]);
        if !ties.is_empty() {
            meta.insert(
                "wmap_tied".into(),
                serde_json::to_string(&ties).unwrap_or_default(),
            );
        }
        Ok(SafetensorsWriter {
            layout: FileLayout::create(staging, "model.safetensors", &entries, &meta)?,
        })
    }

    pub fn commit(self) -> Result<PathBuf, Diagnostic> {
        self.layout.commit()
    }

    pub fn abandon(self) {
        self.layout.abandon()
    }
}

impl Sink for SafetensorsWriter {
    fn tensor(&self, target: &Target, data: Vec<u8>) -> Result<Option<Vec<u8>>, Diagnostic> {
        self.layout.write(&target.name, &data)?;
        Ok(Some(data))
    }

    /// A tied target is a copy of its target's bytes, read back from the output (the
    /// checkpoint is not read twice).
    fn tied(&self, target: &Target, to: &str) -> Result<(), Diagnostic> {
        self.layout.copy(to, &target.name)
    }
}
