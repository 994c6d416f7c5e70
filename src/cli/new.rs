//! `wmapc new --checkpoint DIR`: prints a starting `.wmap` for a checkpoint.

use std::process::ExitCode;

use super::out::out;
use super::Outcome;

#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The checkpoint folder: `config.json` and safetensors headers are read.
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// Leave this stdlib model (by name) out of what the scaffold may reuse; for
    /// measuring how well scaffolding does on a family the stdlib already serves.
    #[arg(long = "hide-stdlib-model", hide = true)]
    pub hide: Vec<String>,
}

pub fn new(args: &NewArgs) -> Outcome {
    let text = crate::scaffold::scaffold(&args.checkpoint, &args.hide)?;
    out!("{text}");
    Ok(ExitCode::SUCCESS)
}
