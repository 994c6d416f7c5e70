//! `load --device cuda`: the GPU loader's summary (and its absence in CPU-only builds).

use std::process::ExitCode;

use crate::checkpoint::Checkpoint;
use crate::plan::Plan;
use crate::quant::Format;

#[cfg(not(feature = "cuda"))]
pub fn available() -> bool {
    false
}

#[cfg(not(feature = "cuda"))]
pub fn load(
    _: usize,
    _: &Plan,
    _: &Checkpoint,
    _: Option<Format>,
    _: usize,
) -> miette::Result<ExitCode> {
    Err(miette::miette!(
        help = "rebuild with `cargo build --release --features cuda`",
        "this wmapc was built without CUDA support"
    ))
}

#[cfg(feature = "cuda")]
pub fn available() -> bool {
    crate::cuda::available()
}

/// Peak resident set of this process, from /proc.
#[cfg(feature = "cuda")]
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(feature = "cuda")]
pub fn load(
    ordinal: usize,
    plan: &Plan,
    ckpt: &Checkpoint,
    format: Option<Format>,
    repeat: usize,
) -> miette::Result<ExitCode> {
    use crate::cuda::{loader, Gpu};
    let t0 = std::time::Instant::now();
    let gpu = Gpu::new(ordinal).map_err(|e| miette::miette!("{e}"))?;
    let mut staging =
        loader::Staging::new(&gpu, 3, 256 << 20).map_err(|e| miette::miette!("{e}"))?;
    let setup = t0.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(repeat);
    let mut last = None;
    for _ in 0..repeat {
        drop(last.take());
        let (store, stats) = loader::load(&gpu, &mut staging, plan, ckpt, format)
            .map_err(|e| miette::miette!("{e}"))?;
        times.push(stats.seconds);
        last = Some((store, stats));
    }
    let (_store, stats) = last.ok_or_else(|| miette::miette!("no load ran"))?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let bf16_bytes = plan.target_bytes();
    println!(
        "loaded model `{}` on {} ({}): {} tensors, {:.2} GB read, {:.2} GB on device ({:.1} % of the full-precision {:.2} GB)",
        plan.model,
        gpu.name,
        gpu.arch,
        stats.tensors,
        stats.bytes_read as f64 / 1e9,
        stats.device_bytes as f64 / 1e9,
        100.0 * stats.device_bytes as f64 / bf16_bytes.max(1) as f64,
        bf16_bytes as f64 / 1e9,
    );
    println!(
        "load {:.3} s (median of {repeat}; {:.1} GB/s), setup {setup:.3} s (NVRTC + pinned staging, once); \
         device peak {:.3} GB over the final {:.2} GB; host peak RSS {:.2} GB",
        median,
        stats.bytes_read as f64 / median / 1e9,
        stats.peak_device_bytes.saturating_sub(stats.device_bytes) as f64 / 1e9,
        stats.device_bytes as f64 / 1e9,
        peak_rss_bytes() as f64 / 1e9,
    );
    if let Some(f) = format {
        println!("quantized to {} on the device", f.name());
    }
    Ok(ExitCode::SUCCESS)
}
