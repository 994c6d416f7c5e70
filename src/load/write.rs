//! A sink that writes the runtime layout to a safetensors file, atomically.
//!
//! The header is known from the plan before any data arrives, so the file is laid out
//! up front and each target is written at its offset as it comes, from any thread.
//! Everything goes to a temporary folder beside the destination, renamed into place
//! by [`SafetensorsWriter::commit`]; a failed load leaves no half-written output.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Sink;
use crate::diag::{Code, Diagnostic};
use crate::plan::{Plan, Recipe, Target};

pub struct SafetensorsWriter {
    out: PathBuf,
    tmp: PathBuf,
    file: File,
    /// Absolute offset and length of each target's bytes.
    slots: BTreeMap<String, (u64, u64)>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Diagnostic {
    move |e| Diagnostic::new(Code::E0511, format!("{what}: {e}"))
}

impl SafetensorsWriter {
    /// Lays out `OUT/model.safetensors` in a temporary folder. An existing `out` is
    /// refused unless `force`.
    pub fn create(out: &Path, plan: &Plan, force: bool) -> Result<SafetensorsWriter, Diagnostic> {
        if out.exists() && !force {
            return Err(Diagnostic::new(
                Code::E0511,
                format!("`{}` already exists", out.display()),
            )
            .with_help("choose another --out, or pass --force to replace it"));
        }
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .map_or("out".into(), |n| n.to_string_lossy().into_owned());
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(format!("cannot create `{}`", tmp.display())))?;

        let mut header = serde_json::Map::new();
        let mut slots = BTreeMap::new();
        let mut cursor = 0u64;
        let mut sorted: Vec<&Target> = plan.targets.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for t in &sorted {
            let len = t.shape.iter().product::<u64>() * t.dtype.size() as u64;
            header.insert(
                t.name.clone(),
                serde_json::json!({
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "data_offsets": [cursor, cursor + len],
                }),
            );
            slots.insert(t.name.clone(), (cursor, len));
            cursor += len;
        }
        let ties: BTreeMap<String, String> = plan
            .targets
            .iter()
            .filter_map(|t| match &t.recipe {
                Recipe::Tied { target } => Some((t.name.clone(), target.clone())),
                _ => None,
            })
            .collect();
        let mut meta = serde_json::Map::new();
        meta.insert("format".into(), "pt".into());
        meta.insert("wmap_model".into(), plan.model.clone().into());
        if !ties.is_empty() {
            meta.insert(
                "wmap_tied".into(),
                serde_json::to_string(&ties).unwrap_or_default().into(),
            );
        }
        header.insert("__metadata__".into(), meta.into());
        let mut text = serde_json::to_string(&header)
            .unwrap_or_default()
            .into_bytes();
        // Pad the header so tensor data starts 8-byte aligned.
        while (8 + text.len()) % 8 != 0 {
            text.push(b' ');
        }
        let data_start = 8 + text.len() as u64;
        for slot in slots.values_mut() {
            slot.0 += data_start;
        }
        let path = tmp.join("model.safetensors");
        // Read access too: tied targets are copied back out of the file.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(format!("cannot create `{}`", path.display())))?;
        file.write_all(&(text.len() as u64).to_le_bytes())
            .and_then(|_| file.write_all(&text))
            .and_then(|_| file.set_len(data_start + cursor))
            .map_err(io(format!("cannot write `{}`", path.display())))?;
        Ok(SafetensorsWriter {
            out: out.to_path_buf(),
            tmp,
            file,
            slots,
        })
    }

    fn slot(&self, name: &str) -> Result<(u64, u64), Diagnostic> {
        self.slots.get(name).copied().ok_or_else(|| {
            Diagnostic::new(
                Code::E0901,
                format!("`{name}` is not in the plan; this is a bug in wmapc"),
            )
        })
    }

    /// Moves the finished folder into place (replacing an old one when forced).
    pub fn commit(self) -> Result<PathBuf, Diagnostic> {
        self.file
            .sync_all()
            .map_err(io(format!("cannot flush `{}`", self.tmp.display())))?;
        if self.out.exists() {
            std::fs::remove_dir_all(&self.out)
                .or_else(|_| std::fs::remove_file(&self.out))
                .map_err(io(format!("cannot replace `{}`", self.out.display())))?;
        }
        std::fs::rename(&self.tmp, &self.out).map_err(io(format!(
            "cannot move output to `{}`",
            self.out.display()
        )))?;
        Ok(self.out)
    }

    /// Removes the temporary folder after a failure.
    pub fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

impl Sink for SafetensorsWriter {
    fn tensor(&self, target: &Target, data: Vec<u8>) -> Result<Option<Vec<u8>>, Diagnostic> {
        let (at, _) = self.slot(&target.name)?;
        self.file
            .write_all_at(&data, at)
            .map_err(io(format!("cannot write `{}`", target.name)))?;
        Ok(Some(data))
    }

    /// A tied target is written as a copy of its target's bytes, read back from the
    /// output (the checkpoint is not read twice), so the file stands alone.
    fn tied(&self, target: &Target, to: &str) -> Result<(), Diagnostic> {
        let (from, len) = self.slot(to)?;
        let (at, _) = self.slot(&target.name)?;
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, from)
            .and_then(|_| self.file.write_all_at(&buf, at))
            .map_err(io(format!("cannot write tied `{}`", target.name)))
    }
}
