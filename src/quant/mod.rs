//! Quantization: formats, the CPU reference quantizers that define them, and
//! [`QuantizedTensor`].
//!
//! Input: a full-precision tensor (bf16, f16 or f32 bytes) and a [`Format`]. Output: a
//! [`QuantizedTensor`] — packed codes, scales, nested scales — that knows its byte size
//! and dequantizes into a caller's buffer. The bit layouts are those other tools write
//! (bitsandbytes NF4/FP4 and double quant, FP8 E4M3, NVFP4, MXFP4); the golden tests hold
//! this code to bitsandbytes' and torch's own bytes. Work is spread over all cores.

/// The body of a hot loop's entry point: calls `$portable` (an `#[inline(always)]`
/// function) in the widest build the CPU runs — the same code compiled again with AVX-512
/// (F and BW) where the compiler can build it (`wmap_avx512`, see build.rs), with AVX2, or
/// as it is. The builds add only vector width: exact operations in the same order (Rust
/// fuses no multiply-add), so the same results; tests hold each entry point to its
/// portable function. `WMAP_NO_AVX2` forces the portable build.
macro_rules! widest_build {
    ($portable:path => ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {{
        #[cfg(all(target_arch = "x86_64", wmap_avx512))]
        #[allow(clippy::incompatible_msrv)]
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
            $portable($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
            $portable($($arg),*)
        }
        #[cfg(all(target_arch = "x86_64", wmap_avx512))]
        if $crate::quant::has_avx512() {
            // SAFETY: the CPU reports AVX-512F and BW, the only features this build adds.
            return unsafe { avx512($($arg),*) };
        }
        #[cfg(target_arch = "x86_64")]
        if $crate::quant::has_avx2() {
            // SAFETY: the CPU reports AVX2, the only feature this build adds.
            return unsafe { avx2($($arg),*) };
        }
        $portable($($arg),*)
    }};
}

pub mod bnb4;
pub mod dequant;
pub mod dynamic;
pub mod fp4;
pub mod fp8;
// Only with a rustc that has the AVX-512 intrinsics (build.rs), which is newer than the
// crate's rust-version: the lint about that is answered by the cfg.
#[cfg(target_arch = "x86_64")]
mod nf4_avx2;
#[cfg(all(target_arch = "x86_64", wmap_avx512))]
#[allow(clippy::incompatible_msrv)]
mod nf4_avx512;
mod store;
pub mod torch_mean;

pub use store::{QuantReport, QuantStore, Stored};

/// Whether the hot loops may run their AVX2 builds (`std` caches the CPUID answer).
/// `WMAP_NO_AVX2` set in the environment forces the baseline build, to compare the two.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static NO_AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    std::arch::is_x86_feature_detected!("avx2")
        && !*NO_AVX2.get_or_init(|| std::env::var_os("WMAP_NO_AVX2").is_some())
}

/// Whether the hot loops may run their AVX-512 (F and BW) builds: where the CPU has
/// them, the compiler can build them (`wmap_avx512`, see build.rs), and `WMAP_NO_AVX2`
/// does not force the baseline.
#[cfg(all(target_arch = "x86_64", wmap_avx512))]
#[allow(clippy::incompatible_msrv)]
fn has_avx512() -> bool {
    has_avx2()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

use crate::checkpoint::Dtype;

/// A quantization format and its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// bitsandbytes NF4, blockwise absmax (blocksize 32…4096, default 64).
    Nf4 {
        blocksize: usize,
    },
    /// NF4 with the absmax quantized again (8-bit dynamic map, blocks of 256).
    Nf4Dq {
        blocksize: usize,
    },
    /// bitsandbytes FP4 (not OCP E2M1).
    Fp4 {
        blocksize: usize,
    },
    /// FP8 E4M3 with one scale for the tensor.
    Fp8PerTensor,
    /// FP8 E4M3 with one scale per row.
    Fp8PerChannel,
    /// FP8 E4M3 with one scale per `block × block` tile (DeepSeek-V3: 128).
    Fp8Block {
        block: usize,
    },
    Nvfp4,
    Mxfp4,
}

impl Format {
    /// The CLI's names: `nf4`, `nf4-dq`, `fp4`, `fp8`, `fp8-channel`, `fp8-block`, `nvfp4`, `mxfp4`.
    pub fn parse(name: &str) -> Option<Format> {
        Some(match name {
            "nf4" => Format::Nf4 { blocksize: 64 },
            "nf4-dq" => Format::Nf4Dq { blocksize: 64 },
            "fp4" => Format::Fp4 { blocksize: 64 },
            "fp8" => Format::Fp8PerTensor,
            "fp8-channel" => Format::Fp8PerChannel,
            "fp8-block" => Format::Fp8Block { block: 128 },
            "nvfp4" => Format::Nvfp4,
            "mxfp4" => Format::Mxfp4,
            _ => return None,
        })
    }

    pub const NAMES: &'static [&'static str] = &[
        "nf4",
        "nf4-dq",
        "fp4",
        "fp8",
        "fp8-channel",
        "fp8-block",
        "nvfp4",
        "mxfp4",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Nf4 { .. } => "nf4",
            Format::Nf4Dq { .. } => "nf4-dq",
            Format::Fp4 { .. } => "fp4",
            Format::Fp8PerTensor => "fp8",
            Format::Fp8PerChannel => "fp8-channel",
            Format::Fp8Block { .. } => "fp8-block",
            Format::Nvfp4 => "nvfp4",
            Format::Mxfp4 => "mxfp4",
        }
    }

    /// Mean |w − dequant(quant(w))| on unit Gaussian data, for comparison in reports
    /// (NF4 bs64: bitsandbytes' own test figure; the others measured with this reference).
    pub fn expected_gaussian_error(self) -> Option<f64> {
        match self {
            Format::Nf4 { blocksize: 64 } | Format::Nf4Dq { blocksize: 64 } => Some(0.0728),
            _ => None,
        }
    }
}

/// The scales of a quantized tensor, in the dtype its format stores them in.
#[derive(Clone, Debug, PartialEq)]
pub enum Scales {
    F32(Vec<f32>),
    /// E4M3 (NVFP4), E8M0 (MXFP4) or 8-bit dynamic codes (NF4 double quant).
    U8(Vec<u8>),
}

/// A quantized tensor: codes, scales and the second level where the format has one.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    pub format: Format,
    /// The logical shape.
    pub shape: Vec<u64>,
    /// Packed codes: 4-bit formats two per byte, FP8 one per byte.
    pub data: Vec<u8>,
    pub scales: Scales,
    /// Shape of `scales` (`[nblocks]`, `[rows, 1]`, `[rows/128, cols/128]`, `[rows, cols/16]`).
    pub scale_shape: Vec<u64>,
    /// NF4 double quant: the absmax's own scales and offset.
    pub nested: Option<bnb4::Nested>,
    /// NVFP4: the per-tensor scale (`weight_scale_2`).
    pub tensor_scale: Option<f32>,
}

impl QuantizedTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    /// Exact bytes of codes, scales and nested scales.
    pub fn byte_size(&self) -> u64 {
        let scales = match &self.scales {
            Scales::F32(v) => 4 * v.len(),
            Scales::U8(v) => v.len(),
        };
        let nested = self.nested.as_ref().map_or(0, |n| 4 * n.absmax.len() + 4);
        let tensor = self.tensor_scale.map_or(0, |_| 4);
        (self.data.len() + scales + nested + tensor) as u64
    }

    /// Dequantizes into `out` (`numel` f32 values), in parallel chunks.
    pub fn dequantize_f32(&self, out: &mut [f32]) {
        let n = self.numel().min(out.len());
        dequant::Dequantizer::new(self).all(&mut out[..n]);
    }

    /// Reconstruction error against `x`, the values this tensor was quantized from,
    /// without a tensor-sized buffer.
    pub fn error_against(&self, x: &[f32]) -> ErrorStats {
        dequant::Dequantizer::new(self).error_against(x)
    }

    /// Dequantizes into bf16 (round to nearest even), as the runtime's compute dtype.
    pub fn dequantize_bf16(&self, out: &mut [half::bf16]) {
        let n = self.numel().min(out.len());
        dequant::Dequantizer::new(self).all_bf16(&mut out[..n]);
    }
}

/// The exact widening of one bf16/f16/f32 element's little-endian bytes; `None` for
/// other dtypes (which go through the loader's conversion).
fn widener(dtype: Dtype) -> Option<fn(&[u8]) -> f32> {
    match dtype {
        Dtype::Bf16 => Some(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)),
        Dtype::F16 => Some(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::F32 => Some(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        _ => None,
    }
}

/// bf16 little-endian bytes to f32 (exact: the bits shifted up), as many as `out` holds.
/// Built for AVX2 where the CPU has it, like the quantizers' loops it feeds.
fn widen_bf16(src: &[u8], out: &mut [f32]) {
    widest_build!(widen_bf16_portable => (src: &[u8], out: &mut [f32]))
}

#[inline(always)]
fn widen_bf16_portable(src: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
    }
}

/// Widens bf16/f16/f32 bytes to f32 (exactly; any other dtype goes through the
/// loader's conversion).
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    use rayon::prelude::*;
    match widener(dtype) {
        Some(widen) => bytes.par_chunks_exact(dtype.size()).map(widen).collect(),
        None => {
            let n = bytes.len() / dtype.size().max(1);
            let mut out = vec![0u8; n * 4];
            crate::load::convert(dtype, bytes, Dtype::F32, &mut out);
            out.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
    }
}

/// Whether `format` quantizes `dtype` a run at a time ([`quantize_runs`]): the bnb and
/// FP8 formats, from bf16, f16 or f32.
pub fn streams(format: Format, dtype: Dtype) -> bool {
    let runs = bnb_params(format).is_some()
        || matches!(
            format,
            Format::Fp8Block { .. } | Format::Fp8PerChannel | Format::Fp8PerTensor
        );
    runs && widener(dtype).is_some()
}

/// Widens bf16/f16/f32 little-endian bytes into `out` (as many as it holds): one
/// monomorphic loop per dtype, since through a function pointer the call per element
/// cost more than the quantization itself. Other dtypes never reach here ([`streams`]).
fn widen(dtype: Dtype, src: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::Bf16 => widen_bf16(src, out),
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// [`quantize`] straight from a tensor's bytes, and its reconstruction error. The bnb
/// and FP8 formats widen bf16/f16 a run at a time (no float32 copy of the tensor); the
/// others widen the whole tensor first.
pub fn quantize_bytes(
    format: Format,
    dtype: Dtype,
    bytes: &[u8],
    shape: &[u64],
) -> (QuantizedTensor, ErrorStats) {
    if !streams(format, dtype) {
        let x = to_f32(dtype, bytes);
        let q = quantize(format, &x, shape);
        let err = q.error_against(&x);
        return (q, err);
    }
    let es = dtype.size();
    quantize_filled(
        format,
        bytes.len() / es,
        shape,
        &|start, out: &mut [f32]| widen(dtype, &bytes[es * start..], out),
    )
}

thread_local! {
    /// The checkpoint bytes of the run a thread is widening ([`quantize_runs`]): a few
    /// hundred KiB, reused for every run, so they stay in cache and need no fresh pages.
    static PIECE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`quantize_bytes`] over a target read from the checkpoint a run at a time, each run
/// into a small per-thread buffer and widened from there: the tensor's full-precision
/// bytes never land in memory of their own (fresh pages cost more than quantizing).
/// Gives the same bytes as [`quantize_bytes`] over the assembled tensor. A format or
/// dtype that does not stream ([`streams`]) is an internal error: the caller asks first.
pub fn quantize_runs(
    format: Format,
    runs: &crate::load::Runs,
    shape: &[u64],
) -> Result<(QuantizedTensor, ErrorStats), crate::diag::Diagnostic> {
    let dtype = runs.dtype;
    if !streams(format, dtype) {
        return Err(crate::diag::Diagnostic::new(
            crate::diag::Code::E0901,
            format!(
                "{} does not quantize {dtype:?} run by run; this is a bug in wmapc",
                format.name()
            ),
        ));
    }
    let es = dtype.size();
    let failed = std::sync::Mutex::new(None);
    let fill = |start: usize, out: &mut [f32]| {
        PIECE.with_borrow_mut(|piece| {
            piece.resize(out.len() * es, 0);
            match runs.read((start * es) as u64, piece) {
                Ok(()) => widen(dtype, piece, out),
                Err(d) => {
                    // The first failure is reported; the run's values are moot.
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(d);
                    out.fill(0.0);
                }
            }
        })
    };
    let done = quantize_filled(format, runs.len() as usize / es, shape, &fill);
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(d) => Err(d),
        None => Ok(done),
    }
}

/// A bnb 4-bit or FP8 format over `n` values that `fill` widens a run at a time, and its
/// error.
fn quantize_filled(
    format: Format,
    n: usize,
    shape: &[u64],
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> (QuantizedTensor, ErrorStats) {
    let q = match (format, bnb_params(format)) {
        (_, Some((kind, blocksize))) => quantize_bnb(format, kind, blocksize, n, shape, fill),
        (Format::Fp8Block { block }, None) => {
            let cols = shape.last().copied().unwrap_or(1).max(1) as usize;
            let rows = n / cols;
            let (data, s) = fp8::quantize_blocks_with(rows, cols, block, fill);
            QuantizedTensor {
                format,
                shape: shape.to_vec(),
                data,
                scales: Scales::F32(s),
                scale_shape: vec![rows.div_ceil(block) as u64, cols.div_ceil(block) as u64],
                nested: None,
                tensor_scale: None,
            }
        }
        (Format::Fp8PerChannel, None) => {
            let cols = shape.last().copied().unwrap_or(1).max(1) as usize;
            let (data, s) = fp8::quantize_per_channel_with(n / cols, cols, fill);
            QuantizedTensor {
                format,
                shape: shape.to_vec(),
                scale_shape: vec![s.len() as u64, 1],
                data,
                scales: Scales::F32(s),
                nested: None,
                tensor_scale: None,
            }
        }
        (Format::Fp8PerTensor, None) => {
            let (data, s) = fp8::quantize_per_tensor_with(n, fill);
            QuantizedTensor {
                format,
                shape: shape.to_vec(),
                scale_shape: Vec::new(),
                data,
                scales: Scales::F32(vec![s]),
                nested: None,
                tensor_scale: None,
            }
        }
        _ => {
            let mut x = vec![0f32; n];
            fill(0, &mut x);
            quantize(format, &x, shape)
        }
    };
    let err = dequant::Dequantizer::new(&q).error_with(n, fill);
    (q, err)
}

/// A bnb 4-bit format over `n` values that `fill` widens a run at a time.
fn quantize_bnb(
    format: Format,
    kind: bnb4::Kind,
    blocksize: usize,
    n: usize,
    shape: &[u64],
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> QuantizedTensor {
    let (packed, absmax) = bnb4::quantize_with(kind, n, blocksize, fill);
    let mut q = QuantizedTensor {
        format,
        shape: shape.to_vec(),
        scale_shape: vec![absmax.len() as u64],
        data: packed,
        scales: Scales::F32(Vec::new()),
        nested: None,
        tensor_scale: None,
    };
    if matches!(format, Format::Nf4Dq { .. }) {
        let nested = bnb4::double_quantize(&absmax, bnb4::mean_offset(&absmax));
        q.scales = Scales::U8(nested.codes.clone());
        q.nested = Some(nested);
    } else {
        q.scales = Scales::F32(absmax);
    }
    q
}

/// The bnb 4-bit kind and block size of a format, `None` for the others.
fn bnb_params(format: Format) -> Option<(bnb4::Kind, usize)> {
    match format {
        Format::Nf4 { blocksize } | Format::Nf4Dq { blocksize } => {
            Some((bnb4::Kind::Nf4, blocksize))
        }
        Format::Fp4 { blocksize } => Some((bnb4::Kind::Fp4, blocksize)),
        _ => None,
    }
}

/// Quantizes `x` (logical `shape`, row-major) into `format`. 2-D views for row-wise
/// formats take the last dim as columns.
pub fn quantize(format: Format, x: &[f32], shape: &[u64]) -> QuantizedTensor {
    let cols = shape.last().copied().unwrap_or(1).max(1) as usize;
    let rows = x.len() / cols;
    let mut q = QuantizedTensor {
        format,
        shape: shape.to_vec(),
        data: Vec::new(),
        scales: Scales::F32(Vec::new()),
        scale_shape: Vec::new(),
        nested: None,
        tensor_scale: None,
    };
    match format {
        Format::Nf4 { blocksize } | Format::Fp4 { blocksize } => {
            let kind = if matches!(format, Format::Fp4 { .. }) {
                bnb4::Kind::Fp4
            } else {
                bnb4::Kind::Nf4
            };
            let (packed, absmax) = bnb4::quantize(kind, x, blocksize);
            q.scale_shape = vec![absmax.len() as u64];
            q.data = packed;
            q.scales = Scales::F32(absmax);
        }
        Format::Nf4Dq { blocksize } => {
            let (packed, absmax) = bnb4::quantize(bnb4::Kind::Nf4, x, blocksize);
            let nested = bnb4::double_quantize(&absmax, bnb4::mean_offset(&absmax));
            q.scale_shape = vec![absmax.len() as u64];
            q.data = packed;
            q.scales = Scales::U8(nested.codes.clone());
            q.nested = Some(nested);
        }
        Format::Fp8PerTensor => {
            let (data, s) = fp8::quantize_per_tensor(x);
            q.data = data;
            q.scales = Scales::F32(vec![s]);
        }
        Format::Fp8PerChannel => {
            let (data, s) = fp8::quantize_per_channel(x, cols);
            q.scale_shape = vec![rows as u64, 1];
            q.data = data;
            q.scales = Scales::F32(s);
        }
        Format::Fp8Block { block } => {
            let (data, s) = fp8::quantize_blocks(x, rows, cols, block);
            q.scale_shape = vec![rows.div_ceil(block) as u64, cols.div_ceil(block) as u64];
            q.data = data;
            q.scales = Scales::F32(s);
        }
        Format::Nvfp4 => {
            let (data, s, ws2) = fp4::nvfp4_quantize(x, cols);
            q.scale_shape = vec![rows as u64, cols.div_ceil(fp4::NVFP4_BLOCK) as u64];
            q.data = data;
            q.scales = Scales::U8(s);
            q.tensor_scale = Some(ws2);
        }
        Format::Mxfp4 => {
            let (data, s) = fp4::mxfp4_quantize(x, cols);
            q.scale_shape = vec![rows as u64, cols.div_ceil(fp4::MXFP4_BLOCK) as u64];
            q.data = data;
            q.scales = Scales::U8(s);
        }
    }
    q
}

/// Reconstruction error of one tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorStats {
    pub sum_abs: f64,
    pub max_abs: f64,
    pub sum_sq_ref: f64,
    pub sum_sq_err: f64,
    pub count: u64,
}

impl ErrorStats {
    /// The error of `approx` against `reference`. Eight partial sums, one per lane of a
    /// run of eight, merged at the end: a single running f64 sum waits for the previous
    /// add at every element, which made the sampled error report cost almost half as
    /// much as quantizing. The order of the adds is fixed, so the result is too.
    pub fn measure(reference: &[f32], approx: &[f32]) -> ErrorStats {
        widest_build!(ErrorStats::measure_portable => (reference: &[f32], approx: &[f32]) -> ErrorStats)
    }

    #[inline(always)]
    fn measure_portable(reference: &[f32], approx: &[f32]) -> ErrorStats {
        const LANES: usize = 8;
        let n = reference.len().min(approx.len());
        let (r, a) = (&reference[..n], &approx[..n]);
        let (mut abs, mut max) = ([0f64; LANES], [0f64; LANES]);
        let (mut sq_ref, mut sq_err) = ([0f64; LANES], [0f64; LANES]);
        let (rc, ac) = (r.chunks_exact(LANES), a.chunks_exact(LANES));
        let tail = rc.remainder().iter().zip(ac.remainder());
        for (rs, xs) in rc.zip(ac) {
            for k in 0..LANES {
                let (x, y) = (f64::from(rs[k]), f64::from(xs[k]));
                let e = (x - y).abs();
                abs[k] += e;
                // `max` that skips NaN, as a select that vectorizes (`f64::max` did not):
                // `e` is never negative, and `max[k]`, from +0, never NaN.
                max[k] = if e > max[k] { e } else { max[k] };
                sq_ref[k] += x * x;
                sq_err[k] += e * e;
            }
        }
        for (k, (&x, &y)) in tail.enumerate() {
            let (x, y) = (f64::from(x), f64::from(y));
            let e = (x - y).abs();
            abs[k] += e;
            max[k] = if e > max[k] { e } else { max[k] };
            sq_ref[k] += x * x;
            sq_err[k] += e * e;
        }
        let mut s = ErrorStats {
            count: n as u64,
            ..ErrorStats::default()
        };
        for k in 0..LANES {
            s.sum_abs += abs[k];
            s.max_abs = s.max_abs.max(max[k]);
            s.sum_sq_ref += sq_ref[k];
            s.sum_sq_err += sq_err[k];
        }
        s
    }

    pub fn merge(&mut self, o: &ErrorStats) {
        self.sum_abs += o.sum_abs;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.sum_sq_ref += o.sum_sq_ref;
        self.sum_sq_err += o.sum_sq_err;
        self.count += o.count;
    }

    pub fn mean_abs(&self) -> f64 {
        self.sum_abs / self.count.max(1) as f64
    }

    /// ‖w − ŵ‖ / ‖w‖.
    pub fn relative(&self) -> f64 {
        (self.sum_sq_err / self.sum_sq_ref.max(f64::MIN_POSITIVE)).sqrt()
    }
}

/// Slice `i` of a stacked quantized tensor, as ranges into the whole one.
#[derive(Clone, Debug, PartialEq)]
pub struct LeadingSlice {
    pub data: std::ops::Range<usize>,
    /// In scale elements (f32 or u8, as the tensor's scales are).
    pub scales: std::ops::Range<usize>,
    pub scale_shape: Vec<u64>,
}

/// Where slice `i` along the leading dim of a quantized tensor lies (its ranges of codes
/// and of scales, in elements), from the tensor's description alone: its format and
/// shape, whether its scales are f32 (else bytes) and whether it has a tensor scale.
/// Shared by host tensors and device tensors, which slice the same way.
pub fn leading_slice(
    format: Format,
    shape: &[u64],
    f32_scales: bool,
    tensor_scale: bool,
    i: usize,
) -> Option<LeadingSlice> {
    let lead = *shape.first()? as usize;
    if i >= lead {
        return None;
    }
    let inner = &shape[1..];
    let per = inner.iter().product::<u64>() as usize;
    let cols = inner.last().copied().unwrap_or(1).max(1) as usize;
    let rows = per / cols;
    let at = |len: usize| i * len..(i + 1) * len;
    let (data, scales, scale_shape) = match (format, f32_scales) {
        (Format::Nf4 { blocksize } | Format::Fp4 { blocksize }, true)
            if per % blocksize == 0 && per % 2 == 0 =>
        {
            let nb = per / blocksize;
            (at(per / 2), at(nb), vec![nb as u64])
        }
        (Format::Fp8PerChannel, true) => (at(per), at(rows), vec![rows as u64, 1]),
        (Format::Fp8Block { block }, true) if rows % block == 0 => {
            let (br, bc) = (rows / block, cols.div_ceil(block));
            (at(per), at(br * bc), vec![br as u64, bc as u64])
        }
        (Format::Mxfp4 | Format::Nvfp4, false) if format == Format::Mxfp4 || tensor_scale => {
            let block = if format == Format::Mxfp4 {
                fp4::MXFP4_BLOCK
            } else {
                fp4::NVFP4_BLOCK
            };
            let (ppr, bpr) = (cols.div_ceil(2), cols.div_ceil(block));
            (
                at(rows * ppr),
                at(rows * bpr),
                vec![rows as u64, bpr as u64],
            )
        }
        _ => return None,
    };
    Some(LeadingSlice {
        data,
        scales,
        scale_shape,
    })
}

impl QuantizedTensor {
    /// Slice `i` along the leading dim (an expert of a stacked tensor), when the format's
    /// blocks and scales do not straddle slices: bnb blocks that divide a slice, row-scaled
    /// formats, 128-row FP8 blocks that divide the slice's rows. `None` otherwise (double
    /// quant's offset is tensor-wide, as is per-tensor FP8's scale — those stay whole).
    pub fn slice_leading(&self, i: usize) -> Option<QuantizedTensor> {
        let r = self.leading_slice(i)?;
        let scales = match &self.scales {
            Scales::F32(v) => Scales::F32(v.get(r.scales.clone())?.to_vec()),
            Scales::U8(v) => Scales::U8(v.get(r.scales.clone())?.to_vec()),
        };
        Some(QuantizedTensor {
            format: self.format,
            shape: self.shape[1..].to_vec(),
            data: self.data.get(r.data)?.to_vec(),
            scales,
            scale_shape: r.scale_shape,
            nested: None,
            tensor_scale: self.tensor_scale,
        })
    }

    /// Where slice `i` of [`QuantizedTensor::slice_leading`] lies: its ranges of `data`
    /// and of the scales (in elements), without copying either.
    pub fn leading_slice(&self, i: usize) -> Option<LeadingSlice> {
        leading_slice(
            self.format,
            &self.shape,
            matches!(self.scales, Scales::F32(_)),
            self.tensor_scale.is_some(),
            i,
        )
    }
}
