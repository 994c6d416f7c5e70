//! bitsandbytes' signed dynamic 8-bit map and its blockwise quantizer, used for the
//! second level of NF4 double quantization.

/// The bit patterns of bitsandbytes' `create_dynamic_map(signed=True)` (7 exponent bits,
/// 8 bits in all), as bitsandbytes stores it in every double-quantized checkpoint
/// (`nested_quant_map`). It is a format constant like the NF4 codebook: bitsandbytes
/// builds it with torch's float32 `linspace`, whose rounding depends on the CPU's vector
/// width, so it is carried here as data rather than recomputed.
const SIGNED_MAP_BITS: [u32; 256] = [
    0xBF7E3333, 0xBF7A999A, 0xBF770000, 0xBF736666, 0xBF6FCCCD, 0xBF6C3333, 0xBF68999A, 0xBF650000,
    0xBF616666, 0xBF5DCCCD, 0xBF5A3333, 0xBF56999A, 0xBF530000, 0xBF4F6666, 0xBF4BCCCD, 0xBF483333,
    0xBF44999A, 0xBF410000, 0xBF3D6666, 0xBF39CCCD, 0xBF363334, 0xBF32999A, 0xBF2F0000, 0xBF2B6666,
    0xBF27CCCD, 0xBF243334, 0xBF20999A, 0xBF1D0000, 0xBF196666, 0xBF15CCCD, 0xBF123334, 0xBF0E999A,
    0xBF0B0000, 0xBF076666, 0xBF03CCCC, 0xBF003333, 0xBEF93332, 0xBEF20000, 0xBEEACCCC, 0xBEE3999A,
    0xBEDC6666, 0xBED53333, 0xBECE0000, 0xBEC6CCCC, 0xBEBF999A, 0xBEB86666, 0xBEB13333, 0xBEAA0000,
    0xBEA2CCCC, 0xBE9B999A, 0xBE946666, 0xBE8D3334, 0xBE860000, 0xBE7D9999, 0xBE6F3333, 0xBE60CCCD,
    0xBE526666, 0xBE440000, 0xBE35999A, 0xBE273333, 0xBE18CCCD, 0xBE0A6666, 0xBDF80000, 0xBDDB3334,
    0xBDC9EB85, 0xBDC428F7, 0xBDBE6667, 0xBDB8A3D7, 0xBDB2E148, 0xBDAD1EB8, 0xBDA75C2A, 0xBDA1999A,
    0xBD9BD70A, 0xBD96147B, 0xBD9051EB, 0xBD8A8F5D, 0xBD84CCCD, 0xBD7E147B, 0xBD728F5D, 0xBD670A3D,
    0xBD5B851F, 0xBD500000, 0xBD447AE1, 0xBD38F5C3, 0xBD2D70A3, 0xBD21EB85, 0xBD166667, 0xBD0AE148,
    0xBCFEB852, 0xBCE7AE15, 0xBCD0A3D7, 0xBCB9999A, 0xBCA28F5D, 0xBC8B851F, 0xBC68F5C3, 0xBC3AE148,
    0xBC1F3B64, 0xBC160418, 0xBC0CCCCD, 0xBC039581, 0xBBF4BC6A, 0xBBE24DD3, 0xBBCFDF3B, 0xBBBD70A4,
    0xBBAB020D, 0xBB989374, 0xBB8624DD, 0xBB676C8A, 0xBB428F5C, 0xBB1DB22D, 0xBAF1A9FC, 0xBAA7EF9D,
    0xBA7765FF, 0xBA59E83E, 0xBA3C6A80, 0xBA1EECC1, 0xBA016F01, 0xB9C7E283, 0xB98CE705, 0xB923D70B,
    0xB8BA1F4B, 0xB88AEFB3, 0xB8378034, 0xB7B24206, 0xB70205FF, 0xB65A1A94, 0xB513A3B7, 0x00000000,
    0x3513A3B7, 0x365A1A94, 0x370205FF, 0x37B24206, 0x38378034, 0x388AEFB3, 0x38BA1F4B, 0x3923D70B,
    0x398CE705, 0x39C7E283, 0x3A016F01, 0x3A1EECC1, 0x3A3C6A80, 0x3A59E83E, 0x3A7765FF, 0x3AA7EF9D,
    0x3AF1A9FC, 0x3B1DB22D, 0x3B428F5C, 0x3B676C8A, 0x3B8624DD, 0x3B989374, 0x3BAB020D, 0x3BBD70A4,
    0x3BCFDF3B, 0x3BE24DD3, 0x3BF4BC6A, 0x3C039581, 0x3C0CCCCD, 0x3C160418, 0x3C1F3B64, 0x3C3AE148,
    0x3C68F5C3, 0x3C8B851F, 0x3CA28F5D, 0x3CB9999A, 0x3CD0A3D7, 0x3CE7AE15, 0x3CFEB852, 0x3D0AE148,
    0x3D166667, 0x3D21EB85, 0x3D2D70A3, 0x3D38F5C3, 0x3D447AE1, 0x3D500000, 0x3D5B851F, 0x3D670A3D,
    0x3D728F5D, 0x3D7E147B, 0x3D84CCCD, 0x3D8A8F5D, 0x3D9051EB, 0x3D96147B, 0x3D9BD70A, 0x3DA1999A,
    0x3DA75C2A, 0x3DAD1EB8, 0x3DB2E148, 0x3DB8A3D7, 0x3DBE6667, 0x3DC428F7, 0x3DC9EB85, 0x3DDB3334,
    0x3DF80000, 0x3E0A6666, 0x3E18CCCD, 0x3E273333, 0x3E35999A, 0x3E440000, 0x3E526666, 0x3E60CCCD,
    0x3E6F3333, 0x3E7D9999, 0x3E860000, 0x3E8D3334, 0x3E946666, 0x3E9B999A, 0x3EA2CCCC, 0x3EAA0000,
    0x3EB13333, 0x3EB86666, 0x3EBF999A, 0x3EC6CCCC, 0x3ECE0000, 0x3ED53333, 0x3EDC6666, 0x3EE3999A,
    0x3EEACCCC, 0x3EF20000, 0x3EF93332, 0x3F003333, 0x3F03CCCC, 0x3F076666, 0x3F0B0000, 0x3F0E999A,
    0x3F123334, 0x3F15CCCD, 0x3F196666, 0x3F1D0000, 0x3F20999A, 0x3F243334, 0x3F27CCCD, 0x3F2B6666,
    0x3F2F0000, 0x3F32999A, 0x3F363334, 0x3F39CCCD, 0x3F3D6666, 0x3F410000, 0x3F44999A, 0x3F483333,
    0x3F4BCCCD, 0x3F4F6666, 0x3F530000, 0x3F56999A, 0x3F5A3333, 0x3F5DCCCD, 0x3F616666, 0x3F650000,
    0x3F68999A, 0x3F6C3333, 0x3F6FCCCD, 0x3F736666, 0x3F770000, 0x3F7A999A, 0x3F7E3333, 0x3F800000,
];

/// The signed dynamic map, sorted ascending: decades 10^-6…1 of midpoints of
/// `linspace(0.1, 1, 2^i + 1)`, both signs, plus 0 and 1.
pub fn signed_map() -> [f32; 256] {
    SIGNED_MAP_BITS.map(f32::from_bits)
}

/// bitsandbytes' `dQuantize` (no stochastic rounding): a binary search over the sorted
/// map, then a midpoint test between the final neighbours. One value, as bitsandbytes
/// writes it; blocks go eight values at a time through [`quantize_lanes`].
pub fn quantize_value(map: &[f32; 256], x: f32) -> u8 {
    let mut pivot = 127usize;
    let mut upper_pivot = 255usize;
    let mut lower_pivot = 0usize;
    let mut lower = -1.0f32;
    let mut upper = 1.0f32;
    let mut val = map[pivot];
    let mut i = 64usize;
    while i > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
        i >>= 1;
    }
    if upper_pivot == 255 {
        upper = map[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = map[lower_pivot];
    }
    if x > val {
        let midpoint = (upper + val) * 0.5;
        if x > midpoint {
            upper_pivot as u8
        } else {
            pivot as u8
        }
    } else {
        let midpoint = (lower + val) * 0.5;
        if x < midpoint {
            lower_pivot as u8
        } else {
            pivot as u8
        }
    }
}

/// Blockwise 8-bit quantization: per block of `blocksize`, absmax and codes of
/// `x * (1 / absmax)`, the blocks spread over all cores.
pub fn quantize_blockwise(
    map: &[f32; 256],
    values: &[f32],
    blocksize: usize,
) -> (Vec<u8>, Vec<f32>) {
    use rayon::prelude::*;
    let blocksize = blocksize.max(1);
    let mut codes = vec![0u8; values.len()];
    let mut absmax = vec![0f32; values.len().div_ceil(blocksize)];
    values
        .par_chunks(blocksize)
        .zip(codes.par_chunks_mut(blocksize))
        .zip(absmax.par_iter_mut())
        .for_each(|((block, out), am)| {
            let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inv = 1.0f32 / m;
            *am = m;
            // Eight searches in step: each one's loads wait on its own compares, so their
            // latencies overlap.
            let mut outs = out.chunks_exact_mut(LANES);
            let mut vals = block.chunks_exact(LANES);
            for (o, v) in (&mut outs).zip(&mut vals) {
                let x: [f32; LANES] = std::array::from_fn(|l| v[l] * inv);
                o.copy_from_slice(&quantize_lanes(map, &x));
            }
            for (o, &v) in outs.into_remainder().iter_mut().zip(vals.remainder()) {
                *o = quantize_value(map, v * inv);
            }
        });
    (codes, absmax)
}

const LANES: usize = 8;

/// [`quantize_value`] of eight values, one step of all eight searches at a time, every
/// turn a mask instead of a branch. One search at a time, with branches, its turns (which
/// depend on the data) were mispredicted and each load waited on the last compare: double
/// quantization cost 0.2 s of CPU for a 252 M-element load, now 0.09 s.
#[inline]
fn quantize_lanes(map: &[f32; 256], x: &[f32; LANES]) -> [u8; LANES] {
    let mut pivot = [127usize; LANES];
    let mut upper_pivot = [255usize; LANES];
    let mut lower_pivot = [0usize; LANES];
    let mut lower = [-1.0f32; LANES];
    let mut upper = [1.0f32; LANES];
    let mut val = [map[127]; LANES];
    let mut i = 64usize;
    while i > 0 {
        for l in 0..LANES {
            // Selects written as masks: as `if`s the compiler made them branches.
            let m = 0usize.wrapping_sub(usize::from(x[l] > val[l]));
            let mf = m as u32;
            let pick = |a: f32, b: f32| f32::from_bits((a.to_bits() & !mf) | (b.to_bits() & mf));
            lower_pivot[l] = (lower_pivot[l] & !m) | (pivot[l] & m);
            lower[l] = pick(lower[l], val[l]);
            upper_pivot[l] = (pivot[l] & !m) | (upper_pivot[l] & m);
            upper[l] = pick(val[l], upper[l]);
            pivot[l] = pivot[l] - i + ((2 * i) & m);
            val[l] = map[pivot[l] & 255];
        }
        i >>= 1;
    }
    std::array::from_fn(|l| {
        let upper = if upper_pivot[l] == 255 {
            map[255]
        } else {
            upper[l]
        };
        let lower = if lower_pivot[l] == 0 {
            map[0]
        } else {
            lower[l]
        };
        let above = x[l] > val[l];
        let code = if above && x[l] > (upper + val[l]) * 0.5 {
            upper_pivot[l]
        } else if !above && x[l] < (lower + val[l]) * 0.5 {
            lower_pivot[l]
        } else {
            pivot[l]
        };
        code as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight searches in step against one at a time (bitsandbytes' form): every map value,
    /// its neighbours and the midpoints between map values, ±1 and beyond, NaN, and
    /// ordinary values, in every lane.
    #[test]
    fn eight_searches_in_step_are_the_one_at_a_time_search() {
        let map = signed_map();
        let mut xs = vec![
            f32::NAN,
            -2.0,
            -1.0,
            1.0,
            2.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for (k, &m) in map.iter().enumerate() {
            xs.extend([m.next_down(), m, m.next_up()]);
            if let Some(&n) = map.get(k + 1) {
                let mid = (m + n) * 0.5;
                xs.extend([mid.next_down(), mid, mid.next_up()]);
            }
        }
        xs.extend(crate::quant::bnb4::tests::awkward_values(4096));
        for shift in 0..LANES {
            for chunk in xs[shift..].chunks_exact(LANES) {
                let lanes = quantize_lanes(&map, chunk.try_into().unwrap());
                for (&x, &c) in chunk.iter().zip(&lanes) {
                    assert_eq!(c, quantize_value(&map, x), "{x:e}");
                }
            }
        }
    }
}
