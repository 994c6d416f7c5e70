//! Pre-quantized sources in the GPU loader: FP8 blocks, bitsandbytes 4-bit, MXFP4 and
//! NVFP4 as the checkpoint stores them, decoded on the device.
//!
//! Input: a plan target and the load's format. Output, as the host loader gives it, byte
//! for byte:
//! - **pass-through**: when the host would hand the stored codes over untouched
//!   ([`crate::load::prequant::stored_as`] decides, for both), those bytes are uploaded
//!   into the device quantizer's layout ([`upload`]);
//! - **device decode**: otherwise the stored tensors travel through the pinned ring as
//!   they are (a quarter or half of the bf16 bytes) and the `kernels/prequant.cu` kernels
//!   decode them into the bf16 target, exactly as the host does; a load that quantizes
//!   then quantizes that buffer on the device (FP8 release → NF4).
//!
//! The device decode takes targets assembled by concatenation (fuse on dim 0, stack),
//! reshapes and transposes (GPT-OSS's MXFP4 experts) of pre-quantized sources and bf16
//! reads, into a bf16 target. Every other target with a pre-quantized source (a slice, an
//! interleaving fuse, a conversion, a non-bf16 target) is assembled by the host, which
//! decodes it there: every format has a device kernel, so the host fallback is for those
//! recipe shapes only.

use cudarc::driver::{CudaSlice, CudaViewMut};

use super::{alloc_bytes, DeviceTensor, Piece, Source, Stager};
use crate::checkpoint::{Checkpoint, Dtype};
use crate::cuda::{DeviceQuantized, Error, Gpu, GpuResult};
use crate::plan::{Recipe, Target};
use crate::quant::{bnb4, Format, QuantizedTensor, Scales};

/// What [`target`] made of a target with a pre-quantized source.
pub(super) struct Prequant {
    pub tensor: DeviceTensor,
    /// Bytes held on the device for a while on top of the result: the stored tensors,
    /// and the bf16 buffer a quantized or transposed target passes through.
    pub transient: u64,
    /// The stored codes were passed through (else decoded on the device).
    pub passed_through: bool,
}

/// The device tensor for `t` when it has a pre-quantized source the GPU path serves;
/// `None`: the target is not one (the caller loads it as any other).
pub(super) fn target(
    gpu: &Gpu,
    stager: &mut Stager<'_>,
    ckpt: &Checkpoint,
    t: &Target,
    format: Option<Format>,
) -> GpuResult<Option<Prequant>> {
    if let Some(q) = crate::load::prequant::stored_as(ckpt, t, format)? {
        let q = upload(gpu, stager, ckpt, &q)?;
        return Ok(Some(Prequant {
            tensor: DeviceTensor::Quantized(Box::new(q)),
            transient: 0,
            passed_through: true,
        }));
    }
    if t.dtype != Dtype::Bf16 || !has_stored(&t.recipe) || !decodable(&t.recipe) {
        return Ok(None);
    }
    let bytes = super::target_len(t)?;
    let mut data = alloc_bytes(gpu, bytes)?;
    decode(gpu, stager, ckpt, &t.recipe, &mut data.as_view_mut())?;
    let mut transient = crate::load::read_bytes(t);
    if has_transpose(&t.recipe) {
        transient += bytes as u64;
    }
    let Some(f) = format.filter(|_| t.quantizable) else {
        let tensor = DeviceTensor::Full {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data,
        };
        return Ok(Some(Prequant {
            tensor,
            transient,
            passed_through: false,
        }));
    };
    // SAFETY: bf16 bytes, an even count, read as u16 elements.
    let x = unsafe { data.transmute::<u16>(bytes / 2) }
        .ok_or_else(|| Error::Internal("a bf16 target is not u16-sized".into()))?;
    let q = gpu.quantize(f, &x, &t.shape)?;
    let tensor = DeviceTensor::Quantized(Box::new(q));
    Ok(Some(Prequant {
        tensor,
        transient: transient + bytes as u64,
        passed_through: false,
    }))
}

/// Whether a transpose is in `r`: it decodes into a buffer of its own first.
fn has_transpose(r: &Recipe) -> bool {
    match r {
        Recipe::Transpose { .. } => true,
        Recipe::Fuse { parts, .. } | Recipe::Stack { parts } => parts.iter().any(has_transpose),
        Recipe::Reshape { source, .. } | Recipe::Slice { source, .. } => has_transpose(source),
        _ => false,
    }
}

/// Whether a pre-quantized source is anywhere in `r`.
fn has_stored(r: &Recipe) -> bool {
    match r {
        Recipe::Fp8Blocks { .. } | Recipe::Bnb4 { .. } | Recipe::Mxfp4 { .. } => true,
        Recipe::Nvfp4 { .. } => true,
        Recipe::Fuse { parts, .. } | Recipe::Stack { parts } => parts.iter().any(has_stored),
        Recipe::Reshape { source, .. }
        | Recipe::Transpose { source, .. }
        | Recipe::Slice { source, .. } => has_stored(source),
        Recipe::Read { .. } | Recipe::Window { .. } | Recipe::Tied { .. } => false,
    }
}

/// Whether [`decode`] assembles `r` into a bf16 target. A rank's column window (or a
/// tile cut of a stored tensor) is assembled by the CPU path instead.
fn decodable(r: &Recipe) -> bool {
    if r.reads().iter().any(|x| matches!(x, Recipe::Window { .. })) {
        return false;
    }
    match r {
        Recipe::Read { dtype, .. } => *dtype == Dtype::Bf16,
        Recipe::Fp8Blocks { .. } | Recipe::Bnb4 { .. } | Recipe::Mxfp4 { .. } => true,
        Recipe::Nvfp4 { .. } => true,
        Recipe::Fuse { dim: 0, parts } | Recipe::Stack { parts } => parts.iter().all(decodable),
        Recipe::Reshape { source, .. } | Recipe::Transpose { source, .. } => decodable(source),
        Recipe::Fuse { .. } | Recipe::Slice { .. } | Recipe::Tied { .. } => false,
        Recipe::Window { .. } => false,
    }
}

/// bf16 bytes of a recipe's result.
fn bf16_bytes(r: &Recipe) -> GpuResult<usize> {
    crate::load::bytes_of(&r.shape(), Dtype::Bf16)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| Error::Unsupported("a source is too large".into()))
}

/// Writes `r`'s bf16 elements into `dst` (exactly their size); `r` is [`decodable`].
fn decode(
    gpu: &Gpu,
    stager: &mut Stager<'_>,
    ckpt: &Checkpoint,
    r: &Recipe,
    dst: &mut CudaViewMut<'_, u8>,
) -> GpuResult<()> {
    match r {
        Recipe::Read { .. } => stage_read_into(gpu, stager, ckpt, r, dst),
        Recipe::Fuse { parts, .. } | Recipe::Stack { parts } => {
            let mut at = 0usize;
            for p in parts {
                let n = bf16_bytes(p)?;
                let end = at.checked_add(n).filter(|&e| e <= dst.len());
                let end = end.ok_or_else(|| Error::Internal("a part overruns".into()))?;
                decode(gpu, stager, ckpt, p, &mut dst.slice_mut(at..end))?;
                at = end;
            }
            Ok(())
        }
        Recipe::Reshape { source, .. } => decode(gpu, stager, ckpt, source, dst),
        Recipe::Transpose { dims, source } => {
            let n = bf16_bytes(source)?;
            let mut tmp = alloc_bytes(gpu, n)?;
            decode(gpu, stager, ckpt, source, &mut tmp.as_view_mut())?;
            wait_for_copies(gpu)?;
            // SAFETY: bf16 bytes, an even count, as u16 elements.
            let x = unsafe { tmp.transmute::<u16>(n / 2) };
            let out = unsafe { dst.transmute_mut::<u16>(n / 2) };
            let (Some(x), Some(mut out)) = (x, out) else {
                return Err(Error::Internal("a transpose's buffers".into()));
            };
            gpu.swap_axes(&x, &source.shape(), *dims, &mut out)
        }
        _ => decode_stored(gpu, stager, ckpt, r, dst),
    }
}

/// One pre-quantized source: the host's checks, the stored tensors through the ring, the
/// kernel into `dst`.
fn decode_stored(
    gpu: &Gpu,
    stager: &mut Stager<'_>,
    ckpt: &Checkpoint,
    r: &Recipe,
    dst: &mut CudaViewMut<'_, u8>,
) -> GpuResult<()> {
    let Some(layout) = crate::load::prequant::layout(ckpt, r, Dtype::Bf16)? else {
        return Err(Error::Internal("a recipe the device cannot decode".into()));
    };
    let stored = layout.try_map(|read| {
        let n = match read {
            Recipe::Read { length, .. } => usize::try_from(*length).ok(),
            _ => None,
        };
        let n = n.ok_or_else(|| Error::Internal("a stored tensor is no read".into()))?;
        let mut buf = alloc_bytes(gpu, n)?;
        stage_read_into(gpu, stager, ckpt, read, &mut buf.as_view_mut())?;
        Ok::<CudaSlice<u8>, Error>(buf)
    })?;
    wait_for_copies(gpu)?;
    let n = dst.len() / 2;
    // The kernels write every element of the layout: exactly the view, never past it.
    if stored.numel() != Some(n as u64) {
        return Err(Error::Internal(
            "a stored source's size differs from its place".into(),
        ));
    }
    // SAFETY: bf16 bytes, an even count, as u16 elements.
    let mut out = unsafe { dst.transmute_mut::<u16>(n) }
        .ok_or_else(|| Error::Internal("a bf16 view".into()))?;
    gpu.dequantize_stored(&stored, &mut out)
}

/// The compute stream waits for what the copy stream has queued (no host wait).
fn wait_for_copies(gpu: &Gpu) -> GpuResult<()> {
    let copied = gpu
        .copy_stream
        .record_event(None)
        .map_err(|e| format!("{e:?}"))?;
    gpu.stream.wait(&copied).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// A whole checkpoint tensor, as stored, into `dst` (its size) through the pinned ring.
fn stage_read_into(
    gpu: &Gpu,
    stager: &mut Stager<'_>,
    ckpt: &Checkpoint,
    r: &Recipe,
    dst: &mut CudaViewMut<'_, u8>,
) -> GpuResult<()> {
    let Recipe::Read {
        file,
        offset,
        length,
        ..
    } = r
    else {
        return Err(Error::Internal("a stored tensor is no read".into()));
    };
    let n = usize::try_from(*length)
        .ok()
        .filter(|&n| n == dst.len())
        .ok_or_else(|| Error::Internal("a read's size differs from its place".into()))?;
    let pieces = [Piece {
        shard: *file,
        offset: *offset,
        len: *length,
        at: 0,
    }];
    stager.stage(gpu, ckpt, &Source::Pieces(&pieces), 0, n, dst)
}

/// The stored codes and scales the host passes through, in the device quantizer's layout
/// (what [`Gpu::quantize`] makes of the same format): codes, F32 or byte scales, and for
/// double quant the codes' nested absmax and offset. The host read them already (its
/// checks need the quant state), so they travel from there through the pinned ring.
fn upload(
    gpu: &Gpu,
    stager: &mut Stager<'_>,
    ckpt: &Checkpoint,
    q: &QuantizedTensor,
) -> GpuResult<DeviceQuantized> {
    let up = Upload { gpu, ckpt };
    let (nested_absmax, offset) = match &q.nested {
        None => (None, None),
        Some(n) if n.blocksize == bnb4::NESTED_BLOCKSIZE => (
            Some(up.f32s(stager, &n.absmax)?),
            Some(up.f32s(stager, &[n.offset])?),
        ),
        Some(n) => {
            return Err(Error::Unsupported(format!(
                "double quant in nested blocks of {}: the GPU store holds bitsandbytes' {} (load with --device cpu)",
                n.blocksize,
                bnb4::NESTED_BLOCKSIZE
            )))
        }
    };
    let (scales_f32, scales_u8) = match &q.scales {
        Scales::F32(v) => (Some(up.f32s(stager, v)?), None),
        Scales::U8(v) => (None, Some(up.bytes(stager, v)?)),
    };
    Ok(DeviceQuantized {
        format: q.format,
        shape: q.shape.clone(),
        data: up.bytes(stager, &q.data)?,
        scales_f32,
        scales_u8,
        scale_shape: q.scale_shape.clone(),
        nested_absmax,
        offset,
        tensor_scale: q.tensor_scale.map(|s| up.f32s(stager, &[s])).transpose()?,
    })
}

/// Host bytes to new device buffers through the pinned ring.
struct Upload<'a> {
    gpu: &'a Gpu,
    /// Unread: [`Source::Assembled`] bytes need no checkpoint.
    ckpt: &'a Checkpoint,
}

impl Upload<'_> {
    fn bytes(&self, stager: &mut Stager<'_>, bytes: &[u8]) -> GpuResult<CudaSlice<u8>> {
        let mut buf = alloc_bytes(self.gpu, bytes.len())?;
        let mut view = buf.slice_mut(..bytes.len());
        let src = Source::Assembled(bytes);
        stager.stage(self.gpu, self.ckpt, &src, 0, bytes.len(), &mut view)?;
        Ok(buf)
    }

    fn f32s(&self, stager: &mut Stager<'_>, values: &[f32]) -> GpuResult<CudaSlice<f32>> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // SAFETY: every element is written by the copy below before it is read.
        let mut buf = unsafe { self.gpu.alloc_for_copies::<f32>(values.len().max(1)) }?;
        // SAFETY: f32 elements written as their little-endian bytes.
        let mut view = unsafe { buf.transmute_mut::<u8>(bytes.len()) }
            .ok_or_else(|| Error::Internal("an f32 view".into()))?;
        let src = Source::Assembled(&bytes);
        stager.stage(self.gpu, self.ckpt, &src, 0, bytes.len(), &mut view)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(fixture: &str) -> crate::plan::Plan {
        use crate::driver::{self, ModelSource};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json")));
        let Ok(c) = c.as_mut() else {
            panic!("the fixture compiles")
        };
        driver::bind(c, &dir, true).expect("the fixture binds").plan
    }

    /// Every target of the pre-quantized fixtures with a stored source is decoded on the
    /// device, none is left to the host: FP8 and bnb fuses (double quant too) and
    /// GPT-OSS's transposed MXFP4 experts.
    #[test]
    fn the_prequant_fixtures_decode_on_the_device() {
        for (fixture, stored) in [
            ("hf/qwen3_fp8", 8),
            ("hf/llama_bnb_nf4", 8),
            ("hf/llama_bnb_nf4_dq", 8),
            ("prequant/gpt_oss_release", 4),
        ] {
            let plan = plan(fixture);
            let with: Vec<&Target> = plan
                .targets
                .iter()
                .filter(|t| has_stored(&t.recipe))
                .collect();
            assert_eq!(with.len(), stored, "{fixture}");
            for t in with {
                assert!(
                    t.dtype == Dtype::Bf16 && decodable(&t.recipe),
                    "{fixture}: {}",
                    t.name
                );
            }
        }
    }

    /// A slice or an interleaving fuse of a stored source is the host's to assemble.
    #[test]
    fn slices_and_interleaving_fuses_stay_on_the_host() {
        let plan = plan("hf/qwen3_fp8");
        let t = plan
            .targets
            .iter()
            .find(|t| t.name == "layers.0.attention.out")
            .unwrap();
        let slice = Recipe::Slice {
            dim: 0,
            start: 0,
            end: 128,
            step: 1,
            source: Box::new(t.recipe.clone()),
        };
        let interleave = Recipe::Fuse {
            dim: 1,
            parts: vec![t.recipe.clone(), t.recipe.clone()],
        };
        for r in [slice, interleave] {
            assert!(has_stored(&r) && !decodable(&r), "{r:?}");
        }
        assert!(decodable(&t.recipe) && !has_transpose(&t.recipe));
    }
}
