//! The staging ring's host memory: page-aligned, faulted in on several threads (which
//! needs no device, so it runs while the context is being created), then page-locked with
//! `cuMemHostRegister` once the context exists.
//!
//! `cuMemHostAlloc` did both steps after the context was up, on one thread: 768 MiB took
//! 0.25–0.4 s of every process's setup on an H200 host (2026-12-02, a 2×16 MiB ring gave
//! 0.24 s of setup where 3×256 MiB gave 0.46–0.64 s). Registering pages already present
//! is the cheap part (present page-cache pages registered at 34–53 GB/s there). The
//! memory is mapped anonymously rather than taken from the allocator, whose page-aligned
//! zeroed allocations are zeroed with one `memset` on one thread.

use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};

use crate::cuda::{Error, GpuResult};

const PAGE: usize = 4096;

/// Page-aligned host memory, page-locked once [`RingMemory::register`] succeeds.
pub struct RingMemory {
    ptr: NonNull<u8>,
    /// Mapped bytes: a whole number of pages.
    size: usize,
    /// The context the pages are registered with (unregistered on drop).
    registered: Option<Arc<CudaContext>>,
}

// SAFETY: the memory is owned by this value alone; it is plain bytes.
unsafe impl Send for RingMemory {}

impl RingMemory {
    /// `len` zero bytes (at least one page), faulted in.
    pub fn new(len: usize) -> GpuResult<RingMemory> {
        let size = len
            .max(1)
            .checked_next_multiple_of(PAGE)
            .ok_or_else(|| Error::Unsupported(format!("a staging ring of {len} bytes")))?;
        // SAFETY: a fresh private anonymous mapping; the kernel hands it out zeroed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let ptr = (p != libc::MAP_FAILED)
            .then(|| NonNull::new(p.cast::<u8>()))
            .flatten()
            .ok_or_else(|| Error::Call(format!("cannot map {size} bytes of staging")))?;
        let mut ring = RingMemory {
            ptr,
            size,
            registered: None,
        };
        crate::load::touch_pages(ring.as_mut_slice());
        Ok(ring)
    }

    /// Page-locks the memory for `ctx`'s device copies.
    pub fn register(&mut self, ctx: &Arc<CudaContext>) -> GpuResult<()> {
        if self.registered.is_some() {
            return Ok(());
        }
        ctx.bind_to_thread()
            .map_err(|e| format!("cannot bind the context: {e:?}"))?;
        // SAFETY: registers memory this value owns for its whole life; it is unregistered
        // in `drop` before it is freed.
        let res = unsafe { sys::cuMemHostRegister_v2(self.ptr.as_ptr().cast(), self.size, 0) };
        if res != sys::CUresult::CUDA_SUCCESS {
            return Err(Error::Call(format!(
                "cannot page-lock {} bytes of staging: {res:?}",
                self.size
            )));
        }
        self.registered = Some(ctx.clone());
        Ok(())
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `size` initialized (zeroed) bytes, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) }
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        if let Some(ctx) = self.registered.take() {
            // SAFETY: the pages were registered in `register`; the staging ring that owns
            // this memory waits for every copy out of it before dropping it.
            unsafe {
                if ctx.bind_to_thread().is_ok() {
                    let _ = sys::cuMemHostUnregister(self.ptr.as_ptr().cast());
                }
            }
        }
        // SAFETY: mapped in `new` with this size; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.size) };
    }
}
