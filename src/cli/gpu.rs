//! `load --device cuda`: the GPU loader's summary (and its absence in CPU-only builds).

#[cfg(feature = "cuda")]
use std::process::ExitCode;

#[cfg(feature = "cuda")]
use super::out::outln;
use super::Outcome;
use crate::checkpoint::Checkpoint;
#[cfg(feature = "cuda")]
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::plan::Plan;
use crate::quant::Format;

/// A runtime layer's error (CUDA, offload, weights) as its coded diagnostic.
pub(super) fn coded(e: impl Into<Diagnostic>) -> Diagnostic {
    e.into()
}

/// `--offload-budget` with `--device cuda`: bytes and policy.
pub type OffloadArgs = Option<(u64, crate::offload::Policy)>;

/// The device being opened (context, kernels, pinned staging) on its own thread while the
/// front end parses, checks and binds: the two take similar time and need nothing of each
/// other, so a whole `load --device cuda` costs the longer of them, not their sum.
#[cfg(feature = "cuda")]
pub struct Pending(std::thread::JoinHandle<Result<crate::cuda::Ready, crate::cuda::Error>>);
#[cfg(not(feature = "cuda"))]
pub struct Pending;

/// Starts opening device `ordinal` (nothing without the `cuda` feature: the load then
/// reports the missing build).
#[cfg(feature = "cuda")]
pub fn start(ordinal: usize) -> Option<Pending> {
    std::thread::Builder::new()
        .name("wmap-device".into())
        .spawn(move || crate::cuda::Ready::open(ordinal))
        .ok()
        .map(Pending)
}
#[cfg(not(feature = "cuda"))]
pub fn start(_: usize) -> Option<Pending> {
    None
}

#[cfg(not(feature = "cuda"))]
pub fn load(
    _: usize,
    _: Option<Pending>,
    _: &Plan,
    _: &Checkpoint,
    _: Option<Format>,
    _: usize,
    _: OffloadArgs,
) -> Outcome {
    Err(coded(crate::cuda::Error::NotBuilt))
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
    pending: Option<Pending>,
    plan: &Plan,
    ckpt: &Checkpoint,
    format: Option<Format>,
    repeat: usize,
    offload: OffloadArgs,
) -> Outcome {
    use crate::cuda::Ready;
    let t0 = std::time::Instant::now();
    let ready = match pending {
        Some(Pending(h)) => h
            .join()
            .unwrap_or_else(|_| Err(crate::cuda::Error::Call("device setup panicked".into()))),
        None => Ready::open(ordinal),
    }
    .map_err(coded)?;
    let waited = t0.elapsed().as_secs_f64();
    let setup = SetupReport {
        seconds: ready.seconds,
        staging_seconds: ready.staging_seconds,
        waited,
    };
    let (gpu, mut staging) = (ready.gpu, ready.staging);
    let (store, stats, median) = repeated_loads(&gpu, &mut staging, plan, ckpt, format, repeat)?;
    print_summary(plan, &gpu, &stats, median, repeat, &setup);
    if let Some(f) = format {
        outln!("quantized to {} on the device", f.name());
    }
    if stats.passed_through + stats.decoded > 0 {
        outln!(
            "pre-quantized sources: {} passed through as stored, {} decoded on the device",
            stats.passed_through,
            stats.decoded,
        );
    }
    if let Some((budget, policy)) = offload {
        // The staging ring's page-locked buffers are done with: give them back before the
        // offload pool is page-locked, so host memory peaks at one of the two, not both.
        drop(staging);
        offload_to_host(&gpu, plan, store, budget, policy)?;
        return Ok(ExitCode::SUCCESS);
    }
    // What the rest of the process costs: freeing the tensors and the ring, and closing the
    // device (timed, so the whole process's time is accounted for).
    let t = std::time::Instant::now();
    drop(store);
    drop(staging);
    drop(gpu);
    outln!(
        "freed the tensors, the ring and the device in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// How long the device took to be ready, for the summary.
#[cfg(feature = "cuda")]
struct SetupReport {
    seconds: f64,
    staging_seconds: f64,
    /// Of `seconds`, what the load waited for after planning.
    waited: f64,
}

/// `repeat` loads, each freeing the one before; the last one's tensors and statistics, and
/// the median load time.
#[cfg(feature = "cuda")]
fn repeated_loads(
    gpu: &crate::cuda::Gpu,
    staging: &mut crate::cuda::loader::Staging,
    plan: &Plan,
    ckpt: &Checkpoint,
    format: Option<Format>,
    repeat: usize,
) -> Result<
    (
        crate::cuda::loader::DeviceStore,
        crate::cuda::loader::GpuLoadStats,
        f64,
    ),
    Diagnostic,
> {
    let mut times = Vec::with_capacity(repeat);
    let mut last = None;
    for run in 1..=repeat {
        drop(last.take());
        let (store, stats) =
            crate::cuda::loader::load(gpu, staging, plan, ckpt, format).map_err(coded)?;
        if repeat > 1 {
            // In order, so a first load that differs from the rest shows, with where it went.
            outln!(
                "run {run} of {repeat}: load {:.3} s ({:.3} filling, {:.3} waiting, {:.3} assembling)",
                stats.seconds,
                stats.read_seconds,
                stats.ring_wait_seconds,
                stats.assemble_seconds,
            );
        }
        times.push(stats.seconds);
        last = Some((store, stats));
    }
    let (store, stats) = last.ok_or_else(|| Diagnostic::new(Code::E0901, "no load ran"))?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok((store, stats, median))
}

/// The three summary lines: what was loaded, how fast with the setup's split, and where
/// the load thread's time went.
#[cfg(feature = "cuda")]
fn print_summary(
    plan: &Plan,
    gpu: &crate::cuda::Gpu,
    stats: &crate::cuda::loader::GpuLoadStats,
    median: f64,
    repeat: usize,
    setup: &SetupReport,
) {
    let bf16_bytes = plan.target_bytes();
    outln!(
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
    outln!(
        "load {:.3} s (median of {repeat}; {:.1} GB/s), setup {:.3} s (context {:.3}, kernels {} {:.3}, pinned staging {:.3}; \
         beside planning, {:.3} s waited); device peak {:.3} GB over the final {:.2} GB; host peak RSS {:.2} GB",
        median,
        stats.bytes_read as f64 / median / 1e9,
        setup.seconds,
        gpu.opened.0,
        kernel_origin(gpu.kernels),
        gpu.opened.1,
        setup.staging_seconds,
        setup.waited,
        stats.peak_device_bytes.saturating_sub(stats.device_bytes) as f64 / 1e9,
        stats.device_bytes as f64 / 1e9,
        peak_rss_bytes() as f64 / 1e9,
    );
    outln!(
        "load thread: {:.3} s filling pinned staging from the checkpoint ({:.1} GB/s while filling), \
         {:.3} s waiting for a staging buffer, {:.3} s assembling targets on the CPU (last load)",
        stats.read_seconds,
        stats.bytes_read as f64 / stats.read_seconds.max(1e-9) / 1e9,
        stats.ring_wait_seconds,
        stats.assemble_seconds,
    );
}

#[cfg(feature = "cuda")]
fn kernel_origin(k: crate::cuda::sources::KernelOrigins) -> &'static str {
    match (k.cached, k.compiled) {
        (_, 0) => "cached",
        (0, _) => "compiled",
        _ => "partly cached",
    }
}

/// Moves the targets with an offload group (the experts) into page-locked host memory,
/// keeps the rest on the device, and reads every tensor once through the weight manager
/// (each offloaded group brought in within `budget`, every tensor dequantized to bf16).
#[cfg(feature = "cuda")]
fn offload_to_host(
    gpu: &std::sync::Arc<crate::cuda::Gpu>,
    plan: &Plan,
    store: crate::cuda::loader::DeviceStore,
    budget: u64,
    policy: crate::offload::Policy,
) -> Result<(), Diagnostic> {
    let total = store.device_bytes();
    let t_new = std::time::Instant::now();
    let mut w = crate::loader::offload_device(gpu, plan, store, budget, policy)?;
    let moved_out = t_new.elapsed().as_secs_f64();
    let names: Vec<String> = w.names().map(str::to_string).collect();
    let t = std::time::Instant::now();
    let mut peak = 0;
    for n in &names {
        drop(w.get(n).map_err(coded)?);
        peak = peak.max(w.offload.device_bytes());
    }
    gpu.sync().map_err(coded)?;
    let m = &w.offload;
    outln!(
        "offload ({policy:?}): {} groups in page-locked host memory, {:.2} GB of the {:.2} GB loaded stays on the device; \
         one get() of each of {} tensors: {:.3} s, {:.2} GB moved, peak {:.3} GB of the {:.3} GB budget, \
         {} of {} bf16 buffers reused",
        m.group_count(),
        (total - plan_offloaded_bytes(&w)) as f64 / 1e9,
        total as f64 / 1e9,
        names.len(),
        t.elapsed().as_secs_f64(),
        m.stats.bytes_moved as f64 / 1e9,
        peak as f64 / 1e9,
        budget as f64 / 1e9,
        w.reused,
        w.reused + w.allocated,
    );
    let rss = peak_rss_bytes();
    let t_drop = std::time::Instant::now();
    drop(w);
    gpu.sync().map_err(coded)?;
    outln!(
        "offload phases: experts to host memory {moved_out:.3} s, teardown {:.3} s; host peak RSS {:.2} GB",
        t_drop.elapsed().as_secs_f64(),
        rss as f64 / 1e9,
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn plan_offloaded_bytes(w: &crate::cuda::weights::DeviceWeights) -> u64 {
    w.offload.host_bytes()
}

/// `wmapc bench-offload`: a forward sweep over layers whose routed experts live in host
/// memory, with stand-in compute per expert.
#[derive(clap::Args, Debug)]
pub struct BenchOffloadArgs {
    #[arg(long, default_value_t = 12)]
    pub layers: usize,
    #[arg(long, default_value_t = 16)]
    pub experts: usize,
    /// Experts each layer touches.
    #[arg(long, default_value_t = 4)]
    pub topk: usize,
    #[arg(long, default_value_t = 32)]
    pub expert_mib: usize,
    /// Device budget, as a fraction of all experts.
    #[arg(long, default_value_t = 0.2)]
    pub budget_fraction: f64,
    /// Stand-in compute per expert, in microseconds.
    #[arg(long, default_value_t = 800)]
    pub compute_us: u64,
    #[arg(long, default_value_t = 4)]
    pub passes: usize,
    /// `cyclic`: the same experts every pass; `routed`: a pseudo-random trace per pass.
    #[arg(long, default_value = "cyclic")]
    pub trace: String,
}

#[cfg(not(feature = "cuda"))]
pub fn bench_offload(_: &BenchOffloadArgs) -> Outcome {
    Err(coded(crate::cuda::Error::NotBuilt))
}

#[cfg(feature = "cuda")]
pub fn bench_offload(a: &BenchOffloadArgs) -> Outcome {
    use std::sync::Arc;

    use crate::cuda::offload::CudaBackend;
    use crate::cuda::Gpu;
    use crate::offload::{Manager, Policy};
    let gpu = Arc::new(Gpu::new(0).map_err(coded)?);
    let bytes = a.expert_mib << 20;
    let groups: Vec<(String, usize)> = (0..a.layers)
        .flat_map(|l| (0..a.experts).map(move |e| (format!("layer={l}/expert={e}"), bytes)))
        .collect();
    let budget = ((groups.len() * bytes) as f64 * a.budget_fraction) as u64;
    // Clock rate for the stand-in compute.
    let khz = gpu
        .ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)
        .unwrap_or(1_980_000) as i64;
    let cycles = khz * a.compute_us as i64 / 1000;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut route = |layer: usize, pass: usize| -> Vec<usize> {
        if a.trace == "cyclic" {
            return (0..a.topk)
                .map(|k| (layer * 7 + k * 3) % a.experts)
                .collect();
        }
        let _ = pass;
        let mut picked = Vec::new();
        while picked.len() < a.topk.min(a.experts) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let e = (seed % a.experts as u64) as usize;
            if !picked.contains(&e) {
                picked.push(e);
            }
        }
        picked
    };
    let trace: Vec<Vec<Vec<usize>>> = (0..a.passes)
        .map(|p| (0..a.layers).map(|l| route(l, p)).collect())
        .collect();
    outln!(
        "{} layers x {} experts of {} MiB ({:.1} GB in host memory), top-{} per layer, budget {:.2} GB, {} us compute per expert, {} trace, {} passes, {}",
        a.layers,
        a.experts,
        a.expert_mib,
        (groups.len() * bytes) as f64 / 1e9,
        a.topk,
        budget as f64 / 1e9,
        a.compute_us,
        a.trace,
        a.passes,
        gpu.name
    );
    // The compute alone: the same stand-in kernels with no copies.
    let accesses: usize = trace
        .iter()
        .map(|p| p.iter().map(Vec::len).sum::<usize>())
        .sum();
    gpu.sync().map_err(coded)?;
    let t = std::time::Instant::now();
    for _ in 0..accesses {
        gpu.spin(cycles).map_err(coded)?;
    }
    gpu.sync().map_err(coded)?;
    let compute = t.elapsed().as_secs_f64();
    outln!("compute alone: {compute:.3} s for {accesses} expert visits");
    // Copy bandwidth alone: four cold groups back to back through a throwaway manager.
    let bw = {
        let mut m = Manager::new(
            CudaBackend::new(gpu.clone()),
            &groups[..5.min(groups.len())],
            u64::MAX,
            Policy::Lru,
        );
        m.prefetch(0).map_err(coded)?;
        let _ = m.unload(0);
        let t = std::time::Instant::now();
        for g in 1..m.group_count() {
            m.prefetch(g).map_err(coded)?;
        }
        for g in 1..m.group_count() {
            m.acquire(g).map_err(coded)?;
            m.release(g);
        }
        ((m.group_count() - 1) * bytes) as f64 / t.elapsed().as_secs_f64()
    };
    outln!(
        "{:<12} {:>9} {:>12} {:>10} {:>10} {:>10} {:>9}",
        "policy",
        "hit rate",
        "moved GB",
        "H2D GB/s",
        "copy s",
        "wall s",
        "hidden"
    );
    for policy in [Policy::Lru, Policy::OrderAware] {
        let mut m = Manager::new(CudaBackend::new(gpu.clone()), &groups, budget, policy);
        for g in 0..groups.len() {
            let fill = (g % 251) as u8;
            m.host_mut(g).map_err(coded)?.fill(fill);
        }
        // The first copy page-locks the host pool (slow, once); a prefetch does it
        // without touching the policy's access record.
        m.prefetch(0).map_err(coded)?;
        let _ = m.unload(0);
        let base = m.stats.clone();
        gpu.sync().map_err(coded)?;
        let start = std::time::Instant::now();
        for pass in &trace {
            for (l, experts) in pass.iter().enumerate() {
                for &e in experts {
                    let g = l * a.experts + e;
                    m.acquire(g).map_err(coded)?;
                    gpu.spin(cycles).map_err(coded)?;
                    // The runtime releases once its kernels are queued; the group stays
                    // resident until evicted.
                    m.release(g);
                }
            }
        }
        gpu.sync().map_err(coded)?;
        let wall = start.elapsed().as_secs_f64();
        let st = &m.stats;
        let (hits, misses) = (st.hits - base.hits, st.misses - base.misses);
        let moved = (st.bytes_moved - base.bytes_moved) as f64;
        let copy_time = moved / bw;
        // Copy time the sweep exposed: its wall time beyond the compute alone.
        let exposed = (wall - compute).max(0.0);
        let hidden = if copy_time > 0.0 {
            (1.0 - exposed / copy_time).clamp(0.0, 1.0)
        } else {
            1.0
        };
        outln!(
            "{:<12} {:>8.1}% {:>12.2} {:>10.1} {:>10.3} {:>10.3} {:>8.1}%",
            format!("{policy:?}"),
            100.0 * hits as f64 / (hits + misses).max(1) as f64,
            moved / 1e9,
            bw / 1e9,
            copy_time,
            wall,
            100.0 * hidden
        );
    }
    Ok(ExitCode::SUCCESS)
}
