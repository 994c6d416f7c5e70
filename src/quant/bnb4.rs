//! bitsandbytes 4-bit formats: NF4 and bnb FP4, blockwise over the flattened tensor,
//! with optional double quantization of the block absmax. Matches bitsandbytes' CUDA
//! kernels bit for bit (the golden tests in `tests/quant.rs`, whose bytes
//! `scripts/make_goldens.py` makes with bitsandbytes itself).

use rayon::prelude::*;

use super::dynamic;

/// The NF4 codebook, code 0..15, written as bitsandbytes publishes it (each literal is
/// the shortest decimal of a float32 widened to f64, so it rounds back to that float32).
#[allow(clippy::excessive_precision)]
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// bnb FP4 values: magnitude codes 000…111 are 0, 0.0625, 8, 12, 4, 6, 2, 3 over 12;
/// bit 3 is the sign.
pub fn fp4_table() -> [f32; 16] {
    let mags = [0.0f32, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0];
    let mut t = [0f32; 16];
    for (i, m) in mags.iter().enumerate() {
        t[i] = m / 12.0;
        t[i + 8] = -(m / 12.0);
    }
    t
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nf4,
    Fp4,
}

impl Kind {
    pub fn table(self) -> [f32; 16] {
        match self {
            Kind::Nf4 => NF4,
            Kind::Fp4 => fp4_table(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Nf4 => "nf4",
            Kind::Fp4 => "fp4",
        }
    }

    /// The 4-bit code of a value already scaled into [-1, 1].
    pub fn code(self, y: f32) -> u8 {
        match self {
            Kind::Nf4 => nf4_code(y),
            Kind::Fp4 => fp4_code(y),
        }
    }
}

/// NF4: the number of float32 midpoints `y` exceeds (NaN exceeds none: code 0), found
/// by a branchless binary search over the 15 sorted midpoints.
#[inline(always)]
fn nf4_code(y: f32) -> u8 {
    let mut idx = 0usize;
    for step in [8usize, 4, 2, 1] {
        if y > NF4_MIDS[idx + step - 1] {
            idx += step;
        }
    }
    idx as u8
}

/// bnb FP4: bitsandbytes' decision tree on |y|, sign in bit 3 for y < 0.
fn fp4_code(y: f32) -> u8 {
    let sign = if y < 0.0 { 0b1000 } else { 0 };
    let a = y.abs();
    let mag = if a > 0.291_666_67 {
        if a > 0.583_333 {
            if a > 0.833_333_3 {
                0b011
            } else {
                0b010
            }
        } else if a > 0.416_666_7 {
            0b101
        } else {
            0b100
        }
    } else if a > 0.085_937_5 {
        if a > 0.208_333_33 {
            0b111
        } else {
            0b110
        }
    } else if a > 0.002_604_17 {
        0b001
    } else {
        0b000
    };
    sign | mag
}

/// `rcp.approx.ftz.f32` (the GPU's reciprocal instruction, which bitsandbytes' 4-bit
/// quantizer uses for `1 / absmax`) on `1 + m/128`, m = 0..127: measured on an H200 with
/// `scripts/probe_rcp.py` (the result scales exactly with the exponent). 20 of the 128
/// differ from the correctly rounded reciprocal by one ulp, which moves values that sit
/// exactly on a code threshold — as bf16 ratios often do — to the other code.
const RCP_APPROX_BF16: [u32; 128] = [
    0x3F800000, 0x3F7E03F8, 0x3F7C0FC1, 0x3F7A232D, 0x3F783E0F, 0x3F76603E, 0x3F74898E, 0x3F72B9D6,
    0x3F70F0F1, 0x3F6F2EB7, 0x3F6D7304, 0x3F6BBDB2, 0x3F6A0EA1, 0x3F6865AD, 0x3F66C2B4, 0x3F652598,
    0x3F638E39, 0x3F61FC78, 0x3F607038, 0x3F5EE95C, 0x3F5D67C8, 0x3F5BEB62, 0x3F5A740D, 0x3F5901B2,
    0x3F579436, 0x3F562B81, 0x3F54C77B, 0x3F53680D, 0x3F520D21, 0x3F50B6A0, 0x3F4F6475, 0x3F4E168A,
    0x3F4CCCCD, 0x3F4B8728, 0x3F4A4588, 0x3F4907DA, 0x3F47CE0C, 0x3F46980D, 0x3F4565C9, 0x3F443730,
    0x3F430C31, 0x3F41E4BC, 0x3F40C0C1, 0x3F3FA030, 0x3F3E82FA, 0x3F3D6910, 0x3F3C5264, 0x3F3B3EE7,
    0x3F3A2E8C, 0x3F392144, 0x3F381703, 0x3F370FBC, 0x3F360B61, 0x3F3509E7, 0x3F340B41, 0x3F330F63,
    0x3F321643, 0x3F311FD4, 0x3F302C0B, 0x3F2F3ADE, 0x3F2E4C41, 0x3F2D602C, 0x3F2C7692, 0x3F2B8F6A,
    0x3F2AAAAB, 0x3F29C84B, 0x3F28E840, 0x3F280A81, 0x3F272F05, 0x3F2655C4, 0x3F257EB5, 0x3F24A9CF,
    0x3F23D70A, 0x3F23065E, 0x3F2237C3, 0x3F216B31, 0x3F20A0A1, 0x3F1FD80A, 0x3F1F1166, 0x3F1E4CAD,
    0x3F1D89D9, 0x3F1CC8E2, 0x3F1C09C1, 0x3F1B4C70, 0x3F1A90E8, 0x3F19D723, 0x3F191F1A, 0x3F1868C8,
    0x3F17B426, 0x3F17012E, 0x3F164FDA, 0x3F15A026, 0x3F14F209, 0x3F144581, 0x3F139A86, 0x3F12F114,
    0x3F124925, 0x3F11A2B4, 0x3F10FDBC, 0x3F105A38, 0x3F0FB824, 0x3F0F177A, 0x3F0E7835, 0x3F0DDA52,
    0x3F0D3DCB, 0x3F0CA29C, 0x3F0C08C1, 0x3F0B7034, 0x3F0AD8F3, 0x3F0A42F9, 0x3F09AE41, 0x3F091AC7,
    0x3F088889, 0x3F07F781, 0x3F0767AB, 0x3F06D906, 0x3F064B8B, 0x3F05BF37, 0x3F053409, 0x3F04A9FA,
    0x3F042108, 0x3F039931, 0x3F03126F, 0x3F028CC0, 0x3F020821, 0x3F01848E, 0x3F010204, 0x3F008080,
];

/// The reciprocal bitsandbytes' kernel computes: the GPU's approximate `rcp` for absmax
/// values that are bf16-representable (every block of a bf16 tensor), the correctly
/// rounded one otherwise (this reference does not carry the instruction's full table).
pub fn gpu_reciprocal(a: f32) -> f32 {
    let bits = a.to_bits();
    let sign = bits & 0x8000_0000;
    let exp = ((bits >> 23) & 0xFF) as i32;
    // The instruction flushes subnormal inputs and results to zero (`.ftz`).
    if exp == 0 {
        return f32::from_bits(sign | 0x7F80_0000);
    }
    if bits & 0xFFFF == 0 && exp < 255 {
        let t = RCP_APPROX_BF16[((bits >> 16) & 0x7F) as usize];
        let e = ((t >> 23) & 0xFF) as i32 - (exp - 127);
        if e <= 0 {
            return f32::from_bits(sign);
        }
        return f32::from_bits(sign | ((e as u32) << 23) | (t & 0x7F_FFFF));
    }
    1.0 / a
}

/// max |x| of a block, ignoring NaN (as CUDA's `fmaxf` does). Positive floats order
/// like their bit patterns, so an integer max (which vectorizes) finds it; a NaN in the
/// block shows up as a pattern above infinity and takes the exact path.
#[inline(always)]
pub fn absmax_of(block: &[f32]) -> f32 {
    let bits = block
        .iter()
        .fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
    if bits <= 0x7F80_0000 {
        f32::from_bits(bits)
    } else {
        block.iter().fold(0f32, |a, v| a.max(v.abs()))
    }
}

/// NF4 codes of 64 scaled values: the number of midpoints each exceeds (NaN exceeds
/// none: code 0), by a four-step binary search over the 15 sorted midpoints. Each step's
/// midpoint is chosen by selects on the bits found so far, not by an index, so the loop
/// vectorizes into compares and blends: 4 compares and 11 blends where counting takes 15
/// compares and 15 adds. Inlined, so the AVX2 build of [`encode_task`] gets an AVX2 build.
#[inline(always)]
fn nf4_codes(y: &[f32; 64], codes: &mut [u8; 64]) {
    let m = NF4_MIDS;
    let pick = |hi: bool, a: f32, b: f32| if hi { b } else { a };
    for (c, &v) in codes.iter_mut().zip(y) {
        let b3 = v > m[7];
        let b2 = v > pick(b3, m[3], m[11]);
        let b1 = v > pick(b3, pick(b2, m[1], m[5]), pick(b2, m[9], m[13]));
        let low = pick(b2, pick(b1, m[0], m[2]), pick(b1, m[4], m[6]));
        let high = pick(b2, pick(b1, m[8], m[10]), pick(b1, m[12], m[14]));
        let b0 = v > pick(b3, low, high);
        *c = (u8::from(b3) << 3) | (u8::from(b2) << 2) | (u8::from(b1) << 1) | u8::from(b0);
    }
}

/// NF4 decision thresholds: the float32 midpoints of neighbouring codes.
pub const NF4_MIDS: [f32; 15] = {
    let mut m = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        m[i] = (NF4[i] + NF4[i + 1]) / 2.0;
        i += 1;
    }
    m
};

/// Codes of one block, packed two per byte (first element high). Works in chunks of 64
/// so the compare-and-count loop vectorizes; a padding element counts as 0.
#[inline(always)]
fn encode_block(kind: Kind, block: &[f32], inv: f32, out: &mut [u8]) {
    const CHUNK: usize = 64;
    for (chunk, dst) in block.chunks(CHUNK).zip(out.chunks_mut(CHUNK / 2)) {
        let n = chunk.len();
        let mut y = [0f32; CHUNK];
        for (d, &v) in y.iter_mut().zip(chunk) {
            *d = v * inv;
        }
        let mut codes = [0u8; CHUNK];
        match kind {
            Kind::Nf4 => nf4_codes(&y, &mut codes),
            Kind::Fp4 => {
                for (code, &v) in codes.iter_mut().zip(&y) {
                    *code = fp4_code(v);
                }
            }
        }
        if n % 2 == 1 {
            // The padding element is a 0 scaled like the others (NaN in an all-zero block).
            codes[n] = kind.code(0.0 * inv);
        }
        // Packed over the whole fixed-size chunk (so it vectorizes), then the bytes the
        // block has are kept.
        let mut packed = [0u8; CHUNK / 2];
        for (p, pair) in packed.iter_mut().zip(codes.chunks_exact(2)) {
            *p = (pair[0] << 4) | pair[1];
        }
        dst.copy_from_slice(&packed[..dst.len()]);
    }
}

/// Blocks handled per parallel task.
const BLOCKS_PER_TASK: usize = 256;

/// Quantizes `x` (f32 values) into packed codes (first element in the high nibble) and
/// per-block absmax. Padding of a partial last block counts as 0.
pub fn quantize(kind: Kind, x: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    quantize_with(kind, x.len(), blocksize, |start, run| {
        run.copy_from_slice(&x[start..start + run.len()])
    })
}

/// [`quantize`] over `n` values that `fill(start, run)` writes a task's run at a time
/// (`BLOCKS_PER_TASK` blocks), so a bf16 tensor is widened in cache-sized runs instead of
/// as a whole float32 copy.
pub fn quantize_with(
    kind: Kind,
    n: usize,
    blocksize: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> (Vec<u8>, Vec<f32>) {
    assert!(blocksize % 2 == 0, "blocksize is even");
    let nblocks = n.div_ceil(blocksize);
    let mut packed = crate::load::zeroed(n.div_ceil(2));
    let mut absmax = vec![0f32; nblocks];
    let chunk_elems = blocksize * BLOCKS_PER_TASK;
    packed
        .par_chunks_mut(chunk_elems / 2)
        .zip(absmax.par_chunks_mut(BLOCKS_PER_TASK))
        .enumerate()
        .for_each_init(Vec::new, |buf, (task, (out, am))| {
            let base = task * chunk_elems;
            buf.resize(chunk_elems.min(n - base), 0f32);
            fill(base, buf);
            encode_task(kind, buf, blocksize, am, out);
        });
    (packed, absmax)
}

/// Encodes the blocks of `x` into `absmax` and `out` (packed codes), with the widest
/// vectors the CPU has: the same code built for AVX2 where the CPU reports it, the
/// baseline build otherwise. Both are exact float32 compares and multiplies (no fused
/// operations), so they give the same bytes; a test holds them to that.
fn encode_task(kind: Kind, x: &[f32], blocksize: usize, absmax: &mut [f32], out: &mut [u8]) {
    #[cfg(all(target_arch = "x86_64", wmap_avx512))]
    if kind == Kind::Nf4 && blocksize % 16 == 0 && super::nf4_avx512::available() {
        let tail = |block: &[f32], inv: f32, dst: &mut [u8]| encode_block(kind, block, inv, dst);
        // SAFETY: the CPU reports AVX-512F, the feature this encoder needs.
        unsafe { super::nf4_avx512::encode_task(x, blocksize, absmax, out, tail) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if kind == Kind::Nf4 && blocksize % 32 == 0 && super::nf4_avx2::available() {
        let tail = |block: &[f32], inv: f32, dst: &mut [u8]| encode_block(kind, block, inv, dst);
        // SAFETY: the CPU reports AVX2, the feature this encoder needs.
        unsafe { super::nf4_avx2::encode_task(x, blocksize, absmax, out, tail) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: the CPU reports AVX2, the only feature this build of the function adds.
        unsafe { encode_task_avx2(kind, x, blocksize, absmax, out) };
        return;
    }
    encode_task_portable(kind, x, blocksize, absmax, out);
}

/// Calls `encode(block, reciprocal, codes)` for each block of `x` in turn, with its absmax
/// stored in `absmax` and `codes` the block's bytes of `out`; for the vector encoders. In
/// groups of blocks: first every block's absmax and reciprocal, then every block's codes.
/// Block by block, each block's codes waited for its absmax's reduction and the reciprocal
/// (a scalar chain of dozens of cycles); computed for a group first, those chains overlap
/// one another, and the codes never wait. Inlined, so a vector build's caller gets a
/// vector build of it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn for_each_block(
    x: &[f32],
    blocksize: usize,
    absmax: &mut [f32],
    out: &mut [u8],
    mut encode: impl FnMut(&[f32], f32, &mut [u8]),
) {
    const GROUP: usize = 64;
    let mut inv = [0f32; GROUP];
    let groups = x
        .chunks(blocksize * GROUP)
        .zip(out.chunks_mut(blocksize / 2 * GROUP));
    for ((xs, outs), ms) in groups.zip(absmax.chunks_mut(GROUP)) {
        for ((block, m), i) in xs.chunks(blocksize).zip(ms.iter_mut()).zip(&mut inv) {
            *m = absmax_of(block);
            *i = gpu_reciprocal(*m);
        }
        let blocks = xs.chunks(blocksize).zip(outs.chunks_mut(blocksize / 2));
        for ((block, dst), &inv) in blocks.zip(&inv) {
            encode(block, inv, dst);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn encode_task_avx2(
    kind: Kind,
    x: &[f32],
    blocksize: usize,
    absmax: &mut [f32],
    out: &mut [u8],
) {
    encode_task_portable(kind, x, blocksize, absmax, out);
}

/// Each block: its absmax, the GPU's reciprocal of it, then its codes. A multiply by the
/// reciprocal, as the CUDA kernel does; an all-zero block gives 0 × inf = NaN, code 0.
#[inline(always)]
fn encode_task_portable(
    kind: Kind,
    x: &[f32],
    blocksize: usize,
    absmax: &mut [f32],
    out: &mut [u8],
) {
    let blocks = x.chunks(blocksize).zip(out.chunks_mut(blocksize / 2));
    for ((block, dst), m) in blocks.zip(absmax) {
        let amax = absmax_of(block);
        *m = amax;
        encode_block(kind, block, gpu_reciprocal(amax), dst);
    }
}

/// Dequantizes into f32: `table[code] * absmax` (one float32 multiply).
pub fn dequantize(
    kind: Kind,
    packed: &[u8],
    absmax: &[f32],
    blocksize: usize,
    n: usize,
    out: &mut [f32],
) {
    let table = kind.table();
    out[..n]
        .par_chunks_mut(blocksize)
        .enumerate()
        .for_each(|(b, block)| {
            let m = absmax[b];
            for (j, o) in block.iter_mut().enumerate() {
                let i = b * blocksize + j;
                let byte = packed[i / 2];
                let code = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
                *o = table[code as usize] * m;
            }
        });
}

/// The second level of double quantization: absmax minus its mean, 8-bit dynamic codes
/// per 256 values.
#[derive(Clone, Debug, PartialEq)]
pub struct Nested {
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
    pub offset: f32,
    pub blocksize: usize,
}

pub const NESTED_BLOCKSIZE: usize = 256;

/// bitsandbytes' offset: `absmax.mean()` as torch computes it on the GPU, in the same
/// order of float32 additions (see [`super::torch_mean`]), so the offset and with it the
/// nested absmax match bitsandbytes' bytes. The CUDA path replays the same order.
pub fn mean_offset(absmax: &[f32]) -> f32 {
    super::torch_mean::cuda_mean(absmax)
}

pub fn double_quantize(absmax: &[f32], offset: f32) -> Nested {
    let map = dynamic::signed_map();
    let centered: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let (codes, nested) = dynamic::quantize_blockwise(&map, &centered, NESTED_BLOCKSIZE);
    Nested {
        codes,
        absmax: nested,
        offset,
        blocksize: NESTED_BLOCKSIZE,
    }
}

/// Recovers the first-level absmax: `(map[q] * nested_absmax) + offset`, two roundings.
pub fn undo_double(n: &Nested) -> Vec<f32> {
    let map = dynamic::signed_map();
    n.codes
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let scaled = map[q as usize] * n.absmax[i / n.blocksize];
            scaled + n.offset
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn codes(kind: Kind, x: &[f32]) -> Vec<u8> {
        let (packed, _) = quantize(kind, x, 64);
        (0..x.len())
            .map(|i| {
                if i % 2 == 0 {
                    packed[i / 2] >> 4
                } else {
                    packed[i / 2] & 0xF
                }
            })
            .collect()
    }

    /// Values that cross every code boundary, plus NaN, ±inf, subnormals, an all-zero
    /// block and an odd tail.
    pub(crate) fn awkward_values(n: usize) -> Vec<f32> {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut x: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // Mostly ordinary magnitudes; one in 64 an arbitrary bit pattern.
                if s % 64 == 0 {
                    f32::from_bits((s >> 32) as u32)
                } else {
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
                }
            })
            .collect();
        x[..64].fill(0.0);
        x[64] = f32::NAN;
        x[130] = f32::INFINITY;
        x[200] = f32::NEG_INFINITY;
        x[300..364].fill(f32::from_bits(3));
        x
    }

    /// The build [`encode_task`] picks on this CPU (AVX2 where it has it) against the
    /// baseline build: the same absmax and bytes, for both kinds and several block sizes.
    #[test]
    fn the_vector_build_is_the_baseline_build() {
        let mut x = awkward_values(64 * 300 + 33);
        // Blocks whose absmax is 1 (reciprocal exactly 1): every midpoint and its
        // neighbours reach the encoder unscaled, in every position of a block.
        let mut at = 64 * 100;
        for (i, mid) in NF4_MIDS.iter().enumerate() {
            for v in [mid.next_down(), *mid, mid.next_up(), -mid] {
                if at % 64 == 0 {
                    x[at] = 1.0;
                    at += 1;
                }
                x[at] = v;
                at += 1 + i % 3;
            }
        }
        for kind in [Kind::Nf4, Kind::Fp4] {
            for blocksize in [16, 32, 48, 64, 128, 4096] {
                let nb = x.len().div_ceil(blocksize);
                let (mut am, mut out) = (vec![0f32; nb], vec![0u8; x.len().div_ceil(2)]);
                encode_task(kind, &x, blocksize, &mut am, &mut out);
                let (mut am0, mut out0) = (vec![0f32; nb], vec![0u8; x.len().div_ceil(2)]);
                encode_task_portable(kind, &x, blocksize, &mut am0, &mut out0);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&am), bits(&am0), "{kind:?} {blocksize}: absmax");
                assert_eq!(out, out0, "{kind:?} {blocksize}: codes");
                // The AVX2 encoder also where the CPU would pick AVX-512 instead.
                #[cfg(target_arch = "x86_64")]
                if kind == Kind::Nf4 && blocksize % 32 == 0 && super::super::nf4_avx2::available() {
                    let tail = |b: &[f32], inv: f32, d: &mut [u8]| encode_block(kind, b, inv, d);
                    // SAFETY: the CPU reports AVX2.
                    unsafe {
                        super::super::nf4_avx2::encode_task(&x, blocksize, &mut am, &mut out, tail)
                    };
                    assert_eq!(bits(&am), bits(&am0), "AVX2 {blocksize}: absmax");
                    assert_eq!(out, out0, "AVX2 {blocksize}: codes");
                }
            }
        }
    }

    #[test]
    fn nan_inf_and_signed_zero() {
        // NaN scales to NaN: no threshold is exceeded, code 0 (−1.0 for NF4, +0 for FP4).
        let c = codes(Kind::Nf4, &[f32::NAN, 1.0, -0.0, -1.0]);
        assert_eq!(c, vec![0, 15, 7, 0]);
        let c = codes(Kind::Fp4, &[f32::NAN, 1.0, -0.0, -1.0]);
        assert_eq!(c, vec![0, 3, 0, 0b1011], "-0.0 is not negative: code 0");
        // An infinite element makes absmax inf and the reciprocal 0: inf·0 is NaN (code 0),
        // the finite elements scale to 0.
        let c = codes(Kind::Nf4, &[f32::INFINITY, 0.5, -0.5]);
        assert_eq!(c, vec![0, 7, 7]);
    }

    /// The binary search against its definition, the count of midpoints exceeded: every
    /// midpoint and its neighbouring floats, NaN, infinities, and ordinary values.
    #[test]
    fn the_search_counts_the_midpoints_exceeded() {
        let mut x = awkward_values(64 * 40);
        for (i, mid) in NF4_MIDS.iter().enumerate() {
            x[3 * i] = mid.next_down();
            x[3 * i + 1] = *mid;
            x[3 * i + 2] = mid.next_up();
        }
        for chunk in x.chunks_exact(64) {
            let mut codes = [0u8; 64];
            nf4_codes(chunk.try_into().unwrap(), &mut codes);
            for (&v, &c) in chunk.iter().zip(&codes) {
                let count = NF4_MIDS.iter().filter(|&&m| v > m).count();
                assert_eq!(c as usize, count, "{v:e}");
            }
        }
    }

    #[test]
    fn midpoints_go_to_the_lower_code() {
        for (i, &mid) in NF4_MIDS.iter().enumerate() {
            assert_eq!(nf4_code(mid), i as u8, "mid {i}");
            assert_eq!(nf4_code(mid.next_up()), i as u8 + 1, "just above mid {i}");
        }
    }

    #[test]
    fn an_all_zero_odd_tail_packs_to_zero() {
        let mut x = vec![1.0f32; 64];
        x.extend([0.0f32; 7]);
        let (packed, absmax) = quantize(Kind::Nf4, &x, 64);
        assert_eq!(absmax[1], 0.0);
        assert_eq!(
            &packed[32..],
            &[0, 0, 0, 0],
            "7 zeros and their padding: all NaN, code 0"
        );
    }

    /// A block whose absmax is subnormal has an infinite reciprocal: ±tiny scale to ±inf
    /// (codes 15 and 0), an exact zero to NaN (code 0). This reference keeps subnormals;
    /// a flush-to-zero multiply would send ±tiny to NaN as well.
    #[test]
    fn subnormal_absmax_has_an_infinite_reciprocal() {
        let tiny = f32::from_bits(1);
        let c = codes(Kind::Nf4, &[tiny, -tiny, 0.0]);
        assert_eq!(c, vec![15, 0, 0]);
    }
}
