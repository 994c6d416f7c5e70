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

/// A copy in flight. It holds the host pool, so the pages it reads outlive the copy even
/// when the manager that owns the pool is dropped first.
pub struct CudaTicket {
    /// Taken by [`Backend::wait`]; a ticket dropped with it unwaited orders the buffer's
    /// free after the copy.
    buffer: Option<CudaSlice<u8>>,
    done: CudaEvent,
    gpu: Arc<Gpu>,
    _pool: Arc<Vec<u8>>,
}

impl Drop for CudaTicket {
    fn drop(&mut self) {
        if self.buffer.is_some() {
            // The buffer is freed on the compute stream, which must not hand its memory
            // on before the copy into it has landed. On failure the stream is drained.
            if self.gpu.stream.wait(&self.done).is_err() {
                let _ = self.gpu.copy_stream.synchronize();
            }
        }
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaSlice<u8>;
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
        // SAFETY: the copy below writes every byte before anything reads the buffer. It is
        // allocated (and will be freed) on the compute stream, after the kernels that read
        // the group's last buffer, and the copy stream waits for them first.
        let mut buffer = unsafe { self.gpu.alloc_for_copies::<u8>(range.len().max(1)) }
            .map_err(|e| Error::Copy(e.to_string()))?;
        {
            let (ptr, _guard) = buffer.device_ptr_mut(s);
            // SAFETY: `host[range]` is registered, page-locked memory that outlives the copy.
            unsafe { cudarc::driver::result::memcpy_htod_async(ptr, &host[range], s.cu_stream()) }
                .map_err(|e| Error::Copy(format!("host-to-device copy: {e:?}")))?;
        }
        let done = s
            .record_event(None)
            .map_err(|e| Error::Copy(format!("{e:?}")))?;
        Ok(CudaTicket {
            buffer: Some(buffer),
            done,
            gpu: self.gpu.clone(),
            _pool: host.clone(),
        })
    }

    fn is_done(&self, t: &mut CudaTicket) -> bool {
        t.done.is_complete()
    }

    fn wait(&self, mut t: CudaTicket) -> Result<CudaSlice<u8>, Error> {
        t.done
            .synchronize()
            .map_err(|e| Error::Copy(format!("{e:?}")))?;
        t.buffer
            .take()
            .ok_or(Error::Internal("a copy's buffer was taken twice"))
    }

    fn len(&self, b: &CudaSlice<u8>) -> usize {
        b.len()
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
