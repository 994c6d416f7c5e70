//! The streaming GPU loader: checkpoint bytes → pinned staging → device, quantized there.
//!
//! Reader threads fill a small ring of pinned staging buffers (allocated once, see
//! [`Staging`]) with positioned reads, handed out in order and shrinking toward the end of
//! each fill (`read_sizes`) because the load thread waits for the whole fill; the reader
//! that completes a block of a fill ([`COPY_BLOCK`]) queues its copy to the device on the
//! copy stream at once, so the ring is read back while still in the host's cache and a
//! buffer's copies are done by the time it is filled again; targets marked
//! `quantizable` land in a device scratch buffer and are quantized on the compute stream
//! while the next chunk is copied. Assembly (fuse on dim 0, stack) happens on the way:
//! each checkpoint tensor is copied to its offset inside the target, so every byte
//! crosses PCIe once. Targets that slice, transpose or convert are assembled by the CPU
//! path into staging first. Device memory in use: the final tensors plus two scratch
//! buffers of one quantize chunk (or of the largest target whose format needs the whole
//! tensor for its scale). Pre-quantized sources travel as stored and are decoded (or
//! passed through) on the device ([`prequant`]).

mod prequant;
mod ring;

use ring::RingMemory;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use cudarc::driver::{CudaEvent, CudaSlice, CudaViewMut, DevicePtrMut};

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
        self.tensors.values().map(device_size).sum()
    }
}

/// Bytes a tensor holds on the device (a tie none).
fn device_size(t: &DeviceTensor) -> u64 {
    match t {
        DeviceTensor::Quantized(q) => q.byte_size(),
        DeviceTensor::Full { data, .. } => data.len() as u64,
        DeviceTensor::Tied(_) => 0,
    }
}

/// Pinned host staging: a ring of buffers in one page-locked allocation, made once
/// (pinning is slow) and reused across loads.
pub struct Staging {
    ring: RingMemory,
    /// The copy out of each buffer; the buffer is refilled only after it completes.
    in_flight: Vec<Option<CudaEvent>>,
    pub buffer_bytes: usize,
    /// Elements per quantization chunk (default [`CHUNK_ELEMS`]).
    pub chunk_elems: usize,
    /// Bytes per parallel read from the checkpoint (default [`READ_SLICE`]).
    pub read_slice: usize,
    /// Bytes of a fill copied to the device as soon as they are read (default
    /// [`COPY_BLOCK`]).
    pub copy_block: usize,
}

impl Staging {
    pub fn new(gpu: &Gpu, buffers: usize, buffer_bytes: usize) -> GpuResult<Staging> {
        let mut ring = RingMemory::new(ring_bytes(buffers, buffer_bytes)?)?;
        ring.register(&gpu.ctx)?;
        Ok(Staging::from_ring(ring, buffers, buffer_bytes))
    }

    fn from_ring(ring: RingMemory, buffers: usize, buffer_bytes: usize) -> Staging {
        Staging {
            ring,
            in_flight: (0..buffers).map(|_| None).collect(),
            buffer_bytes,
            chunk_elems: CHUNK_ELEMS,
            read_slice: READ_SLICE,
            copy_block: COPY_BLOCK,
        }
    }

    fn buffers(&self) -> usize {
        self.in_flight.len()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Copies may still read the ring: its pages must outlive them.
        for ev in self.in_flight.iter().flatten() {
            let _ = ev.synchronize();
        }
    }
}

/// `buffers` × `buffer_bytes`, checked.
fn ring_bytes(buffers: usize, buffer_bytes: usize) -> GpuResult<usize> {
    buffers
        .checked_mul(buffer_bytes)
        .filter(|&n| buffers > 0 && buffer_bytes > 0 && n > 0)
        .ok_or_else(|| {
            super::Error::Unsupported(format!(
                "a staging ring of {buffers} buffers of {buffer_bytes} bytes"
            ))
        })
}

/// An opened device with its staging ring: everything a load needs before its first byte.
pub struct Ready {
    pub gpu: std::sync::Arc<Gpu>,
    pub staging: Staging,
    /// Wall time of opening the device, loading the kernels and pinning the ring.
    pub seconds: f64,
    /// Of that, after the context and kernels: waiting for the ring's pages and
    /// page-locking them.
    pub staging_seconds: f64,
}

impl Ready {
    /// Two 64 MiB buffers by default (see [`staging_shape`]). For measurements,
    /// `WMAP_STAGING=NxM` (N buffers of M MiB) sets the ring, `WMAP_READ_SLICE_KIB` the
    /// parallel read size and `WMAP_COPY_BLOCK_KIB` the copy block; a value out of range
    /// is refused. The ring's pages are faulted in on other threads while the context is
    /// created.
    pub fn open(ordinal: usize) -> GpuResult<Ready> {
        let t0 = std::time::Instant::now();
        let (count, mib) = staging_shape(std::env::var("WMAP_STAGING").ok().as_deref())?;
        let read_slice = read_slice(std::env::var("WMAP_READ_SLICE_KIB").ok().as_deref())?;
        let copy_block = copy_block(std::env::var("WMAP_COPY_BLOCK_KIB").ok().as_deref())?;
        let bytes = ring_bytes(count, mib << 20)?;
        let host = std::thread::Builder::new()
            .name("wmap-staging".into())
            .spawn(move || RingMemory::new(bytes))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let gpu = Gpu::new(ordinal);
        let gpu = std::sync::Arc::new(gpu?);
        let t1 = std::time::Instant::now();
        let ring = host
            .join()
            .unwrap_or_else(|_| Err(super::Error::Internal("staging allocation panicked".into())));
        let mut ring = ring?;
        ring.register(&gpu.ctx)?;
        let mut staging = Staging::from_ring(ring, count, mib << 20);
        staging.read_slice = read_slice;
        staging.copy_block = copy_block;
        Ok(Ready {
            gpu,
            staging,
            seconds: t0.elapsed().as_secs_f64(),
            staging_seconds: t1.elapsed().as_secs_f64(),
        })
    }
}

/// The staging ring's shape from `WMAP_STAGING` (`NxM`: N buffers of M MiB; 2–16 buffers
/// of 16–1024 MiB), or two of 64 MiB when unset.
///
/// Small, because the ring is written and read again at once: copied to the device block
/// by block as its fill goes ([`COPY_BLOCK`]), it stays in the host's last-level cache,
/// and the fill writes no memory and the copies read none. On an H200 host (16 threads,
/// 300 MiB of L3, 2026-12-02) the 8B shape loaded in 0.305–0.332 s with 2 × 64 MiB,
/// 0.389–0.410 s with 3 × 64 or 2 × 128 MiB, 0.40–0.46 s with 3 × 256 MiB; 2 × 32 MiB
/// matched 2 × 64, which makes half as many fills. Two buffers are enough: a buffer's
/// copies are queued while it fills, so they are done before the fill of the other.
fn staging_shape(var: Option<&str>) -> GpuResult<(usize, usize)> {
    let Some(v) = var else {
        return Ok((2, 64));
    };
    let parsed = v
        .split_once('x')
        .and_then(|(n, m)| Some((n.trim().parse().ok()?, m.trim().parse().ok()?)))
        .filter(|&(n, m): &(usize, usize)| (2..=16).contains(&n) && (16..=1024).contains(&m));
    parsed.ok_or_else(|| {
        super::Error::Unsupported(format!(
            "WMAP_STAGING=`{v}`: expected N buffers x M MiB, e.g. `2x64` (2-16 buffers of 16-1024 MiB)"
        ))
    })
}

/// Bytes per parallel read: small enough that a 64 MiB quantization chunk is many rounds
/// of jobs for every reader thread (a fill ends when its slowest job does), large enough
/// that syscalls stay rare. On H200 machines (16 threads, 2026-12-02) 512 KiB loaded the
/// 8B shape in 0.448 and 0.501 s where 4 MiB took 0.532 and 0.669 s; 256 KiB and 1 MiB
/// were within 5 % of 512 KiB.
pub const READ_SLICE: usize = 512 << 10;

/// The read size from `WMAP_READ_SLICE_KIB` (64–65536 KiB), or [`READ_SLICE`] when unset.
fn read_slice(var: Option<&str>) -> GpuResult<usize> {
    kib_knob("WMAP_READ_SLICE_KIB", var, 64..=65536, READ_SLICE)
}

/// A size knob given in KiB: `var`, the value of `name`, within `kib` (refused otherwise),
/// in bytes; `default` when unset.
fn kib_knob(
    name: &str,
    var: Option<&str>,
    kib: std::ops::RangeInclusive<usize>,
    default: usize,
) -> GpuResult<usize> {
    let Some(v) = var else {
        return Ok(default);
    };
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|k| kib.contains(k))
        .map(|k| k << 10)
        .ok_or_else(|| {
            super::Error::Unsupported(format!(
                "{name}=`{v}`: expected a size in KiB from {} to {}",
                kib.start(),
                kib.end()
            ))
        })
}

/// Bytes of a fill handed to the copy stream as soon as all of them are read, so the
/// device copy follows the reads through the fill instead of starting after its end.
pub const COPY_BLOCK: usize = 4 << 20;

/// The copy block from `WMAP_COPY_BLOCK_KIB` (64–1048576 KiB), or [`COPY_BLOCK`] when unset.
fn copy_block(var: Option<&str>) -> GpuResult<usize> {
    kib_knob("WMAP_COPY_BLOCK_KIB", var, 64..=1 << 20, COPY_BLOCK)
}

/// Queues a copy of `n` host bytes at address `host` to device address `dev` on the copy
/// stream. Callable from any thread: it makes the device's context current first.
///
/// # Safety
/// `host..host + n` is page-locked memory nothing writes until the copy stream passes an
/// event recorded after this call; `dev..dev + n` is device memory the caller may write.
unsafe fn copy_out(gpu: &Gpu, host: usize, dev: u64, n: usize) -> GpuResult<()> {
    gpu.ctx
        .bind_to_thread()
        .map_err(|e| format!("cannot bind the context: {e:?}"))?;
    let stream = gpu.copy_stream.cu_stream();
    cudarc::driver::sys::cuMemcpyHtoDAsync_v2(dev, host as *const std::ffi::c_void, n, stream)
        .result()
        .map_err(|e| format!("host-to-device copy: {e:?}").into())
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
    /// Targets stored in the load's format already: codes and scales passed through.
    pub passed_through: usize,
    /// Targets with a pre-quantized source decoded on the device.
    pub decoded: usize,
    /// Where the load's thread spent its time: filling the pinned ring from the checkpoint,
    /// waiting for a ring buffer's last copy to finish, assembling targets on the CPU
    /// (conversions, slices). The rest is issuing copies and kernels, and the final wait.
    pub read_seconds: f64,
    pub ring_wait_seconds: f64,
    pub assemble_seconds: f64,
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
/// concatenation recipes), or assembled by the CPU path (conversions, slices, and
/// pre-quantized sources that [`prequant`] does not decode on the device).
fn pieces(t: &Target) -> Option<Vec<Piece>> {
    let parts = export::parts(&t.recipe)?;
    // A pre-quantized source is one part but several reads (codes and scales): never
    // pieces of the target's own bytes.
    let reads = t.recipe.reads();
    if reads.len() != parts.len() {
        return None;
    }
    let es = t.dtype.size() as u64;
    // Each read's own range, not its tensor's: a rank's plan reads part of a tensor. A
    // window (a column slice) goes through the CPU path.
    parts
        .iter()
        .zip(reads)
        .map(|(p, r)| match r {
            Recipe::Read {
                file,
                offset,
                length,
                dtype,
                ..
            } => (*dtype == t.dtype).then_some(Piece {
                shard: *file,
                offset: *offset,
                len: *length,
                at: p.offset as u64 * es,
            }),
            _ => None,
        })
        .collect()
}

/// Elements per quantization chunk: a quantizable target streams through device scratch
/// in pieces of this size (where its format allows), so device memory above the final
/// tensors stays two chunks, whatever the tensor's size.
pub const CHUNK_ELEMS: usize = 32 << 20;

/// Moves target bytes from the checkpoint through the pinned ring to the device.
struct Stager<'s> {
    staging: &'s mut Staging,
    /// The buffer being filled and how far; small targets share a buffer.
    ring: usize,
    cursor: usize,
    /// Time spent filling buffers, waiting for them, and assembling targets on the CPU
    /// (see [`GpuLoadStats`]).
    read: std::time::Duration,
    wait: std::time::Duration,
    assemble: std::time::Duration,
}

/// Where a target's bytes come from.
enum Source<'a> {
    Pieces(&'a [Piece]),
    Assembled(&'a [u8]),
}

impl Stager<'_> {
    /// Copies target bytes `from..to` to `dst[0..to - from]` on the copy stream.
    fn stage(
        &mut self,
        gpu: &Gpu,
        ckpt: &Checkpoint,
        src: &Source,
        from: usize,
        to: usize,
        dst: &mut CudaViewMut<'_, u8>,
    ) -> GpuResult<()> {
        let nbuf = self.staging.buffers();
        let bb = self.staging.buffer_bytes;
        let mut done = from;
        while done < to {
            if self.cursor == bb {
                self.ring += 1;
                self.cursor = 0;
            }
            let k = self.ring % nbuf;
            if self.cursor == 0 {
                // Entering a buffer: the copies out of its last use must be complete.
                if let Some(ev) = self.staging.in_flight[k].take() {
                    let t = Instant::now();
                    ev.synchronize().map_err(|e| format!("{e:?}"))?;
                    self.wait += t.elapsed();
                }
            }
            let len = (to - done).min(bb - self.cursor);
            let at = k * bb + self.cursor;
            let chunk = &mut self.staging.ring.as_mut_slice()[at..at + len];
            self.cursor += len;
            let host = chunk.as_mut_ptr() as usize;
            let mut view = dst.slice_mut(done - from..done - from + len);
            let (dev, _guard) = view.device_ptr_mut(&gpu.copy_stream);
            // SAFETY (both arms): each copy reads pinned ring bytes its fill has finished
            // writing, left untouched until the event recorded below completes, into
            // `dev`, which points at `len` bytes inside `dst`.
            let copy =
                |off: usize, n: usize| unsafe { copy_out(gpu, host + off, dev + off as u64, n) };
            let t = Instant::now();
            match src {
                Source::Assembled(buf) => {
                    chunk.copy_from_slice(&buf[done..done + len]);
                    copy(0, len)?;
                }
                Source::Pieces(list) => {
                    let (slice, block) = (self.staging.read_slice, self.staging.copy_block);
                    fill_chunk(ckpt, list, done as u64, chunk, slice, block, &copy)?
                }
            }
            self.read += t.elapsed();
            self.staging.in_flight[k] = Some(
                gpu.copy_stream
                    .record_event(None)
                    .map_err(|e| format!("{e:?}"))?,
            );
            done += len;
        }
        Ok(())
    }
}

/// A target's bytes in its dtype, checked.
fn target_len(t: &Target) -> GpuResult<usize> {
    crate::load::bytes_of(&t.shape, t.dtype)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| super::Error::Unsupported(format!("`{}` is too large", t.name)))
}

/// `n` device bytes (at least one), on the compute stream, ordered for the copy stream
/// ([`Gpu::alloc_for_copies`]).
fn alloc_bytes(gpu: &Gpu, n: usize) -> GpuResult<CudaSlice<u8>> {
    // SAFETY: every caller overwrites the bytes it reads (host-to-device copies, or the
    // kernels that write each element) before they are read; u8 has no invalid values.
    unsafe { gpu.alloc_for_copies::<u8>(n.max(1)) }
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
    // Scratch: two chunks for chunkable formats, two whole targets otherwise.
    let scratch_bytes = plan
        .targets
        .iter()
        .filter(|t| t.quantizable)
        .filter_map(|t| {
            let f = format?;
            let n = t.shape.iter().product::<u64>() as usize;
            Some(
                2 * super::chunk_elems(f, &t.shape, staging.chunk_elems)
                    .unwrap_or(n)
                    .min(n),
            )
        })
        .max()
        .unwrap_or(0);
    let mut scratch = Scratch {
        bufs: [
            alloc_bytes(gpu, scratch_bytes)?,
            alloc_bytes(gpu, scratch_bytes)?,
        ],
        free: [None, None],
        which: 0,
    };
    let mut stats = GpuLoadStats::default();
    let mut stager = Stager {
        staging,
        ring: 0,
        cursor: 0,
        read: Default::default(),
        wait: Default::default(),
        assemble: Default::default(),
    };
    let loaded = load_targets(
        gpu,
        &mut stager,
        plan,
        ckpt,
        format,
        &mut scratch,
        &mut stats,
    );
    stats.read_seconds = stager.read.as_secs_f64();
    stats.ring_wait_seconds = stager.wait.as_secs_f64();
    stats.assemble_seconds = stager.assemble.as_secs_f64();
    // The streams drain even when the load failed, before the scratch is freed. A failed
    // load has already freed (on the compute stream) targets the copy stream may still be
    // writing; nothing is allocated between there and this drain, so no one gets that
    // memory before the copies land.
    let drained = gpu
        .copy_stream
        .synchronize()
        .map_err(|e| super::Error::from(format!("{e:?}")))
        .and_then(|()| gpu.sync());
    let (store, peak) = loaded?;
    drained?;
    drop(scratch);
    stats.seconds = start.elapsed().as_secs_f64();
    stats.device_bytes = store.device_bytes();
    stats.peak_device_bytes = peak;
    Ok((store, stats))
}

/// Every target of `plan` in order; returns the store and the peak of device bytes held,
/// the scratch included.
fn load_targets(
    gpu: &Gpu,
    stager: &mut Stager<'_>,
    plan: &Plan,
    ckpt: &Checkpoint,
    format: Option<Format>,
    scratch: &mut Scratch,
    stats: &mut GpuLoadStats,
) -> GpuResult<(DeviceStore, u64)> {
    let mut held: u64 = scratch.bufs.iter().map(|b| b.len() as u64).sum();
    let mut peak = held;
    let mut store = DeviceStore {
        tensors: BTreeMap::new(),
    };
    for t in &plan.targets {
        if let Recipe::Tied { target } = &t.recipe {
            store
                .tensors
                .insert(t.name.clone(), DeviceTensor::Tied(target.clone()));
            stats.tensors += 1;
            continue;
        }
        let decoded = prequant::target(gpu, stager, ckpt, t, format)?;
        let tensor = if let Some(p) = decoded {
            peak = peak.max(held + p.transient + device_size(&p.tensor));
            if p.passed_through {
                stats.passed_through += 1;
            } else {
                stats.decoded += 1;
            }
            p.tensor
        } else {
            plain_target(gpu, stager, ckpt, t, format, scratch)?
        };
        stats.bytes_read += crate::load::read_bytes(t);
        held += device_size(&tensor);
        peak = peak.max(held);
        store.tensors.insert(t.name.clone(), tensor);
        stats.tensors += 1;
    }
    Ok((store, peak))
}

/// Two device buffers quantizable targets stream through, and the quantize that last read
/// each: a buffer is refilled only after that quantize.
struct Scratch {
    bufs: [CudaSlice<u8>; 2],
    free: [Option<CudaEvent>; 2],
    /// The buffer the next chunk goes to.
    which: usize,
}

/// A target no pre-quantized source of which the device decodes: straight from checkpoint
/// pieces, or assembled by the CPU path; staged, and quantized on the way if `format`.
fn plain_target(
    gpu: &Gpu,
    stager: &mut Stager<'_>,
    ckpt: &Checkpoint,
    t: &Target,
    format: Option<Format>,
    scratch: &mut Scratch,
) -> GpuResult<DeviceTensor> {
    let bytes = target_len(t)?;
    let list = pieces(t);
    let assembled = match list {
        Some(_) => None,
        None => {
            let at = Instant::now();
            let mut buf = vec![0u8; bytes];
            crate::load::fill_target(ckpt, t, &mut buf)?;
            stager.assemble += at.elapsed();
            Some(buf)
        }
    };
    let src = match (&list, &assembled) {
        (Some(l), _) => Source::Pieces(l),
        (None, Some(b)) => Source::Assembled(b),
        (None, None) => return Err(super::Error::Internal("no source for a target".into())),
    };
    let Some(f) = format.filter(|_| t.quantizable) else {
        let mut data = alloc_bytes(gpu, bytes)?;
        stager.stage(gpu, ckpt, &src, 0, bytes, &mut data.as_view_mut())?;
        return Ok(DeviceTensor::Full {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data,
        });
    };
    let q = quantize_streamed(gpu, stager, ckpt, &src, t, f, scratch)?;
    Ok(DeviceTensor::Quantized(Box::new(q)))
}

/// Streams a bf16 target's bytes through the scratch buffers into `f`: chunk by chunk
/// where the format allows, each chunk copied while the one before is quantized.
fn quantize_streamed(
    gpu: &Gpu,
    stager: &mut Stager<'_>,
    ckpt: &Checkpoint,
    src: &Source,
    t: &Target,
    f: Format,
    scratch: &mut Scratch,
) -> GpuResult<DeviceQuantized> {
    let n = target_len(t)? / 2;
    let chunked = super::chunk_elems(f, &t.shape, stager.staging.chunk_elems);
    let step = chunked.unwrap_or(n).clamp(1, n.max(1));
    let mut q = match chunked {
        Some(_) => Some(gpu.alloc_quantized(f, &t.shape)?),
        None => None,
    };
    let mut whole = None;
    let mut c0 = 0usize;
    while c0 < n {
        let c1 = (c0 + step).min(n);
        let which = scratch.which;
        // The scratch buffer may still be read by the quantize before last.
        if let Some(ev) = &scratch.free[which] {
            gpu.copy_stream.wait(ev).map_err(|e| format!("{e:?}"))?;
        }
        let mut dst = scratch.bufs[which].as_view_mut();
        stager.stage(gpu, ckpt, src, 2 * c0, 2 * c1, &mut dst)?;
        let copied = gpu
            .copy_stream
            .record_event(None)
            .map_err(|e| format!("{e:?}"))?;
        gpu.stream.wait(&copied).map_err(|e| format!("{e:?}"))?;
        let view = scratch.bufs[which].slice(..2 * (c1 - c0));
        // SAFETY: bf16 bytes reinterpreted as u16 elements.
        let x = unsafe { view.transmute::<u16>(c1 - c0) }
            .ok_or_else(|| super::Error::Internal("scratch is not u16-aligned".into()))?;
        match q.as_mut() {
            Some(q) => gpu.quantize_chunk(&x, q, c0)?,
            None => whole = Some(gpu.quantize(f, &x, &t.shape)?),
        }
        let read = gpu.stream.record_event(None);
        scratch.free[which] = Some(read.map_err(|e| format!("{e:?}"))?);
        scratch.which ^= 1;
        c0 = c1;
    }
    match (q, whole) {
        (Some(mut q), _) => {
            gpu.finish_quantized(&mut q)?;
            Ok(q)
        }
        (None, Some(w)) => Ok(w),
        (None, None) => Err(super::Error::Unsupported(format!(
            "`{}` has no elements",
            t.name
        ))),
    }
}

/// The smallest read [`fill_chunk`] hands out, at the end of a fill.
const MIN_READ: u64 = 64 << 10;

/// Read sizes for `total` bytes, in order: `slice` while much is left, then shrinking with
/// what is left divided among twice the `threads` (never below [`MIN_READ`]).
///
/// A fill ends when its slowest read does, and the load thread waits for every fill. With
/// equal 512 KiB reads the last round left most threads idle: on an H200 host (16
/// threads, 2026-12-02) reading the 8B checkpoint's page cache in 64 MiB fills ran at
/// 37–42 GB/s where one unbroken fill ran at 43–47 (8 MiB fills: 32–34).
fn read_sizes(total: u64, slice: u64, threads: u64) -> impl Iterator<Item = u64> {
    let mut left = total;
    std::iter::from_fn(move || {
        let n = (left / (2 * threads.max(1)))
            .clamp(MIN_READ, slice.max(MIN_READ))
            .min(left);
        left -= n;
        (n > 0).then_some(n)
    })
}

/// One read of a fill: shard, file offset, the copy block it lies in, and where the bytes go.
type Read<'a> = (usize, u64, usize, &'a mut [u8]);

/// Fills `chunk` with target bytes `from..from + chunk.len()` from the pieces, reading in
/// parallel so many cores pull from the page cache at once, and calls `copy(offset, len)`
/// for each `block`-byte block of the chunk (the last one shorter) once all its bytes are
/// read, on the thread that read its last byte. Reads go out in chunk order from one
/// counter, so blocks complete roughly in order and the small reads [`read_sizes`] ends
/// with are the last taken; no read crosses a block boundary. After an error no further
/// block is passed to `copy`.
fn fill_chunk(
    ckpt: &Checkpoint,
    pieces: &[Piece],
    from: u64,
    chunk: &mut [u8],
    slice: usize,
    block: usize,
    copy: &(dyn Fn(usize, usize) -> GpuResult<()> + Sync),
) -> GpuResult<()> {
    let (len, block) = (chunk.len(), block.max(1));
    let reads = split_reads(pieces, from, chunk, slice as u64, block as u64)?;
    let blocks = Blocks::new(&reads, len, block);
    // Each index is claimed once from the counter below; the lock only hands that read's
    // buffer to the thread that claimed it, so it is never contended.
    let jobs: Vec<Mutex<Option<Read>>> = reads.into_iter().map(|r| Mutex::new(Some(r))).collect();
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<super::Error>> = Mutex::new(None);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { break };
        let Some((shard, off, b, buf)) = job.lock().ok().and_then(|mut j| j.take()) else {
            continue;
        };
        let n = buf.len() as u64;
        let done = ckpt
            .read_at(shard, off, buf)
            .map_err(super::Error::from)
            .and_then(|()| match blocks.read(b, n) {
                Some((at, n)) => copy(at, n),
                None => Ok(()),
            });
        if let Err(e) = done {
            // Stop handing out reads; the first error is the one reported.
            next.store(jobs.len(), Ordering::Relaxed);
            if let Ok(mut f) = failed.lock() {
                f.get_or_insert(e);
            }
            break;
        }
    };
    // A small tensor's single read is not worth waking the pool for.
    match jobs.len().min(rayon::current_num_threads()) {
        0 | 1 => work(),
        workers => rayon::scope(|s| {
            for _ in 0..workers {
                s.spawn(|_| work());
            }
        }),
    }
    match failed.into_inner() {
        Ok(None) => blocks.untouched.iter().try_for_each(|&b| {
            let (at, n) = blocks.range(b);
            copy(at, n)
        }),
        Ok(Some(e)) => Err(e),
        Err(_) => Err(crate::diag::Diagnostic::new(
            crate::diag::Code::E0901,
            "a staging read panicked",
        )
        .into()),
    }
}

/// A fill's copy blocks: how many bytes of each are still to be read.
struct Blocks {
    size: usize,
    len: usize,
    unread: Vec<AtomicU64>,
    /// Blocks no read touches (gaps between pieces): copied once the fill is done.
    untouched: Vec<usize>,
}

impl Blocks {
    /// Blocks of `size` (at least 1) bytes over a fill of `len` bytes made of `reads`.
    fn new(reads: &[Read], len: usize, size: usize) -> Blocks {
        let mut unread = vec![0u64; len.div_ceil(size)];
        for (_, _, b, buf) in reads {
            unread[*b] += buf.len() as u64;
        }
        Blocks {
            size,
            len,
            untouched: (0..unread.len()).filter(|&b| unread[b] == 0).collect(),
            unread: unread.into_iter().map(AtomicU64::new).collect(),
        }
    }

    /// Block `b`'s offset and length in the fill.
    fn range(&self, b: usize) -> (usize, usize) {
        (b * self.size, self.size.min(self.len - b * self.size))
    }

    /// Records a finished read of `n` bytes in block `b`; the block's range if that was
    /// its last. The last reader sees every other read of the block (acquire-release on
    /// its counter), so the bytes it hands on are all written.
    fn read(&self, b: usize, n: u64) -> Option<(usize, usize)> {
        (self.unread[b].fetch_sub(n, Ordering::AcqRel) == n).then(|| self.range(b))
    }
}

/// Splits the part of `chunk` the pieces cover (target bytes `from..from + chunk.len()`)
/// into disjoint reads, each inside one piece's range and one `block`, sized by
/// [`read_sizes`]. Bytes no piece covers stay as they are.
fn split_reads<'a>(
    pieces: &[Piece],
    from: u64,
    chunk: &'a mut [u8],
    slice: u64,
    block: u64,
) -> GpuResult<Vec<Read<'a>>> {
    let to = from + chunk.len() as u64;
    // (shard, file offset, chunk offsets start..end)
    let mut ranges: Vec<(usize, u64, u64, u64)> = Vec::new();
    let mut sorted: Vec<&Piece> = pieces.iter().collect();
    sorted.sort_by_key(|p| p.at);
    for p in sorted {
        let (a, b) = (p.at.max(from), (p.at + p.len).min(to));
        if a < b {
            ranges.push((p.shard, p.offset + (a - p.at), a - from, b - from));
        }
    }
    let threads = rayon::current_num_threads() as u64;
    let mut sizes = read_sizes(chunk.len() as u64, slice, threads);
    let mut rest: &mut [u8] = chunk;
    let mut cursor = 0u64;
    let mut jobs = Vec::new();
    let mut pending = 0u64; // bytes of the current size still to hand out
    for &(shard, off, at, end) in &ranges {
        // Pieces never overlap (`pieces` lays them end to end); if they did, refuse
        // rather than panic.
        let gap = at.checked_sub(cursor).ok_or_else(|| {
            crate::diag::Diagnostic::new(crate::diag::Code::E0901, "staging pieces overlap")
        })?;
        let (_, tail) = rest.split_at_mut(gap as usize);
        rest = tail;
        cursor = at;
        while cursor < end {
            if pending == 0 {
                pending = sizes.next().unwrap_or(MIN_READ);
            }
            let n = pending.min(end - cursor).min(block - cursor % block);
            let (mine, tail) = rest.split_at_mut(n as usize);
            let b = (cursor / block) as usize;
            jobs.push((shard, off + (cursor - at), b, mine));
            rest = tail;
            cursor += n;
            pending -= n;
        }
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::{
        copy_block, fill_chunk, read_sizes, read_slice, ring_bytes, staging_shape, Piece,
        COPY_BLOCK, MIN_READ, READ_SLICE,
    };
    use crate::checkpoint::Checkpoint;
    use std::os::unix::fs::FileExt;

    #[test]
    fn read_sizes_cover_the_fill_largest_first_within_bounds() {
        for total in [
            0u64,
            1,
            4095,
            MIN_READ + 1,
            8 << 20,
            (64 << 20) + 3,
            1 << 30,
        ] {
            let sizes: Vec<u64> = read_sizes(total, 512 << 10, 16).collect();
            assert_eq!(sizes.iter().sum::<u64>(), total, "{total}");
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{total}: {sizes:?}");
            assert!(sizes.iter().all(|&n| n <= 512 << 10), "{total}");
            let (last, body) = sizes.split_last().unwrap_or((&0, &[]));
            assert!(body.iter().all(|&n| n >= MIN_READ) && *last > 0 || total == 0);
        }
        // Many reads of the full size while much is left, then shrinking ones.
        let sizes: Vec<u64> = read_sizes(64 << 20, 512 << 10, 16).collect();
        assert!(sizes.len() > 128 && sizes[..64].iter().all(|&n| n == 512 << 10));
    }

    #[test]
    fn a_fill_reads_every_window_of_scattered_pieces_exactly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf/llama_sharded");
        let ckpt = Checkpoint::open(&dir).unwrap();
        // Tensors from both shards, placed out of order with a gap left as it was.
        let mut pieces = Vec::new();
        let mut at = 0u64;
        for t in ckpt.tensors.values().rev().step_by(3) {
            pieces.push(Piece {
                shard: t.shard,
                offset: t.offset,
                len: t.len,
                at,
            });
            at += t.len + 7;
        }
        pieces.reverse();
        let mut want = vec![0xAAu8; at as usize];
        for p in &pieces {
            let f = std::fs::File::open(&ckpt.shards[p.shard].path).unwrap();
            f.read_exact_at(&mut want[p.at as usize..(p.at + p.len) as usize], p.offset)
                .unwrap();
        }
        let mut cases = vec![
            (0, at, 64 << 10, 1 << 20),
            (5, at - 9, 4096, 10_000),
            (at / 3, at / 2, 1 << 20, 1 << 30),
        ];
        // And windows, read sizes and blocks of odd sizes from a fixed xorshift sequence.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..24 {
            let from = next(at);
            let len = 1 + next(at - from);
            cases.push((
                from,
                len,
                1 + next(300_000) as usize,
                1 + next(200_000) as usize,
            ));
        }
        for (from, len, slice, block) in cases {
            let want = &want[from as usize..(from + len) as usize];
            let mut got = vec![0xAAu8; len as usize];
            let base = got.as_ptr() as usize;
            let copied = std::sync::Mutex::new(Vec::new());
            // Each block is handed over once, with all its bytes already read.
            let copy = |at: usize, n: usize| -> crate::cuda::GpuResult<()> {
                // SAFETY: the fill writes no byte of a block it has handed over.
                let bytes = unsafe { std::slice::from_raw_parts((base + at) as *const u8, n) };
                assert!(bytes == &want[at..at + n], "block at {at}");
                copied.lock().unwrap().push((at, n));
                Ok(())
            };
            fill_chunk(&ckpt, &pieces, from, &mut got, slice, block, &copy).unwrap();
            assert!(got == want, "{from}+{len}");
            let mut copied = copied.into_inner().unwrap();
            copied.sort();
            let blocks: Vec<(usize, usize)> = (0..len as usize)
                .step_by(block)
                .map(|a| (a, block.min(len as usize - a)))
                .collect();
            assert_eq!(copied, blocks, "{from}+{len}");
        }
    }

    #[test]
    fn a_failed_read_hands_over_no_block_it_lies_in_and_overlaps_are_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf/llama_sharded");
        let ckpt = Checkpoint::open(&dir).unwrap();
        let t = ckpt.tensors.values().next().unwrap();
        let size = std::fs::metadata(&ckpt.shards[t.shard].path).unwrap().len();
        let good = |at| Piece {
            shard: t.shard,
            offset: t.offset,
            len: t.len,
            at,
        };
        // The second block's piece runs past the end of its shard.
        let past_end = Piece {
            shard: t.shard,
            offset: size - 8,
            len: 64,
            at: t.len,
        };
        let block = t.len as usize;
        let copied = std::sync::Mutex::new(Vec::new());
        let copy = |at: usize, _n: usize| -> crate::cuda::GpuResult<()> {
            copied.lock().unwrap().push(at);
            Ok(())
        };
        let mut buf = vec![0u8; block + 64];
        let e = fill_chunk(&ckpt, &[good(0), past_end], 0, &mut buf, 4096, block, &copy);
        assert_eq!(e.err().map(|e| e.code()), Some(crate::diag::Code::E0511));
        assert!(!copied.lock().unwrap().contains(&block));
        let e = fill_chunk(&ckpt, &[good(0), good(1)], 0, &mut buf, 4096, block, &copy);
        assert_eq!(e.err().map(|e| e.code()), Some(crate::diag::Code::E0901));
    }

    #[test]
    fn the_copy_block_is_4_mib_unless_set_within_bounds() {
        assert_eq!(copy_block(None).unwrap(), COPY_BLOCK);
        assert_eq!(copy_block(Some("2048")).unwrap(), 2 << 20);
        for bad in ["", "32", "1048577", "4M", "-1"] {
            assert!(copy_block(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_staging_ring_is_two_64_mib_buffers_unless_set_within_bounds() {
        assert_eq!(staging_shape(None).unwrap(), (2, 64));
        assert_eq!(staging_shape(Some("4x128")).unwrap(), (4, 128));
        for bad in [
            "", "4", "x", "1x256", "17x64", "4x8", "4x2048", "axb", "4x-1",
        ] {
            assert!(staging_shape(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ring_size_that_overflows_or_is_empty_is_refused() {
        assert_eq!(ring_bytes(3, 256 << 20).unwrap(), 3 * (256 << 20));
        for (n, b) in [(0, 1 << 20), (3, 0), (usize::MAX, 2), (2, usize::MAX)] {
            assert!(ring_bytes(n, b).is_err(), "{n} x {b}");
        }
    }

    #[test]
    fn the_read_size_is_512_kib_unless_set_within_bounds() {
        assert_eq!(read_slice(None).unwrap(), READ_SLICE);
        assert_eq!(read_slice(Some("1024")).unwrap(), 1 << 20);
        for bad in ["", "32", "65537", "4M", "-1", "x"] {
            assert!(read_slice(Some(bad)).is_err(), "{bad}");
        }
    }
}
