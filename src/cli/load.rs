//! `plan` and `load`: bind to a checkpoint, then read it.

use std::path::PathBuf;
use std::process::ExitCode;

use super::front::{color, config_of, emit, source_of, status};
use super::{ColorArg, Format, ModelArgs};
use crate::diag;
use crate::driver;
use crate::load::{self, HostStore, SafetensorsWriter, Sink};
use crate::plan::{Plan, Recipe};

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The checkpoint folder (config.json + safetensors).
    pub dir: PathBuf,
    /// A .wmap file or a stdlib model name; default: detected from config.json.
    #[arg(long)]
    pub model: Option<String>,
    /// Quantize the params marked `quantizable` as they load.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::quant::Format::NAMES))]
    pub quant: Option<String>,
    /// Write OUT/model.safetensors: the runtime layout, or with --quant a checkpoint in HF
    /// naming that transformers (bnb 4-bit, fine-grained FP8) or ModelOpt (NVFP4) reads.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing --out.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Unclaimed tensors are errors: what `load` does anyway unless --allow-unclaimed
    /// (accepted for symmetry with `plan` and `check`).
    #[arg(long)]
    pub strict: bool,
    /// Load even though the checkpoint has tensors no param claims (they are dropped,
    /// with a warning); without it such tensors are errors (E0510).
    #[arg(long, conflicts_with = "strict")]
    pub allow_unclaimed: bool,
    /// Worker threads (0: every core). Memory in flight is threads × the largest tensor.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
    /// Where tensors land: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when present).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Keep the params with an offload group (MoE experts) in host memory, bringing them
    /// to the device within this budget (bytes; `KiB`/`MiB`/`GiB` suffixes). With --quant
    /// on the CPU, the host backend stands in for the device.
    #[arg(long)]
    pub offload_budget: Option<String>,
    /// Eviction and prefetch policy for --offload-budget: `lru` or `order`.
    #[arg(long, default_value = "order")]
    pub offload_policy: String,
    /// With a GPU: load this many times and report the median (kernels and staging are
    /// prepared once, as a training run would).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

/// `cpu`, or `cuda` with an ordinal.
pub(super) enum Device {
    Cpu,
    Cuda(usize),
}

pub(super) fn parse_device(s: &str) -> miette::Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if cfg!(feature = "cuda") && super::gpu::available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cuda" => Ok(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Ok(Device::Cuda(n)),
            None => Err(miette::miette!(
                help = "cpu, cuda, cuda:N or auto",
                "unknown device `{other}`"
            )),
        },
    }
}

pub fn plan(args: &ModelArgs) -> miette::Result<ExitCode> {
    let Some(dir) = &args.checkpoint else {
        return Err(miette::miette!(
            help = "wmapc plan [FILE] --checkpoint DIR",
            "plan needs --checkpoint"
        ));
    };
    let mut c = driver::compile(&source_of(args), config_of(args).as_deref())?;
    let bound = driver::bind(&mut c, dir, args.strict);
    match (&bound, args.format) {
        (Some(b), Format::Json) => {
            if !c.diags.is_empty() {
                eprint!("{}", diag::render_human(&c.sources, &c.diags, color(args)));
            }
            let text = serde_json::to_string_pretty(&b.plan).map_err(|e| {
                miette::miette!("cannot serialize the plan: {e}; this is a bug in wmapc")
            })?;
            println!("{text}");
        }
        (Some(b), Format::Human) => {
            emit(&c, &c.diags, args);
            print!("{}", summary(&b.plan));
        }
        (None, _) => emit(&c, &c.diags, args),
    }
    Ok(status(&c))
}

/// The human plan: totals, then the fallbacks taken (aggregated by name pattern).
fn summary(plan: &Plan) -> String {
    let mut out = format!(
        "plan for model `{}`: {} targets, {:.1} MB, {} quantizable, from {} file(s)\n",
        plan.model,
        plan.targets.len(),
        plan.target_bytes() as f64 / 1e6,
        plan.targets.iter().filter(|t| t.quantizable).count(),
        plan.files.len()
    );
    let mut taken: std::collections::BTreeMap<String, (String, usize)> = Default::default();
    for t in &plan.targets {
        for f in t.fallbacks.iter().filter(|f| f.chosen > 0) {
            let what = match &t.recipe {
                Recipe::Tied { target } => format!("tied to `{target}`"),
                _ => format!("fallback {} of {}", f.chosen + 1, f.of),
            };
            let (pattern, _) = crate::plan::templatize(&t.name);
            taken.entry(pattern).or_insert((what, 0)).1 += 1;
        }
    }
    for (pattern, (what, n)) in taken {
        let times = if n > 1 {
            format!(" ({n}×)")
        } else {
            String::new()
        };
        out.push_str(&format!("  {pattern}: {what}{times}\n"));
    }
    if !plan.ignored.is_empty() {
        out.push_str(&format!(
            "  {} checkpoint tensors ignored by `ignore` patterns\n",
            plan.ignored.len()
        ));
    }
    out
}

pub fn load(args: &LoadArgs) -> miette::Result<ExitCode> {
    let margs = ModelArgs {
        file: None,
        model: None,
        config: Some(args.dir.join("config.json")),
        checkpoint: Some(args.dir.clone()),
        strict: args.strict,
        format: Format::Human,
        color: args.color,
    };
    let mut c = driver::compile(
        &driver::model_source(args.model.as_deref()),
        margs.config.as_deref(),
    )?;
    // A load drops what nothing claims, so it refuses unclaimed tensors unless told.
    let bound = driver::bind(&mut c, &args.dir, !args.allow_unclaimed);
    if !c.diags.is_empty() {
        emit(&c, &c.diags, &margs);
    }
    let Some(b) = bound else {
        return Ok(ExitCode::from(1));
    };
    if let Device::Cuda(ordinal) = parse_device(&args.device)? {
        if args.out.is_some() {
            return Err(miette::miette!(
                "--out writes from the CPU path; drop --device cuda"
            ));
        }
        let format = args.quant.as_deref().and_then(crate::quant::Format::parse);
        let offload = match &args.offload_budget {
            Some(budget) => Some((parse_bytes(budget)?, parse_policy(&args.offload_policy)?)),
            None => None,
        };
        return super::gpu::load(
            ordinal,
            &b.plan,
            &b.checkpoint,
            format,
            args.repeat.max(1),
            offload,
        );
    }
    let total: u64 = b.checkpoint.data_bytes();
    let bar = progress_bar(total, args.quiet);
    let tick = |n: u64| bar.inc(n);
    let options = load::Options {
        threads: args.threads,
        ..Default::default()
    };
    let format = args.quant.as_deref().and_then(crate::quant::Format::parse);
    let mut quant_report = None;
    let mut offload_summary: Option<String> = None;
    let result = match (&args.out, format) {
        (Some(out), Some(format)) => {
            let config_path = args.dir.join("config.json");
            let config_text = crate::source::read_capped(&config_path, crate::source::MAX_CONFIG)
                .map_err(|e| miette::miette!("cannot read config.json: {e}"))
                .and_then(|b| {
                    String::from_utf8(b)
                        .map_err(|_| miette::miette!("config.json is not UTF-8 text"))
                })?;
            let exporter = crate::export::Exporter::create(
                out,
                &b.plan,
                &b.checkpoint,
                format,
                &config_text,
                args.force,
            )
            .map_err(|e| miette::miette!("{e}"))?;
            match load::execute(&b.plan, &b.checkpoint, &exporter, options, &tick) {
                Ok(stats) => {
                    exporter.commit().map_err(|d| report(&c, d))?;
                    stats
                }
                Err(d) => {
                    exporter.abandon();
                    return Err(report(&c, d));
                }
            }
        }
        (Some(out), None) => {
            let writer =
                SafetensorsWriter::create(out, &b.plan, args.force).map_err(|d| report(&c, d))?;
            match load::execute(&b.plan, &b.checkpoint, &writer as &dyn Sink, options, &tick) {
                Ok(stats) => {
                    writer.commit().map_err(|d| report(&c, d))?;
                    stats
                }
                Err(d) => {
                    writer.abandon();
                    return Err(report(&c, d));
                }
            }
        }
        (None, Some(format)) => {
            let store = crate::quant::QuantStore::new(format);
            let stats = load::execute(&b.plan, &b.checkpoint, &store, options, &tick)
                .map_err(|d| report(&c, d))?;
            quant_report = Some((format, store.report()));
            if let Some(budget) = &args.offload_budget {
                offload_summary = Some(offload_sweep(
                    &b.plan,
                    store.into_tensors(),
                    budget,
                    &args.offload_policy,
                )?);
            }
            stats
        }
        (None, None) => {
            let store = HostStore::default();
            load::execute(&b.plan, &b.checkpoint, &store, options, &tick)
                .map_err(|d| report(&c, d))?
        }
    };
    bar.finish_and_clear();
    println!(
        "loaded model `{}`: {} tensors ({} tied), {:.1} MB read, {:.1} MB out, {:.3} s, {:.2} GB/s",
        b.plan.model,
        result.tensors,
        result.tied,
        result.bytes_read as f64 / 1e6,
        result.bytes_out as f64 / 1e6,
        result.elapsed.as_secs_f64(),
        result.gbps()
    );
    if let Some((format, r)) = quant_report {
        print!("{}", quant_summary(format, &r));
    }
    if let Some(text) = offload_summary {
        print!("{text}");
    }
    if let Some(out) = &args.out {
        println!("wrote {}", out.join("model.safetensors").display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes before/after and the reconstruction error next to the format's reference figure.
fn quant_summary(format: crate::quant::Format, r: &crate::quant::QuantReport) -> String {
    let pct = 100.0 * r.bytes_after as f64 / (r.bytes_before as f64).max(1.0);
    let rms = (r.error.sum_sq_ref / r.error.count.max(1) as f64).sqrt();
    let unit = r.error.mean_abs() / rms.max(f64::MIN_POSITIVE);
    let reference = format
        .expected_gaussian_error()
        .map(|e| format!("; {} on unit Gaussian data: {e}", format.name()))
        .unwrap_or_default();
    format!(
        "quantized {} tensors to {}: {:.2} MB → {:.2} MB ({pct:.1} %); {} kept in full precision ({:.2} MB)\n\
         error: mean |w − ŵ| {:.3e} ({unit:.4} × rms(w){reference}), max {:.3e}, relative {:.4}\n",
        r.quantized,
        format.name(),
        r.bytes_before as f64 / 1e6,
        r.bytes_after as f64 / 1e6,
        r.full,
        r.full_bytes as f64 / 1e6,
        r.error.mean_abs(),
        r.error.max_abs,
        r.error.relative(),
    )
}

fn parse_policy(policy: &str) -> miette::Result<crate::offload::Policy> {
    match policy {
        "lru" => Ok(crate::offload::Policy::Lru),
        "order" => Ok(crate::offload::Policy::OrderAware),
        other => Err(miette::miette!(
            help = "lru or order",
            "unknown offload policy `{other}`"
        )),
    }
}

/// `4GiB` → bytes.
fn parse_bytes(s: &str) -> miette::Result<u64> {
    let t = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((t, 1));
    num.trim()
        .parse::<f64>()
        .map(|v| (v * mult as f64) as u64)
        .map_err(|_| {
            miette::miette!(
                help = "e.g. 4GiB, 512MiB, 1000000",
                "cannot read `{s}` as a size"
            )
        })
}

/// Places the loaded tensors in a weight manager with the experts offloaded (host backend),
/// runs one forward sweep over every tensor, and reports what moved.
fn offload_sweep(
    plan: &Plan,
    tensors: std::collections::BTreeMap<String, crate::quant::Stored>,
    budget: &str,
    policy: &str,
) -> miette::Result<String> {
    use crate::offload::HostBackend;
    let budget = parse_bytes(budget)?;
    let policy = parse_policy(policy)?;
    let mut w =
        crate::weights::WeightsManager::new(HostBackend::default(), plan, tensors, budget, policy)
            .map_err(super::gpu::coded)?;
    let names: Vec<String> = w.names().map(str::to_string).collect();
    let mut peak = 0;
    for _ in 0..2 {
        for n in &names {
            w.get(n).map_err(super::gpu::coded)?;
            peak = peak.max(w.offload.device_bytes());
        }
    }
    let s = &w.offload.stats;
    Ok(format!(
        "offload ({policy:?}, host backend): {} groups, budget {:.2} MB, peak resident {:.2} MB; two sweeps: {} hits, {} misses, {:.2} MB moved, {} evictions\n",
        w.offload.group_count(),
        budget as f64 / 1e6,
        peak as f64 / 1e6,
        s.hits,
        s.misses,
        s.bytes_moved as f64 / 1e6,
        s.evictions
    ))
}

/// A coded failure during the load, as an application report.
fn report(c: &driver::Compilation, d: crate::diag::Diagnostic) -> miette::Report {
    let mut diags = crate::diag::Diagnostics::default();
    diags.push(d);
    miette::miette!(
        "{}",
        diag::render_human(&c.sources, &diags, diag::Color::Never).trim_end()
    )
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
