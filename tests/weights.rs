//! The weight manager on the host backend: the MoE fixtures load with their experts
//! offloaded under a budget, every `get` returns exactly the dequantized tensor, buffers
//! are reused, and a forward sweep with a routing trace stays within the budget.

mod common;

use std::collections::BTreeMap;

use wmap::driver::{self, ModelSource};
use wmap::offload::{HostBackend, Policy};
use wmap::quant::{Format, QuantStore, Stored};
use wmap::weights::{slice_key, WeightsManager};

fn load(fixture: &str, format: Format) -> (wmap::plan::Plan, BTreeMap<String, Stored>) {
    let dir = common::root().join("tests/fixtures/hf").join(fixture);
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).unwrap();
    let store = QuantStore::new(format);
    wmap::load::execute(&b.plan, &b.checkpoint, &store, Default::default(), &|_| {}).unwrap();
    (b.plan, store.into_tensors())
}

fn bf16(s: &Stored, slice: Option<usize>) -> Vec<u16> {
    let q = match (s, slice) {
        (Stored::Quantized(q), Some(i)) => q.slice_leading(i).unwrap(),
        (Stored::Quantized(q), None) => q.clone(),
        (Stored::Full(t), None) => {
            let x = wmap::quant::to_f32(t.dtype, &t.data);
            return x
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
        }
        (Stored::Full(_), Some(_)) => unreachable!(),
    };
    let mut out = vec![half::bf16::ZERO; q.numel()];
    q.dequantize_bf16(&mut out);
    out.iter().map(|b| b.to_bits()).collect()
}

#[test]
fn moe_fixtures_load_with_offloaded_experts() {
    for fixture in ["qwen3_moe", "nemotron_h_moe"] {
        let (plan, tensors) = load(fixture, Format::Nf4 { blocksize: 64 });
        let expert_bytes: u64 = plan
            .targets
            .iter()
            .filter(|t| t.offload.is_some())
            .map(|t| match &tensors[&t.name] {
                Stored::Quantized(q) => q.byte_size(),
                Stored::Full(f) => f.data.len() as u64,
            })
            .sum();
        assert!(expert_bytes > 0, "{fixture} has offloaded experts");
        let budget = expert_bytes / 4;
        for policy in [Policy::Lru, Policy::OrderAware] {
            let mut w = WeightsManager::new(
                HostBackend::default(),
                &plan,
                tensors.clone(),
                budget,
                policy,
            )
            .unwrap();
            let names: Vec<String> = w.names().map(str::to_string).collect();
            for name in &names {
                let view = w.get(name).unwrap();
                assert!(w.offload.device_bytes() <= budget, "{fixture}: over budget");
                let (base, slice) = match name.split_once('[') {
                    Some((b, i)) => (
                        b.to_string(),
                        Some(i.trim_end_matches(']').parse().unwrap()),
                    ),
                    None => (name.clone(), None),
                };
                let want = bf16(&tensors[&base], slice);
                let got: Vec<u16> = view.iter().map(|b| b.to_bits()).collect();
                assert_eq!(got, want, "{fixture}: {name}");
            }
            // Experts are stored one per (layer, expert) group.
            let g0 = w
                .group_of(&slice_key("layers.1.moe.experts.down", 0))
                .or_else(|| w.group_of(&slice_key("layers.1.moe.experts.up", 0)));
            assert_eq!(
                w.offload.name(g0.expect("expert slices are grouped")),
                "layer=1/expert=0"
            );
        }
    }
}

#[test]
fn views_reuse_buffers_of_the_same_shape() {
    let (plan, tensors) = load("qwen3_moe", Format::Nf4 { blocksize: 64 });
    let mut w = WeightsManager::new(
        HostBackend::default(),
        &plan,
        tensors,
        u64::MAX,
        Policy::Lru,
    )
    .unwrap();
    for e in 0..8 {
        let v = w
            .get(&slice_key("layers.0.moe.experts.gate_up", e))
            .unwrap();
        assert_eq!(v.shape, vec![128, 128]);
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        w.pool().allocated.load(Relaxed),
        1,
        "one buffer for eight same-shape gets"
    );
    assert_eq!(w.pool().reused.load(Relaxed), 7);
}

/// A forward sweep: each layer routes its tokens to every expert once, two experts at a
/// time, in a fixed pseudo-random order; the sweep runs three times over, as three
/// training steps with the same routing would. The budget (six experts of sixteen) holds
/// under both policies. LRU evicts exactly the group the cycle needs next, so every
/// access misses; order-aware eviction keeps the groups needed soonest and prefetches
/// ahead, so after the recorded first sweep it starts fewer copies on demand.
#[test]
fn a_routed_forward_sweep_stays_in_budget() {
    let (plan, tensors) = load("qwen3_moe", Format::Nf4 { blocksize: 64 });
    let mut s = 7u64;
    let mut trace: Vec<(usize, usize, usize)> = Vec::new();
    for layer in 0..2 {
        // A Fisher-Yates shuffle of the eight experts, then visited in pairs.
        let mut experts: Vec<usize> = (0..8).collect();
        for i in (1..8).rev() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            experts.swap(i, (s >> 33) as usize % (i + 1));
        }
        trace.extend(experts.chunks(2).map(|p| (layer, p[0], p[1])));
    }
    let per_expert = 2 * 128 * 128 / 2 + 2 * 128 * 128 / 64 * 4 / 2; // rough nf4 bytes, for the budget only
    let budget = 6 * per_expert as u64;
    const SWEEPS: u64 = 3;
    let mut misses = BTreeMap::new();
    for policy in [Policy::Lru, Policy::OrderAware] {
        let mut w = WeightsManager::new(
            HostBackend::default(),
            &plan,
            tensors.clone(),
            budget,
            policy,
        )
        .unwrap();
        for _ in 0..SWEEPS {
            for &(layer, a, b) in &trace {
                for e in [a, b] {
                    for p in ["gate_up", "down"] {
                        w.get(&slice_key(&format!("layers.{layer}.moe.experts.{p}"), e))
                            .unwrap();
                        assert!(w.offload.device_bytes() <= budget);
                    }
                }
            }
        }
        let st = &w.offload.stats;
        assert_eq!(st.hits + st.misses, SWEEPS * 4 * trace.len() as u64);
        assert!(st.bytes_moved > 0);
        misses.insert(format!("{policy:?}"), st.misses);
    }
    let (lru, order) = (misses["Lru"], misses["OrderAware"]);
    eprintln!("demand misses over {SWEEPS} sweeps: LRU {lru}, order-aware {order}");
    assert_eq!(
        lru,
        SWEEPS * 16,
        "LRU misses every access of a cyclic sweep"
    );
    assert!(
        order < lru,
        "order-aware prefetch should miss less than LRU: {order} vs {lru}"
    );
}

/// `get` of a name the store does not hold is E0703, naming it.
#[test]
fn an_unknown_name_is_a_coded_error() {
    let (plan, tensors) = load("qwen3_moe", Format::Nf4 { blocksize: 64 });
    let mut w = WeightsManager::new(
        HostBackend::default(),
        &plan,
        tensors,
        u64::MAX,
        Policy::Lru,
    )
    .unwrap();
    let err = w.get("layers.0.moe.experts.gate_up").err().unwrap();
    let d = wmap::diag::Diagnostic::from(err);
    assert_eq!(d.code.as_str(), "E0703");
    assert_eq!(
        d.message,
        "the weight store holds no tensor `layers.0.moe.experts.gate_up`"
    );
}
