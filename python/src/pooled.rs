//! CUDA builds only: a pooled bf16 buffer of the GPU weights manager, handed to a
//! consumer (torch) through DLPack without a copy, with the stream ordering both ways.
//!
//! Input: a [`DeviceView`] that `DeviceWeights::get` just dequantized into, on wmap's
//! compute stream. Output: a [`Tensor`] whose owner is a [`Pooled`]: the view stays alive
//! (and out of the pool) while any array made from it lives.
//! Invariants: (1) a consumer's stream reads the bytes only after wmap's dequantize:
//! each `__dlpack__` makes the consumer's stream wait for an event recorded after it;
//! (2) the buffer is written again only after the consumers' work queued on it: when the
//! last array is gone, an event recorded on each consumer stream is made a dependency of
//! wmap's compute stream, the only stream that writes pooled buffers, before the buffer
//! returns to the pool. Neither blocks the host.

use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaEvent, DevicePtr};

use crate::dlpack::{Dtype, Owner, StreamSync, Tensor};
use wmap::cuda::weights::DeviceView;
use wmap::cuda::Gpu;

/// A view handed out, the event that says its bytes are written, and the streams that
/// were given them.
pub struct Pooled {
    gpu: Arc<Gpu>,
    view: Option<DeviceView>,
    written: CudaEvent,
    consumers: Mutex<Vec<usize>>,
}

impl Pooled {
    /// Records, on wmap's compute stream, that `view`'s dequantize has been queued.
    pub fn new(gpu: Arc<Gpu>, view: DeviceView) -> Result<Arc<Pooled>, wmap::cuda::Error> {
        let written = gpu
            .stream
            .record_event(None)
            .map_err(|e| wmap::cuda::Error::Call(format!("recording an event: {e:?}")))?;
        Ok(Arc::new(Pooled {
            gpu,
            view: Some(view),
            written,
            consumers: Mutex::new(Vec::new()),
        }))
    }

    /// The view as a bf16 device tensor that keeps this owner alive; `None` when the view
    /// has no buffer (never: `get` always fills one).
    pub fn tensor(self: Arc<Self>, ordinal: usize) -> Option<Tensor> {
        let (ptr, shape) = {
            let view = self.view.as_ref()?;
            let data = view.data.as_ref()?;
            let (ptr, _record) = data.device_ptr(&self.gpu.stream);
            (ptr, view.shape.clone())
        };
        let owner: Owner = self.clone();
        Some(Tensor::cuda(owner, ptr, ordinal, Dtype::Bf16, shape).with_sync(self))
    }
}

/// DLPack's stream number as a driver stream handle: 1 and 2 are the driver's own
/// `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` values, anything else a `CUstream`.
fn stream_handle(stream: usize) -> sys::CUstream {
    stream as sys::CUstream
}

impl StreamSync for Pooled {
    fn consumer(&self, stream: usize) -> Result<(), String> {
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(|e| format!("{e:?}"))?;
        // SAFETY: the consumer's stream is alive while it asks for the capsule (DLPack's
        // contract), and `written` lives as long as `self`.
        unsafe {
            cudarc::driver::result::stream::wait_event(
                stream_handle(stream),
                self.written.cu_event(),
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| format!("making the consumer's stream wait: {e:?}"))?;
        let mut c = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        if !c.contains(&stream) {
            c.push(stream);
        }
        Ok(())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let consumers = std::mem::take(self.consumers.get_mut().unwrap_or_else(|p| p.into_inner()));
        for stream in consumers {
            // A failure here leaves no way to order the reuse; waiting for the whole
            // device is the safe fallback.
            if self.after_consumer(stream).is_err() {
                let _ = self.gpu.ctx.synchronize();
            }
        }
        // Back to the pool only now: later writes to it queue behind the waits above.
        drop(self.view.take());
    }
}

impl Pooled {
    /// Makes wmap's compute stream wait for the work queued on `stream` so far.
    fn after_consumer(&self, stream: usize) -> Result<(), cudarc::driver::DriverError> {
        let done = self.gpu.ctx.new_event(None)?;
        // SAFETY: a consumer stream outlives the arrays made on it (torch never destroys
        // its streams while tensors it queued work for are alive), and `done` is alive.
        unsafe { cudarc::driver::result::event::record(done.cu_event(), stream_handle(stream)) }?;
        self.gpu.stream.wait(&done)
    }
}
