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
use crate::load::output::Staging;
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
}

pub fn plan(args: &ModelArgs) -> Outcome {
    let Some(dir) = &args.checkpoint else {
        return Err(Diagnostic::new(Code::E0803, "plan needs --checkpoint")
            .with_help("wmapc plan [FILE] --checkpoint DIR"));
    };
    let mut c = driver::compile(&source_of(args), config_of(args).as_deref())?;
    let bound = driver::bind(&mut c, dir, args.strict);
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
    out
}

/// Flags that would be ignored, or that contradict each other, before anything runs.
fn check_flags(args: &LoadArgs) -> Result<(), Diagnostic> {
    let conflict = |m: &str, help: &str| Err(Diagnostic::new(Code::E0803, m).with_help(help));
    if args.offload_budget.is_some() && args.out.is_some() {
        return conflict(
            "--offload-budget has no effect with --out: the export is written, not offloaded",
            "drop one of --offload-budget and --out",
        );
    }
    if args.force && args.out.is_none() {
        return conflict("--force needs --out", "drop --force, or add --out OUT");
    }
    if matches!(args.device, Device::Cuda(_)) && args.out.is_some() {
        return conflict(
            "--out writes from the CPU path; it cannot be combined with --device cuda",
            "drop --device, or drop --out",
        );
    }
    Ok(())
}

/// `auto` decided: CUDA device 0 when there is one (and no --out), else the CPU, said in
/// a note so a fallback is never silent.
fn resolve_device(args: &LoadArgs) -> Device {
    match args.device {
        Device::Auto if args.out.is_some() => {
            err!(
                "note: --device auto: loading on the CPU, because --out writes from the CPU path\n"
            );
            Device::Cpu
        }
        Device::Auto if super::gpu::available() => Device::Cuda(0),
        Device::Auto => {
            err!("note: --device auto: no CUDA device is available; loading on the CPU\n");
            Device::Cpu
        }
        d => d,
    }
}

pub fn load(args: &LoadArgs) -> Outcome {
    check_flags(args)?;
    let device = resolve_device(args);
    if args.offload_budget.is_some() && args.quant.is_none() && device == Device::Cpu {
        return Err(Diagnostic::new(
            Code::E0803,
            "--offload-budget needs --quant on the CPU: only quantized loads are offloaded there",
        )
        .with_help("add --quant (e.g. --quant nf4) or --device cuda, or drop --offload-budget"));
    }
    if args.repeat > 1 && device == Device::Cpu {
        return Err(Diagnostic::new(
            Code::E0803,
            "--repeat times GPU loads; on the CPU it has no effect",
        )
        .with_help("drop --repeat, or add --device cuda"));
    }
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
    let format = args.quant.as_deref().and_then(crate::quant::Format::parse);
    if let Device::Cuda(ordinal) = device {
        let offload = args
            .offload_budget
            .map(|budget| (budget, args.offload_policy.offload()));
        return super::gpu::load(
            ordinal,
            &b.plan,
            &b.checkpoint,
            format,
            args.repeat,
            offload,
        );
    }
    let progress = Progress::new(
        format!("loading {}", b.plan.model),
        b.checkpoint.data_bytes(),
        args.quiet,
    );
    let run = Run {
        args,
        plan: &b.plan,
        ckpt: &b.checkpoint,
        options: load::Options {
            threads: args.threads,
            ..Default::default()
        },
        progress: &progress,
    };
    let done = match (&args.out, format) {
        (Some(out), Some(format)) => run.export(out, format)?,
        (Some(out), None) => run.write(out)?,
        (None, Some(format)) => run.quantize(format)?,
        (None, None) => run.host()?,
    };
    progress.finish();
    print_summary(&b.plan, &done);
    Ok(ExitCode::SUCCESS)
}

/// One CPU load: where it reads from, how, and where progress goes.
struct Run<'a> {
    args: &'a LoadArgs,
    plan: &'a Plan,
    ckpt: &'a crate::checkpoint::Checkpoint,
    options: load::Options,
    progress: &'a Progress,
}

/// What a CPU load did, for the summary.
struct Done {
    stats: load::Stats,
    /// Bytes the load produced: in memory, or written to OUT.
    bytes_out: u64,
    quant: Option<(crate::quant::Format, crate::quant::QuantReport)>,
    offload: Option<String>,
    wrote: Option<PathBuf>,
}

impl Run<'_> {
    fn execute(&self, sink: &dyn Sink) -> Result<load::Stats, Diagnostic> {
        let tick = |n: u64| self.progress.tick(n);
        load::execute(self.plan, self.ckpt, sink, self.options, &tick)
    }

    fn staging(&self, out: &std::path::Path) -> Result<Staging, Diagnostic> {
        Staging::prepare(out, &self.args.dir, self.args.force)
    }

    fn export(
        &self,
        out: &std::path::Path,
        format: crate::quant::Format,
    ) -> Result<Done, Diagnostic> {
        let path = self.args.dir.join("config.json");
        let shown = path.display().to_string();
        let bytes = crate::source::read_capped(&path, crate::source::MAX_CONFIG).map_err(|e| {
            e.diagnostic("config", &shown).unwrap_or_else(|| {
                Diagnostic::new(Code::E0806, format!("cannot read config `{shown}`: {e}"))
            })
        })?;
        let config_text = String::from_utf8(bytes).map_err(|_| {
            Diagnostic::new(Code::E0302, format!("config `{shown}` is not UTF-8 text"))
        })?;
        let exporter = crate::export::Exporter::create(
            self.staging(out)?,
            self.plan,
            self.ckpt,
            format,
            &config_text,
        )?;
        let stats = self.execute(&exporter)?;
        let report = exporter.report();
        test_delay();
        let dir = exporter.commit()?;
        Ok(Done {
            stats,
            bytes_out: folder_bytes(&dir),
            quant: Some((format, report)),
            offload: None,
            wrote: Some(dir),
        })
    }

    fn write(&self, out: &std::path::Path) -> Result<Done, Diagnostic> {
        let writer = SafetensorsWriter::create(self.staging(out)?, self.plan)?;
        let stats = self.execute(&writer)?;
        test_delay();
        let dir = writer.commit()?;
        Ok(Done {
            stats,
            bytes_out: folder_bytes(&dir),
            quant: None,
            offload: None,
            wrote: Some(dir),
        })
    }

    fn quantize(&self, format: crate::quant::Format) -> Result<Done, Diagnostic> {
        let store = crate::quant::QuantStore::new(format);
        let stats = self.execute(&store)?;
        let report = store.report();
        let offload = match self.args.offload_budget {
            Some(budget) => Some(offload_sweep(
                self.plan,
                store.into_tensors(),
                budget,
                self.args.offload_policy,
            )?),
            None => None,
        };
        Ok(Done {
            stats,
            bytes_out: report.bytes_after.saturating_add(report.full_bytes),
            quant: Some((format, report)),
            offload,
            wrote: None,
        })
    }

    fn host(&self) -> Result<Done, Diagnostic> {
        let stats = self.execute(&HostStore::default())?;
        Ok(Done {
            bytes_out: stats.bytes_out,
            stats,
            quant: None,
            offload: None,
            wrote: None,
        })
    }
}

/// The bytes of the files in a written output folder (the marker included).
fn folder_bytes(dir: &std::path::Path) -> u64 {
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

fn print_summary(plan: &Plan, done: &Done) {
    let s = &done.stats;
    let verb = if done.wrote.is_some() {
        "written"
    } else {
        "out"
    };
    outln!(
        "loaded model `{}`: {} tensors ({} tied), {:.1} MB read, {:.1} MB {verb}, {:.3} s, {:.2} GB/s",
        plan.model,
        s.tensors,
        s.tied,
        s.bytes_read as f64 / 1e6,
        done.bytes_out as f64 / 1e6,
        s.elapsed.as_secs_f64(),
        s.gbps()
    );
    if let Some((format, r)) = &done.quant {
        out!("{}", quant_summary(*format, r));
    }
    if let Some(text) = &done.offload {
        out!("{text}");
    }
    if let Some(dir) = &done.wrote {
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
    if r.passed_through == r.quantized && r.quantized > 0 {
        return format!(
            "quantized {} tensors to {}: {:.2} MB → {:.2} MB ({pct:.1} %); {} kept in full precision ({:.2} MB)\n\
             quantization: {}, {} tensors stored in this format already: codes and scales passed through untouched\n",
            r.quantized,
            format.name(),
            r.bytes_before as f64 / 1e6,
            r.bytes_after as f64 / 1e6,
            r.full,
            r.full_bytes as f64 / 1e6,
            format.name(),
            r.passed_through,
        );
    }
    let through = match r.passed_through {
        0 => String::new(),
        n => format!(" ({n} passed through as stored, measured over the rest)"),
    };
    format!(
        "quantized {} tensors to {}: {:.2} MB → {:.2} MB ({pct:.1} %); {} kept in full precision ({:.2} MB)\n\
         quantization: {}, {} tensors{through}, mean abs reconstruction error {:.3e} ({unit:.4} × rms(w){reference}), max {:.3e}, relative {:.4}\n",
        r.quantized,
        format.name(),
        r.bytes_before as f64 / 1e6,
        r.bytes_after as f64 / 1e6,
        r.full,
        r.full_bytes as f64 / 1e6,
        format.name(),
        r.quantized,
        r.error.mean_abs(),
        r.error.max_abs,
        r.error.relative(),
    )
}

/// Places the loaded tensors in a weight manager with the experts offloaded (host backend),
/// runs one forward sweep over every tensor, and reports what moved.
fn offload_sweep(
    plan: &Plan,
    tensors: std::collections::BTreeMap<String, crate::quant::Stored>,
    budget: u64,
    policy: flags::Policy,
) -> Result<String, Diagnostic> {
    use crate::offload::HostBackend;
    let policy = policy.offload();
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
