//! The streaming GPU loader: checkpoint bytes → pinned staging → device, quantized there.
//!
//! Reader threads fill a ring of pinned staging buffers (allocated once, see [`Staging`])
//! with positioned reads; a copy stream moves each filled buffer to the device while the
//! readers fill the next; targets marked `quantizable` land in a device scratch buffer
//! and are quantized on the compute stream while the next target is copied. Assembly
//! (fuse on dim 0, stack) happens on the way: each checkpoint tensor is copied to its
//! offset inside the target, so every byte crosses PCIe once. Targets that slice,
//! transpose or convert are assembled by the CPU path into staging first.
//! Device memory in use: the final tensors plus two scratch buffers of the largest
//! quantizable target.

use std::collections::BTreeMap;
use std::time::Instant;

use cudarc::driver::{CudaEvent, CudaSlice, DevicePtrMut, PinnedHostSlice};
use rayon::prelude::*;

use super::{DeviceQuantized, Gpu, GpuResult};
use crate::checkpoint::{Checkpoint, Dtype};
use crate::export;
use crate::plan::{Plan, Recipe, Target};
use crate::quant::Format;

/// A tensor the GPU loader produced.
pub enum DeviceTensor {
    Quantized(Box<DeviceQuantized>),
    /// Full precision, in the target's dtype.
    Full {
        dtype: Dtype,
        shape: Vec<u64>,
        data: CudaSlice<u8>,
    },
    /// The same tensor as another one.
    Tied(String),
}

/// The loaded model: runtime names → device tensors.
pub struct DeviceStore {
    pub tensors: BTreeMap<String, DeviceTensor>,
}

impl DeviceStore {
    /// Follows ties.
    pub fn get(&self, name: &str) -> Option<&DeviceTensor> {
        match self.tensors.get(name)? {
            DeviceTensor::Tied(to) => self.tensors.get(to),
            t => Some(t),
        }
    }

    /// Bytes held on the device (tied tensors once).
    pub fn device_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| match t {
                DeviceTensor::Quantized(q) => q.byte_size(),
                DeviceTensor::Full { data, .. } => data.len() as u64,
                DeviceTensor::Tied(_) => 0,
            })
            .sum()
    }
}

/// Pinned host staging: a ring of buffers, allocated once (pinning is slow) and reused
/// across loads.
pub struct Staging {
    buffers: Vec<PinnedHostSlice<u8>>,
    /// The copy out of each buffer; the buffer is refilled only after it completes.
    in_flight: Vec<Option<CudaEvent>>,
    pub buffer_bytes: usize,
}

impl Staging {
    pub fn new(gpu: &Gpu, buffers: usize, buffer_bytes: usize) -> GpuResult<Staging> {
        let mut out = Vec::with_capacity(buffers);
        for _ in 0..buffers {
            // SAFETY: pinned host memory for staging; it is only read by copies we
            // order with events, and written by us only after those copies complete.
            let b = unsafe { gpu.ctx.alloc_pinned::<u8>(buffer_bytes) }
                .map_err(|e| format!("cannot pin {buffer_bytes} bytes: {e:?}"))?;
            out.push(b);
        }
        Ok(Staging {
            in_flight: (0..buffers).map(|_| None).collect(),
            buffers: out,
            buffer_bytes,
        })
    }
}

/// What a GPU load did.
#[derive(Clone, Debug, Default)]
pub struct GpuLoadStats {
    pub tensors: usize,
    pub bytes_read: u64,
    pub device_bytes: u64,
    pub seconds: f64,
    /// Peak of the loader's own device allocations: the tensors so far plus the scratch.
    pub peak_device_bytes: u64,
}

/// One piece of source data for a target: a checkpoint byte range, placed at `at` bytes
/// into the target.
struct Piece {
    shard: usize,
    offset: u64,
    len: u64,
    at: u64,
}

/// How a target's bytes are produced: straight from checkpoint ranges (same dtype,
/// concatenation recipes), or assembled by the CPU path.
fn pieces(t: &Target, ckpt: &Checkpoint) -> Option<Vec<Piece>> {
    let parts = export::parts(&t.recipe)?;
    let es = t.dtype.size() as u64;
    parts
        .iter()
        .map(|p| {
            let e = ckpt.tensors.get(&p.name)?;
            (e.dtype == t.dtype).then_some(Piece {
                shard: e.shard,
                offset: e.offset,
                len: e.len,
                at: p.offset as u64 * es,
            })
        })
        .collect()
}

/// Loads `plan` onto the GPU, quantizing `quantizable` targets into `format` (or keeping
/// everything in full precision with `None`).
pub fn load(
    gpu: &Gpu,
    staging: &mut Staging,
    plan: &Plan,
    ckpt: &Checkpoint,
    format: Option<Format>,
) -> GpuResult<(DeviceStore, GpuLoadStats)> {
    let start = Instant::now();
    let target_bytes = |t: &Target| t.shape.iter().product::<u64>() * t.dtype.size() as u64;
    let scratch_bytes = plan
        .targets
        .iter()
        .filter(|t| t.quantizable && format.is_some())
        .map(target_bytes)
        .max()
        .unwrap_or(0) as usize;
    // SAFETY: each buffer is fully overwritten by host-to-device copies (targets) or by a
    // target's bytes before its quantize reads them (scratch); u8 has no invalid values.
    let alloc = |n: usize| {
        unsafe { gpu.stream.alloc::<u8>(n.max(1)) }
            .map_err(|e| format!("device allocation of {n} bytes: {e:?}"))
    };
    let mut scratch = [alloc(scratch_bytes)?, alloc(scratch_bytes)?];
    let mut held = 2 * scratch_bytes as u64;
    let mut peak = held;
    let mut scratch_free: [Option<CudaEvent>; 2] = [None, None];
    let mut which = 0usize;
    let mut store = DeviceStore {
        tensors: BTreeMap::new(),
    };
    let mut stats = GpuLoadStats::default();
    // The staging buffer being filled and how far; small targets share a buffer.
    let mut ring = 0usize;
    let mut cursor = 0usize;
    let nbuf = staging.buffers.len();
    for t in &plan.targets {
        if let Recipe::Tied { target } = &t.recipe {
            store
                .tensors
                .insert(t.name.clone(), DeviceTensor::Tied(target.clone()));
            stats.tensors += 1;
            continue;
        }
        let bytes = target_bytes(t) as usize;
        let quantize = format.filter(|_| t.quantizable);
        let mut full = if quantize.is_none() {
            Some(alloc(bytes)?)
        } else {
            None
        };
        if quantize.is_some() {
            // The scratch buffer may still be read by the previous quantize.
            if let Some(ev) = &scratch_free[which] {
                gpu.copy_stream.wait(ev).map_err(|e| format!("{e:?}"))?;
            }
        }
        let dst: &mut CudaSlice<u8> = match full.as_mut() {
            Some(d) => d,
            None => &mut scratch[which],
        };
        // Produce the target's bytes in staging-sized chunks, in target order.
        let cpu_assembled = match pieces(t, ckpt) {
            Some(_) => None,
            None => {
                let mut buf = vec![0u8; bytes];
                crate::load::fill_target(ckpt, t, &mut buf).map_err(|d| d.message)?;
                Some(buf)
            }
        };
        let list = pieces(t, ckpt).unwrap_or_default();
        let mut done = 0usize;
        while done < bytes {
            if cursor == staging.buffer_bytes {
                ring += 1;
                cursor = 0;
            }
            let k = ring % nbuf;
            if cursor == 0 {
                // Entering a buffer: the copies out of its last use must be complete.
                if let Some(ev) = staging.in_flight[k].take() {
                    ev.synchronize().map_err(|e| format!("{e:?}"))?;
                }
            }
            let len = (bytes - done).min(staging.buffer_bytes - cursor);
            let host = staging.buffers[k]
                .as_mut_slice()
                .map_err(|e| format!("{e:?}"))?;
            let chunk = &mut host[cursor..cursor + len];
            cursor += len;
            match &cpu_assembled {
                Some(buf) => chunk.copy_from_slice(&buf[done..done + len]),
                None => fill_chunk(ckpt, &list, done as u64, chunk).map_err(|d| d.message)?,
            }
            {
                let mut view = dst.slice_mut(done..done + len);
                let (ptr, _guard) = view.device_ptr_mut(&gpu.copy_stream);
                // SAFETY: `chunk` is pinned memory that stays untouched until the event
                // recorded below completes; `ptr` points at `len` bytes of `dst`.
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(
                        ptr,
                        &*chunk,
                        gpu.copy_stream.cu_stream(),
                    )
                }
                .map_err(|e| format!("host-to-device copy: {e:?}"))?;
            }
            staging.in_flight[k] = Some(
                gpu.copy_stream
                    .record_event(None)
                    .map_err(|e| format!("{e:?}"))?,
            );
            done += len;
        }
        stats.bytes_read += t
            .recipe
            .reads()
            .iter()
            .map(|r| match r {
                Recipe::Read { length, .. } => *length,
                _ => 0,
            })
            .sum::<u64>();
        let tensor = match quantize {
            Some(f) => {
                let copied = gpu
                    .copy_stream
                    .record_event(None)
                    .map_err(|e| format!("{e:?}"))?;
                gpu.stream.wait(&copied).map_err(|e| format!("{e:?}"))?;
                let view = scratch[which].slice(..bytes);
                // SAFETY: a bf16 target's bytes reinterpreted as u16 elements.
                let as_u16 = unsafe { view.transmute::<u16>(bytes / 2) }
                    .ok_or("scratch is not u16-aligned")?;
                let q = gpu.quantize(f, &as_u16, &t.shape)?;
                scratch_free[which] = Some(
                    gpu.stream
                        .record_event(None)
                        .map_err(|e| format!("{e:?}"))?,
                );
                which ^= 1;
                DeviceTensor::Quantized(Box::new(q))
            }
            None => DeviceTensor::Full {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data: full.take().ok_or("missing device buffer")?,
            },
        };
        held += match &tensor {
            DeviceTensor::Quantized(q) => q.byte_size(),
            DeviceTensor::Full { data, .. } => data.len() as u64,
            DeviceTensor::Tied(_) => 0,
        };
        peak = peak.max(held);
        store.tensors.insert(t.name.clone(), tensor);
        stats.tensors += 1;
    }
    gpu.copy_stream
        .synchronize()
        .map_err(|e| format!("{e:?}"))?;
    gpu.sync()?;
    drop(scratch);
    stats.seconds = start.elapsed().as_secs_f64();
    stats.device_bytes = store.device_bytes();
    stats.peak_device_bytes = peak;
    Ok((store, stats))
}

/// Fills `chunk` with target bytes `from..from + chunk.len()` from the pieces, reading in
/// parallel slices so many cores pull from the page cache at once.
fn fill_chunk(
    ckpt: &Checkpoint,
    pieces: &[Piece],
    from: u64,
    chunk: &mut [u8],
) -> Result<(), crate::diag::Diagnostic> {
    const SLICE: usize = 4 << 20;
    let to = from + chunk.len() as u64;
    let mut jobs: Vec<(usize, u64, u64, usize)> = Vec::new(); // (shard, file offset, len, chunk offset)
    for p in pieces {
        let (a, b) = (p.at.max(from), (p.at + p.len).min(to));
        let mut x = a;
        while x < b {
            let y = (x + SLICE as u64).min(b);
            jobs.push((p.shard, p.offset + (x - p.at), y - x, (x - from) as usize));
            x = y;
        }
    }
    // Hand each job its own disjoint piece of the chunk.
    jobs.sort_by_key(|j| j.3);
    let mut rest: &mut [u8] = chunk;
    let mut cursor = 0usize;
    let mut work: Vec<(usize, u64, &mut [u8])> = Vec::with_capacity(jobs.len());
    for (shard, off, len, at) in jobs {
        let (_, tail) = rest.split_at_mut(at - cursor);
        let (mine, tail) = tail.split_at_mut(len as usize);
        work.push((shard, off, mine));
        rest = tail;
        cursor = at + len as usize;
    }
    work.into_par_iter()
        .try_for_each(|(shard, off, buf)| ckpt.read_at(shard, off, buf))
}
