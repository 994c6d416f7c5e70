//! GPU kernel throughput (P2–P4) and the copy ceilings, timed with CUDA events:
//! NF4 quantize and dequantize, FP8 128×128-block quantize, NVFP4 and MXFP4 quantize on a
//! bf16 [14336, 4096] tensor; device-to-device copy and pinned host-to-device bandwidth.
//! Built with `cargo bench --features cuda --no-run`, run by `scripts/gpu-test.sh`.
//!
//! Each kernel line is measured for both kernel generations (`[v1]`, `[v2]`, see
//! `KernelVersion`) three ways: "quantize" (the whole call, allocating its outputs, one
//! synchronize per call, as a caller that waits for each tensor sees it), "queued" (the
//! same calls ten at a time between one pair of events: what a pipelined loader, whose
//! host runs ahead of the device, sees), and "kernel only" (outputs allocated once).
//! For NF4 and FP8 blocks it also prints the host's time to issue one call (allocating,
//! launching, freeing), which bounds the per-call figure on a host with slow driver calls.
//! `WMAP_BENCH_REPS` (default 20) sets the timed repetitions, e.g. 2 under Nsight Compute.

use cudarc::driver::sys::CUevent_flags;
use wmap::cuda::{Gpu, KernelVersion};
use wmap::quant::Format;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds per call of `f`, timed `batch` calls at a time over `reps` timed
/// batches after `warm` untimed calls.
fn time(gpu: &Gpu, warm: usize, (reps, batch): (usize, usize), mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    gpu.sync().unwrap();
    let ms: Vec<f64> = (0..reps)
        .map(|_| {
            let a = gpu
                .stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .unwrap();
            for _ in 0..batch {
                f();
            }
            let b = gpu
                .stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .unwrap();
            b.synchronize().unwrap();
            a.elapsed_ms(&b).unwrap() as f64 / batch as f64
        })
        .collect();
    median(ms)
}

/// Median host microseconds to issue one call of `f` (allocate, launch, free: no wait),
/// over `reps` batches of ten, the device drained between batches so it never throttles
/// the host.
fn host_us(gpu: &Gpu, reps: usize, mut f: impl FnMut()) -> f64 {
    let us: Vec<f64> = (0..reps)
        .map(|_| {
            gpu.sync().unwrap();
            let t = std::time::Instant::now();
            for _ in 0..10 {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / 10.0
        })
        .collect();
    median(us)
}

fn main() {
    if !wmap::cuda::available() {
        println!("skipped: no CUDA device");
        return;
    }
    let mut gpu = Gpu::new(0).expect("GPU");
    let (rows, cols) = (14336usize, 4096usize);
    let n = rows * cols;
    let mut s = 0x9E37_79B9u64;
    let host: Vec<u16> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            half::bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0).to_bits()
        })
        .collect();
    let x = gpu.stream.clone_htod(&host).unwrap();
    let shape = [rows as u64, cols as u64];
    println!(
        "device: {} ({}), tensor [{rows}, {cols}] bf16",
        gpu.name, gpu.arch
    );
    println!("{:<44} {:>10} {:>14}", "kernel", "ms", "G elements/s");
    let reps: usize = std::env::var("WMAP_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let line =
        |name: &str, ms: f64| println!("{name:<44} {ms:>10.3} {:>14.0}", n as f64 / ms / 1e6);
    for version in [KernelVersion::V1, KernelVersion::V2] {
        gpu.kernels_version = version;
        let v = if version == KernelVersion::V1 {
            "v1"
        } else {
            "v2"
        };
        for (name, f) in [
            ("nf4 quantize (bs 64)", Format::Nf4 { blocksize: 64 }),
            (
                "fp8 128x128-block quantize",
                Format::Fp8Block { block: 128 },
            ),
            ("fp8 per-tensor quantize", Format::Fp8PerTensor),
            ("nvfp4 quantize", Format::Nvfp4),
            ("mxfp4 quantize", Format::Mxfp4),
        ] {
            // Each result is dropped at once: its memory goes back to the stream-ordered
            // pool and the next call reuses it, as a loader's steady state does.
            let call = || drop(gpu.quantize(f, &x.as_view(), &shape).unwrap());
            line(&format!("{name} [{v}]"), time(&gpu, 3, (reps, 1), call));
            line(
                &format!("{name} queued [{v}]"),
                time(&gpu, 3, (reps, 10), call),
            );
            if name.starts_with("nf4") || name.starts_with("fp8 128") {
                println!(
                    "{:<44} {:>10.1} µs",
                    format!("{name} host time per call [{v}]"),
                    host_us(&gpu, reps, call)
                );
            }
        }
        // Kernels alone: outputs allocated once, each run overwrites them.
        for (name, f) in [
            ("nf4 quantize kernel only", Format::Nf4 { blocksize: 64 }),
            (
                "fp8 128x128-block kernel only",
                Format::Fp8Block { block: 128 },
            ),
            ("mxfp4 quantize kernel only", Format::Mxfp4),
        ] {
            let mut q = gpu.alloc_quantized(f, &shape).unwrap();
            let ms = time(&gpu, 3, (reps, 1), || {
                gpu.quantize_chunk(&x.as_view(), &mut q, 0).unwrap()
            });
            line(&format!("{name} [{v}]"), ms);
        }
        let q = gpu
            .quantize(Format::Nf4 { blocksize: 64 }, &x.as_view(), &shape)
            .unwrap();
        let mut out = gpu.stream.alloc_zeros::<u16>(n).unwrap();
        let ms = time(&gpu, 3, (reps, 1), || gpu.dequantize(&q, &mut out).unwrap());
        line(&format!("nf4 dequantize (bs 64) [{v}]"), ms);
    }
    // Ceilings: device-to-device copy (bytes read + written) and pinned host-to-device.
    let bytes = 1usize << 30;
    let src = gpu.stream.alloc_zeros::<u8>(bytes).unwrap();
    let mut dst = gpu.stream.alloc_zeros::<u8>(bytes).unwrap();
    let ms = time(&gpu, 2, (10, 1), || {
        gpu.stream.memcpy_dtod(&src, &mut dst).unwrap()
    });
    println!(
        "{:<34} {ms:>10.3} {:>11.0} GB/s",
        "device-to-device copy 1 GiB",
        2.0 * bytes as f64 / ms / 1e6
    );
    // SAFETY: a pinned buffer read only by the copies timed here.
    let pinned = unsafe { gpu.ctx.alloc_pinned::<u8>(bytes) }.unwrap();
    let ms = time(&gpu, 2, (10, 1), || {
        gpu.stream.memcpy_htod(&pinned, &mut dst).unwrap()
    });
    println!(
        "{:<34} {ms:>10.3} {:>11.1} GB/s",
        "pinned host-to-device 1 GiB",
        bytes as f64 / ms / 1e6
    );
}
