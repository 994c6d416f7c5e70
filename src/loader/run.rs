//! The sinks a bound load runs into: host tensors, quantized tensors (offloaded or not),
//! a runtime-layout export, an HF-named quantized export, or the GPU.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Bound, Loaded, Tensors};
use crate::diag::{Code, Diagnostic};
use crate::load::output::Staging;
use crate::load::{self, HostStore, SafetensorsWriter, Sink};
use crate::quant::{Format, QuantStore, Stored};

/// A CPU load: picks the sink from the export folder and the format.
pub(super) fn host(b: Bound) -> Result<Loaded, Diagnostic> {
    let format = b.loader.quant;
    let out = b.export_dir().map(Path::to_path_buf);
    let (stats, bytes_out, quant, tensors) = match (out, format) {
        (Some(out), Some(format)) => export(&b, &out, format)?,
        (Some(out), None) => write(&b, &out)?,
        (None, Some(format)) => quantize(&b, format)?,
        (None, None) => {
            let store = HostStore::default();
            let stats = execute(&b, &store)?;
            let tensors = store
                .into_tensors()
                .into_iter()
                .map(|(k, t)| (k, Stored::Full(t)))
                .collect();
            (stats.clone(), stats.bytes_out, None, Tensors::Host(tensors))
        }
    };
    Ok(Loaded {
        plan: b.plan,
        device: b.device,
        stats,
        bytes_out,
        quant,
        tensors,
    })
}

type Sunk = (
    load::Stats,
    u64,
    Option<(Format, crate::quant::QuantReport)>,
    Tensors,
);

fn execute(b: &Bound, sink: &dyn Sink) -> Result<load::Stats, Diagnostic> {
    let progress = b.loader.progress.clone();
    let tick = move |n: u64| {
        if let Some(p) = &progress {
            p(n);
        }
    };
    load::execute(&b.plan, &b.checkpoint, sink, b.options(), &tick)
}

fn staging(b: &Bound, out: &Path) -> Result<Staging, Diagnostic> {
    let force = b.loader.export.as_ref().is_some_and(|(_, f)| *f);
    Staging::prepare(out, &b.loader.dir, force)
}

/// A quantized export in HF naming: it carries the checkpoint's config.json along.
fn export(b: &Bound, out: &Path, format: Format) -> Result<Sunk, Diagnostic> {
    let path = b.loader.dir.join("config.json");
    let shown = path.display().to_string();
    let bytes = crate::source::read_capped(&path, crate::source::MAX_CONFIG).map_err(|e| {
        e.diagnostic("config", &shown).unwrap_or_else(|| {
            Diagnostic::new(Code::E0806, format!("cannot read config `{shown}`: {e}"))
        })
    })?;
    let config_text = String::from_utf8(bytes)
        .map_err(|_| Diagnostic::new(Code::E0302, format!("config `{shown}` is not UTF-8 text")))?;
    let exporter = crate::export::Exporter::create(
        staging(b, out)?,
        &b.plan,
        &b.checkpoint,
        format,
        &config_text,
    )?;
    let stats = execute(b, &exporter)?;
    let report = exporter.report();
    test_delay();
    let dir = exporter.commit()?;
    let bytes = folder_bytes(&dir);
    Ok((stats, bytes, Some((format, report)), Tensors::Written(dir)))
}

/// The runtime layout, full precision.
fn write(b: &Bound, out: &Path) -> Result<Sunk, Diagnostic> {
    let writer = SafetensorsWriter::create(staging(b, out)?, &b.plan)?;
    let stats = execute(b, &writer)?;
    test_delay();
    let dir = writer.commit()?;
    let bytes = folder_bytes(&dir);
    Ok((stats, bytes, None, Tensors::Written(dir)))
}

/// Quantized in host memory; with an offload budget, placed in a weights manager whose
/// host backend stands in for the device.
fn quantize(b: &Bound, format: Format) -> Result<Sunk, Diagnostic> {
    let store = QuantStore::new(format);
    let stats = execute(b, &store)?;
    let report = store.report();
    let bytes = report.bytes_after.saturating_add(report.full_bytes);
    let tensors: BTreeMap<String, Stored> = store.into_tensors();
    let tensors = match b.loader.offload {
        Some((budget, policy)) => {
            let backend = crate::offload::HostBackend::default();
            let w = crate::weights::WeightsManager::new(backend, &b.plan, tensors, budget, policy)
                .map_err(Diagnostic::from)?;
            Tensors::Offloaded(Box::new(w))
        }
        None => Tensors::Host(tensors),
    };
    Ok((stats, bytes, Some((format, report)), tensors))
}

/// The bytes of the files in a written output folder (the marker included).
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .fold(0u64, u64::saturating_add)
        })
        .unwrap_or(0)
}

/// Test builds only: `WMAPC_TEST_DELAY_MS` holds the load before its commit, so process
/// tests can signal it, race it or change OUT while the temporary folder exists.
fn test_delay() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("WMAPC_TEST_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
    }
}

/// A load onto a CUDA device: the device, its tensors and what the load measured.
#[cfg(feature = "cuda")]
pub struct DeviceLoad {
    pub gpu: std::sync::Arc<crate::cuda::Gpu>,
    pub store: crate::cuda::loader::DeviceStore,
    pub stats: crate::cuda::loader::GpuLoadStats,
}

/// A load onto a CUDA device with an offload budget: the params with an offload group
/// in page-locked host memory behind the weights manager, the rest on the device.
#[cfg(feature = "cuda")]
pub struct DeviceOffload {
    pub weights: crate::cuda::weights::DeviceWeights,
    pub stats: crate::cuda::loader::GpuLoadStats,
    /// Bytes on the device right after the load, before the groups moved out.
    pub loaded_bytes: u64,
    /// Moving the groups out to host memory.
    pub moved_out: std::time::Duration,
}

/// Moves the targets of `plan` with an offload group out of `store` into the weights
/// manager's page-locked host groups, brought back within `budget` by `policy`: the one
/// construction the Loader, the CLI and the Python store share.
#[cfg(feature = "cuda")]
pub fn offload_device(
    gpu: &std::sync::Arc<crate::cuda::Gpu>,
    plan: &crate::plan::Plan,
    store: crate::cuda::loader::DeviceStore,
    budget: u64,
    policy: crate::offload::Policy,
) -> Result<crate::cuda::weights::DeviceWeights, Diagnostic> {
    crate::cuda::weights::DeviceWeights::new(gpu.clone(), plan, store, budget, policy)
        .map_err(Diagnostic::from)
}

#[cfg(not(feature = "cuda"))]
pub(super) fn device(_: Bound, _: usize) -> Result<Loaded, Diagnostic> {
    Err(crate::cuda::Error::NotBuilt.into())
}

/// Stages through pinned buffers and quantizes on the device when asked; with an offload
/// budget, hands the offload groups to the weights manager. The staging is set up per
/// load (a caller timing repeated loads drives [`crate::cuda::loader`]).
#[cfg(feature = "cuda")]
pub(super) fn device(b: Bound, ordinal: usize) -> Result<Loaded, Diagnostic> {
    use crate::cuda::{loader, Ready};
    let Ready {
        gpu, mut staging, ..
    } = Ready::open(ordinal).map_err(Diagnostic::from)?;
    let format = b.loader.quant;
    let (store, gstats) = loader::load(&gpu, &mut staging, &b.plan, &b.checkpoint, format)
        .map_err(Diagnostic::from)?;
    // The staging ring's page-locked buffers are done with: give them back before an
    // offload pool is page-locked, so host memory peaks at one of the two, not both.
    drop(staging);
    let stats = load::Stats {
        tensors: gstats.tensors,
        tied: 0,
        bytes_read: gstats.bytes_read,
        bytes_out: gstats.device_bytes,
        elapsed: std::time::Duration::from_secs_f64(gstats.seconds.max(0.0)),
    };
    let tensors = match b.loader.offload {
        Some((budget, policy)) => {
            let loaded_bytes = store.device_bytes();
            let t = std::time::Instant::now();
            let weights = offload_device(&gpu, &b.plan, store, budget, policy)?;
            Tensors::DeviceOffloaded(Box::new(DeviceOffload {
                weights,
                stats: gstats.clone(),
                loaded_bytes,
                moved_out: t.elapsed(),
            }))
        }
        None => Tensors::Device(Box::new(DeviceLoad {
            gpu,
            store,
            stats: gstats.clone(),
        })),
    };
    Ok(Loaded {
        plan: b.plan,
        device: b.device,
        bytes_out: gstats.device_bytes,
        stats,
        quant: None,
        tensors,
    })
}
