//! The device: context, streams, compiled kernels, and quantization on the GPU.
//!
//! Stream ordering is explicit. cudarc's per-buffer event tracking is turned off (it cost
//! some thirty driver calls per quantize: two events made and destroyed per buffer, and a
//! wait and a record per kernel argument), so these rules keep two streams apart:
//! - every device buffer is allocated, and so freed, on the compute stream
//!   ([`Gpu::stream`]); the pool reuses memory in that stream's order. The exception is
//!   the offload manager's group buffers: allocated and freed on the copy stream, which
//!   writes them, each free after an event marking its last readers
//!   (`offload::GroupBuffer`), so a prefetch never waits for unrelated compute;
//! - a buffer the copy stream writes is allocated with [`Gpu::alloc_for_copies`], which
//!   makes the copy stream wait for the compute stream's work so far (the memory may have
//!   been freed there by work still queued);
//! - the compute stream reads what the copy stream wrote only after waiting for an event
//!   recorded after the copy, and a buffer the copy stream reads or writes is freed only
//!   after the compute stream has waited for that copy ([`Gpu::compute_after_copies`]) or
//!   the copy stream has been synchronized.

mod prequant;

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut,
    LaunchConfig, PushKernelArg,
};

use super::sources;
use crate::quant::{bnb4, dynamic, fp4, torch_mean, Format, QuantizedTensor, Scales};

/// A CUDA failure, coded ([`super::Error`]).
pub type GpuResult<T> = Result<T, super::Error>;

/// A failed driver call, as [`super::Error::Call`] naming the call.
fn err<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> super::Error {
    move |e| super::Error::Call(format!("{what}: {e:?}"))
}

/// One GPU with the kernels loaded.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// Where kernels run.
    pub stream: Arc<CudaStream>,
    /// Where host-to-device copies run, so they overlap the kernels.
    pub copy_stream: Arc<CudaStream>,
    /// One event per direction between the two streams, re-recorded for each ordering
    /// ([`Gpu::order`]): a wait takes the event's state when it is queued.
    edges: std::sync::Mutex<[CudaEvent; 2]>,
    functions: BTreeMap<&'static str, CudaFunction>,
    /// Tables the kernels read: NF4 midpoints and codebook, FP4 values, the dynamic map.
    nf4_mids: CudaSlice<f32>,
    nf4_table: CudaSlice<f32>,
    fp4_table: CudaSlice<f32>,
    dynamic_map: CudaSlice<f32>,
    /// The NF4 cell table of the version-2 quantizer ([`super::tables`]).
    nf4_cells: CudaSlice<u32>,
    /// Which quantize/dequantize kernels run; tests switch it to compare both.
    pub kernels_version: KernelVersion,
    /// CTAs of 256 threads resident on the whole device at once, per v2 kernel that
    /// strides over its tiles (the grid it is launched with, at most).
    resident: BTreeMap<&'static str, u32>,
    pub name: String,
    pub arch: String,
    /// Where the kernels came from (the on-disk cache or NVRTC just now).
    pub kernels: sources::KernelOrigins,
    /// Seconds [`Gpu::new`] spent creating the context, then waiting for and loading the
    /// kernels after it.
    pub opened: (f64, f64),
}

/// The generation of the NF4/FP4 and FP8-block kernels: v2 (`kernels/bnb4_v2.cu`,
/// `fp8_quantize_blocks_v2`) is built for memory throughput; v1 is the earlier set, kept
/// selectable (`WMAP_KERNELS=v1`) as a fallback. Both give the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelVersion {
    V1,
    V2,
}

impl KernelVersion {
    /// From `WMAP_KERNELS` (`v1` or `v2`); unset gives the default, anything else is
    /// refused rather than silently running the default.
    pub fn from_env() -> GpuResult<KernelVersion> {
        match std::env::var("WMAP_KERNELS").as_deref() {
            Err(std::env::VarError::NotPresent) => Ok(KernelVersion::DEFAULT),
            Ok("v1") => Ok(KernelVersion::V1),
            Ok("v2") => Ok(KernelVersion::V2),
            Ok(other) => Err(super::Error::Unsupported(format!(
                "WMAP_KERNELS=`{other}`: expected v1 or v2"
            ))),
            Err(_) => Err(super::Error::Unsupported(
                "WMAP_KERNELS is not valid UTF-8: expected v1 or v2".into(),
            )),
        }
    }

    /// v2: byte-identical to the CPU reference on H200s (2026-12-02: 398 format × tensor
    /// checks, 66 special-value checks, a 2 GiB tensor, the loader and weight-manager
    /// tests); under Nsight Compute NF4 quantize 2.9x, dequantize 1.4x and FP8 blocks 3.2x
    /// faster than v1 (BENCHMARKS.md).
    pub const DEFAULT: KernelVersion = KernelVersion::V2;
}

/// Device `ordinal`'s architecture (`sm_90`), read without a context.
fn arch_of(ordinal: usize) -> GpuResult<String> {
    use cudarc::driver::sys::{self, CUdevice_attribute as A};
    let ordinal = i32::try_from(ordinal)
        .map_err(|_| super::Error::Call(format!("device {ordinal} does not exist")))?;
    let mut dev: sys::CUdevice = 0;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the driver is initialized (devices were counted); each call writes one
    // integer through a valid pointer.
    let ok = unsafe {
        sys::cuDeviceGet(&mut dev, ordinal) == sys::CUresult::CUDA_SUCCESS
            && sys::cuDeviceGetAttribute(
                &mut major,
                A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                dev,
            ) == sys::CUresult::CUDA_SUCCESS
            && sys::cuDeviceGetAttribute(
                &mut minor,
                A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                dev,
            ) == sys::CUresult::CUDA_SUCCESS
    };
    if !ok {
        return Err(super::Error::Call(
            "cannot read the compute capability".into(),
        ));
    }
    Ok(format!("sm_{major}{minor}"))
}

/// Sets the device's stream-ordered pool to keep memory freed into it (release threshold
/// unlimited). By default the pool hands it back to the driver at every synchronize, so
/// the next allocation maps fresh pages: a quantize that allocates its outputs and waits
/// for them spent more time there than in its kernel. Best effort: on failure the pool
/// keeps its default.
fn keep_freed_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` receives the device's current pool, a handle the driver owns; the
    // attribute takes a u64 by pointer, read during the call.
    unsafe {
        if sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            );
        }
    }
}

/// Whether a CUDA driver and a GPU are there (never panics).
pub fn available() -> bool {
    // SAFETY: probing for a shared library has no preconditions.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    present && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

impl Gpu {
    /// Opens device `ordinal` and compiles the kernels for it.
    pub fn new(ordinal: usize) -> GpuResult<Gpu> {
        // SAFETY: probing for a shared library has no preconditions.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(super::Error::NoDriver);
        }
        let count = CudaContext::device_count().map_err(err("cannot count CUDA devices"))?;
        if ordinal as i32 >= count {
            return Err(super::Error::NoDevice { ordinal, count });
        }
        // Before the context: a bad WMAP_KERNELS is refused without opening the device.
        let kernels_version = KernelVersion::from_env()?;
        // The kernel images (loading libnvrtc for its version, reading the cache) need
        // only the architecture, so they are fetched while the context is created.
        let arch = arch_of(ordinal)?;
        let images = {
            let arch = arch.clone();
            std::thread::Builder::new()
                .name("wmap-kernels".into())
                .spawn(move || sources::device_code(&arch))
                .map_err(|e| super::Error::Call(format!("cannot start a thread: {e}")))?
        };
        let t0 = std::time::Instant::now();
        let ctx = CudaContext::new(ordinal).map_err(err("cannot open the CUDA device"));
        let context_seconds = t0.elapsed().as_secs_f64();
        let images = images
            .join()
            .unwrap_or_else(|_| Err(super::Error::Internal("kernel lookup panicked".into())));
        let ctx = ctx?;
        // SAFETY: before any buffer or stream exists; the module's rules (explicit events
        // between the two streams, and where each kind of buffer is freed) replace
        // cudarc's tracking.
        unsafe { ctx.disable_event_tracking() };
        keep_freed_memory(&ctx);
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let stream = ctx.new_stream().map_err(err("cannot create a stream"))?;
        let copy_stream = ctx.new_stream().map_err(err("cannot create a stream"))?;
        let (functions, kernels) = load_kernels(&ctx, &arch, images?)?;
        let opened = (
            context_seconds,
            t0.elapsed().as_secs_f64() - context_seconds,
        );
        let resident = resident_ctas(&ctx, &functions);
        let event = || ctx.new_event(None).map_err(err("cannot create an event"));
        let edges = std::sync::Mutex::new([event()?, event()?]);
        let up = |v: &[f32]| stream.clone_htod(v).map_err(err("cannot upload a table"));
        let cells = super::tables::nf4_cell_table()
            .ok_or_else(|| super::Error::Internal("two NF4 midpoints share a cell".into()))?;
        Ok(Gpu {
            nf4_cells: stream
                .clone_htod(&cells)
                .map_err(err("cannot upload a table"))?,
            kernels_version,
            resident,
            nf4_mids: up(&bnb4::NF4_MIDS)?,
            nf4_table: up(&bnb4::NF4)?,
            fp4_table: up(&bnb4::fp4_table())?,
            dynamic_map: up(&dynamic::signed_map())?,
            ctx,
            stream,
            copy_stream,
            edges,
            functions,
            kernels,
            opened,
            name,
            arch,
        })
    }

    fn f(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    pub fn sync(&self) -> GpuResult<()> {
        self.stream.synchronize().map_err(err("stream synchronize"))
    }

    /// The copy stream's later work waits for the compute stream's work queued so far.
    pub fn copies_after_compute(&self) -> GpuResult<()> {
        self.order(&self.stream, &self.copy_stream, 0)
    }

    /// The compute stream's later work waits for the copy stream's work queued so far.
    pub fn compute_after_copies(&self) -> GpuResult<()> {
        self.order(&self.copy_stream, &self.stream, 1)
    }

    /// `after` waits for what `first` has queued: edge event `which` recorded on `first`
    /// (no host wait). The lock keeps a record and its wait together across threads.
    fn order(&self, first: &CudaStream, after: &CudaStream, which: usize) -> GpuResult<()> {
        let edges = self
            .edges
            .lock()
            .map_err(|_| super::Error::Internal("the stream-order lock is poisoned".into()))?;
        edges[which].record(first).map_err(err("event record"))?;
        after.wait(&edges[which]).map_err(err("stream wait"))
    }

    /// `n` uninitialized elements on the compute stream, for the copy stream to write:
    /// the copy stream first waits for the compute stream's work so far, since the pool
    /// may hand back memory that work still uses (freed there, reused in its order).
    ///
    /// # Safety
    /// As [`CudaStream::alloc`]: the elements are uninitialized until written.
    pub unsafe fn alloc_for_copies<T: cudarc::driver::DeviceRepr>(
        &self,
        n: usize,
    ) -> GpuResult<CudaSlice<T>> {
        let slice = self
            .stream
            .alloc::<T>(n)
            .map_err(err("device allocation"))?;
        self.copies_after_compute()?;
        Ok(slice)
    }
}

type Functions = BTreeMap<&'static str, CudaFunction>;

/// The kernels launched with one CTA per resident slot, which stride over their tiles.
const STRIDING: [&str; 1] = ["bnb4_quantize_v2"];

/// Resident 256-thread CTAs of each [`STRIDING`] kernel: multiprocessors times the
/// occupancy. A failed query leaves the kernel out; it is then launched one CTA per tile,
/// which its grid-stride loop runs as well.
fn resident_ctas(ctx: &Arc<CudaContext>, functions: &Functions) -> BTreeMap<&'static str, u32> {
    use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
    let Ok(sms) = ctx.attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) else {
        return BTreeMap::new();
    };
    STRIDING
        .iter()
        .filter_map(|&name| {
            let per_sm = functions
                .get(name)?
                .occupancy_max_active_blocks_per_multiprocessor(256, 0, None)
                .ok()?;
            let total = u32::try_from(sms).ok()?.checked_mul(per_sm)?;
            (total > 0).then_some((name, total))
        })
        .collect()
}

/// Every kernel, from cached or fresh CUBINs; when a CUBIN will not load (a driver older
/// than the NVRTC that made it), the PTX of all files, which the driver compiles itself.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    arch: &str,
    (images, origins): (Vec<sources::DeviceCode>, sources::KernelOrigins),
) -> GpuResult<(Functions, sources::KernelOrigins)> {
    let images = images
        .into_iter()
        .map(|(name, image)| (name, cudarc::nvrtc::Ptx::from_binary(image)))
        .collect();
    match load_modules(ctx, images) {
        Ok(functions) => Ok((functions, origins)),
        Err(_) => {
            let ptx = sources::compile_all(arch)?;
            let compiled = ptx.len();
            let origins = sources::KernelOrigins {
                cached: 0,
                compiled,
            };
            Ok((load_modules(ctx, ptx)?, origins))
        }
    }
}

fn load_modules(
    ctx: &Arc<CudaContext>,
    modules: Vec<(&'static str, cudarc::nvrtc::Ptx)>,
) -> GpuResult<Functions> {
    let mut functions = BTreeMap::new();
    for (module, code) in modules {
        let m = ctx
            .load_module(code)
            .map_err(err("cannot load a compiled module"))?;
        for f in kernel_names(module) {
            functions.insert(
                *f,
                m.load_function(f)
                    .map_err(|e| format!("kernel {f}: {e:?}"))?,
            );
        }
    }
    Ok(functions)
}

/// The kernels each file defines, as [`Gpu::new`] loads them (`tests/kernels.rs` checks
/// every one is an entry of its compiled PTX, so a misspelt name fails without a GPU).
pub fn kernel_names(module: &str) -> &'static [&'static str] {
    match module {
        "bnb4" => &[
            "bnb4_quantize_small",
            "bnb4_quantize_large",
            "bnb4_dequantize",
            "dq_mean_partials",
            "dq_mean_finish",
            "dq_quantize",
            "dq_absmax",
        ],
        "bnb4_v2" => &["bnb4_quantize_v2", "bnb4_dequantize_v2"],
        "fp8" => &[
            "amax_bf16",
            "fp8_quantize_tensor",
            "fp8_quantize_rows",
            "fp8_quantize_blocks",
            "fp8_quantize_blocks_v2",
            "fp8_dequantize",
        ],
        "fp4" => &["nvfp4_quantize", "mxfp4_quantize", "fp4_dequantize"],
        "convert" => &["to_bf16", "fuse_copy", "spin"],
        "prequant" => &[
            "fp8_blocks_dequant",
            "bnb4_stored_dequant",
            "bnb4_stored_absmax",
            "fp4_stored_dequant",
            "swap_axes_bf16",
        ],
        _ => &[],
    }
}

/// Elements per CTA of the version-2 kernels (`Q_UNITS`, `DQ_UNITS` × 256 threads × 8).
const BNB4_Q_TILE: usize = 4 * 256 * 8;
const BNB4_DQ_TILE: usize = 8 * 256 * 8;

/// 256-thread CTAs for `n` elements in tiles of `tile`: one per tile, at most `resident`.
fn tiles(n: usize, tile: usize, resident: Option<&u32>) -> GpuResult<LaunchConfig> {
    let per_tile = n.div_ceil(tile).max(1);
    let ctas = match resident {
        Some(&r) => per_tile.min(r as usize) as u32,
        None => u32::try_from(per_tile).map_err(|_| {
            super::Error::Unsupported(format!("{n} elements: more tiles than one launch holds"))
        })?,
    };
    Ok(LaunchConfig {
        grid_dim: (ctas, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn grid(threads: u64, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (threads.div_ceil(block as u64).max(1) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A quantized tensor in device memory.
pub struct DeviceQuantized {
    pub format: Format,
    pub shape: Vec<u64>,
    pub data: CudaSlice<u8>,
    /// f32 scales (NF4/FP4 absmax, FP8) or byte scales (E4M3, E8M0, dynamic codes).
    pub scales_f32: Option<CudaSlice<f32>>,
    pub scales_u8: Option<CudaSlice<u8>>,
    pub scale_shape: Vec<u64>,
    /// Double quant: the absmax's own scales and offset.
    pub nested_absmax: Option<CudaSlice<f32>>,
    pub offset: Option<CudaSlice<f32>>,
    /// NVFP4's tensor scale.
    pub tensor_scale: Option<CudaSlice<f32>>,
}

impl DeviceQuantized {
    /// Bytes held on the device.
    pub fn byte_size(&self) -> u64 {
        let f = |s: &Option<CudaSlice<f32>>| s.as_ref().map_or(0, |s| 4 * s.len() as u64);
        self.data.len() as u64
            + f(&self.scales_f32)
            + self.scales_u8.as_ref().map_or(0, |s| s.len() as u64)
            + f(&self.nested_absmax)
            + f(&self.offset)
            + f(&self.tensor_scale)
    }

    /// Copies back into the CPU reference's type (for tests and export).
    pub fn to_host(&self, gpu: &Gpu) -> GpuResult<QuantizedTensor> {
        let s = &gpu.stream;
        let data = s.clone_dtoh(&self.data).map_err(err("copy back"))?;
        let f32s = |x: &Option<CudaSlice<f32>>| -> GpuResult<Option<Vec<f32>>> {
            x.as_ref()
                .map(|x| s.clone_dtoh(x).map_err(err("copy back")))
                .transpose()
        };
        let scales_u8 = self
            .scales_u8
            .as_ref()
            .map(|x| s.clone_dtoh(x).map_err(err("copy back")))
            .transpose()?;
        let nested = match (&self.nested_absmax, &self.offset, &scales_u8) {
            (Some(_), Some(_), Some(codes)) => Some(bnb4::Nested {
                codes: codes.clone(),
                absmax: f32s(&self.nested_absmax)?.unwrap_or_default(),
                offset: f32s(&self.offset)?
                    .unwrap_or_default()
                    .first()
                    .copied()
                    .unwrap_or(0.0),
                blocksize: bnb4::NESTED_BLOCKSIZE,
            }),
            _ => None,
        };
        let scales = match (f32s(&self.scales_f32)?, scales_u8) {
            (Some(v), _) => Scales::F32(v),
            (None, Some(v)) => Scales::U8(v),
            (None, None) => Scales::F32(Vec::new()),
        };
        Ok(QuantizedTensor {
            format: self.format,
            shape: self.shape.clone(),
            data,
            scales,
            scale_shape: self.scale_shape.clone(),
            nested,
            tensor_scale: f32s(&self.tensor_scale)?.and_then(|v| v.first().copied()),
        })
    }
}

/// Elements per chunk when `format` can be quantized piece by piece (its scales are local
/// to blocks or rows), or `None` when it needs the whole tensor first (a tensor-wide scale:
/// FP8 per-tensor, NVFP4). Chunks hold at least `budget` elements where the format allows.
pub fn chunk_elems(format: Format, shape: &[u64], budget: usize) -> Option<usize> {
    let cols = shape.last().copied().unwrap_or(1).max(1) as usize;
    match format {
        Format::Nf4 { blocksize } | Format::Nf4Dq { blocksize } | Format::Fp4 { blocksize } => {
            Some((budget / blocksize).max(1) * blocksize)
        }
        Format::Fp8PerChannel | Format::Mxfp4 => Some((budget / cols).max(1) * cols),
        Format::Fp8Block { block } => Some((budget / cols / block).max(1) * block * cols),
        Format::Fp8PerTensor | Format::Nvfp4 => None,
    }
}

impl Gpu {
    /// Quantizes a bf16 tensor already on the device. Kernels are queued on `self.stream`.
    pub fn quantize(
        &self,
        format: Format,
        x: &CudaView<'_, u16>,
        shape: &[u64],
    ) -> GpuResult<DeviceQuantized> {
        if chunk_elems(format, shape, x.len()).is_none() {
            return self.quantize_whole(format, x, shape);
        }
        let mut q = self.alloc_quantized(format, shape)?;
        self.quantize_chunk(x, &mut q, 0)?;
        self.finish_quantized(&mut q)?;
        Ok(q)
    }

    /// The final buffers of a chunkable format, to be filled by [`Gpu::quantize_chunk`].
    pub fn alloc_quantized(&self, format: Format, shape: &[u64]) -> GpuResult<DeviceQuantized> {
        let s = &self.stream;
        let n = shape.iter().product::<u64>() as usize;
        let cols = shape.last().copied().unwrap_or(1).max(1) as usize;
        let rows = n / cols;
        // SAFETY: u8/f32 have no invalid bit patterns, and every byte is written by the
        // chunk kernels (the tests compare every byte with the CPU) before it is read. Only
        // the compute stream touches them: no ordering with the copy stream is needed.
        let u8s = |k: usize| unsafe { s.alloc::<u8>(k.max(1)) }.map_err(err("device allocation"));
        let f32s = |k: usize| unsafe { s.alloc::<f32>(k.max(1)) }.map_err(err("device allocation"));
        let (data, scales_f32, scales_u8, scale_shape) = match format {
            Format::Nf4 { blocksize } | Format::Nf4Dq { blocksize } | Format::Fp4 { blocksize } => {
                if !blocksize.is_power_of_two() || !(32..=4096).contains(&blocksize) {
                    return Err(super::Error::Unsupported(format!("blocksize {blocksize}: the kernels take powers of two from 32 to 4096, as bitsandbytes does")));
                }
                let nb = n.div_ceil(blocksize);
                (u8s(n.div_ceil(2))?, Some(f32s(nb)?), None, vec![nb as u64])
            }
            Format::Fp8PerChannel => (u8s(n)?, Some(f32s(rows)?), None, vec![rows as u64, 1]),
            Format::Fp8Block { block } => {
                let (br, bc) = (rows.div_ceil(block), cols.div_ceil(block));
                (
                    u8s(n)?,
                    Some(f32s(br * bc)?),
                    None,
                    vec![br as u64, bc as u64],
                )
            }
            Format::Mxfp4 => {
                let bpr = cols.div_ceil(fp4::MXFP4_BLOCK);
                (
                    u8s(rows * cols.div_ceil(2))?,
                    None,
                    Some(u8s(rows * bpr)?),
                    vec![rows as u64, bpr as u64],
                )
            }
            Format::Fp8PerTensor | Format::Nvfp4 => {
                return Err(super::Error::Unsupported(format!(
                    "{} needs the whole tensor",
                    format.name()
                )))
            }
        };
        Ok(DeviceQuantized {
            format,
            shape: shape.to_vec(),
            data,
            scales_f32,
            scales_u8,
            scale_shape,
            nested_absmax: None,
            offset: None,
            tensor_scale: None,
        })
    }

    /// Quantizes `x`, the elements starting at `offset` of `q`'s tensor, into `q`'s
    /// buffers. `offset` and the chunk length follow [`chunk_elems`]' alignment.
    pub fn quantize_chunk(
        &self,
        x: &CudaView<'_, u16>,
        q: &mut DeviceQuantized,
        offset: usize,
    ) -> GpuResult<()> {
        let cols = q.shape.last().copied().unwrap_or(1).max(1) as usize;
        let (r0, rows) = (offset / cols, x.len() / cols);
        match q.format {
            Format::Nf4 { blocksize } | Format::Nf4Dq { blocksize } | Format::Fp4 { blocksize } => {
                let kind: i32 = if matches!(q.format, Format::Fp4 { .. }) {
                    1
                } else {
                    0
                };
                let mut packed = q.data.slice_mut(offset / 2..);
                let absmax = q
                    .scales_f32
                    .as_mut()
                    .ok_or_else(|| super::Error::Internal("no absmax buffer".into()))?;
                let mut absmax = absmax.slice_mut(offset / blocksize..);
                self.bnb4_quantize(x, &mut packed, &mut absmax, blocksize, kind)?;
            }
            Format::Fp8PerChannel => {
                let mut data = q.data.slice_mut(r0 * cols..);
                let mut scales = q
                    .scales_f32
                    .as_mut()
                    .ok_or_else(|| super::Error::Internal("no scales".into()))?
                    .slice_mut(r0..);
                let cfg = LaunchConfig {
                    grid_dim: (rows as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                self.launch_rows(
                    "fp8_quantize_rows",
                    cfg,
                    x,
                    (rows, cols),
                    &mut data,
                    &mut scales,
                )?;
            }
            Format::Fp8Block { block } => {
                let bc = cols.div_ceil(block);
                let mut data = q.data.slice_mut(r0 * cols..);
                let mut scales = q
                    .scales_f32
                    .as_mut()
                    .ok_or_else(|| super::Error::Internal("no scales".into()))?
                    .slice_mut((r0 / block) * bc..);
                let cfg = LaunchConfig {
                    grid_dim: (bc as u32, rows.div_ceil(block) as u32, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let name = match self.kernels_version {
                    KernelVersion::V2 => "fp8_quantize_blocks_v2",
                    KernelVersion::V1 => "fp8_quantize_blocks",
                };
                self.launch_rows(name, cfg, x, (rows, cols), &mut data, &mut scales)?;
            }
            Format::Mxfp4 => {
                let bpr = cols.div_ceil(fp4::MXFP4_BLOCK);
                let mut data = q.data.slice_mut(r0 * cols.div_ceil(2)..);
                let mut scales = q
                    .scales_u8
                    .as_mut()
                    .ok_or_else(|| super::Error::Internal("no scales".into()))?
                    .slice_mut(r0 * bpr..);
                let cfg = grid((rows * bpr) as u64, 128);
                self.launch_rows(
                    "mxfp4_quantize",
                    cfg,
                    x,
                    (rows, cols),
                    &mut data,
                    &mut scales,
                )?;
            }
            Format::Fp8PerTensor | Format::Nvfp4 => {
                return Err(super::Error::Unsupported(format!(
                    "{} needs the whole tensor",
                    q.format.name()
                )))
            }
        }
        Ok(())
    }

    /// The bnb 4-bit quantizer (`kind` 0 NF4, 1 FP4) of `x` into `packed` and `absmax`:
    /// v2 (which reads the NF4 cell table) or v1's small-block kernel for blocks up to
    /// 256, v1's one CTA per block above.
    fn bnb4_quantize(
        &self,
        x: &CudaView<'_, u16>,
        packed: &mut CudaViewMut<'_, u8>,
        absmax: &mut CudaViewMut<'_, f32>,
        blocksize: usize,
        kind: i32,
    ) -> GpuResult<()> {
        let (n, bs) = (x.len() as i64, blocksize as i32);
        let v2 = blocksize <= 256 && self.kernels_version == KernelVersion::V2;
        let (name, cfg) = if v2 {
            let resident = self.resident.get("bnb4_quantize_v2");
            ("bnb4_quantize_v2", tiles(x.len(), BNB4_Q_TILE, resident)?)
        } else if blocksize <= 256 {
            ("bnb4_quantize_small", grid((n as u64).div_ceil(8), 256))
        } else {
            let cfg = LaunchConfig {
                grid_dim: (x.len().div_ceil(blocksize) as u32, 1, 1),
                block_dim: ((blocksize / 8) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            ("bnb4_quantize_large", cfg)
        };
        let mut b = self.stream.launch_builder(self.f(name));
        b.arg(x).arg(packed).arg(absmax).arg(&n).arg(&bs).arg(&kind);
        if v2 {
            b.arg(&self.nf4_cells);
        } else {
            b.arg(&self.nf4_mids);
        }
        // SAFETY: the three kernels take these arguments; the views hold the chunk's
        // outputs (sizes from `alloc_quantized`).
        unsafe { b.launch(cfg) }.map_err(err(name))?;
        Ok(())
    }

    /// Launches one of the row-block quantizers, whose kernels all take
    /// `(x, rows, cols, data, scales)`.
    fn launch_rows<S>(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        x: &CudaView<'_, u16>,
        (rows, cols): (usize, usize),
        data: &mut CudaViewMut<'_, u8>,
        scales: &mut CudaViewMut<'_, S>,
    ) -> GpuResult<()> {
        let (rows, cols) = (rows as i64, cols as i64);
        let mut b = self.stream.launch_builder(self.f(name));
        b.arg(x).arg(&rows).arg(&cols).arg(data).arg(scales);
        // SAFETY: the caller names a kernel of this signature and passes views that hold
        // the chunk's rows (sizes from `alloc_quantized`).
        unsafe { b.launch(cfg) }.map_err(err(name))?;
        Ok(())
    }

    /// After the last chunk: double quantization quantizes the complete absmax.
    pub fn finish_quantized(&self, q: &mut DeviceQuantized) -> GpuResult<()> {
        if !matches!(q.format, Format::Nf4Dq { .. }) {
            return Ok(());
        }
        let s = &self.stream;
        let absmax = q
            .scales_f32
            .take()
            .ok_or_else(|| super::Error::Internal("no absmax buffer".into()))?;
        let nblocks = absmax.len();
        let nb = nblocks as i64;
        let offset = self.mean_offset(&absmax)?;
        // SAFETY: every element is written by the kernel below before it is read.
        let mut codes =
            unsafe { s.alloc::<u8>(nblocks.max(1)) }.map_err(err("device allocation"))?;
        let mut nested = unsafe { s.alloc::<f32>(nblocks.div_ceil(bnb4::NESTED_BLOCKSIZE).max(1)) }
            .map_err(err("device allocation"))?;
        let cfg = LaunchConfig {
            grid_dim: (nblocks.div_ceil(bnb4::NESTED_BLOCKSIZE) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(self.f("dq_quantize"));
        b.arg(&absmax)
            .arg(&offset)
            .arg(&self.dynamic_map)
            .arg(&mut codes)
            .arg(&mut nested)
            .arg(&nb);
        // SAFETY: as above.
        unsafe { b.launch(cfg) }.map_err(err("dq_quantize"))?;
        q.scales_u8 = Some(codes);
        q.nested_absmax = Some(nested);
        q.offset = Some(offset);
        Ok(())
    }

    /// bitsandbytes' offset, `absmax.mean()` in the order of float32 additions of torch
    /// 2.11 on an H200 (`quant::torch_mean` picks the launch and replays it on the CPU;
    /// the kernels replay it here), so CPU and GPU give the same bits on any device.
    pub fn mean_offset(&self, absmax: &CudaSlice<f32>) -> GpuResult<CudaSlice<f32>> {
        let s = &self.stream;
        let n = absmax.len();
        if n == 0 {
            return s
                .clone_htod(&[0f32])
                .map_err(err("cannot upload the offset"));
        }
        let cfg = torch_mean::MeanConfig::new(n, torch_mean::H200_TORCH_2_11).ok_or_else(|| {
            super::Error::Internal(format!(
                "{n} absmax values: too many for torch's mean order"
            ))
        })?;
        let (nb, ctas, factor) = (n as i64, cfg.ctas as i64, cfg.factor());
        let vectorized = i32::from(cfg.vectorized);
        let increasing = i32::from(cfg.warp_order == torch_mean::WarpOrder::Increasing);
        // SAFETY: the offset is written by the last kernel below, each partial by
        // `dq_mean_partials` before `dq_mean_finish` reads it.
        let mut offset = unsafe { s.alloc::<f32>(1) }.map_err(err("device allocation"))?;
        let mut partials = unsafe { s.alloc::<f32>(cfg.ctas) }.map_err(err("device allocation"))?;
        let launch = |ctas: usize| LaunchConfig {
            grid_dim: (ctas as u32, 1, 1),
            block_dim: (cfg.block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(self.f("dq_mean_partials"));
        b.arg(absmax)
            .arg(&nb)
            .arg(&vectorized)
            .arg(&increasing)
            .arg(&factor)
            .arg(&mut partials)
            .arg(&mut offset);
        // SAFETY: `absmax` holds `n` floats from a fresh (aligned) allocation; `partials`
        // one per CTA; the block width is a power of two up to 512 (the shared array).
        unsafe { b.launch(launch(cfg.ctas)) }.map_err(err("dq_mean_partials"))?;
        if cfg.ctas > 1 {
            let mut b = s.launch_builder(self.f("dq_mean_finish"));
            b.arg(&partials)
                .arg(&ctas)
                .arg(&increasing)
                .arg(&factor)
                .arg(&mut offset);
            // SAFETY: as above.
            unsafe { b.launch(launch(1)) }.map_err(err("dq_mean_finish"))?;
        }
        Ok(offset)
    }

    /// The formats with a tensor-wide scale: amax first, then one pass.
    fn quantize_whole(
        &self,
        format: Format,
        x: &CudaView<'_, u16>,
        shape: &[u64],
    ) -> GpuResult<DeviceQuantized> {
        let s = &self.stream;
        let n = x.len() as i64;
        let cols = shape.last().copied().unwrap_or(1).max(1) as i64;
        let rows = n / cols;
        // SAFETY: every byte of these outputs is written by the kernels below.
        let zeros_u8 =
            |k: usize| unsafe { s.alloc::<u8>(k.max(1)) }.map_err(err("device allocation"));
        let zeros_f32 =
            |k: usize| unsafe { s.alloc::<f32>(k.max(1)) }.map_err(err("device allocation"));
        let amax = self.amax(x)?;
        let mut q = DeviceQuantized {
            format,
            shape: shape.to_vec(),
            data: zeros_u8(0)?,
            scales_f32: None,
            scales_u8: None,
            scale_shape: Vec::new(),
            nested_absmax: None,
            offset: None,
            tensor_scale: None,
        };
        if format == Format::Nvfp4 {
            let bpr = (cols as usize).div_ceil(fp4::NVFP4_BLOCK);
            let mut data = zeros_u8(rows as usize * (cols as usize).div_ceil(2))?;
            let mut scales = zeros_u8(rows as usize * bpr)?;
            let mut ts = zeros_f32(1)?;
            let mut b = s.launch_builder(self.f("nvfp4_quantize"));
            b.arg(x)
                .arg(&rows)
                .arg(&cols)
                .arg(&amax)
                .arg(&mut data)
                .arg(&mut scales)
                .arg(&mut ts);
            // SAFETY: as above.
            unsafe { b.launch(grid((rows as usize * bpr) as u64, 128)) }
                .map_err(err("nvfp4_quantize"))?;
            q.scale_shape = vec![rows as u64, bpr as u64];
            q.data = data;
            q.scales_u8 = Some(scales);
            q.tensor_scale = Some(ts);
        } else {
            let mut data = zeros_u8(n as usize)?;
            let mut scale = zeros_f32(1)?;
            let mut b = s.launch_builder(self.f("fp8_quantize_tensor"));
            b.arg(x).arg(&n).arg(&amax).arg(&mut data).arg(&mut scale);
            // SAFETY: as above.
            unsafe { b.launch(grid((n as u64).div_ceil(8), 256)) }
                .map_err(err("fp8_quantize_tensor"))?;
            q.data = data;
            q.scales_f32 = Some(scale);
        }
        Ok(q)
    }

    /// f32 (`src_dtype` 0), f16 (1) or bf16 (2) bytes to bf16, rounding to nearest even.
    pub fn to_bf16(
        &self,
        src: &CudaView<'_, u8>,
        src_dtype: i32,
        out: &mut CudaSlice<u16>,
    ) -> GpuResult<()> {
        let n = out.len() as i64;
        let mut b = self.stream.launch_builder(self.f("to_bf16"));
        b.arg(src).arg(&src_dtype).arg(out).arg(&n);
        // SAFETY: `src` holds `n` elements of the given dtype; `out` holds `n`.
        unsafe { b.launch(grid(n as u64, 256)) }.map_err(err("to_bf16"))?;
        Ok(())
    }

    /// Occupies the GPU for about `cycles` clocks (one block): stand-in compute.
    pub fn spin(&self, cycles: i64) -> GpuResult<()> {
        let mut b = self.stream.launch_builder(self.f("spin"));
        b.arg(&cycles);
        // SAFETY: the kernel takes one i64 and touches no memory.
        unsafe { b.launch(grid(1, 1)) }.map_err(err("spin"))?;
        Ok(())
    }

    /// max |x| of a bf16 tensor, as float bits on the device.
    fn amax(&self, x: &CudaView<'_, u16>) -> GpuResult<CudaSlice<u32>> {
        let s = &self.stream;
        let n = x.len() as i64;
        let mut bits = s.alloc_zeros::<u32>(1).map_err(err("device allocation"))?;
        let mut b = s.launch_builder(self.f("amax_bf16"));
        b.arg(x).arg(&n).arg(&mut bits);
        // SAFETY: as above.
        unsafe { b.launch(grid((n as u64).div_ceil(8), 256)) }.map_err(err("amax_bf16"))?;
        Ok(bits)
    }

    /// Dequantizes into a bf16 device buffer of `numel` elements.
    pub fn dequantize(&self, q: &DeviceQuantized, out: &mut CudaSlice<u16>) -> GpuResult<()> {
        let parts = Parts {
            format: q.format,
            shape: &q.shape,
            data: q.data.as_view(),
            scales_f32: q.scales_f32.as_ref().map(|x| x.as_view()),
            scales_u8: q.scales_u8.as_ref().map(|x| x.as_view()),
            nested: q.nested_absmax.as_ref().map(|x| x.as_view()),
            offset: q.offset.as_ref().map(|x| x.as_view()),
            tensor_scale: q.tensor_scale.as_ref().map(|x| x.as_view()),
        };
        self.dequantize_parts(&parts, out)
    }

    /// Dequantizes a quantized tensor given as views (e.g. into an offload group's buffer).
    pub fn dequantize_parts(&self, p: &Parts<'_>, out: &mut CudaSlice<u16>) -> GpuResult<()> {
        let s = &self.stream;
        let n = p.shape.iter().product::<u64>() as i64;
        let cols = p.shape.last().copied().unwrap_or(1).max(1) as i64;
        let rows = n / cols;
        match p.format {
            Format::Nf4 { blocksize } | Format::Fp4 { blocksize } => {
                let table = if matches!(p.format, Format::Fp4 { .. }) {
                    &self.fp4_table
                } else {
                    &self.nf4_table
                };
                let absmax = p
                    .scales_f32
                    .as_ref()
                    .ok_or_else(|| super::Error::Internal("no absmax".into()))?;
                self.bnb4_dequantize(&p.data, absmax, out, n, blocksize, table)?;
            }
            Format::Nf4Dq { blocksize } => {
                let codes = p
                    .scales_u8
                    .as_ref()
                    .ok_or_else(|| super::Error::Internal("no absmax codes".into()))?;
                let nested = p
                    .nested
                    .as_ref()
                    .ok_or_else(|| super::Error::Internal("no nested absmax".into()))?;
                let offset = p
                    .offset
                    .as_ref()
                    .ok_or_else(|| super::Error::Internal("no offset".into()))?;
                let nb = codes.len() as i64;
                // SAFETY: every element is written by `dq_absmax` before it is read.
                let mut absmax = unsafe { s.alloc::<f32>(codes.len().max(1)) }
                    .map_err(err("device allocation"))?;
                let mut b = s.launch_builder(self.f("dq_absmax"));
                b.arg(codes)
                    .arg(nested)
                    .arg(offset)
                    .arg(&self.dynamic_map)
                    .arg(&mut absmax)
                    .arg(&nb);
                // SAFETY: as above.
                unsafe { b.launch(grid(nb as u64, 256)) }.map_err(err("dq_absmax"))?;
                self.bnb4_dequantize(
                    &p.data,
                    &absmax.as_view(),
                    out,
                    n,
                    blocksize,
                    &self.nf4_table,
                )?;
            }
            Format::Fp8PerTensor | Format::Fp8PerChannel | Format::Fp8Block { .. } => {
                let mode: i32 = match p.format {
                    Format::Fp8PerTensor => 0,
                    Format::Fp8PerChannel => 1,
                    _ => 2,
                };
                let scales = p
                    .scales_f32
                    .as_ref()
                    .ok_or_else(|| super::Error::Internal("no scales".into()))?;
                let mut b = s.launch_builder(self.f("fp8_dequantize"));
                b.arg(&p.data)
                    .arg(scales)
                    .arg(out)
                    .arg(&n)
                    .arg(&cols)
                    .arg(&mode);
                // SAFETY: as above.
                unsafe { b.launch(grid(n as u64, 256)) }.map_err(err("fp8_dequantize"))?;
            }
            Format::Nvfp4 | Format::Mxfp4 => {
                let mode: i32 = if p.format == Format::Nvfp4 { 0 } else { 1 };
                let scales = p
                    .scales_u8
                    .as_ref()
                    .ok_or_else(|| super::Error::Internal("no scales".into()))?;
                let one = s.clone_htod(&[1.0f32]).map_err(err("upload"))?;
                let one_view = one.as_view();
                let ts = p.tensor_scale.as_ref().unwrap_or(&one_view);
                let mut b = s.launch_builder(self.f("fp4_dequantize"));
                b.arg(&p.data)
                    .arg(scales)
                    .arg(ts)
                    .arg(out)
                    .arg(&rows)
                    .arg(&cols)
                    .arg(&mode);
                // SAFETY: as above.
                unsafe { b.launch(grid(n as u64, 256)) }.map_err(err("fp4_dequantize"))?;
            }
        }
        Ok(())
    }
}

impl Gpu {
    /// `out = bf16(table[code] * absmax)` over the first `n` elements of `out`.
    fn bnb4_dequantize(
        &self,
        data: &CudaView<'_, u8>,
        absmax: &CudaView<'_, f32>,
        out: &mut CudaSlice<u16>,
        n: i64,
        blocksize: usize,
        table: &CudaSlice<f32>,
    ) -> GpuResult<()> {
        let bs = blocksize as i32;
        let (name, cfg) = match self.kernels_version {
            KernelVersion::V2 => ("bnb4_dequantize_v2", tiles(n as usize, BNB4_DQ_TILE, None)?),
            KernelVersion::V1 => ("bnb4_dequantize", grid((n as u64).div_ceil(8), 256)),
        };
        let mut b = self.stream.launch_builder(self.f(name));
        b.arg(data).arg(absmax).arg(out).arg(&n).arg(&bs).arg(table);
        // SAFETY: both kernels take these arguments; `data` and `absmax` hold the codes
        // and scales of `n` elements (the caller's quantized tensor), `out` holds `n`.
        unsafe { b.launch(cfg) }.map_err(err(name))?;
        Ok(())
    }
}

/// A quantized tensor's pieces as device views.
pub struct Parts<'a> {
    pub format: Format,
    pub shape: &'a [u64],
    pub data: CudaView<'a, u8>,
    pub scales_f32: Option<CudaView<'a, f32>>,
    pub scales_u8: Option<CudaView<'a, u8>>,
    pub nested: Option<CudaView<'a, f32>>,
    pub offset: Option<CudaView<'a, f32>>,
    pub tensor_scale: Option<CudaView<'a, f32>>,
}
