//! Loading a checkpoint into host memory through `wmap::Loader`, quantized or not:
//!
//! ```sh
//! cargo run --example cpu_load -- tests/fixtures/hf/qwen3_moe nf4
//! ```
//!
//! detects the model from `config.json`, binds the stdlib mapping to the checkpoint's
//! headers, streams the tensors into host memory (quantizing the `quantizable` params),
//! lists what a runtime gets — each tensor's name, format, shape and bytes — and reads one
//! back as bf16 through the weights manager.

use wmap::loader::{Loader, Tensors};
use wmap::quant::{Format, Stored};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: cpu_load CHECKPOINT_DIR [FORMAT]")?;
    let mut loader = Loader::new(dir);
    if let Some(f) = args.next() {
        loader = loader.quant(Format::parse(&f).ok_or(format!("unknown format {f}"))?);
    }

    // 1. Compile against config.json and bind to the headers; warnings come first.
    let bound = loader.bind().map_err(|f| {
        let text = wmap::diag::render_human(&f.sources, &f.diags, wmap::diag::Color::Auto);
        format!("{}{text}", f.notes.join("\n"))
    })?;
    if !bound.diags.is_empty() {
        eprint!(
            "{}",
            wmap::diag::render_human(&bound.sources, &bound.diags, wmap::diag::Color::Auto)
        );
    }

    // 2. Read. Every error from here on is one coded diagnostic.
    let loaded = bound
        .load()
        .map_err(|d| format!("{}: {}", d.code.as_str(), d.message))?;
    println!(
        "model `{}`: {} tensors, {:.2} MB read, {:.2} MB in memory, {:.3} s",
        loaded.plan.model,
        loaded.stats.tensors,
        loaded.stats.bytes_read as f64 / 1e6,
        loaded.bytes_out as f64 / 1e6,
        loaded.stats.elapsed.as_secs_f64()
    );
    let Tensors::Host(tensors) = loaded.tensors else {
        return Err("expected host tensors".into());
    };
    for (name, t) in &tensors {
        match t {
            Stored::Quantized(q) => println!(
                "  {name}: {} {:?}, {} bytes",
                q.format.name(),
                q.shape,
                q.byte_size()
            ),
            Stored::Full(h) => println!(
                "  {name}: {} {:?}, {} bytes",
                h.dtype.name(),
                h.shape,
                h.data.len()
            ),
        }
    }

    // 3. What a training step reads: a bf16 view, dequantized into a pooled buffer.
    let first = tensors.keys().next().cloned().ok_or("no tensors")?;
    let mut weights = wmap::weights::WeightsManager::new(
        wmap::offload::HostBackend::default(),
        &loaded.plan,
        tensors,
        u64::MAX,
        wmap::offload::Policy::OrderAware,
    )?;
    let view = weights.get(&first)?;
    println!(
        "get({first}): {:?} bf16, first values {:?}",
        view.shape,
        &view[..view.len().min(4)]
    );
    Ok(())
}
