//! `plan` and `load`: bind to a checkpoint, then read it.

use std::path::PathBuf;
use std::process::ExitCode;

use super::flags::{self, Device};
use super::front::{color, config_of, emit, source_of, status};
use super::out::{err, out, outln};
use super::progress::Progress;
use super::{ColorArg, Format, ModelArgs, Outcome};
use crate::diag::{self, Code, Diagnostic};
use crate::driver;
use crate::loader::{Failure, Loaded, Loader, Tensors};
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
    /// Replace an existing --out, only if an earlier wmapc load wrote it (and nothing else
    /// was added to it since).
    #[arg(long)]
    pub force: bool,
    /// No progress bar or progress lines.
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
    /// Worker threads (0: every core; at most four per core). Memory in flight is
    /// threads × the largest tensor.
    #[arg(long, default_value = "0", value_parser = flags::threads, allow_hyphen_values = true)]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
    /// Where tensors land: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when present).
    #[arg(long, default_value = "cpu", value_parser = flags::device)]
    pub device: Device,
    /// With --quant (or a GPU): keep the params with an offload group (MoE experts) in host memory,
    /// bringing them to the device within this budget (`123`, `100KB`, `100KiB`,
    /// `1.5GiB`; KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024). On the CPU, the host
    /// backend stands in for the device.
    #[arg(long, value_name = "SIZE", value_parser = flags::size, allow_hyphen_values = true)]
    pub offload_budget: Option<u64>,
    /// Eviction and prefetch policy for --offload-budget.
    #[arg(long, value_enum, default_value_t = flags::Policy::Order)]
    pub offload_policy: flags::Policy,
    /// With a GPU: load this many times (1 to 1000) and report the median (kernels and
    /// staging are prepared once, as a training run would).
    #[arg(long, default_value = "1", value_parser = flags::repeat, allow_hyphen_values = true)]
    pub repeat: usize,
    #[command(flatten)]
    pub ranks: super::RankArgs,
}

pub fn plan(args: &ModelArgs) -> Outcome {
    let Some(dir) = &args.checkpoint else {
        return Err(Diagnostic::new(Code::E0803, "plan needs --checkpoint")
            .with_help("wmapc plan [FILE] --checkpoint DIR"));
    };
    let ranks = args.ranks.ranks()?;
    let mut c = driver::compile(&source_of(args), config_of(args).as_deref())?;
    let bound = driver::bind_rank(&mut c, dir, args.strict, ranks);
    match (&bound, args.format) {
        (Some(b), Format::Json) => {
            if !c.diags.is_empty() {
                err!("{}", diag::render_human(&c.sources, &c.diags, color(args)));
            }
            let text = serde_json::to_string_pretty(&b.plan).map_err(|e| {
                Diagnostic::new(Code::E0901, format!("cannot serialize the plan: {e}"))
            })?;
            outln!("{text}");
        }
        (Some(b), Format::Human) => {
            emit(&c, &c.diags, args);
            out!("{}", summary(&b.plan));
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
    if let Some(r) = &plan.rank {
        out.push_str(&rank_summary(plan, r));
    }
    out
}

/// What one rank reads: totals beside the whole load's, then per shard file.
fn rank_summary(plan: &Plan, r: &crate::plan::shard::RankSummary) -> String {
    let pct = 100.0 * r.read_bytes as f64 / (r.whole_read_bytes as f64).max(1.0);
    let mut out = format!(
        "rank: tp {} of {}, ep {} of {}: reads {} bytes in {} ranges, {pct:.1} % of the whole load's {} bytes; {} targets split, {} replicated\n",
        r.tp_rank,
        r.tp_size,
        r.ep_rank,
        r.ep_size,
        r.read_bytes,
        r.read_ranges,
        r.whole_read_bytes,
        r.split_targets,
        plan.targets.len() - r.split_targets,
    );
    for f in r.files.iter().filter(|f| f.ranges > 0) {
        let name = plan.files.get(f.file).map_or("?", String::as_str);
        out.push_str(&format!(
            "  {name}: {} bytes in {} ranges\n",
            f.bytes, f.ranges
        ));
    }
    out
}

/// The load the flags ask for. Flags only the CLI has (`--force` without `--out`,
/// `--repeat` on the CPU) are checked here; the rest by the [`Loader`].
fn loader_of(args: &LoadArgs) -> Result<Loader, Diagnostic> {
    if args.force && args.out.is_none() {
        return Err(Diagnostic::new(Code::E0803, "--force needs --out")
            .with_help("drop --force, or add --out OUT"));
    }
    let mut loader = Loader::new(&args.dir)
        .device(args.device)
        .threads(args.threads)
        .allow_unclaimed(args.allow_unclaimed)
        .ranks(args.ranks.ranks()?);
    loader.model = args.model.clone();
    loader.quant = args.quant.as_deref().and_then(crate::quant::Format::parse);
    loader.offload = args
        .offload_budget
        .map(|budget| (budget, args.offload_policy.offload()));
    loader.export = args.out.clone().map(|out| (out, args.force));
    Ok(loader)
}

pub fn load(args: &LoadArgs) -> Outcome {
    let loader = loader_of(args)?;
    let pending = match args.device {
        Device::Cuda(ordinal) => super::gpu::start(ordinal),
        Device::Cpu | Device::Auto => None,
    };
    let margs = ModelArgs {
        ranks: args.ranks,
        file: None,
        model: None,
        config: Some(args.dir.join("config.json")),
        checkpoint: Some(args.dir.clone()),
        strict: args.strict,
        format: Format::Human,
        color: args.color,
    };
    let bound = match loader.bind() {
        Ok(b) => b,
        Err(f) => return failed(f, &margs),
    };
    for n in &bound.notes {
        err!("{n}\n");
    }
    if args.repeat > 1 && bound.device == Device::Cpu {
        return Err(Diagnostic::new(
            Code::E0803,
            "--repeat times GPU loads; on the CPU it has no effect",
        )
        .with_help("drop --repeat, or add --device cuda"));
    }
    if !bound.diags.is_empty() {
        err!(
            "{}",
            diag::render_human(&bound.sources, &bound.diags, color(&margs))
        );
    }
    if let Device::Cuda(ordinal) = bound.device {
        // The GPU summary times `--repeat` loads with kernels and staging prepared once.
        return super::gpu::load(
            ordinal,
            pending,
            &bound.plan,
            &bound.checkpoint,
            loader.quant,
            args.repeat,
            loader.offload,
        );
    }
    let progress = std::sync::Arc::new(Progress::new(
        format!("loading {}", bound.plan.model),
        bound.total_bytes(),
        args.quiet,
    ));
    let tick = progress.clone();
    let mut loaded = bound
        .with_progress(std::sync::Arc::new(move |n| tick.tick(n)))
        .load()?;
    progress.finish();
    let offload = match &mut loaded.tensors {
        Tensors::Offloaded(w) => loader
            .offload
            .map(|(budget, policy)| offload_sweep(w, budget, policy))
            .transpose()?,
        _ => None,
    };
    print_summary(&loaded, offload.as_deref());
    if matches!(loaded.tensors, Tensors::Host(_)) {
        // Plain allocations, and the process exits next: the kernel takes their pages
        // back at once, where freeing each buffer first (unmapping it page by page) was
        // 6 % of a CPU `load --quant nf4`. Other outcomes drop as usual.
        std::mem::forget(loaded);
    }
    Ok(ExitCode::SUCCESS)
}

/// A load that could not start: notes first, then its diagnostics, as they were found.
fn failed(f: Failure, margs: &ModelArgs) -> Outcome {
    for n in &f.notes {
        err!("{n}\n");
    }
    if let Some(d) = f.outside_inputs() {
        return Err(d.clone());
    }
    if !f.diags.is_empty() {
        err!("{}", diag::render_human(&f.sources, &f.diags, color(margs)));
    }
    Ok(ExitCode::from(1))
}

fn print_summary(loaded: &Loaded, offload: Option<&str>) {
    let s = &loaded.stats;
    let wrote = match &loaded.tensors {
        Tensors::Written(dir) => Some(dir),
        _ => None,
    };
    let verb = if wrote.is_some() { "written" } else { "out" };
    outln!(
        "loaded model `{}`: {} tensors ({} tied), {:.1} MB read, {:.1} MB {verb}, {:.3} s, {:.2} GB/s",
        loaded.plan.model,
        s.tensors,
        s.tied,
        s.bytes_read as f64 / 1e6,
        loaded.bytes_out as f64 / 1e6,
        s.elapsed.as_secs_f64(),
        s.gbps()
    );
    if let Some((format, r)) = &loaded.quant {
        out!("{}", quant_summary(*format, r));
    }
    if let Some(text) = offload {
        out!("{text}");
    }
    if let Some(dir) = wrote {
        outln!("wrote {}", dir.join("model.safetensors").display());
    }
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
    let sizes = format!(
        "quantized {} tensors to {}: {:.2} MB → {:.2} MB ({pct:.1} %); {} kept in full precision ({:.2} MB)\n",
        r.quantized,
        format.name(),
        r.bytes_before as f64 / 1e6,
        r.bytes_after as f64 / 1e6,
        r.full,
        r.full_bytes as f64 / 1e6,
    );
    if r.passed_through == r.quantized && r.quantized > 0 {
        return format!(
            "{sizes}quantization: {}, {} tensors stored in this format already: codes and scales passed through untouched\n",
            format.name(),
            r.passed_through,
        );
    }
    let through = match r.passed_through {
        0 => String::new(),
        n => format!(" ({n} passed through as stored, measured over the rest)"),
    };
    format!(
        "{sizes}quantization: {}, {} tensors{through}, mean abs reconstruction error {:.3e} ({unit:.4} × rms(w){reference}), max {:.3e}, relative {:.4}; \
         measured on {} elements (one 16 Ki-element run in {})\n",
        format.name(),
        r.quantized,
        r.error.mean_abs(),
        r.error.max_abs,
        r.error.relative(),
        r.error.count,
        crate::quant::dequant::ERROR_SAMPLE,
    )
}

/// Runs two forward sweeps over every tensor of a weights manager whose experts are
/// offloaded (host backend), and reports what moved.
fn offload_sweep(
    w: &mut crate::weights::WeightsManager<crate::offload::HostBackend>,
    budget: u64,
    policy: crate::offload::Policy,
) -> Result<String, Diagnostic> {
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
