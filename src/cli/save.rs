//! `save`: a runtime-layout store back to the checkpoint it was loaded from.

use std::path::PathBuf;
use std::process::ExitCode;

use super::front::emit;
use super::out::outln;
use super::{ColorArg, Format, ModelArgs, Outcome};
use crate::driver;
use crate::load::output::Staging;
use crate::reverse;

#[derive(clap::Args, Debug)]
pub struct SaveArgs {
    /// The runtime store: the folder `wmapc load CK --out DIR` wrote (the same layout,
    /// written after training, will do).
    pub dir: PathBuf,
    /// The checkpoint the store was loaded from: its config.json and headers give the
    /// names, dtypes, shapes and shard files to write; tensors the mapping does not read
    /// are copied from it.
    #[arg(long)]
    pub like: PathBuf,
    /// The folder to write, in the checkpoint's own layout.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out, only if an earlier wmapc run wrote it.
    #[arg(long)]
    pub force: bool,
    /// The .wmap file or stdlib model the load used; default: detected from config.json.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
}

pub fn save(args: &SaveArgs) -> Outcome {
    let margs = ModelArgs {
        ranks: Default::default(),
        file: None,
        model: None,
        config: Some(args.like.join("config.json")),
        checkpoint: Some(args.like.clone()),
        strict: false,
        format: Format::Human,
        color: args.color,
    };
    let mut c = driver::compile(
        &driver::model_source(args.model.as_deref()),
        margs.config.as_deref(),
    )?;
    // Tensors nothing claims are copied from --like, so they are no reason to stop.
    let bound = driver::bind(&mut c, &args.like, false);
    if !c.diags.is_empty() {
        emit(&c, &c.diags, &margs);
    }
    let Some(b) = bound else {
        return Ok(ExitCode::from(1));
    };
    let store = reverse::Store::open(&args.dir)?;
    let staging = Staging::prepare_for(&args.out, &[&args.like, &args.dir], args.force)?;
    let (dir, r) = reverse::save(&b.plan, &b.checkpoint, &store, staging)?;
    outln!(
        "saved model `{}` in the checkpoint's layout: {} tensors ({} rebuilt from the runtime store, {} tied params written once, {} copied from --like), {:.1} MB in {} file(s){}",
        b.plan.model,
        r.tensors,
        r.from_store,
        r.tied,
        r.copied.len(),
        r.bytes as f64 / 1e6,
        r.files.len(),
        if r.index { " + index" } else { "" }
    );
    if !r.copied.is_empty() {
        outln!(
            "copied unchanged from --like (the mapping ignores them or does not claim them): {}",
            r.copied.join(", ")
        );
    }
    if !r.not_saved.is_empty() {
        outln!(
            "not saved (the runtime store holds them, but the mapping builds no such param): {}",
            r.not_saved.join(", ")
        );
    }
    outln!("wrote {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
