//! `quant::torch_mean` against torch's own float32 GPU mean, bit for bit: the values in
//! `tests/fixtures/golden/torch_mean.safetensors`, made by `scripts/make_mean_goldens.py`
//! on an H200 with torch 2.11 (the inputs are regenerated here by `common::hashgen`).

mod common;

use common::hashgen;
use safetensors::SafeTensors;
use wmap::quant::torch_mean::{self, MeanConfig, Target, WarpOrder};

const GOLDEN: &str = "tests/fixtures/golden/torch_mean.safetensors";

/// Values computed by the script's formulas in plain Python integers.
#[test]
fn the_generator_matches_the_script() {
    assert_eq!(hashgen::hash32(0, 0), 0x4c47_e863);
    assert_eq!(hashgen::hash32(12345, (1 << 24) + 2), 0x46c1_92a3);
    let bits = |kind, seed, i| hashgen::f32_value(kind, seed, i).to_bits();
    assert_eq!(bits(0, 0, 0), 0x3c47_e863);
    assert_eq!(bits(0, 7, 12345), 0x3d31_67f1);
    assert_eq!(bits(1, 1046, 4_325_378), 0x3c49_cf48);
    assert_eq!(bits(1, 3, 16_777_218), 0xbae4_8665);
    assert_eq!(hashgen::bf16_weight(5, 0), 0xb746);
    assert_eq!(hashgen::bf16_weight(5, 999_999), 0x383b);
}

struct Case {
    n: usize,
    kind: u32,
    seed: u32,
    shift: usize,
    mean: f32,
    f64_mean: f32,
    probe: Vec<f32>,
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn cases(st: &SafeTensors<'_>) -> Vec<Case> {
    (0..)
        .map_while(|k| {
            let meta = st.tensor(&format!("case{k}.meta")).ok()?;
            let m: Vec<i64> = meta
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Some(Case {
                n: m[0] as usize,
                kind: m[1] as u32,
                seed: m[2] as u32,
                shift: m[3] as usize,
                mean: f32s(st, &format!("case{k}.mean"))[0],
                f64_mean: f32s(st, &format!("case{k}.f64_mean"))[0],
                probe: f32s(st, &format!("case{k}.probe")),
            })
        })
        .collect()
}

/// The golden's GPU, with torch 2.11's warp order.
fn target(bytes: &[u8]) -> (Target, String) {
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = header.metadata().clone().unwrap_or_default();
    let num = |k: &str| -> usize {
        meta.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{GOLDEN}: no {k} in the metadata"))
    };
    let gpu = Target {
        sm_count: num("sm_count"),
        max_threads_per_sm: num("max_threads_per_sm"),
        warp_order: WarpOrder::Decreasing,
    };
    let about = format!(
        "{} with torch {}",
        meta.get("gpu").map_or("?", |s| s),
        meta.get("torch").map_or("?", |s| s)
    );
    (gpu, about)
}

#[test]
fn means_match_torch_on_the_gpu_bit_for_bit() {
    let Ok(bytes) = std::fs::read(common::root().join(GOLDEN)) else {
        eprintln!(
            "skipped: {GOLDEN} is absent; run scripts/make_mean_goldens.py on an H200 \
             (torch 2.11) to make it"
        );
        return;
    };
    let (gpu, about) = target(&bytes);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = cases(&st);
    assert!(!cases.is_empty(), "{GOLDEN}: no cases");
    let (mut wrong, mut order_matters, mut ctas_seen) = (Vec::new(), 0, Vec::new());
    // Cases the other warp order would get right: a hint when torch's release moved.
    let mut other_order = 0;
    for c in &cases {
        let x = hashgen::f32_values(c.kind, c.seed, c.n);
        let probe = [x[0], x[c.n / 2], x[c.n - 1]];
        assert_eq!(
            c.probe, probe,
            "n={} seed={}: the generator differs",
            c.n, c.seed
        );
        let cfg = MeanConfig::new(c.n, gpu).expect("lengths below 2^31");
        let ours = torch_mean::cuda_mean_on(&x, gpu, c.shift);
        if ours.to_bits() != c.mean.to_bits() {
            let increasing = Target {
                warp_order: WarpOrder::Increasing,
                ..gpu
            };
            other_order += usize::from(torch_mean::cuda_mean_on(&x, increasing, c.shift) == c.mean);
            wrong.push(format!(
                "n={} kind={} shift={} (block {}, {} CTAs, vectorized {}): ours {ours:e}, torch {:e}",
                c.n, c.kind, c.shift, cfg.block, cfg.ctas, cfg.vectorized, c.mean
            ));
        }
        order_matters += usize::from(c.mean.to_bits() != c.f64_mean.to_bits());
        ctas_seen.push(cfg.ctas);
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases differ from {about} ({other_order} of them match with increasing \
         warp offsets):\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    // The golden is worth having only if a plain f64 mean would miss some of it.
    assert!(
        order_matters > 0,
        "{GOLDEN}: no case where the order of additions shows"
    );
    ctas_seen.sort_unstable();
    ctas_seen.dedup();
    println!(
        "{} cases equal {about} bit for bit ({order_matters} where an f64 mean is off; CTAs {ctas_seen:?})",
        cases.len()
    );
}
