//! `wmap::Loader`: the library entry point the CLI, the examples and Python share.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wmap::diag::Code;
use wmap::loader::{Device, Loader, Tensors};
use wmap::quant::{Format, Stored};

fn hf(name: &str) -> std::path::PathBuf {
    common::root().join("tests/fixtures/hf").join(name)
}

fn host(loaded: wmap::loader::Loaded) -> std::collections::BTreeMap<String, Stored> {
    match loaded.tensors {
        Tensors::Host(t) => t,
        _ => panic!("expected host tensors"),
    }
}

#[test]
fn a_host_load_holds_every_target_and_ties_share_bytes() {
    let loaded = Loader::new(hf("llama_tied")).load().unwrap();
    let names: Vec<String> = loaded.plan.targets.iter().map(|t| t.name.clone()).collect();
    assert_eq!((loaded.stats.tensors, loaded.stats.tied), (15, 1));
    let tensors = host(loaded);
    assert_eq!(tensors.keys().cloned().collect::<Vec<_>>(), {
        let mut n = names;
        n.sort();
        n
    });
    let (Stored::Full(head), Stored::Full(embed)) = (&tensors["lm_head"], &tensors["embed"]) else {
        panic!("full precision expected");
    };
    assert!(Arc::ptr_eq(&head.data, &embed.data));
}

#[test]
fn quantizable_params_are_quantized_and_the_rest_kept() {
    let loaded = Loader::new(hf("qwen3_moe"))
        .quant(Format::Nf4 { blocksize: 64 })
        .load()
        .unwrap();
    let (format, report) = loaded.quant.clone().unwrap();
    assert_eq!(
        (format.name(), report.quantized, report.full),
        ("nf4", 8, 13)
    );
    let tensors = host(loaded);
    assert!(matches!(
        tensors["layers.0.attention.qkv"],
        Stored::Quantized(_)
    ));
    assert!(matches!(tensors["final_norm.weight"], Stored::Full(_)));
}

#[test]
fn progress_adds_up_to_the_bytes_read() {
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let loaded = Loader::new(hf("llama"))
        .progress(move |n| {
            counter.fetch_add(n, Ordering::Relaxed);
        })
        .load()
        .unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), loaded.stats.bytes_read);
}

#[test]
fn an_offload_budget_places_the_experts_in_a_weights_manager() {
    let loaded = Loader::new(hf("qwen3_moe"))
        .quant(Format::Nf4 { blocksize: 64 })
        .offload(100_000, wmap::offload::Policy::Lru)
        .load()
        .unwrap();
    let Tensors::Offloaded(mut w) = loaded.tensors else {
        panic!("expected a weights manager");
    };
    assert_eq!(w.offload.group_count(), 16);
    assert!(w.resident("layers.0.moe.experts.down[0]").is_none());
    assert!(w.resident("final_norm.weight").is_some());
    assert_eq!(
        w.get("layers.0.moe.experts.down[3]").unwrap().shape,
        vec![128, 64]
    );
}

#[test]
fn contradicting_options_fail_before_compiling() {
    let f = Loader::new(hf("llama"))
        .offload(1000, wmap::offload::Policy::Lru)
        .load()
        .err()
        .unwrap();
    assert_eq!(f.outside_inputs().unwrap().code, Code::E0803);
    let f = Loader::new(hf("llama"))
        .device(Device::Cuda(0))
        .export("out", false)
        .bind()
        .err()
        .unwrap();
    assert_eq!(f.outside_inputs().unwrap().code, Code::E0803);
}

#[test]
fn findings_in_the_inputs_come_with_their_sources() {
    let f = Loader::new(hf("llama"))
        .model("Qwen3Moe")
        .bind()
        .err()
        .unwrap();
    assert!(f.outside_inputs().is_none());
    let first = f.first_error().unwrap();
    assert!(first.primary.is_some(), "{first:?}");
    let text = wmap::diag::render_human(&f.sources, &f.diags, wmap::diag::Color::Never);
    assert!(text.contains(first.code.as_str()));
}

#[test]
fn auto_falls_back_to_the_cpu_with_a_note() {
    if wmap::loader::cuda_available() {
        return;
    }
    let b = Loader::new(hf("llama"))
        .device(Device::Auto)
        .bind()
        .unwrap();
    assert_eq!(b.device, Device::Cpu);
    assert_eq!(
        b.notes,
        ["note: --device auto: no CUDA device is available; loading on the CPU"]
    );
}

/// Without the `cuda` feature a device load with a budget fails as any device load does
/// (E0711), after binding: the budget is not mistaken for a host offload.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_device_budget_without_the_cuda_build_is_e0711() {
    let f = Loader::new(hf("qwen3_moe"))
        .device(Device::Cuda(0))
        .offload(100_000, wmap::offload::Policy::OrderAware)
        .load()
        .err()
        .unwrap();
    assert_eq!(f.outside_inputs().unwrap().code, Code::E0711);
}
