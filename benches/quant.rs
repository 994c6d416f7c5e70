//! CPU quantize throughput per format on a 256 Mi-element tensor (bf16 values held as
//! f32), one thread and all threads. `cargo bench --bench quant` (WMAP_BENCH_ELEMS to
//! change the size).

use std::time::{Duration, Instant};

use wmap::quant::{self, Format};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() {
    let n: usize = std::env::var("WMAP_BENCH_ELEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256 << 20);
    let cols = 4096usize;
    // Deterministic, never zero: bf16-rounded Gaussian-ish values.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let x: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            half::bf16::from_f32(u * 3.0 + 1e-3).to_f32()
        })
        .collect();
    let shape = [(n / cols) as u64, cols as u64];
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "{:<12} {:>16} {:>16}   ({} elements, {cores} threads)",
        "format", "1 thread", "all threads", n
    );
    for name in Format::NAMES {
        let f = Format::parse(name).unwrap();
        let mut row = Vec::new();
        for threads in [1, cores] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let times: Vec<Duration> = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    let q = pool.install(|| quant::quantize(f, &x, &shape));
                    std::hint::black_box(&q);
                    t.elapsed()
                })
                .collect();
            row.push(n as f64 / median(times).as_secs_f64() / 1e9);
        }
        println!("{name:<12} {:>11.3} Gel/s {:>11.3} Gel/s", row[0], row[1]);
    }
}
