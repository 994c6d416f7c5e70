//! Loading a checkpoint onto the GPU, quantized, from a runtime's point of view:
//!
//! ```sh
//! cargo run --release --features cuda --example gpu_load -- tests/fixtures/hf/qwen3_moe nf4
//! ```
//!
//! detects the model from `config.json`, binds the stdlib mapping to the checkpoint's
//! headers, streams the tensors onto device 0 (quantizing the `quantizable` params), and
//! lists what the runtime gets: each tensor's name, format, shape and device bytes.

use std::path::PathBuf;

use wmap::cuda::loader::{self, DeviceTensor, Staging};
use wmap::cuda::Gpu;
use wmap::driver::{self, ModelSource};
use wmap::quant::Format;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: gpu_load CHECKPOINT_DIR [FORMAT]")?,
    );
    let format = args
        .next()
        .map(|f| Format::parse(&f).ok_or(format!("unknown format {f}")))
        .transpose()?;

    // 1. Compile the mapping against the config and bind it to the checkpoint's headers.
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json")))
        .map_err(|e| format!("{e:?}"))?;
    let bound = driver::bind(&mut c, &dir, false);
    let text = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Auto);
    let b = bound.ok_or(text)?;

    // 2. Load onto the GPU. The staging buffers are pinned once and can serve many loads.
    let gpu = Gpu::new(0)?;
    let mut staging = Staging::new(&gpu, 3, 64 << 20)?;
    let (store, stats) = loader::load(&gpu, &mut staging, &b.plan, &b.checkpoint, format)?;
    println!(
        "{} tensors on {}, {:.1} MB, {:.3} s",
        stats.tensors,
        gpu.name,
        stats.device_bytes as f64 / 1e6,
        stats.seconds
    );

    // 3. What a runtime sees: named device tensors with their format, shape and scales.
    for (name, t) in &store.tensors {
        match t {
            DeviceTensor::Quantized(q) => println!(
                "{name:<40} {:<8} {:?} scales {:?} {} bytes",
                q.format.name(),
                q.shape,
                q.scale_shape,
                q.byte_size()
            ),
            DeviceTensor::Full { dtype, shape, data } => {
                println!(
                    "{name:<40} {:<8} {shape:?} {} bytes",
                    dtype.name(),
                    data.len()
                )
            }
            DeviceTensor::Tied(to) => println!("{name:<40} tied to {to}"),
        }
    }
    Ok(())
}
