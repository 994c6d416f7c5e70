//! Loading a checkpoint onto the GPU, quantized, from a runtime's point of view:
//!
//! ```sh
//! cargo run --release --features cuda --example gpu_load -- tests/fixtures/hf/qwen3_moe nf4
//! ```
//!
//! detects the model from `config.json`, binds the stdlib mapping to the checkpoint's
//! headers, streams the tensors onto device 0 (quantizing the `quantizable` params), and
//! lists what the runtime gets: each tensor's name, format, shape and device bytes.

use wmap::cuda::loader::DeviceTensor;
use wmap::loader::{Device, Loader, Tensors};
use wmap::quant::Format;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: gpu_load CHECKPOINT_DIR [FORMAT]")?;
    let mut loader = Loader::new(dir).device(Device::Cuda(0));
    if let Some(f) = args.next() {
        loader = loader.quant(Format::parse(&f).ok_or(format!("unknown format {f}"))?);
    }

    // 1. Compile the mapping against the config and bind it to the checkpoint's headers.
    let bound = loader
        .bind()
        .map_err(|f| wmap::diag::render_human(&f.sources, &f.diags, wmap::diag::Color::Auto))?;

    // 2. Load onto the GPU: pinned staging, copies and quantization on the device.
    let loaded = bound
        .load()
        .map_err(|d| format!("{}: {}", d.code.as_str(), d.message))?;
    let Tensors::Device(load) = loaded.tensors else {
        return Err("expected device tensors".into());
    };
    let (gpu, store, stats) = (&load.gpu, &load.store, &load.stats);
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
