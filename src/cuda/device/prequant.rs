//! Pre-quantized sources decoded on the device (`kernels/prequant.cu`).
//!
//! Input: a source's stored tensors already on the device, exactly as the checkpoint holds
//! them (a [`Layout`] of device buffers). Output: bf16 elements in a device view, byte for
//! byte what the host decode (`crate::load::prequant`) writes. Kernels run on the compute
//! stream; the caller orders the stored tensors' copies before them.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::{err, grid, Gpu, GpuResult};
use crate::cuda::Error;
use crate::load::prequant::{Absmax, Layout};
use crate::quant::bnb4;

/// Elements per thread block of the elementwise decode kernels.
const BLOCK: u32 = 256;

fn to_i64(v: u64, what: &str) -> GpuResult<i64> {
    i64::try_from(v).map_err(|_| Error::Unsupported(format!("{what} {v} is too large")))
}

impl Gpu {
    /// Decodes `stored` into `out`, which holds exactly its elements (bf16).
    pub fn dequantize_stored(
        &self,
        stored: &Layout<CudaSlice<u8>>,
        out: &mut CudaViewMut<'_, u16>,
    ) -> GpuResult<()> {
        match stored {
            Layout::Fp8Blocks {
                codes,
                scales,
                scales_bf16,
                rows,
                cols,
                block,
            } => {
                let dim = |v: u64| to_i64(v, "an FP8 dim");
                let (rows, cols) = (dim(*rows)?, dim(*cols)?);
                let (br, bc) = (dim(block[0])?, dim(block[1])?);
                let bf16 = i32::from(*scales_bf16);
                let mut b = self.stream.launch_builder(self.f("fp8_blocks_dequant"));
                b.arg(codes).arg(scales).arg(&bf16).arg(out);
                b.arg(&rows).arg(&cols).arg(&br).arg(&bc);
                let n = (rows as u64).saturating_mul(cols as u64);
                // SAFETY: the arguments match the kernel's signature; `codes` holds
                // rows × cols bytes and `scales` the tile grid (the layout was checked
                // against the reads they were copied from); `out` holds rows × cols.
                unsafe { b.launch(grid(n, BLOCK)) }.map_err(err("fp8_blocks_dequant"))?;
            }
            Layout::Bnb4 {
                kind,
                packed,
                absmax,
                n,
                blocksize,
            } => self.bnb4_stored(*kind, packed, absmax, (*n, *blocksize), out)?,
            Layout::Fp4 {
                nvfp4,
                packed,
                scales,
                tensor_scale,
                rows,
                cols,
            } => {
                let (rows, cols) = (to_i64(*rows, "an FP4 dim")?, to_i64(*cols, "an FP4 dim")?);
                let mode = i32::from(!*nvfp4);
                let mut b = self.stream.launch_builder(self.f("fp4_stored_dequant"));
                b.arg(packed).arg(scales).arg(tensor_scale).arg(out);
                b.arg(&rows).arg(&cols).arg(&mode);
                let n = (rows as u64).saturating_mul(cols as u64);
                // SAFETY: as above: packed rows × cols/2 bytes, one scale byte per block.
                unsafe { b.launch(grid(n, BLOCK)) }.map_err(err("fp4_stored_dequant"))?;
            }
        }
        Ok(())
    }

    /// bitsandbytes 4-bit: double quant's absmax first, then the codes.
    fn bnb4_stored(
        &self,
        kind: bnb4::Kind,
        packed: &CudaSlice<u8>,
        absmax: &Absmax<CudaSlice<u8>>,
        (n, blocksize): (u64, u64),
        out: &mut CudaViewMut<'_, u16>,
    ) -> GpuResult<()> {
        let undone = match absmax {
            Absmax::F32(_) => None,
            Absmax::Double {
                codes,
                nested,
                offset,
                blocksize,
            } => Some(self.undo_double_stored(codes, nested, *offset, *blocksize)?),
        };
        let absmax: CudaView<'_, u8> = match (absmax, &undone) {
            (Absmax::F32(a), _) => a.as_view(),
            // SAFETY: f32 values passed as their bytes, which the kernel reads as floats.
            (_, Some(v)) => unsafe { v.transmute::<u8>(4 * v.len()) }
                .ok_or_else(|| Error::Internal("an absmax view".into()))?,
            (Absmax::Double { .. }, None) => {
                return Err(Error::Internal("double quant without its absmax".into()))
            }
        };
        let s = &self.stream;
        let table = match kind {
            bnb4::Kind::Nf4 => &self.nf4_table,
            bnb4::Kind::Fp4 => &self.fp4_table,
        };
        let (n, bs) = (
            to_i64(n, "a bnb4 size")?,
            to_i64(blocksize, "a bnb4 block size")?,
        );
        let mut b = s.launch_builder(self.f("bnb4_stored_dequant"));
        b.arg(packed)
            .arg(&absmax)
            .arg(out)
            .arg(&n)
            .arg(&bs)
            .arg(table);
        // SAFETY: the arguments match the kernel; `packed` holds ⌈n/2⌉ bytes and `absmax`
        // ⌈n/bs⌉ values (checked by the layout), `out` holds n.
        unsafe { b.launch(grid(n as u64, BLOCK)) }.map_err(err("bnb4_stored_dequant"))?;
        Ok(())
    }

    /// Double quant's absmax from the stored codes, nested absmax and offset, with the
    /// stored nested block size (the quantizer's `dq_absmax` fixes it at 256).
    fn undo_double_stored(
        &self,
        codes: &CudaSlice<u8>,
        nested: &CudaSlice<u8>,
        offset: f32,
        blocksize: u64,
    ) -> GpuResult<CudaSlice<f32>> {
        let s = &self.stream;
        let count = to_i64(codes.len() as u64, "an absmax count")?;
        let nbs = to_i64(blocksize, "a nested block size")?;
        // SAFETY: every element is written by the kernel below before it is read.
        let mut values =
            unsafe { s.alloc::<f32>(codes.len().max(1)) }.map_err(err("device allocation"))?;
        let mut b = s.launch_builder(self.f("bnb4_stored_absmax"));
        b.arg(codes).arg(nested).arg(&offset).arg(&nbs);
        b.arg(&self.dynamic_map).arg(&mut values).arg(&count);
        // SAFETY: the arguments match the kernel; `nested` holds ⌈count/nbs⌉ values
        // (checked by the layout), `values` holds `count`.
        unsafe { b.launch(grid(count as u64, BLOCK)) }.map_err(err("bnb4_stored_absmax"))?;
        Ok(values)
    }

    /// Swaps axes `dims` of the bf16 tensor `x` of `shape` into `out`.
    pub fn swap_axes(
        &self,
        x: &CudaView<'_, u16>,
        shape: &[u64],
        dims: [usize; 2],
        out: &mut CudaViewMut<'_, u16>,
    ) -> GpuResult<()> {
        let (a, b) = (dims[0].min(dims[1]), dims[0].max(dims[1]));
        let size = |r: std::ops::Range<usize>| -> GpuResult<i64> {
            let dims = shape.get(r).unwrap_or(&[]);
            let n = crate::ir::numel(dims)
                .ok_or_else(|| Error::Unsupported("a transposed shape overflows".into()))?;
            to_i64(n, "a transposed size")
        };
        if b >= shape.len() {
            return Err(Error::Internal(format!(
                "transpose of dims {dims:?} in a shape of rank {}",
                shape.len()
            )));
        }
        let sizes = [
            size(0..a)?,
            size(a..a + 1)?,
            size(a + 1..b)?,
            size(b..b + 1)?,
            size(b + 1..shape.len())?,
        ];
        let n = sizes.iter().map(|&v| v as u64).product::<u64>();
        let mut l = self.stream.launch_builder(self.f("swap_axes_bf16"));
        l.arg(x).arg(out);
        for v in &sizes {
            l.arg(v);
        }
        // SAFETY: the arguments match the kernel; `x` and `out` hold the n elements.
        unsafe { l.launch(grid(n, BLOCK)) }.map_err(err("swap_axes_bf16"))?;
        Ok(())
    }
}
