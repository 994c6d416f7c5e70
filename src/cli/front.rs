//! The front-end subcommands: `check`, `lower`, `explain`, `stdlib`.

use std::process::ExitCode;

use super::out::{err, out, outln};
use super::{ColorArg, Format, ModelArgs, Outcome};
use crate::diag::{self, Code, Color, Diagnostic, Diagnostics};
use crate::driver::{self, Compilation, ModelSource};

/// The config to use: `--config`, else the checkpoint's `config.json`.
pub(super) fn config_of(args: &ModelArgs) -> Option<std::path::PathBuf> {
    args.config
        .clone()
        .or_else(|| args.checkpoint.as_ref().map(|d| d.join("config.json")))
}

pub(super) fn source_of(args: &ModelArgs) -> ModelSource {
    match (&args.file, &args.model) {
        (Some(f), _) => ModelSource::File(f.clone()),
        (None, Some(m)) => ModelSource::StdlibName(m.clone()),
        (None, None) => ModelSource::Detect,
    }
}

pub(super) fn color(args: &ModelArgs) -> Color {
    match args.color {
        ColorArg::Auto => Color::Auto,
        ColorArg::Never => Color::Never,
    }
}

/// Prints diagnostics in the chosen format; JSON goes to stdout, text to stderr.
pub(super) fn emit(c: &Compilation, diags: &Diagnostics, args: &ModelArgs) {
    match args.format {
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&diag::render_json(&c.sources, diags)).unwrap_or_default()
        ),
        Format::Human => err!("{}", diag::render_human(&c.sources, diags, color(args))),
    }
}

pub(super) fn status(c: &Compilation) -> ExitCode {
    if c.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub fn check(args: &ModelArgs) -> Outcome {
    let ranks = args.ranks.ranks()?;
    let mut c = driver::compile(&source_of(args), config_of(args).as_deref())?;
    let bound = match &args.checkpoint {
        Some(dir) => driver::bind_rank(&mut c, dir, args.strict, ranks),
        None if !ranks.is_whole() => {
            driver::check_ranks(&mut c, ranks);
            None
        }
        None => None,
    };
    emit(&c, &c.diags, args);
    if let (Some(b), Format::Human) = (&bound, args.format) {
        outln!(
            "ok: model `{}` binds to `{}`: {} targets from {} tensors in {} file(s), headers only",
            b.plan.model,
            b.checkpoint.dir.display(),
            b.plan.targets.len(),
            b.checkpoint.tensors.len(),
            b.checkpoint.shards.len()
        );
        print_ranks(ranks);
        print_defaults(&c);
        return Ok(status(&c));
    }
    if args.format == Format::Human && c.ok() {
        match (&c.lowered, &c.program) {
            (Some((ir, _)), _) => {
                let n = count_params(&ir.root);
                outln!(
                    "ok: model `{}` checks against the config ({n} param declarations bound)",
                    ir.model
                );
                print_ranks(ranks);
                print_defaults(&c);
            }
            (None, Some(_)) => outln!("ok: names resolve (pass --config to check shapes)"),
            _ => {}
        }
    }
    Ok(status(&c))
}

/// With TP or EP sizes: that every sharded param divides by them.
fn print_ranks(r: crate::ir::shard::Ranks) {
    if !r.is_whole() {
        outln!(
            "ok: every sharded param divides by tp size {} and ep size {}",
            r.tp_size,
            r.ep_size
        );
    }
}

/// The stdlib defaults the config relied on, as one note line.
fn print_defaults(c: &Compilation) {
    if !c.defaults.is_empty() {
        let shown: Vec<String> = c
            .defaults
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        outln!(
            "note: config.json lacks these keys; their stdlib defaults were used: {}",
            shown.join(", ")
        );
    }
}

fn count_params(b: &crate::ir::Body) -> usize {
    b.params.len()
        + b.instances
            .iter()
            .flat_map(|i| &i.variants)
            .map(|v| count_params(&v.body))
            .sum::<usize>()
}

pub fn lower(args: &ModelArgs, spans: bool) -> Outcome {
    if !args.ranks.ranks()?.is_whole() {
        return Err(Diagnostic::new(
            Code::E0803,
            "lower prints the whole model's IR; --tp-size and --ep-size have no effect",
        )
        .with_help("use them with check, plan or load"));
    }
    if args.config.is_none() {
        return Err(Diagnostic::new(Code::E0803, "lower needs --config")
            .with_help("wmapc lower FILE --config config.json"));
    }
    let c = driver::compile(&source_of(args), config_of(args).as_deref())?;
    let Some((ir, span_table)) = &c.lowered else {
        // Diagnostics explain why there is no IR; JSON mode prints them on stdout.
        emit(&c, &c.diags, args);
        return Ok(status(&c));
    };
    if !c.diags.is_empty() {
        // Warnings only: keep stdout for the IR.
        err!("{}", diag::render_human(&c.sources, &c.diags, color(args)));
    }
    let mut value = serde_json::to_value(ir)
        .map_err(|e| Diagnostic::new(Code::E0901, format!("cannot serialize the IR: {e}")))?;
    if spans {
        let table: serde_json::Map<String, serde_json::Value> = span_table
            .iter()
            .map(|(path, site)| {
                let span = site.span;
                let (line, col) = c.sources.line_col(span.file, span.start);
                let file = &c.sources.get(span.file).name;
                (path.clone(), format!("{file}:{line}:{col}").into())
            })
            .collect();
        value["spans"] = table.into();
    }
    outln!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn explain(code: Option<&str>) -> Outcome {
    let Some(code) = code else {
        for c in Code::ALL {
            outln!("{}  {:<28} {}", c.as_str(), c.name(), c.summary());
        }
        return Ok(ExitCode::SUCCESS);
    };
    let wanted = code.trim().to_ascii_uppercase();
    match Code::ALL
        .iter()
        .find(|c| c.as_str() == wanted || c.name() == code)
    {
        Some(c) => {
            out!("{}", c.explain());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let all: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
            let hint = diag::nearest(&wanted, all.iter().copied())
                .map(|n| format!("did you mean {n}? "))
                .unwrap_or_default();
            Err(
                Diagnostic::new(Code::E0805, format!("unknown diagnostic code `{code}`"))
                    .with_help(format!("{hint}`wmapc explain` lists every code")),
            )
        }
    }
}

pub fn stdlib() -> Outcome {
    for m in driver::stdlib_models() {
        outln!(
            "{:<12} {:<26} {}",
            m.name,
            m.file,
            m.architectures.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
