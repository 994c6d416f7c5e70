//! The `--out` folder: where an output may go and how it replaces an earlier one.
//!
//! Input: the requested OUT, the input checkpoint folder and `force`. Output: a
//! [`Staging`], an empty temporary folder `.OUT.tmp-PID` beside OUT to fill, which
//! [`Staging::commit`] moves into place.
//! Invariants:
//! - OUT is never the input checkpoint, inside it or around it, never the working
//!   directory or an ancestor of it, never a non-directory (paths compared resolved).
//! - Only an earlier wmapc output is ever replaced: a folder whose `.wmapc-output` marker
//!   lists every entry it holds, and only with `force`.
//! - The lock `.OUT.lock` is held from the check to the end of the commit; the commit
//!   re-checks OUT under it and replaces it by renames (old aside, new in, old deleted),
//!   putting the old one back when the second rename fails.
//! - The temporary folder is removed on every exit this process controls: an error (the
//!   [`Staging`] drop), SIGINT/SIGTERM (the handler thread), a panic (the hook). Folders
//!   left by a process that died (kill -9) are removed by the next run writing that OUT.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::diag::{Code, Diagnostic};

mod check;
mod signals;

pub use signals::{install_signal_handlers, remove_registered};

/// The marker file every output folder carries.
pub const MARKER: &str = ".wmapc-output";

/// The marker's contents: what wmapc wrote into the folder.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub marker_version: u32,
    pub wmapc_version: String,
    /// Every file in the folder besides the marker, sorted.
    pub files: Vec<String>,
}

const MARKER_VERSION: u32 = 1;

/// What OUT was when it was checked.
#[derive(Clone, Debug, PartialEq)]
enum Found {
    Absent,
    /// An earlier wmapc output: the folder's identity (device, inode).
    Output(u64, u64),
}

/// A temporary output folder beside OUT, with OUT's lock held.
pub struct Staging {
    /// OUT as the user wrote it, for messages.
    shown: PathBuf,
    out: PathBuf,
    tmp: PathBuf,
    found: Found,
    committed: bool,
    // Dropped after `tmp` is removed: the lock covers the whole life of the folder.
    _lock: Lock,
}

impl Staging {
    /// Checks `out` against `input` and `force`, takes OUT's lock, removes what dead
    /// runs left beside OUT, and creates the temporary folder.
    pub fn prepare(out: &Path, input: &Path, force: bool) -> Result<Staging, Diagnostic> {
        Staging::prepare_for(out, &[input], force)
    }

    /// [`Staging::prepare`] for an output read from several inputs (a runtime store
    /// and the checkpoint it came from): OUT may overlap none of them.
    pub fn prepare_for(out: &Path, inputs: &[&Path], force: bool) -> Result<Staging, Diagnostic> {
        let resolved = check::resolve(out)?;
        check::not_around_cwd(out, &resolved)?;
        for input in inputs {
            check::not_overlapping(out, &resolved, input)?;
        }
        let (parent, name) = check::parent_and_name(&resolved)?;
        check::parent_is_a_folder(out, &parent)?;
        std::fs::create_dir_all(&parent).map_err(write_failed(format!(
            "cannot create `{}`",
            parent.display()
        )))?;
        let lock = Lock::acquire(&parent, &format!(".{name}.lock"), out)?;
        check::remove_stale(&parent, &name, &resolved);
        let found = check::inspect(out, &resolved, force)?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        // Marked folders of these names are from an earlier process with our PID, now
        // dead (we hold the lock); the commit needs both names free. Anything else of
        // those names is not ours to delete.
        for stale in [
            &tmp,
            &parent.join(format!(".{name}.old-{}", std::process::id())),
        ] {
            if std::fs::symlink_metadata(stale).is_err() {
                continue;
            }
            let marked = std::fs::symlink_metadata(stale).is_ok_and(|m| m.is_dir())
                && std::fs::symlink_metadata(stale.join(MARKER)).is_ok_and(|m| m.is_file());
            if !marked {
                return Err(Diagnostic::new(
                    Code::E0602,
                    format!(
                        "`{}` is in the way of the output and was not written by wmapc",
                        stale.display()
                    ),
                )
                .with_help("move it away, or choose another --out"));
            }
            remove_any(stale);
        }
        signals::register(&tmp);
        let staging = Staging {
            shown: out.to_path_buf(),
            out: resolved,
            tmp,
            found,
            committed: false,
            _lock: lock,
        };
        std::fs::create_dir(&staging.tmp).map_err(write_failed(format!(
            "cannot create `{}`",
            staging.tmp.display()
        )))?;
        // Marked at once, so a stale folder can be told apart from someone else's.
        staging.write_marker(&[])?;
        Ok(staging)
    }

    /// The temporary folder to write into.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Where `file` of this output will be, as the user named OUT: for messages, which
    /// should not name the temporary folder.
    pub fn shown(&self, file: &str) -> PathBuf {
        self.shown.join(file)
    }

    fn write_marker(&self, files: &[String]) -> Result<(), Diagnostic> {
        let marker = Marker {
            marker_version: MARKER_VERSION,
            wmapc_version: env!("CARGO_PKG_VERSION").to_string(),
            files: files.to_vec(),
        };
        let text = serde_json::to_string_pretty(&marker).unwrap_or_default();
        let path = self.tmp.join(MARKER);
        std::fs::write(&path, text + "\n")
            .map_err(write_failed(format!("cannot write `{}`", path.display())))
    }

    /// Lists what was written, re-checks OUT and moves the folder into place.
    pub fn commit(mut self) -> Result<PathBuf, Diagnostic> {
        let files = check::listing(&self.tmp).map_err(write_failed(format!(
            "cannot list `{}`",
            self.tmp.display()
        )))?;
        let files: Vec<String> = files.into_iter().filter(|f| f != MARKER).collect();
        self.write_marker(&files)?;
        // Held through the renames: a signal arriving now waits, then finds the folder
        // either still temporary (removed) or committed (deregistered, kept).
        let registry = signals::registry();
        self.replace()?;
        self.committed = true;
        signals::deregister_locked(registry, &self.tmp);
        Ok(self.out.clone())
    }

    fn replace(&self) -> Result<(), Diagnostic> {
        let changed = |what: &str| {
            Diagnostic::new(
                Code::E0607,
                format!(
                    "`{}` {what} while the output was written; nothing was replaced",
                    self.shown.display()
                ),
            )
            .with_help("make sure nothing else writes to this folder, then run again")
        };
        match self.found {
            Found::Absent => match check::rename_noreplace(&self.tmp, &self.out) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(changed("was created"))
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Err(changed("was created")),
                Err(e) => Err(write_failed(format!(
                    "cannot move output to `{}`",
                    self.out.display()
                ))(e)),
            },
            Found::Output(dev, ino) => {
                let (parent, name) = check::parent_and_name(&self.out)?;
                let old = parent.join(format!(".{name}.old-{}", std::process::id()));
                std::fs::rename(&self.out, &old).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => changed("was removed"),
                    _ => write_failed(format!("cannot move `{}` aside", self.out.display()))(e),
                })?;
                // Checked after the move: nothing can change it under OUT's name now.
                if !check::is_same_output(&old, dev, ino) {
                    let _ = std::fs::rename(&old, &self.out);
                    return Err(changed("changed"));
                }
                if let Err(e) = check::rename_noreplace(&self.tmp, &self.out) {
                    let _ = std::fs::rename(&old, &self.out);
                    return Err(write_failed(format!(
                        "cannot move output to `{}` (the earlier output was put back)",
                        self.out.display()
                    ))(e));
                }
                // A failure here leaves `.OUT.old-PID`; the next run removes it.
                let _ = std::fs::remove_dir_all(&old);
                Ok(())
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let registry = signals::registry();
            remove_any(&self.tmp);
            signals::deregister_locked(registry, &self.tmp);
        }
    }
}

fn remove_any(path: &Path) {
    let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
}

/// An I/O failure on the output: E0609 for EFBIG (the file-size limit), E0608 otherwise.
pub fn write_failed(what: String) -> impl FnOnce(std::io::Error) -> Diagnostic {
    move |e| {
        if e.raw_os_error() == Some(libc::EFBIG) {
            Diagnostic::new(
                Code::E0609,
                format!("{what}: the output exceeds the file-size limit"),
            )
            .with_help("raise the limit (`ulimit -f unlimited`) or write a smaller output")
        } else {
            Diagnostic::new(Code::E0608, format!("{what}: {e}"))
        }
    }
}

/// An exclusive `flock` on `.OUT.lock`, removed when dropped.
struct Lock {
    path: PathBuf,
    _file: File,
}

impl Lock {
    fn acquire(dir: &Path, name: &str, out: &Path) -> Result<Lock, Diagnostic> {
        let path = &dir.join(name);
        let held = || {
            Diagnostic::new(
                Code::E0606,
                format!(
                    "another wmapc is writing `{}` (its lock `{name}` beside it is held)",
                    out.display(),
                ),
            )
            .with_help("wait for it to finish, or choose another --out")
        };
        // A holder unlinks the file before it unlocks; a file locked after that is no
        // longer the one at `path`, so try again with the new one.
        for _ in 0..16 {
            // Our lock files are empty regular files; anything else of that name (a
            // symlink, a user's file with content) is not ours to lock, and not ours to
            // unlink when the lock is dropped.
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if !m.file_type().is_file() || m.len() > 0 {
                    return Err(Diagnostic::new(
                        Code::E0602,
                        format!(
                            "`{}` is in the way of the output's lock and was not written by wmapc",
                            path.display()
                        ),
                    )
                    .with_help("move it away, or choose another --out"));
                }
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(write_failed(format!("cannot create `{}`", path.display())))?;
            if let Err(e) = try_flock(&file) {
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(held());
                }
                return Err(write_failed(format!("cannot lock `{}`", path.display()))(e));
            }
            let id = |m: std::fs::Metadata| (m.dev(), m.ino());
            if std::fs::metadata(path).ok().map(id) == file.metadata().ok().map(id) {
                signals::register(path);
                return Ok(Lock {
                    path: path.to_path_buf(),
                    _file: file,
                });
            }
        }
        Err(held())
    }
}

/// An exclusive, non-blocking `flock` (released when the file is closed).
fn try_flock(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `file`, open for the whole call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Unlinked while still locked; the lock goes with the file handle right after.
        let _ = std::fs::remove_file(&self.path);
        signals::deregister(&self.path);
    }
}
