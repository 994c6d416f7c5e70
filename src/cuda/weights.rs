//! The weight manager on the GPU: resident tensors from the GPU loader, experts in their
//! offload groups' page-locked host memory; `get(name)` brings a group in if needed and
//! dequantizes into a pooled bf16 device buffer (same-shape buffers are reused).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::CudaSlice;

use super::loader::{DeviceStore, DeviceTensor};
use super::offload::CudaBackend;
use super::{Gpu, GpuResult, Parts};
use crate::checkpoint::Dtype;
use crate::offload::{GroupId, Manager, Policy};
use crate::plan::Plan;
use crate::quant::Stored;
use crate::weights::{homes, place, Home};

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
    /// groups (experts one per (layer, expert)); everything else stays on the device.
    pub fn new(
        gpu: Arc<Gpu>,
        plan: &Plan,
        mut store: DeviceStore,
        budget: u64,
        policy: Policy,
    ) -> GpuResult<DeviceWeights> {
        let mut host = BTreeMap::new();
        for t in plan.targets.iter().filter(|t| t.offload.is_some()) {
            let stored = match store.tensors.remove(&t.name) {
                Some(DeviceTensor::Quantized(q)) => Stored::Quantized(q.to_host(&gpu)?),
                Some(DeviceTensor::Full { dtype, shape, data }) => {
                    Stored::Full(crate::load::HostTensor {
                        dtype,
                        shape,
                        data: Arc::new(gpu.stream.clone_dtoh(&data).map_err(|e| format!("{e:?}"))?),
                    })
                }
                _ => continue,
            };
            host.insert(t.name.clone(), stored);
        }
        let p = place(CudaBackend::new(gpu.clone()), plan, host, budget, policy)?;
        Ok(DeviceWeights {
            gpu,
            offload: p.offload,
            homes: homes(store.tensors, p.offloaded),
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
                let bytes = buf.slice(off..off + packed.len());
                match (packed.format(), packed.layout()) {
                    (Some(format), Some(l)) => {
                        let f32_view = |at: usize, len: usize| {
                            // SAFETY: the layout puts f32 pieces at 4-byte aligned offsets
                            // of a buffer that starts aligned.
                            unsafe { bytes.slice(at..at + 4 * len).transmute::<f32>(len) }
                        };
                        let parts = Parts {
                            format,
                            shape: &shape,
                            data: bytes.slice(..l.data_len),
                            scales_f32: (l.scales_f32 > 0)
                                .then(|| f32_view(l.scales, l.scales_f32))
                                .flatten(),
                            scales_u8: (l.scales_u8 > 0)
                                .then(|| bytes.slice(l.scales..l.scales + l.scales_u8)),
                            nested: l.nested.and_then(|at| f32_view(at, l.nested_len)),
                            offset: l.offset.and_then(|at| f32_view(at, 1)),
                            tensor_scale: l.tensor_scale.and_then(|at| f32_view(at, 1)),
                        };
                        gpu.dequantize_parts(&parts, &mut out)?;
                    }
                    _ => {
                        let dtype = packed.full_dtype().unwrap_or(Dtype::Bf16);
                        convert(&gpu, dtype, &bytes, &mut out)?;
                    }
                }
                self.offload.release(g);
            }
        }
        Ok(DeviceView {
            shape,
            data: Some(out),
            pool: self.pool.clone(),
        })
    }
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
