//! The on-disk kernel cache: kernel source → device code (CUBIN), compiled once per machine.
//!
//! Input: a kernel file's full source, the NVRTC options, the device architecture and the
//! NVRTC version. Output: the CUBIN for them, read from the cache folder when an entry with
//! exactly that key is there and intact, else compiled with NVRTC and written back.
//!
//! Invariants:
//! - An entry is used only when its stored key (the whole key text, not a hash of it) equals
//!   the asked-for key and its checksum matches its image: a hash collision, a truncated or
//!   corrupt file, or an entry from another NVRTC or architecture is a miss, never a load.
//! - The cache never fails a load: an unreadable, unwritable or absent folder means compiling
//!   as if there were no cache (the caller also falls back to PTX when a CUBIN will not load).
//! - Entries are written to a temporary file in the same folder and renamed into place, so a
//!   reader sees a whole entry or none, also with concurrent processes.
//! - `WMAP_KERNEL_CACHE` names the folder; `off` (or empty) turns the cache off. Default:
//!   `$XDG_CACHE_HOME/wmap/kernels`, else `$HOME/.cache/wmap/kernels`.

use std::ffi::{c_char, c_int, CString};
use std::io::Write;
use std::path::{Path, PathBuf};

use cudarc::nvrtc::sys;

/// First bytes of an entry; the version changes when the entry layout does.
const MAGIC: &[u8; 8] = b"WMAPK001";
/// Entries larger than this are not ours (our CUBINs are tens of KiB): a miss.
const MAX_ENTRY: u64 = 64 << 20;

/// Where a kernel's device code came from, for the setup report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Cached,
    Compiled,
}

/// The cache folder, or `None` when the cache is turned off.
pub fn folder() -> Option<PathBuf> {
    match std::env::var_os("WMAP_KERNEL_CACHE") {
        Some(v) if v.is_empty() || v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .map(|base| base.join("wmap").join("kernels")),
    }
}

/// The NVRTC version as `major.minor` (part of every key).
pub fn nvrtc_version() -> Result<String, String> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the out-pointers are valid for the call.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
    Ok(format!("{major}.{minor}"))
}

/// The whole key of one kernel file: everything that decides its device code.
pub fn key(name: &str, source: &str, options: &[String], nvrtc: &str) -> String {
    format!(
        "wmap {}\nnvrtc {nvrtc}\nfile {name}\noptions {}\n{source}",
        env!("CARGO_PKG_VERSION"),
        options.join(" ")
    )
}

/// The CUBIN for `key`: from the cache when there, else from `compile` (stored for next time).
pub fn cubin(
    folder: Option<&Path>,
    key: &str,
    compile: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<(Vec<u8>, Origin), String> {
    let path = folder.map(|f| f.join(format!("{:016x}.cubin", fnv64(key.as_bytes()))));
    if let Some(image) = path.as_deref().and_then(|p| read_entry(p, key)) {
        return Ok((image, Origin::Cached));
    }
    let image = compile()?;
    if let (Some(folder), Some(path)) = (folder, path.as_deref()) {
        // A cache that cannot be written is only slower next time.
        let _ = write_entry(folder, path, key, &image);
    }
    Ok((image, Origin::Compiled))
}

/// An entry's image when the file holds exactly `key` and an intact image.
fn read_entry(path: &Path, key: &str) -> Option<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() || meta.len() > MAX_ENTRY {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(MAGIC)?;
    let (key_len, rest) = take_u64(rest)?;
    let key_len = usize::try_from(key_len).ok()?;
    let (stored_key, rest) = (rest.get(..key_len)?, rest.get(key_len..)?);
    let (sum, image) = take_u64(rest)?;
    (stored_key == key.as_bytes() && sum == fnv64(image) && !image.is_empty())
        .then(|| image.to_vec())
}

fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let head: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some((u64::from_le_bytes(head), &b[8..]))
}

/// Writes an entry beside its final name, then renames it into place. Only ever removes
/// the temporary file it created itself, and only replaces a file at the entry's name
/// that is an entry (our magic): anything else there is left alone and nothing is cached.
fn write_entry(folder: &Path, path: &Path, key: &str, image: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    if !replaceable(path) {
        return Err(std::io::ErrorKind::AlreadyExists.into());
    }
    let tmp = folder.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    // `create_new`: a file already at `tmp` is not ours, so it is neither used nor removed.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let result = (|| {
        f.write_all(MAGIC)?;
        f.write_all(&(key.len() as u64).to_le_bytes())?;
        f.write_all(key.as_bytes())?;
        f.write_all(&fnv64(image).to_le_bytes())?;
        f.write_all(image)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Nothing at `path`, or a regular file that starts as an entry does.
fn replaceable(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(m) if m.file_type().is_file() => {
            let mut head = [0u8; 8];
            std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .is_ok()
                && &head == MAGIC
        }
        Ok(_) => false,
    }
}

/// FNV-1a, 64 bits: names entries and checks images (the key itself is compared whole).
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Compiles `source` to a CUBIN for the real architecture named in `options`.
pub fn compile_cubin(name: &str, source: &str, options: &[String]) -> Result<Vec<u8>, String> {
    let src = CString::new(source).map_err(|_| format!("{name}: NUL byte in the source"))?;
    let cname = CString::new(name).map_err(|_| format!("{name}: NUL byte in the name"))?;
    let opts = options
        .iter()
        .map(|o| CString::new(o.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{name}: NUL byte in an option"))?;
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: `src`, `cname`, `opts` outlive the program, which is destroyed below on every path.
    unsafe {
        let null = std::ptr::null();
        sys::nvrtcCreateProgram(&mut prog, src.as_ptr(), cname.as_ptr(), 0, null, null)
            .result()
            .map_err(|e| format!("{name}: nvrtcCreateProgram: {e:?}"))?;
        let out = compile_program(prog, name, &ptrs);
        let _ = sys::nvrtcDestroyProgram(&mut prog);
        out
    }
}

/// # Safety
/// `prog` must be a live NVRTC program.
unsafe fn compile_program(
    prog: sys::nvrtcProgram,
    name: &str,
    opts: &[*const c_char],
) -> Result<Vec<u8>, String> {
    let n = c_int::try_from(opts.len()).map_err(|_| "too many NVRTC options".to_string())?;
    if let Err(e) = sys::nvrtcCompileProgram(prog, n, opts.as_ptr()).result() {
        return Err(format!("{name}: {e:?}\n{}", program_log(prog)));
    }
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(prog, &mut size)
        .result()
        .map_err(|e| format!("{name}: nvrtcGetCUBINSize: {e:?}"))?;
    let mut image = vec![0u8; size];
    sys::nvrtcGetCUBIN(prog, image.as_mut_ptr().cast())
        .result()
        .map_err(|e| format!("{name}: nvrtcGetCUBIN: {e:?}"))?;
    Ok(image)
}

/// # Safety
/// `prog` must be a live NVRTC program.
unsafe fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    if sys::nvrtcGetProgramLogSize(prog, &mut size)
        .result()
        .is_err()
        || size == 0
    {
        return String::new();
    }
    let mut log = vec![0u8; size];
    if sys::nvrtcGetProgramLog(prog, log.as_mut_ptr().cast())
        .result()
        .is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(log.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wmap-kcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn an_entry_is_reused_only_for_its_exact_key() {
        let dir = scratch("key");
        let compiled = |b: u8| move || Ok::<_, String>(vec![b; 100]);
        assert_eq!(
            cubin(Some(&dir), "k1", compiled(1)).unwrap(),
            (vec![1; 100], Origin::Compiled)
        );
        assert_eq!(
            cubin(Some(&dir), "k1", compiled(2)).unwrap(),
            (vec![1; 100], Origin::Cached)
        );
        assert_eq!(
            cubin(Some(&dir), "k2", compiled(3)).unwrap(),
            (vec![3; 100], Origin::Compiled)
        );
        // Another key stored under k1's file name (a collision) is a miss, then rewritten.
        let p = dir.join(format!("{:016x}.cubin", fnv64(b"k1")));
        std::fs::copy(dir.join(format!("{:016x}.cubin", fnv64(b"k2"))), &p).unwrap();
        assert_eq!(
            cubin(Some(&dir), "k1", compiled(4)).unwrap(),
            (vec![4; 100], Origin::Compiled)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_truncated_or_special_entries_are_misses() {
        let dir = scratch("bad");
        let p = dir.join(format!("{:016x}.cubin", fnv64(b"k")));
        cubin(Some(&dir), "k", || Ok(vec![7; 64])).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(
            cubin(Some(&dir), "k", || Ok(vec![8; 64])).unwrap().1,
            Origin::Compiled
        );
        std::fs::write(&p, &bytes[..20]).unwrap();
        assert_eq!(
            cubin(Some(&dir), "k", || Ok(vec![9; 64])).unwrap().1,
            Origin::Compiled
        );
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        assert_eq!(
            cubin(Some(&dir), "k", || Ok(vec![9; 64])).unwrap(),
            (vec![9; 64], Origin::Compiled)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_not_written_by_the_cache_are_never_replaced_or_removed() {
        let dir = scratch("foreign");
        std::fs::create_dir_all(&dir).unwrap();
        let entry = dir.join(format!("{:016x}.cubin", fnv64(b"k")));
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            entry.file_name().unwrap().to_str().unwrap(),
            std::process::id()
        ));
        std::fs::write(&entry, b"a user's file").unwrap();
        assert_eq!(
            cubin(Some(&dir), "k", || Ok(vec![1])).unwrap().1,
            Origin::Compiled
        );
        assert_eq!(std::fs::read(&entry).unwrap(), b"a user's file");
        std::fs::remove_file(&entry).unwrap();
        std::fs::write(&tmp, b"not ours either").unwrap();
        assert_eq!(
            cubin(Some(&dir), "k", || Ok(vec![1])).unwrap().1,
            Origin::Compiled
        );
        assert_eq!(std::fs::read(&tmp).unwrap(), b"not ours either");
        assert!(!entry.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_folder_only_compiles() {
        // A regular file where the folder should be: every write fails, every call compiles.
        let file = scratch("file");
        std::fs::write(&file, b"not a folder").unwrap();
        for _ in 0..2 {
            assert_eq!(
                cubin(Some(&file), "k", || Ok(vec![1])).unwrap().1,
                Origin::Compiled
            );
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            cubin(None, "k", || Ok(vec![1])).unwrap().1,
            Origin::Compiled
        );
    }
}
