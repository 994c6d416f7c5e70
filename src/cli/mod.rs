//! The `wmapc` command line: the only module that prints.
//!
//! Exit codes: 0 clean (warnings allowed), 1 errors in the input, 2 usage, I/O or
//! internal failure.

mod front;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "wmapc",
    version,
    about = "Compile .wmap checkpoint mappings: check, lower, explain"
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
    /// The HF `config.json` to check against.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
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
    /// Print the page of a diagnostic code, or list all codes.
    Explain {
        /// A code such as `E0301`; omit to list every code.
        code: Option<String>,
    },
    /// List the stdlib models and the architectures they serve.
    Stdlib,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => front::check(&args),
        Command::Lower { model, spans } => front::lower(&model, spans),
        Command::Explain { code } => front::explain(code.as_deref()),
        Command::Stdlib => front::stdlib(),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
    }
}
