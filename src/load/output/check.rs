//! The checks on `--out`: where it resolves to, what it overlaps, what is there now, and
//! what dead runs left beside it.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::{write_failed, Found, Marker, MARKER, MARKER_VERSION};
use crate::diag::{Code, Diagnostic};

/// The largest marker file read; real ones are a few hundred bytes.
const MARKER_MAX_BYTES: u64 = 1 << 20;

fn around_cwd(out: &Path) -> Diagnostic {
    Diagnostic::new(
        Code::E0604,
        format!(
            "--out `{}` is the working directory or contains it",
            out.display()
        ),
    )
    .with_help("name a new folder, e.g. --out ./out")
}

/// `out` made absolute with its parent resolved (symlinks, `..`) through the nearest
/// folder that exists; its own last component is kept as written, so a symlink at OUT
/// stays visible as one.
pub(super) fn resolve(out: &Path) -> Result<PathBuf, Diagnostic> {
    let Some(Component::Normal(name)) = out.components().next_back() else {
        return Err(around_cwd(out));
    };
    let cwd = std::env::current_dir()
        .map_err(write_failed("cannot read the working directory".into()))?;
    let parent = out.parent().unwrap_or(Path::new(""));
    let mut base = cwd.join(parent);
    let mut tail = Vec::new();
    let resolved = loop {
        if let Ok(c) = base.canonicalize() {
            break c;
        }
        match base.components().next_back() {
            Some(Component::Normal(n)) => tail.push(n.to_owned()),
            _ => {
                return Err(Diagnostic::new(
                    Code::E0604,
                    format!(
                        "--out `{}` passes through `..` or `.` below a folder that does not exist",
                        out.display()
                    ),
                )
                .with_help("name the folder without `..`"))
            }
        }
        base.pop();
    };
    let mut full = resolved;
    full.extend(tail.iter().rev());
    full.push(name);
    Ok(full)
}

/// Refuses an OUT that is the working directory or one of its ancestors.
pub(super) fn not_around_cwd(out: &Path, resolved: &Path) -> Result<(), Diagnostic> {
    let cwd = std::env::current_dir().and_then(|d| d.canonicalize());
    match cwd {
        Ok(cwd) if cwd.starts_with(resolved) => Err(around_cwd(out)),
        _ => Ok(()),
    }
}

/// Refuses an OUT that is, contains or lies inside the input checkpoint.
pub(super) fn not_overlapping(out: &Path, resolved: &Path, input: &Path) -> Result<(), Diagnostic> {
    let Ok(input_c) = input.canonicalize() else {
        return Ok(());
    };
    let how = if resolved == input_c {
        "is"
    } else if resolved.starts_with(&input_c) {
        "lies inside"
    } else if input_c.starts_with(resolved) {
        "contains"
    } else {
        return Ok(());
    };
    Err(Diagnostic::new(
        Code::E0603,
        format!(
            "--out `{}` {how} the input checkpoint `{}`",
            out.display(),
            input.display()
        ),
    )
    .with_help("write the output to a folder outside the checkpoint"))
}

/// The folder OUT lies in and OUT's own name (for the `.NAME.*` siblings).
pub(super) fn parent_and_name(resolved: &Path) -> Result<(PathBuf, String), Diagnostic> {
    match (resolved.parent(), resolved.file_name()) {
        (Some(p), Some(n)) => Ok((p.to_path_buf(), n.to_string_lossy().into_owned())),
        _ => Err(around_cwd(resolved)),
    }
}

/// Refuses a parent path that exists as something other than a folder (where
/// `create_dir_all` would only say "File exists").
pub(super) fn parent_is_a_folder(out: &Path, parent: &Path) -> Result<(), Diagnostic> {
    match std::fs::metadata(parent) {
        Ok(m) if !m.is_dir() => Err(Diagnostic::new(
            Code::E0608,
            format!(
                "cannot create --out `{}`: `{}` is not a directory",
                out.display(),
                parent.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// What OUT is now: absent, or an earlier wmapc output that `force` lets us replace.
pub(super) fn inspect(out: &Path, resolved: &Path, force: bool) -> Result<Found, Diagnostic> {
    let meta = match std::fs::symlink_metadata(resolved) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(e) => {
            return Err(write_failed(format!("cannot inspect `{}`", out.display()))(
                e,
            ))
        }
    };
    if !meta.is_dir() {
        let what = if meta.file_type().is_symlink() {
            "is a symbolic link"
        } else {
            "is not a directory"
        };
        return Err(Diagnostic::new(
            Code::E0605,
            format!("--out `{}` exists and {what}", out.display()),
        )
        .with_help("choose another --out; wmapc replaces only folders it wrote"));
    }
    if !force {
        return Err(
            Diagnostic::new(Code::E0601, format!("`{}` already exists", out.display())).with_help(
                "choose another --out, or pass --force to replace an earlier wmapc output",
            ),
        );
    }
    if let Err(why) = validate_output(resolved) {
        return Err(Diagnostic::new(
            Code::E0602,
            format!("`{}` is not an earlier wmapc output: {why}", out.display()),
        )
        .with_help("--force replaces only a folder wmapc wrote; choose another --out or move the folder away"));
    }
    Ok(Found::Output(meta.dev(), meta.ino()))
}

/// Ok when `dir` holds a valid marker and nothing the marker does not list.
fn validate_output(dir: &Path) -> Result<(), String> {
    let marker_path = dir.join(MARKER);
    let m = std::fs::symlink_metadata(&marker_path)
        .map_err(|_| format!("it has no `{MARKER}` marker"))?;
    if !m.is_file() || m.len() > MARKER_MAX_BYTES {
        return Err(format!("its `{MARKER}` is not a marker file"));
    }
    let text = std::fs::read(&marker_path).map_err(|e| format!("cannot read its marker: {e}"))?;
    let marker: Marker = serde_json::from_slice(&text)
        .ok()
        .filter(|m: &Marker| m.marker_version == MARKER_VERSION)
        .ok_or_else(|| format!("its `{MARKER}` is not a valid marker"))?;
    let entries = listing(dir).map_err(|e| format!("cannot list it: {e}"))?;
    for name in entries.iter().filter(|n| *n != MARKER) {
        let is_file = std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file());
        if !is_file || !marker.files.contains(name) {
            return Err(format!("it holds `{name}`, which wmapc did not write"));
        }
    }
    Ok(())
}

/// Whether `dir` is the folder (device, inode) checked before, still a valid output.
pub(super) fn is_same_output(dir: &Path, dev: u64, ino: u64) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.dev() == dev && m.ino() == ino)
        && validate_output(dir).is_ok()
}

/// The names in `dir`, sorted.
pub(super) fn listing(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Removes the `.NAME.tmp-PID` and `.NAME.old-PID` folders of dead processes beside OUT
/// (only marked ones: a folder without the marker is not ours). A stale `.old` while OUT
/// is absent is a replacement that died half-way: it is put back.
pub(super) fn remove_stale(parent: &Path, name: &str, resolved: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some((kind, pid)) = stale_name(&file_name, name) else {
            continue;
        };
        let path = e.path();
        let marked = std::fs::symlink_metadata(path.join(MARKER)).is_ok_and(|m| m.is_file());
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir || !marked || pid == std::process::id() || is_alive(pid) {
            continue;
        }
        let out_absent = std::fs::symlink_metadata(resolved).is_err();
        if kind == "old" && out_absent && std::fs::rename(&path, resolved).is_ok() {
            continue;
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// `.NAME.tmp-123` → ("tmp", 123).
fn stale_name<'a>(file_name: &'a str, name: &str) -> Option<(&'a str, u32)> {
    let rest = file_name
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?;
    let (kind, pid) = rest.split_once('-')?;
    if !(kind == "tmp" || kind == "old") || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind, pid.parse().ok()?))
}

fn is_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Renames `from` to `to`, failing with `AlreadyExists` when `to` exists (even an empty
/// folder, which a plain rename would silently replace).
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Filesystems without RENAME_NOREPLACE: check, then rename (a narrow race).
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(from, to)
        }
        _ => Err(e),
    }
}
