//! The `wmapc` command line: the only module that prints.
//!
//! Exit codes: 0 clean (warnings allowed), 1 errors in the input, 2 usage, I/O or
//! internal failure. Every failure reaches the user as a coded diagnostic: a subcommand
//! returns `Err(Diagnostic)` and [`main`] renders it like a compile diagnostic; a command
//! line clap cannot parse is E0801/E0802; a panic is one E0901 line and exit 2.

mod flags;
mod front;
mod gpu;
mod load;
mod new;
pub(crate) mod out;
mod progress;
mod save;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::diag::{self, Code, Diagnostic};
use out::err;

#[derive(Parser, Debug)]
#[command(
    name = "wmapc",
    version,
    about = "Compile .wmap checkpoint mappings and load checkpoints with them"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorArg {
    Auto,
    Never,
}

/// Where the model comes from, shared by the compiling subcommands.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// A .wmap file; omit it to pick the stdlib model serving the config's `architectures`.
    pub file: Option<std::path::PathBuf>,
    /// A stdlib model by name (`Llama`, `qwen3_moe`) instead of a file.
    #[arg(long, conflicts_with = "file")]
    pub model: Option<String>,
    /// The HF `config.json` to check against (default: the checkpoint's, with --checkpoint).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Also bind to this checkpoint folder: names, shapes and dtypes, headers only.
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Tensors the checkpoint has but nothing loads are errors, not warnings.
    #[arg(long)]
    pub strict: bool,
    /// Diagnostics as text (stderr) or JSON (stdout).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
    #[command(flatten)]
    pub ranks: RankArgs,
}

/// One rank of a tensor- and expert-parallel load (`check` takes the sizes only).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct RankArgs {
    /// Tensor-parallel size: each param splits by its `shard` rule into this many ranks.
    #[arg(long, value_name = "N")]
    pub tp_size: Option<u64>,
    /// This process's tensor-parallel rank, 0 to N-1 (default 0).
    #[arg(long, value_name = "R")]
    pub tp_rank: Option<u64>,
    /// Expert-parallel size: stacked experts split into this many contiguous blocks.
    #[arg(long, value_name = "M")]
    pub ep_size: Option<u64>,
    /// This process's expert-parallel rank, 0 to M-1 (default 0).
    #[arg(long, value_name = "S")]
    pub ep_rank: Option<u64>,
}

impl RankArgs {
    /// The ranks asked for, refused (E0540) when a rank is out of its size's range or
    /// given without it.
    pub fn ranks(&self) -> Result<crate::ir::shard::Ranks, Diagnostic> {
        let pair = |what: &str, rank: Option<u64>, size: Option<u64>| match (rank, size) {
            (Some(r), None) => Err(Diagnostic::new(
                Code::E0540,
                format!("--{what}-rank {r} is given without --{what}-size"),
            )
            .with_help(format!("add --{what}-size, the number of {what} ranks"))),
            (r, s) => Ok((r.unwrap_or(0), s.unwrap_or(1))),
        };
        let (tp_rank, tp_size) = pair("tp", self.tp_rank, self.tp_size)?;
        let (ep_rank, ep_size) = pair("ep", self.ep_rank, self.ep_size)?;
        let ranks = crate::ir::shard::Ranks {
            tp_rank,
            tp_size,
            ep_rank,
            ep_size,
        };
        crate::loader::check_ranks(ranks)?;
        Ok(ranks)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a mapping against a config: names, shapes, fuses, stacks, conditions.
    Check(ModelArgs),
    /// Print the config-bound IR as JSON.
    Lower {
        #[command(flatten)]
        model: ModelArgs,
        /// Add the span side table (`"spans"`: IR path → file:line:column).
        #[arg(long)]
        spans: bool,
    },
    /// Bind to a checkpoint's headers and print the load plan.
    Plan(ModelArgs),
    /// Load a checkpoint: detect the model, bind, read, assemble; print a summary.
    Load(load::LoadArgs),
    /// Write a runtime-layout store back as the checkpoint it was loaded from (HF naming,
    /// dtypes, shapes and shard files).
    Save(save::SaveArgs),
    /// Print the page of a diagnostic code, or list all codes.
    Explain {
        /// A code such as `E0301`; omit to list every code.
        code: Option<String>,
    },
    /// List the stdlib models and the architectures they serve.
    Stdlib,
    /// Print a starting .wmap for a checkpoint, built from its headers and config.json.
    New(new::NewArgs),
    /// GPU: a forward sweep over offloaded experts with stand-in compute (P9).
    BenchOffload(gpu::BenchOffloadArgs),
}

/// The CLI's stack: deep enough for any input the front end accepts (it limits depth where
/// the tree is built), and the same on every platform.
const STACK_BYTES: usize = 256 << 20;

/// Runs the CLI on a thread with a known stack; a panic there becomes exit 2 after the
/// hook printed its E0901 line.
pub fn main() -> ExitCode {
    install_panic_hook();
    crate::load::output::install_signal_handlers();
    let worker = std::thread::Builder::new()
        .name("wmapc".into())
        .stack_size(STACK_BYTES)
        .spawn(run);
    match worker.map(|h| h.join()) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => ExitCode::from(2),
        Err(e) => {
            report(&Diagnostic::new(
                Code::E0901,
                format!("cannot start the CLI thread: {e}"),
            ));
            ExitCode::from(2)
        }
    }
}

/// A panic anywhere prints one bug-report line instead of Rust's message and backtrace
/// hint; the thread's join in [`main`] turns it into exit 2.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let at = info
            .location()
            .map_or_else(|| "an unknown place".into(), |l| l.to_string());
        err!(
            "error[E0901/internal-error]: wmapc crashed: {msg} at {at}; this is a bug in wmapc, please report it\n"
        );
        // The CLI thread may hold temporary output folders; remove them, as for Ctrl-C.
        crate::load::output::remove_registered();
    }));
}

/// The exit status a failure earns: 1 for errors in the input (.wmap, config,
/// checkpoint), 2 for usage (a rank out of range among them), I/O, runtime (offload,
/// CUDA), resource (a tensor larger than this machine's memory) and internal failures.
fn exit_status(code: Code) -> ExitCode {
    let s = code.as_str();
    let usage_or_io = ["E06", "E07", "E08", "E09"]
        .iter()
        .any(|p| s.starts_with(p))
        || matches!(code, Code::E0511 | Code::E0515 | Code::E0540);
    ExitCode::from(if usage_or_io { 2 } else { 1 })
}

/// Renders a failure without source spans, in the style of compile diagnostics.
fn report(d: &Diagnostic) -> ExitCode {
    let mut diags = diag::Diagnostics::default();
    diags.push(d.clone());
    let sources = crate::source::SourceMap::new();
    err!(
        "{}",
        diag::render_human(&sources, &diags, diag::Color::Auto)
    );
    exit_status(d.code)
}

/// A command line clap refused: help and version print as usual; the rest are coded.
fn usage(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let text = e.render().to_string();
        if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            err!("{text}");
            return ExitCode::from(2);
        }
        out::stdout(format_args!("{text}"));
        return ExitCode::SUCCESS;
    }
    let code = match e.kind() {
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => Code::E0802,
        _ => Code::E0801,
    };
    let text = e.render().to_string();
    // clap's first line is `error: <what>`; the rest is its usage hint.
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("cannot parse the command line");
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let mut d = Diagnostic::new(code, message);
    for l in lines {
        d = d.with_note(l.trim());
    }
    report(&d)
}

fn run() -> ExitCode {
    // Test builds only: a way for process tests to reach the panic hook.
    #[cfg(debug_assertions)]
    if std::env::var_os("WMAPC_TEST_PANIC").is_some() {
        panic!("WMAPC_TEST_PANIC is set");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(e),
    };
    let result = match cli.command {
        Command::Check(args) => front::check(&args),
        Command::Lower { model, spans } => front::lower(&model, spans),
        Command::Plan(args) => load::plan(&args),
        Command::Load(args) => load::load(&args),
        Command::Save(args) => save::save(&args),
        Command::Explain { code } => front::explain(code.as_deref()),
        Command::Stdlib => front::stdlib(),
        Command::New(args) => new::new(&args),
        Command::BenchOffload(args) => gpu::bench_offload(&args),
    };
    match result {
        Ok(code) => code,
        Err(d) => report(&d),
    }
}

/// The result of a subcommand: its exit status, or a failure to render.
pub(crate) type Outcome = Result<ExitCode, Diagnostic>;
