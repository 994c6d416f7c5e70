//! The weight manager on the GPU: resident tensors from the GPU loader, experts in their
//! offload groups' page-locked host memory; `get(name)` brings a group in if needed and
//! dequantizes into a pooled bf16 device buffer (same-shape buffers are reused).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::ops::Range;

use cudarc::driver::{CudaSlice, DevicePtr};

use super::device::DeviceQuantized;
use super::loader::{DeviceStore, DeviceTensor};
use super::offload::CudaBackend;
use super::{Gpu, GpuResult, Parts};
use crate::checkpoint::Dtype;
use crate::offload::{GroupId, Manager, Policy};
use crate::plan::Plan;
use crate::quant::LeadingSlice;
use crate::weights::{
    full_slice_range, homes, place, Error as WError, Home, Packed, Placeable, Placement, QuantDesc,
    QuantLayout,
};

type Pool = Arc<Mutex<BTreeMap<Vec<u64>, Vec<CudaSlice<u16>>>>>;

/// A dequantized bf16 tensor on the device; its buffer returns to the pool when dropped.
pub struct DeviceView {
    pub shape: Vec<u64>,
    pub data: Option<CudaSlice<u16>>,
    pool: Pool,
}

impl Drop for DeviceView {
    fn drop(&mut self) {
        if let (Some(d), Ok(mut p)) = (self.data.take(), self.pool.lock()) {
            p.entry(self.shape.clone()).or_default().push(d);
        }
    }
}

pub struct DeviceWeights {
    gpu: Arc<Gpu>,
    pub offload: Manager<CudaBackend>,
    homes: BTreeMap<String, Home<DeviceTensor>>,
    pool: Pool,
    /// Buffers taken from the pool / allocated.
    pub reused: u64,
    pub allocated: u64,
}

impl DeviceWeights {
    /// Moves the targets with an offload group from the GPU store into page-locked host
    /// groups (experts one per (layer, expert)); everything else stays on the device. The
    /// pool is page-locked first and filled by DMA from the device on the load's stream,
    /// piece by piece at each layout offset, with one wait at the end.
    pub fn new(
        gpu: Arc<Gpu>,
        plan: &Plan,
        store: DeviceStore,
        budget: u64,
        policy: Policy,
    ) -> GpuResult<DeviceWeights> {
        let tensors: BTreeMap<String, OnDevice> = store
            .tensors
            .into_iter()
            .map(|(k, t)| (k, OnDevice { gpu: &gpu, t }))
            .collect();
        let Placement {
            offload,
            resident,
            offloaded,
        } = {
            // The copies out read what the compute stream wrote.
            gpu.copies_after_compute()?;
            place(CudaBackend::new(gpu.clone()), plan, tensors, budget, policy)?
        };
        // The copies write the pool; nothing reads it before they land (the device pieces'
        // frees are ordered after them: see `OnDevice::write`).
        gpu.copy_stream
            .synchronize()
            .map_err(|e| format!("device to host: {e:?}"))?;
        let homes = homes(resident.into_iter().map(|(k, d)| (k, d.t)), offloaded);
        Ok(DeviceWeights {
            gpu,
            offload,
            homes,
            pool: Arc::default(),
            reused: 0,
            allocated: 0,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.homes.keys().map(String::as_str)
    }

    pub fn prefetch_group(&mut self, g: GroupId) -> GpuResult<bool> {
        Ok(self.offload.prefetch(g)?)
    }

    fn buffer(&mut self, shape: &[u64]) -> GpuResult<CudaSlice<u16>> {
        let n = shape.iter().product::<u64>() as usize;
        let got = self
            .pool
            .lock()
            .ok()
            .and_then(|mut p| p.get_mut(shape).and_then(Vec::pop));
        match got {
            Some(b) => {
                self.reused += 1;
                Ok(b)
            }
            None => {
                self.allocated += 1;
                // SAFETY: every element is written by the dequantize or copy that follows.
                unsafe { self.gpu.stream.alloc::<u16>(n.max(1)) }
                    .map_err(|e| super::Error::Call(format!("device allocation: {e:?}")))
            }
        }
    }

    /// A bf16 view of `name` (or of a slice key, `name[i]`), on the device.
    pub fn get(&mut self, name: &str) -> GpuResult<DeviceView> {
        let shape: Vec<u64> = match self
            .homes
            .get(name)
            .ok_or_else(|| super::Error::UnknownTensor(name.to_string()))?
        {
            Home::Resident(DeviceTensor::Quantized(q)) => q.shape.clone(),
            Home::Resident(DeviceTensor::Full { shape, .. }) => shape.clone(),
            Home::Resident(DeviceTensor::Tied(to)) => return self.get(&to.clone()),
            Home::Offloaded { packed, .. } => packed.shape().to_vec(),
        };
        let mut out = self.buffer(&shape)?;
        let gpu = self.gpu.clone();
        match self
            .homes
            .get(name)
            .ok_or_else(|| super::Error::Internal("vanished".into()))?
        {
            Home::Resident(DeviceTensor::Quantized(q)) => gpu.dequantize(q, &mut out)?,
            Home::Resident(DeviceTensor::Full { dtype, data, .. }) => {
                convert(&gpu, *dtype, &data.as_view(), &mut out)?
            }
            Home::Resident(DeviceTensor::Tied(_)) => unreachable!("handled above"),
            Home::Offloaded {
                group,
                offset,
                packed,
            } => {
                let (g, off, packed) = (*group, *offset, packed.clone());
                let buf = self.offload.acquire(g)?;
                // Released whatever the dequantize says: a failed `get` must not leave the
                // group marked in use (it could never be evicted again).
                let done = dequantize_packed(&gpu, buf.slice(), off, &packed, &shape, &mut out)
                    .and_then(|()| buf.read_on_compute().map_err(Into::into));
                self.offload.release(g);
                done?;
            }
        }
        Ok(DeviceView {
            shape,
            data: Some(out),
            pool: self.pool.clone(),
        })
    }
}

/// Dequantizes (or converts) one offloaded tensor, packed at `off` in its group's device
/// buffer, into `out`.
fn dequantize_packed(
    gpu: &Gpu,
    buf: &CudaSlice<u8>,
    off: usize,
    packed: &Packed,
    shape: &[u64],
    out: &mut CudaSlice<u16>,
) -> GpuResult<()> {
    let bytes = off
        .checked_add(packed.len())
        .and_then(|end| buf.try_slice(off..end))
        .ok_or_else(|| super::Error::Internal("a packed tensor overruns its group".into()))?;
    match (packed.format(), packed.layout()) {
        (Some(format), Some(l)) => {
            let f32_view = |at: usize, len: usize| {
                // SAFETY: the layout puts f32 pieces at 4-byte aligned offsets
                // of a buffer that starts aligned.
                unsafe { bytes.slice(at..at + 4 * len).transmute::<f32>(len) }
            };
            let parts = Parts {
                format,
                shape,
                data: bytes.slice(..l.data_len),
                scales_f32: (l.scales_f32 > 0)
                    .then(|| f32_view(l.scales, l.scales_f32))
                    .flatten(),
                scales_u8: (l.scales_u8 > 0).then(|| bytes.slice(l.scales..l.scales + l.scales_u8)),
                nested: l.nested.and_then(|at| f32_view(at, l.nested_len)),
                offset: l.offset.and_then(|at| f32_view(at, 1)),
                tensor_scale: l.tensor_scale.and_then(|at| f32_view(at, 1)),
            };
            gpu.dequantize_parts(&parts, out)?;
        }
        _ => {
            let dtype = packed.full_dtype().unwrap_or(Dtype::Bf16);
            convert(gpu, dtype, &bytes, out)?;
        }
    }
    Ok(())
}

/// A full-precision tensor to bf16 on the device.
fn convert(
    gpu: &Gpu,
    dtype: Dtype,
    src: &cudarc::driver::CudaView<'_, u8>,
    out: &mut CudaSlice<u16>,
) -> GpuResult<()> {
    let code: i32 = match dtype {
        Dtype::F32 => 0,
        Dtype::F16 => 1,
        Dtype::Bf16 => 2,
        other => {
            return Err(super::Error::Unsupported(format!(
                "cannot view {} as bf16",
                other.name()
            )))
        }
    };
    gpu.to_bf16(src, code, out)
}

/// A device tensor as [`place`] sees it: its layout from its description, and its pieces
/// copied into the page-locked pool by asynchronous DMA on the load's stream.
struct OnDevice<'g> {
    gpu: &'g Arc<Gpu>,
    t: DeviceTensor,
}

impl OnDevice<'_> {
    fn desc(q: &DeviceQuantized) -> QuantDesc<'_> {
        let (f32_scales, scales_len) = match (&q.scales_f32, &q.scales_u8) {
            (Some(f), _) => (true, f.len()),
            (None, Some(u)) => (false, u.len()),
            (None, None) => (false, 0),
        };
        QuantDesc {
            format: q.format,
            shape: &q.shape,
            scale_shape: &q.scale_shape,
            data_len: q.data.len(),
            f32_scales,
            scales_len,
            nested_absmax: q.nested_absmax.as_ref().map(CudaSlice::len),
            tensor_scale: q.tensor_scale.is_some(),
        }
    }

    /// Enqueues a copy of elements `range` of `src` into `out` (exactly their bytes).
    fn copy<T>(
        &self,
        src: &CudaSlice<T>,
        range: Range<usize>,
        out: &mut [u8],
    ) -> Result<(), WError> {
        let size = std::mem::size_of::<T>();
        let bytes = range.len().checked_mul(size);
        if range.end > src.len() || bytes != Some(out.len()) {
            return Err(WError::Internal(
                "a device piece does not fit its packed layout",
            ));
        }
        if out.is_empty() {
            return Ok(());
        }
        // On the copy stream: the backend drains it before it unregisters the pool, so even
        // a placement that fails halfway never frees pages a copy is still writing.
        let stream = &self.gpu.copy_stream;
        let (base, _read) = src.device_ptr(stream);
        let at = base + (range.start * size) as u64;
        // SAFETY: `out` lies in the offload pool, page-locked by `prepare_host` before the
        // fill and owned by the manager, whose backend drains the copy stream before the
        // pool goes; `DeviceWeights::new` waits for the stream before the pool is read.
        // `at..at + out.len()` lies within `src`.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(out, at, stream.cu_stream()) }.map_err(
            |e| {
                WError::Offload(crate::offload::Error::Copy(format!(
                    "device to host: {e:?}"
                )))
            },
        )
    }

    fn write_quantized(
        &self,
        q: &DeviceQuantized,
        l: &QuantLayout,
        slice: Option<&LeadingSlice>,
        out: &mut [u8],
    ) -> Result<(), WError> {
        let too_small = WError::Internal("a packed layout overruns its storage");
        let data = slice.map_or(0..q.data.len(), |r| r.data.clone());
        self.copy(
            &q.data,
            data,
            out.get_mut(..l.data_len).ok_or(too_small.clone())?,
        )?;
        if let Some(s) = &q.scales_f32 {
            let r = slice.map_or(0..s.len(), |r| r.scales.clone());
            let o = out.get_mut(l.scales..l.scales + 4 * l.scales_f32);
            self.copy(s, r, o.ok_or(too_small.clone())?)?;
        } else if let Some(s) = &q.scales_u8 {
            let r = slice.map_or(0..s.len(), |r| r.scales.clone());
            let o = out.get_mut(l.scales..l.scales + l.scales_u8);
            self.copy(s, r, o.ok_or(too_small.clone())?)?;
        }
        // Double quant's nested scales and offset are tensor-wide: a slice carries none.
        let whole = slice.is_none();
        let tensor_wide = [
            (
                q.nested_absmax.as_ref().filter(|_| whole),
                l.nested,
                l.nested_len,
            ),
            (q.offset.as_ref().filter(|_| whole), l.offset, 1),
            (q.tensor_scale.as_ref(), l.tensor_scale, 1),
        ];
        for (src, at, n) in tensor_wide {
            if let (Some(src), Some(at)) = (src, at) {
                self.copy(
                    src,
                    0..n,
                    out.get_mut(at..at + 4 * n).ok_or(too_small.clone())?,
                )?;
            }
        }
        Ok(())
    }
}

impl Placeable for OnDevice<'_> {
    fn packed(&self, slice: Option<usize>) -> Option<Packed> {
        match (&self.t, slice) {
            (DeviceTensor::Quantized(q), None) => Some(Packed::quantized(Self::desc(q))),
            (DeviceTensor::Quantized(q), Some(i)) => {
                Some(Packed::quantized_slice(Self::desc(q), i)?.0)
            }
            (DeviceTensor::Full { dtype, shape, data }, None) => {
                Some(Packed::full(*dtype, shape.clone(), data.len()))
            }
            (DeviceTensor::Full { dtype, shape, data }, Some(i)) => {
                let per = full_slice_range(shape, data.len(), i)?;
                Some(Packed::full(*dtype, shape.get(1..)?.to_vec(), per.len()))
            }
            (DeviceTensor::Tied(_), _) => None,
        }
    }

    fn write(&self, packed: &Packed, slice: Option<usize>, out: &mut [u8]) -> Result<(), WError> {
        self.write_pieces(packed, slice, out)?;
        // `place` frees a tensor once its last piece is written; the free is on the compute
        // stream, which must not hand the memory on before these copies have read it.
        self.gpu.compute_after_copies().map_err(|e| {
            WError::Offload(crate::offload::Error::Copy(format!("device to host: {e}")))
        })
    }
}

impl OnDevice<'_> {
    fn write_pieces(
        &self,
        packed: &Packed,
        slice: Option<usize>,
        out: &mut [u8],
    ) -> Result<(), WError> {
        let mismatch = WError::Internal("a device tensor does not match its packed layout");
        match (&self.t, packed.layout()) {
            (DeviceTensor::Quantized(q), Some(l)) => {
                let r = match slice {
                    Some(i) => Some(Packed::quantized_slice(Self::desc(q), i).ok_or(mismatch)?.1),
                    None => None,
                };
                self.write_quantized(q, &l, r.as_ref(), out)
            }
            (DeviceTensor::Full { shape, data, .. }, None) => {
                let range = match slice {
                    Some(i) => full_slice_range(shape, data.len(), i).ok_or(mismatch)?,
                    None => 0..data.len(),
                };
                self.copy(data, range, out)
            }
            _ => Err(mismatch),
        }
    }
}

/// Read-only accessors for a runtime that drives the manager (the Python store, the CLI's
/// report): where a name lives, and what the groups are.
impl DeviceWeights {
    /// The offload group `name` (a tensor or a slice key) lives in; `None` when it is
    /// resident or unknown.
    pub fn group_of(&self, name: &str) -> Option<GroupId> {
        match self.homes.get(name)? {
            Home::Offloaded { group, .. } => Some(*group),
            Home::Resident(_) => None,
        }
    }

    /// A resident device tensor as the GPU loader left it (quantized or full precision;
    /// a tie followed to its target); `None` for an offloaded or unknown name. Homes are
    /// fixed at construction, so the device memory stays put while the manager lives.
    pub fn resident(&self, name: &str) -> Option<&DeviceTensor> {
        match self.homes.get(name)? {
            Home::Resident(DeviceTensor::Tied(to)) => match self.homes.get(to)? {
                Home::Resident(DeviceTensor::Tied(_)) | Home::Offloaded { .. } => None,
                Home::Resident(t) => Some(t),
            },
            Home::Resident(t) => Some(t),
            Home::Offloaded { .. } => None,
        }
    }

    /// The device the manager serves.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}
