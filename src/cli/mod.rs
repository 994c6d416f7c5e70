//! The `wmapc` command line: the only module that prints.
//!
//! Exit codes: 0 clean (warnings allowed), 1 errors in the input, 2 usage, I/O or
//! internal failure.

mod front;
mod gpu;
mod load;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Print the page of a diagnostic code, or list all codes.
    Explain {
        /// A code such as `E0301`; omit to list every code.
        code: Option<String>,
    },
    /// List the stdlib models and the architectures they serve.
    Stdlib,
    /// GPU: a forward sweep over offloaded experts with stand-in compute (P9).
    BenchOffload(gpu::BenchOffloadArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => front::check(&args),
        Command::Lower { model, spans } => front::lower(&model, spans),
        Command::Plan(args) => load::plan(&args),
        Command::Load(args) => load::load(&args),
        Command::Explain { code } => front::explain(code.as_deref()),
        Command::Stdlib => front::stdlib(),
        Command::BenchOffload(args) => gpu::bench_offload(&args),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
    }
}
