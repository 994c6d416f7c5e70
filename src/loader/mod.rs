//! Loader: the library's one entry point for loading a checkpoint — what the CLI's
//! `load`, the examples and the Python package all call.
//!
//! Input: a [`Loader`] (checkpoint folder, model, quantization format, device, offload
//! budget and policy, threads, unclaimed-tensor policy, optional export folder, progress
//! callback). Output, in two steps so a caller can show the compile warnings before the
//! long read starts: [`Loader::bind`] → a [`Bound`] (the plan, the checkpoint, the
//! diagnostics and notes so far), then [`Bound::load`] → a [`Loaded`] (the tensors by
//! runtime name, statistics and the quantization report).
//!
//! Decided here, not by callers: which flags contradict each other, where `auto` loads,
//! which sink receives the targets (host tensors, quantized tensors, a weights manager
//! with offloaded groups on the host or on a CUDA device, a runtime-layout or HF-named
//! export). Every failure is a coded [`Diagnostic`]; failures inside the inputs come
//! with the source map they point into.
//! Printing is the caller's: nothing here writes to stdout or stderr.

mod run;

#[cfg(feature = "cuda")]
pub use run::{offload_device, DeviceLoad, DeviceOffload};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::driver;
pub use crate::ir::shard::Ranks;
use crate::offload::{HostBackend, Policy};
use crate::plan::Plan;
use crate::quant::{Format, QuantReport, Stored};
use crate::source::SourceMap;
use crate::weights::WeightsManager;

/// Where tensors land.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
    /// CUDA device 0 when present, else the CPU (a note says which was taken).
    Auto,
}

impl Device {
    /// `cpu`, `cuda`, `cuda:N` or `auto`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Device> {
        match s {
            "cpu" => Some(Device::Cpu),
            "auto" => Some(Device::Auto),
            "cuda" => Some(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda),
        }
    }
}

/// Called with the bytes read since the last call, from the loader's threads.
pub type ProgressFn = Arc<dyn Fn(u64) + Send + Sync>;

/// A load to run; see the module docs.
#[derive(Clone)]
pub struct Loader {
    pub dir: PathBuf,
    /// A `.wmap` path or a stdlib model name; `None` detects it from config.json.
    pub model: Option<String>,
    pub quant: Option<Format>,
    pub device: Device,
    /// Keep the params with an offload group in host memory within this device budget.
    pub offload: Option<(u64, Policy)>,
    /// Worker threads; 0 uses every core.
    pub threads: usize,
    /// Drop (with a warning) tensors nothing claims instead of refusing them (E0510).
    pub allow_unclaimed: bool,
    /// Write `model.safetensors` into this folder instead of keeping the tensors;
    /// `force` replaces an earlier wmapc output there.
    pub export: Option<(PathBuf, bool)>,
    pub progress: Option<ProgressFn>,
    /// This process's tensor- and expert-parallel rank: only its shards are read.
    pub ranks: Ranks,
}

impl Loader {
    pub fn new(dir: impl Into<PathBuf>) -> Loader {
        Loader {
            dir: dir.into(),
            model: None,
            quant: None,
            device: Device::Cpu,
            offload: None,
            threads: 0,
            allow_unclaimed: false,
            export: None,
            progress: None,
            ranks: Ranks::default(),
        }
    }

    pub fn model(mut self, model: impl Into<String>) -> Loader {
        self.model = Some(model.into());
        self
    }

    pub fn quant(mut self, format: Format) -> Loader {
        self.quant = Some(format);
        self
    }

    pub fn device(mut self, device: Device) -> Loader {
        self.device = device;
        self
    }

    pub fn offload(mut self, budget: u64, policy: Policy) -> Loader {
        self.offload = Some((budget, policy));
        self
    }

    pub fn threads(mut self, threads: usize) -> Loader {
        self.threads = threads;
        self
    }

    pub fn allow_unclaimed(mut self, allow: bool) -> Loader {
        self.allow_unclaimed = allow;
        self
    }

    pub fn export(mut self, out: impl Into<PathBuf>, force: bool) -> Loader {
        self.export = Some((out.into(), force));
        self
    }

    /// Loads only rank `tp_rank` of `tp_size` (and `ep_rank` of `ep_size`): each param
    /// cut to the rank's slice by its `shard` rule, reading only those bytes.
    pub fn ranks(mut self, ranks: Ranks) -> Loader {
        self.ranks = ranks;
        self
    }

    pub fn progress(mut self, progress: impl Fn(u64) + Send + Sync + 'static) -> Loader {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Compiles the model, checks it against the checkpoint's config.json and binds it
    /// to the checkpoint's headers; nothing is read yet.
    pub fn bind(&self) -> Result<Bound, Failure> {
        let mut notes = Vec::new();
        let fail = |d: Diagnostic, notes: &Vec<String>| Failure::single(d, notes.clone());
        self.check_options().map_err(|d| fail(d, &notes))?;
        let device = self.resolve_device(&mut notes);
        self.check_device_options(device)
            .map_err(|d| fail(d, &notes))?;
        let config = self.dir.join("config.json");
        let source = driver::model_source(self.model.as_deref());
        let mut c = driver::compile(&source, Some(&config)).map_err(|d| fail(d, &notes))?;
        // A load drops what nothing claims, so it refuses unclaimed tensors unless told.
        let bound = driver::bind_rank(&mut c, &self.dir, !self.allow_unclaimed, self.ranks);
        match bound {
            Some(b) => Ok(Bound {
                loader: self.clone(),
                device,
                notes,
                sources: c.sources,
                diags: c.diags,
                plan: b.plan,
                checkpoint: b.checkpoint,
            }),
            None => Err(Failure {
                notes,
                ..Failure::in_inputs(c.sources, c.diags)
            }),
        }
    }

    /// Binds and loads in one step.
    pub fn load(&self) -> Result<Loaded, Failure> {
        let bound = self.bind()?;
        let notes = bound.notes.clone();
        bound.load().map_err(|d| Failure::single(d, notes))
    }

    /// Options that would be ignored, or that contradict each other, whatever the device.
    fn check_options(&self) -> Result<(), Diagnostic> {
        let conflict = |m: &str, help: &str| Err(Diagnostic::new(Code::E0803, m).with_help(help));
        if self.offload.is_some() && self.export.is_some() {
            return conflict(
                "--offload-budget has no effect with --out: the export is written, not offloaded",
                "drop one of --offload-budget and --out",
            );
        }
        check_ranks(self.ranks)?;
        if !self.ranks.is_whole() && self.export.is_some() && self.quant.is_some() {
            return conflict(
                "--out with --quant writes HF naming, whose tensors are whole; a rank's shard has no HF name",
                "drop --quant to write the rank's shard in the runtime layout, or drop --tp-size/--ep-size",
            );
        }
        if matches!(self.device, Device::Cuda(_)) && self.export.is_some() {
            return conflict(
                "--out writes from the CPU path; it cannot be combined with --device cuda",
                "drop --device, or drop --out",
            );
        }
        Ok(())
    }

    /// `auto` decided: CUDA device 0 when there is one (and no export), else the CPU,
    /// said in a note so a fallback is never silent.
    fn resolve_device(&self, notes: &mut Vec<String>) -> Device {
        match self.device {
            Device::Auto if self.export.is_some() => {
                notes.push(
                    "note: --device auto: loading on the CPU, because --out writes from the CPU path"
                        .into(),
                );
                Device::Cpu
            }
            Device::Auto if cuda_available() => Device::Cuda(0),
            Device::Auto => {
                notes.push(
                    "note: --device auto: no CUDA device is available; loading on the CPU".into(),
                );
                Device::Cpu
            }
            d => d,
        }
    }

    fn check_device_options(&self, device: Device) -> Result<(), Diagnostic> {
        if self.offload.is_some() && self.quant.is_none() && device == Device::Cpu {
            return Err(Diagnostic::new(
                Code::E0803,
                "--offload-budget needs --quant on the CPU: only quantized loads are offloaded there",
            )
            .with_help(
                "add --quant (e.g. --quant nf4) or --device cuda, or drop --offload-budget",
            ));
        }
        Ok(())
    }
}

/// Ranks below their sizes, sizes at least 1 (E0540).
pub fn check_ranks(r: Ranks) -> Result<(), Diagnostic> {
    for (what, rank, size) in [("tp", r.tp_rank, r.tp_size), ("ep", r.ep_rank, r.ep_size)] {
        if size == 0 {
            return Err(Diagnostic::new(
                Code::E0540,
                format!("--{what}-size is 0; a load has at least one rank"),
            ));
        }
        if rank >= size {
            return Err(Diagnostic::new(
                Code::E0540,
                format!("--{what}-rank {rank} is not below --{what}-size {size}"),
            )
            .with_help(format!("ranks count from 0: 0 to {}", size - 1)));
        }
    }
    Ok(())
}

/// Whether a CUDA device can be used by this build on this machine.
pub fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        crate::cuda::available()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// A load that did not happen: the diagnostics (with the sources they point into; empty
/// for failures outside the inputs) and the notes said before.
#[derive(Debug)]
pub struct Failure {
    pub sources: SourceMap,
    pub diags: Diagnostics,
    pub notes: Vec<String>,
    /// One failure outside the inputs (options, I/O, runtime), not a compilation's.
    outside_inputs: bool,
}

impl Failure {
    /// One coded diagnostic outside the inputs, after `notes`.
    pub fn single(d: Diagnostic, notes: Vec<String>) -> Failure {
        let mut diags = Diagnostics::default();
        diags.push(d);
        Failure {
            sources: SourceMap::new(),
            diags,
            notes,
            outside_inputs: true,
        }
    }

    /// Findings in the inputs: `diags` point into `sources`.
    pub fn in_inputs(sources: SourceMap, diags: Diagnostics) -> Failure {
        Failure {
            sources,
            diags,
            notes: Vec::new(),
            outside_inputs: false,
        }
    }

    /// The failure, when it is one coded diagnostic outside the inputs (a bad option, a
    /// file that cannot be read, a runtime error) rather than findings in the inputs.
    pub fn outside_inputs(&self) -> Option<&Diagnostic> {
        match self.diags.items.as_slice() {
            [d] if self.outside_inputs => Some(d),
            _ => None,
        }
    }

    /// The first error, which names the failure (`diags` holds warnings too).
    pub fn first_error(&self) -> Option<&Diagnostic> {
        self.diags
            .items
            .iter()
            .find(|d| d.severity() == crate::diag::Severity::Error)
    }
}

impl From<Diagnostic> for Failure {
    fn from(d: Diagnostic) -> Failure {
        Failure::single(d, Vec::new())
    }
}

/// A model bound to a checkpoint, ready to read.
pub struct Bound {
    loader: Loader,
    /// The device the load runs on (`auto` decided).
    pub device: Device,
    /// What the caller should say before the load (`auto`'s choice).
    pub notes: Vec<String>,
    pub sources: SourceMap,
    /// Warnings found while compiling and binding.
    pub diags: Diagnostics,
    pub plan: Plan,
    pub checkpoint: crate::checkpoint::Checkpoint,
}

/// The tensors a load produced.
pub enum Tensors {
    /// Written to the export folder; nothing kept.
    Written(PathBuf),
    /// In host memory by runtime name: quantized, or full precision. Tied names share
    /// their bytes.
    Host(BTreeMap<String, Stored>),
    /// In a weights manager whose offload groups live in host memory (the host backend
    /// stands in for the device).
    Offloaded(Box<WeightsManager<HostBackend>>),
    /// On a CUDA device.
    #[cfg(feature = "cuda")]
    Device(Box<DeviceLoad>),
    /// On a CUDA device, the params with an offload group (MoE experts) in page-locked
    /// host memory behind a weights manager that brings them in within the budget.
    #[cfg(feature = "cuda")]
    DeviceOffloaded(Box<DeviceOffload>),
}

/// What a load did, and its tensors.
pub struct Loaded {
    pub plan: Plan,
    pub device: Device,
    pub stats: crate::load::Stats,
    /// Bytes the load produced: in memory, or written.
    pub bytes_out: u64,
    pub quant: Option<(Format, QuantReport)>,
    pub tensors: Tensors,
}

impl Bound {
    /// Replaces the progress callback (a caller that labels its bar with the model's
    /// name knows it only now).
    pub fn with_progress(mut self, progress: ProgressFn) -> Bound {
        self.loader.progress = Some(progress);
        self
    }

    /// Bytes the load will read, for a progress total: a rank's own bytes, or the
    /// whole checkpoint's.
    pub fn total_bytes(&self) -> u64 {
        match &self.plan.rank {
            Some(r) => r.read_bytes,
            None => self.checkpoint.data_bytes(),
        }
    }

    /// Reads the checkpoint into the sink the options call for.
    pub fn load(self) -> Result<Loaded, Diagnostic> {
        match self.device {
            Device::Cuda(ordinal) => run::device(self, ordinal),
            _ => run::host(self),
        }
    }

    fn options(&self) -> crate::load::Options {
        crate::load::Options {
            threads: self.loader.threads,
            ..Default::default()
        }
    }

    fn export_dir(&self) -> Option<&Path> {
        self.loader.export.as_ref().map(|(p, _)| p.as_path())
    }
}
