//! Memory planning for a load: how many bytes one target needs while it is assembled,
//! checked against a budget before anything is allocated.
//!
//! Input: a [`Target`] and its recipe. Output: the bytes its output buffer and its
//! scratch buffers need at peak, or a coded E0515 when that exceeds the budget or 64
//! bits. Reads and dtype conversions stream (no scratch); fuses along an inner dim,
//! slices and transposes materialize their source once. It also allocates the large
//! buffers of a load with their pages populated up front ([`reserve_populated`], [`zeroed`]).

use crate::checkpoint::Dtype;
use crate::diag::{Code, Diagnostic};
use crate::plan::{Recipe, Target};

/// Bytes of `shape` in `dtype`, or `None` past 64 bits.
pub fn bytes_of(shape: &[u64], dtype: Dtype) -> Option<u64> {
    shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
}

/// Scratch bytes a recipe allocates beyond its output while it is filled.
fn scratch(recipe: &Recipe, dtype: Dtype) -> Option<u64> {
    match recipe {
        Recipe::Read { .. } | Recipe::Window { .. } | Recipe::Tied { .. } => Some(0),
        Recipe::Reshape { source, .. } => scratch(source, dtype),
        Recipe::Stack { parts } | Recipe::Fuse { dim: 0, parts } => parts
            .iter()
            .try_fold(0u64, |acc, p| Some(acc.max(scratch(p, dtype)?))),
        // Every part is materialized, then interleaved.
        Recipe::Fuse { parts, .. } => parts.iter().try_fold(0u64, |acc, p| {
            acc.checked_add(bytes_of(&p.shape(), dtype)?)?
                .checked_add(scratch(p, dtype)?)
        }),
        // The codes (a byte each) and the scales are read whole; the scales are widened
        // to f32 and rows go through f32 (at most 4 bytes per code in flight).
        Recipe::Fp8Blocks {
            weight, scale_inv, ..
        } => {
            let codes = bytes_of(&weight.shape(), Dtype::U8)?;
            let scales = bytes_of(&scale_inv.shape(), Dtype::F32)?;
            codes.checked_mul(5)?.checked_add(scales.checked_mul(2)?)
        }
        // The codes and companions are read whole; the values go through f32 and its
        // bytes (8 bytes per element), beside the absmax and its codes.
        Recipe::Bnb4 { shape, .. } | Recipe::Mxfp4 { shape, .. } | Recipe::Nvfp4 { shape, .. } => {
            let f32s = bytes_of(shape, Dtype::F32)?;
            f32s.checked_mul(3)
        }
        Recipe::Slice { source, .. } | Recipe::Transpose { source, .. } => {
            bytes_of(&source.shape(), dtype)?.checked_add(scratch(source, dtype)?)
        }
    }
}

/// The peak bytes assembling `t` needs, refused (E0515) above `budget`.
pub fn check_target(t: &Target, budget: u64) -> Result<usize, Diagnostic> {
    let out = bytes_of(&t.shape, t.dtype);
    let peak = out.and_then(|o| o.checked_add(scratch(&t.recipe, t.dtype)?));
    match (out, peak) {
        (Some(out), Some(peak)) if peak <= budget => usize::try_from(out)
            .map_err(|_| too_large(&t.name, format!("{out} bytes do not fit the address space"))),
        // The budget is left out of the message: by default it is this machine's
        // memory, and the same checkpoint should read the same everywhere.
        (_, Some(peak)) => Err(too_large(
            &t.name,
            format!("{peak} bytes to assemble, more than the memory budget of this load (physical memory unless set)"),
        )),
        _ => Err(too_large(&t.name, "more than 2^64 bytes".into())),
    }
}

/// E0515 for target `name`.
pub fn too_large(name: &str, what: String) -> Diagnostic {
    Diagnostic::new(Code::E0515, format!("target `{name}` needs {what}"))
        .with_note("the load stops before allocating it")
}

/// A zeroed buffer of `n` bytes, or E0515 when the allocator refuses.
pub fn try_alloc(n: usize, name: &str) -> Result<Vec<u8>, Diagnostic> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| {
        too_large(
            name,
            format!("a {n}-byte buffer, which cannot be allocated: {e}"),
        )
    })?;
    v.resize(n, 0);
    Ok(v)
}

/// Physical memory from `/proc/meminfo` (`MemTotal`), the default budget of a load;
/// `u64::MAX` where it cannot be read, leaving the allocator to refuse.
pub fn physical_memory() -> u64 {
    let Ok(bytes) = crate::source::read_capped(std::path::Path::new("/proc/meminfo"), 1 << 20)
    else {
        return u64::MAX;
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .find_map(|l| {
            let kib = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok()?.checked_mul(1024)
        })
        .unwrap_or(u64::MAX)
}

/// Reservations at least this large are populated up front by [`reserve_populated`].
const POPULATE_FROM: usize = 1 << 20;

/// Reserves room for `additional` more bytes in `buf` and, for a large reservation, has
/// the kernel back the spare capacity with pages in one pass (`MADV_POPULATE_WRITE`,
/// Linux 5.14+). Faulting a fresh buffer in one 4 KiB page at a time as it is first
/// written cost about half again as much on the bench VM (128 MiB: 100 ms against 65 ms),
/// and was a third of a CPU `load --quant nf4`, since the tensors kept in full precision
/// are fresh memory. Where the call is refused or unknown, pages fault in as before.
pub fn reserve_populated(
    buf: &mut Vec<u8>,
    additional: usize,
) -> Result<(), std::collections::TryReserveError> {
    buf.try_reserve_exact(additional)?;
    let spare = buf.spare_capacity_mut();
    populate(spare.as_mut_ptr() as usize, spare.len());
    Ok(())
}

/// `n` zero bytes with their pages populated up front (see [`reserve_populated`]), or
/// `None` when the allocator refuses. They come from the allocator's zeroed allocation:
/// a large one is fresh pages from the kernel, zero already, so no byte is written
/// twice (zeroing the populated pages again was 5 % of a plain CPU load).
pub fn try_zeroed(n: usize) -> Option<Vec<u8>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(n).ok()?;
    // SAFETY: `layout` has a non-zero size (n > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` was allocated by the global allocator with `layout` (n bytes,
    // alignment 1, as a Vec<u8> of capacity n has), and all n bytes are initialized
    // (zero); the Vec takes sole ownership of it.
    let v = unsafe { Vec::from_raw_parts(ptr, n, n) };
    populate(v.as_ptr() as usize, n);
    Some(v)
}

/// `n` zero bytes, populated up front ([`try_zeroed`]). Aborts, as `vec!` does, when the
/// allocation fails.
pub fn zeroed(n: usize) -> Vec<u8> {
    try_zeroed(n).unwrap_or_else(|| match std::alloc::Layout::array::<u8>(n) {
        Ok(layout) => std::alloc::handle_alloc_error(layout),
        Err(_) => panic!("{n} bytes do not fit the address space"),
    })
}

/// Has the kernel back the whole pages of `len` bytes from address `start` with
/// writable pages now, when there are at least [`POPULATE_FROM`] of them.
#[cfg(target_os = "linux")]
fn populate(start: usize, len: usize) {
    const PAGE: usize = 4096;
    if len < POPULATE_FROM {
        return;
    }
    let (first, end) = (start.next_multiple_of(PAGE), (start + len) / PAGE * PAGE);
    if end > first {
        // SAFETY: `first..end` lies inside one live allocation that the caller owns
        // exclusively (a Vec's bytes or spare capacity). MADV_POPULATE_WRITE faults
        // those pages in writable exactly as a write would and changes no byte. It only
        // advises: on a kernel with larger pages or without the flag it fails with
        // EINVAL, which leaves the pages to fault in on first write, so the result is
        // ignored.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                end - first,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }
}

#[cfg(not(target_os = "linux"))]
fn populate(_start: usize, _len: usize) {}

/// Faults fresh memory in on up to 16 threads by writing one byte per page (zero, which it
/// already holds): the kernel zeroes each new page, which one thread does at a few GB/s.
pub fn touch_pages(host: &mut [u8]) {
    const PAGE: usize = 4096;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
    if host.len() < (64 << 20) || threads < 2 {
        return;
    }
    let chunk = host.len().div_ceil(threads).div_ceil(PAGE) * PAGE;
    std::thread::scope(|s| {
        for part in host.chunks_mut(chunk) {
            s.spawn(move || {
                for b in part.iter_mut().step_by(PAGE) {
                    // A volatile write: the compiler may not drop a store of the value the
                    // memory already holds, and faulting the page in is the point.
                    // SAFETY: `b` is a valid, exclusive reference into `part`.
                    unsafe { std::ptr::write_volatile(b, 0) };
                }
            });
        }
    });
}
