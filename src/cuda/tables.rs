//! Tables the version-2 kernels read, built here so that the CPU tests can check them
//! without a GPU.
//!
//! Input: the NF4 midpoints ([`bnb4::NF4_MIDS`]). Output: the 64 words of
//! `kernels/bnb4_v2.cu`'s `Nf4Table`: per cell (31, padded to 32) its threshold as f32
//! bits and its base code, side by side. Invariant: `base[c] + (y > thr[c])` equals the reference's NF4 code
//! (the count of midpoints below `y`, 0 for NaN) for `c = nf4_cell(y)` when `y` is not
//! above 1.03, and for `c = nf4_cell(nf4_clamp(y))` for every `y`.

use crate::quant::bnb4;

/// Cells of the lookup: `round(-15 y) + 15`, at most 30 (descending in `y`).
pub const NF4_CELLS: u32 = 31;

/// The kernel's `nf4_cell`, operation for operation: one fused multiply-add whose low
/// mantissa bits are `round(-15 y)` while `|y| < 1.03`, and the clamp that sends NaN
/// and -inf (patterns above every finite one) to the last cell, where the code is 0.
pub fn nf4_cell(y: f32) -> u32 {
    let r = y.mul_add(-15.0, 12_582_912.0);
    r.to_bits()
        .wrapping_sub(0x4B40_0000 - 15)
        .min(NF4_CELLS - 1)
}

/// The kernel's clamp for units that may hold `y > 1.03` (+inf): `min(max(y, -1), 1)`,
/// NaN giving -1 as CUDA's `fmaxf` does.
pub fn nf4_clamp(y: f32) -> f32 {
    if y.is_nan() {
        -1.0
    } else {
        y.clamp(-1.0, 1.0)
    }
}

/// The `Nf4Table` words, two per cell: its threshold (the cell's midpoint, or infinity
/// when none falls in it) and its base code (midpoints in higher cells, which lie below
/// the cell's values). `None` if two midpoints shared a cell, which the codebook's
/// spacing (over 0.085 between neighbours, cells 1/15 wide) rules out.
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
            .filter(|&&m| nf4_cell(m) > cell)
            .count() as u32;
        words[2 * cell as usize] = thr.to_bits();
        words[2 * cell as usize + 1] = base;
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

    fn lookup(words: &[u32; 64], cell: u32, y: f32) -> u32 {
        let c = cell as usize;
        words[2 * c + 1] + u32::from(y > f32::from_bits(words[2 * c]))
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
        let mut unclamped = 0;
        for y in probes {
            let want = reference(y);
            let clamped = lookup(&words, nf4_cell(nf4_clamp(y)), y);
            assert_eq!(clamped, want, "clamped, y = {y:e} ({:#x})", y.to_bits());
            if y.is_nan() || y <= 1.03 {
                let got = lookup(&words, nf4_cell(y), y);
                assert_eq!(got, want, "y = {y:e} ({:#x})", y.to_bits());
                unclamped += 1;
            }
        }
        assert!(unclamped > 1000);
        // Where the clamp is needed: +inf.
        assert_ne!(lookup(&words, nf4_cell(f32::INFINITY), f32::INFINITY), 15);
    }

    #[test]
    fn a_cell_holds_at_most_one_midpoint() {
        let cells: Vec<u32> = bnb4::NF4_MIDS.iter().map(|&m| nf4_cell(m)).collect();
        assert!(cells.windows(2).all(|w| w[0] > w[1]), "cells {cells:?}");
        assert!(cells.iter().all(|&c| c < NF4_CELLS));
    }
}
