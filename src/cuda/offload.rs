//! The offload manager's CUDA backend: the host pool is page-locked once
//! (`cuMemHostRegister`), groups are copied on the copy stream into device buffers, and an
//! event per copy says when it has landed.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaEvent, CudaSlice, DevicePtrMut};

use super::Gpu;
use crate::offload::{Backend, Error};

pub struct CudaBackend {
    gpu: Arc<Gpu>,
    /// The registered host pool (address, bytes), registered on the first copy.
    registered: Mutex<Option<(usize, usize)>>,
}

impl CudaBackend {
    pub fn new(gpu: Arc<Gpu>) -> CudaBackend {
        CudaBackend {
            gpu,
            registered: Mutex::new(None),
        }
    }

    fn register(&self, host: &Arc<Vec<u8>>) -> Result<(), Error> {
        let mut r = self
            .registered
            .lock()
            .map_err(|_| Error::Internal("the pinned-pool lock is poisoned"))?;
        let key = (host.as_ptr() as usize, host.len());
        if *r == Some(key) || host.is_empty() {
            return Ok(());
        }
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(|e| Error::Copy(format!("{e:?}")))?;
        // SAFETY: registers the pool's pages for DMA. The pool is never freed or resized
        // while the manager (which owns it) lives, and is only read by the copies.
        let res = unsafe {
            cudarc::driver::sys::cuMemHostRegister_v2(host.as_ptr() as *mut _, host.len(), 0)
        };
        if res != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            return Err(Error::Copy(format!(
                "cannot pin the {}-byte host pool: {res:?}",
                host.len()
            )));
        }
        *r = Some(key);
        Ok(())
    }
}

/// A group's device buffer. Allocated, and so freed, on the copy stream, which writes it;
/// kernels on the compute stream read it, each reader marks that
/// ([`GroupBuffer::read_on_compute`]), and the free waits for the last of them, so a later
/// copy never gets the memory under a kernel still reading it. The wait is for those kernels
/// only: a prefetch still overlaps whatever else the compute stream runs.
pub struct GroupBuffer {
    slice: CudaSlice<u8>,
    last_read: CudaEvent,
    gpu: Arc<Gpu>,
}

impl GroupBuffer {
    pub fn slice(&self) -> &CudaSlice<u8> {
        &self.slice
    }

    /// Marks the kernels queued on the compute stream so far as readers of this buffer.
    pub fn read_on_compute(&self) -> Result<(), Error> {
        self.last_read
            .record(&self.gpu.stream)
            .map_err(|e| Error::Copy(format!("marking a group's readers: {e:?}")))
    }
}

impl Drop for GroupBuffer {
    fn drop(&mut self) {
        // Before the free (on the copy stream, after this): wait for the readers. A wait
        // on an event never recorded waits for nothing. If the wait cannot be queued, the
        // compute stream is drained instead.
        if self.gpu.copy_stream.wait(&self.last_read).is_err() {
            let _ = self.gpu.stream.synchronize();
        }
    }
}

/// A copy in flight. It holds the host pool, so the pages it reads outlive the copy even
/// when the manager that owns the pool is dropped first. Dropped unwaited, its buffer is
/// freed on the copy stream, after the copy.
pub struct CudaTicket {
    buffer: GroupBuffer,
    done: CudaEvent,
    _pool: Arc<Vec<u8>>,
}

impl Backend for CudaBackend {
    type Buffer = GroupBuffer;
    type Ticket = CudaTicket;

    fn prepare(&self, host: &Arc<Vec<u8>>) -> Result<(), Error> {
        self.register(host)
    }

    fn start_copy(
        &self,
        host: &Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
    ) -> Result<CudaTicket, Error> {
        self.register(host)?;
        let s = &self.gpu.copy_stream;
        let cuda = |what: &'static str| move |e| Error::Copy(format!("{what}: {e:?}"));
        // SAFETY: the copy below writes every byte before anything reads the buffer. The
        // pool gives the copy stream memory only once the work that freed it is done (a
        // group buffer's free waits for its readers; every other buffer is used and freed
        // on the compute stream).
        let mut slice =
            unsafe { s.alloc::<u8>(range.len().max(1)) }.map_err(cuda("device allocation"))?;
        {
            let (ptr, _guard) = slice.device_ptr_mut(s);
            // SAFETY: `host[range]` is registered, page-locked memory that outlives the copy.
            unsafe { cudarc::driver::result::memcpy_htod_async(ptr, &host[range], s.cu_stream()) }
                .map_err(cuda("host-to-device copy"))?;
        }
        let done = s.record_event(None).map_err(cuda("event"))?;
        let last_read = self.gpu.ctx.new_event(None).map_err(cuda("event"))?;
        Ok(CudaTicket {
            buffer: GroupBuffer {
                slice,
                last_read,
                gpu: self.gpu.clone(),
            },
            done,
            _pool: host.clone(),
        })
    }

    fn is_done(&self, t: &mut CudaTicket) -> bool {
        t.done.is_complete()
    }

    fn wait(&self, t: CudaTicket) -> Result<GroupBuffer, Error> {
        t.done
            .synchronize()
            .map_err(|e| Error::Copy(format!("{e:?}")))?;
        Ok(t.buffer)
    }

    fn len(&self, b: &GroupBuffer) -> usize {
        b.slice.len()
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Copies may still be reading the registered pages (a prefetch nobody waited for);
        // unregistering under a running DMA is undefined, so let the copy stream drain first.
        let _ = self.gpu.copy_stream.synchronize();
        if let Ok(Some((ptr, _))) = self.registered.lock().map(|r| *r) {
            // SAFETY: unregisters the pages registered in `register`. The copy stream is
            // idle, and the pool is alive: the manager drops its backend before its host
            // pool, and any ticket still around holds the pool itself.
            unsafe {
                let _ = cudarc::driver::sys::cuMemHostUnregister(ptr as *mut _);
            }
        }
    }
}
