//! Tables the version-2 kernels read, built here so that the CPU tests can check them
//! without a GPU.
//!
//! Input: the NF4 midpoints ([`bnb4::NF4_MIDS`]). Output: the 64 words of
//! `kernels/bnb4_v2.cu`'s `Nf4Table` (31 cell thresholds as f32 bits, padded to 32, then
//! 32 base codes). Invariant: for every f32 `y`, `base[cell(y)] + (y > thr[cell(y)])`
//! equals the reference's NF4 code (the count of midpoints below `y`, 0 for NaN).

use crate::quant::bnb4;

/// Cells of the lookup: `round(15 * max(y, -1)) + 15`, at most 30.
pub const NF4_CELLS: u32 = 31;

/// The kernel's `nf4_cell`, operation for operation: `max(y, -1)` (NaN gives -1, as CUDA's
/// `fmaxf` does), one fused multiply-add whose low mantissa bits are `round(15 c)`, and
/// the clamp that sends `y > 1` and infinity to the last cell.
pub fn nf4_cell(y: f32) -> u32 {
    let c = y.max(-1.0);
    let r = c.mul_add(15.0, 12_582_912.0);
    r.to_bits()
        .wrapping_sub(0x4B40_0000 - 15)
        .min(NF4_CELLS - 1)
}

/// The `Nf4Table` words: thresholds (the cell's midpoint, or infinity when none falls in
/// it), then base codes (midpoints in lower cells). `None` if two midpoints shared a cell,
/// which the codebook's spacing (over 0.085 between neighbours, cells 1/15 wide) rules out.
pub fn nf4_cell_table() -> Option<[u32; 64]> {
    let mut words = [0u32; 64];
    for cell in 0..32u32 {
        let inside: Vec<f32> = bnb4::NF4_MIDS
            .iter()
            .copied()
            .filter(|&m| nf4_cell(m) == cell)
            .collect();
        if inside.len() > 1 {
            return None;
        }
        let thr = inside.first().copied().unwrap_or(f32::INFINITY);
        let base = bnb4::NF4_MIDS
            .iter()
            .filter(|&&m| nf4_cell(m) < cell)
            .count() as u32;
        words[cell as usize] = thr.to_bits();
        words[32 + cell as usize] = base;
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference code: midpoints below `y`.
    fn reference(y: f32) -> u32 {
        bnb4::NF4_MIDS.iter().filter(|&&m| y > m).count() as u32
    }

    fn lookup(words: &[u32; 64], y: f32) -> u32 {
        let c = nf4_cell(y) as usize;
        words[32 + c] + u32::from(y > f32::from_bits(words[c]))
    }

    #[test]
    fn the_cell_table_gives_the_reference_code_for_every_kind_of_float() {
        let words = nf4_cell_table().expect("one midpoint per cell at most");
        let mut probes = vec![
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
        ];
        // Every midpoint and its float neighbours, and the cell edges and theirs.
        let near = |x: f32| {
            [
                f32::from_bits(x.to_bits() - 1),
                x,
                f32::from_bits(x.to_bits() + 1),
            ]
        };
        for m in bnb4::NF4_MIDS {
            probes.extend(near(m));
        }
        for k in -16..=16 {
            let edge = (k as f32 + 0.5) / 15.0;
            if edge != 0.0 {
                probes.extend(near(edge));
            }
        }
        // Every float in [-1.5, 1.5] whose low 12 mantissa bits are zero, and their
        // neighbours: all exponents, 2^11 mantissas each.
        for bits in (0u32..0x3FC0_0000).step_by(1 << 12) {
            for b in [bits, bits + 1, bits.wrapping_sub(1)] {
                let y = f32::from_bits(b);
                probes.push(y);
                probes.push(-y);
            }
        }
        for y in probes {
            assert_eq!(
                lookup(&words, y),
                reference(y),
                "y = {y:e} ({:#x})",
                y.to_bits()
            );
        }
    }

    #[test]
    fn a_cell_holds_at_most_one_midpoint() {
        let cells: Vec<u32> = bnb4::NF4_MIDS.iter().map(|&m| nf4_cell(m)).collect();
        assert!(cells.windows(2).all(|w| w[0] < w[1]), "cells {cells:?}");
        assert!(cells.iter().all(|&c| c < NF4_CELLS));
    }
}
