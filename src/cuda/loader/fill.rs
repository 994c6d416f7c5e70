//! Filling the pinned ring from the checkpoint without stopping the load thread.
//!
//! Input: a region of the ring and the checkpoint ranges that belong there. Output: the
//! region's reads running on the rayon pool, and a host function queued on the copy
//! stream that returns once they are all done, so the copy queued after it reads filled
//! bytes. The load thread goes straight on to the next region: the pool's threads stay
//! busy across regions instead of meeting at a barrier at the end of each, and the load
//! thread blocks only when it needs a ring buffer whose last copy has not finished.
//!
//! Invariants: every read is spawned in the load's [`rayon::Scope`], so the checkpoint and
//! the ring outlive it; a read that fails records the first error (the copy then moves
//! whatever bytes are there, and the load returns the error instead of the tensors); a
//! region's host function returns even when a read panics (its count drops on unwind).

use std::sync::{Arc, Condvar, Mutex};

use cudarc::driver::{sys, CudaStream};

use crate::checkpoint::Checkpoint;
use crate::diag::Diagnostic;

/// Reads in flight for one ring region.
struct Region {
    left: Mutex<usize>,
    done: Condvar,
}

impl Region {
    fn finish_one(&self) {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        *left -= 1;
        if *left == 0 {
            self.done.notify_all();
        }
    }

    fn wait(&self) {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        while *left > 0 {
            left = self.done.wait(left).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Drops one from a region's count however the read ends.
struct Finish(Arc<Region>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.finish_one();
    }
}

/// Runs on the driver's callback thread when the copy stream reaches it. It makes no CUDA
/// call (host functions may not).
unsafe extern "C" fn wait_for_region(user: *mut std::ffi::c_void) {
    // SAFETY: `user` is the `Arc<Region>` leaked by `Reads::fill` for this call alone.
    let region = unsafe { Arc::from_raw(user as *const Region) };
    region.wait();
}

/// One positioned read: `len` bytes at `offset` of shard `shard` into `dst`.
pub(super) struct Read {
    pub shard: usize,
    pub offset: u64,
    pub len: usize,
    /// Address inside the ring.
    pub dst: usize,
}

/// The load's asynchronous readers.
pub(super) struct Reads<'a, 'scope> {
    pub scope: &'a rayon::Scope<'scope>,
    pub ckpt: &'scope Checkpoint,
    /// The first read error of the load.
    pub failed: &'scope Mutex<Option<Diagnostic>>,
}

impl Reads<'_, '_> {
    /// The first read error so far, taken out (the load stops there).
    pub fn check(&self) -> Result<(), Diagnostic> {
        match self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts `reads` and queues on `stream` a wait for all of them.
    ///
    /// # Safety
    /// Each read's `dst..dst + len` must lie in page-locked memory that outlives the
    /// scope, no two may overlap, and nothing else may touch those bytes until the
    /// stream has passed the work queued after this call.
    pub unsafe fn fill(&self, reads: Vec<Read>, stream: &CudaStream) -> Result<(), String> {
        if reads.is_empty() {
            return Ok(());
        }
        let region = Arc::new(Region {
            left: Mutex::new(reads.len()),
            done: Condvar::new(),
        });
        for r in reads {
            let finish = Finish(region.clone());
            let (ckpt, failed) = (self.ckpt, self.failed);
            self.scope.spawn(move |_| {
                let _finish = finish;
                // SAFETY: the caller's contract: the bytes are ours alone until the copy
                // queued after the wait, and they outlive the scope this runs in.
                let buf = unsafe { std::slice::from_raw_parts_mut(r.dst as *mut u8, r.len) };
                if let Err(e) = ckpt.read_at(r.shard, r.offset, buf) {
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
            });
        }
        let user = Arc::into_raw(region.clone()) as *mut std::ffi::c_void;
        // SAFETY: the callback takes back the one reference leaked for it.
        let res = unsafe { sys::cuLaunchHostFunc(stream.cu_stream(), Some(wait_for_region), user) };
        if res != sys::CUresult::CUDA_SUCCESS {
            // Not queued: take the reference back and wait here instead.
            // SAFETY: the driver refused the call, so it holds no copy of `user`.
            drop(unsafe { Arc::from_raw(user as *const Region) });
            region.wait();
            return Err(format!("cannot queue a wait for the ring's reads: {res:?}"));
        }
        Ok(())
    }
}
