//! Driver: strings the phases together — the library's front door.
//!
//! Input: where the model comes from (a `.wmap` file, a stdlib model name, or the
//! config's `architectures`) and a `config.json`. Output: a [`Compilation`] holding the
//! source map, all diagnostics, and the IR when there were no errors.
//! Failures before any source exists (a file that cannot be read, an unknown stdlib
//! model) are the `Err` [`Diagnostic`] of [`compile`]; everything wrong *in* the inputs is
//! a coded diagnostic in the [`Compilation`].

mod structure;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::diag::{Code, Diagnostic, Diagnostics};
use crate::resolve::{self, DeclId, Origin, Program};
use crate::source::SourceMap;
use crate::syntax::ast::DeclKind;
use crate::{check, ir, lower, stdlib, syntax};

/// Where the `.wmap` model comes from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// A user file; its `use`s resolve beside it, then in the stdlib.
    File(PathBuf),
    /// A `.wmap` text held in memory (tests, tools); `use`s resolve in the stdlib.
    Text { name: String, text: String },
    /// A stdlib model by declaration name (`Llama`) or file stem (`llama`).
    StdlibName(String),
    /// Pick the stdlib model serving the config's `architectures`.
    Detect,
}

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct Compilation {
    pub sources: SourceMap,
    pub diags: Diagnostics,
    pub program: Option<Program>,
    pub model: Option<DeclId>,
    pub config: Option<Config>,
    /// The IR and its span table, when checking found no error.
    pub lowered: Option<(ir::Ir, ir::Spans)>,
    /// Config keys config.json lacks whose stdlib default was used (`key` → value).
    pub defaults: std::collections::BTreeMap<String, String>,
}

impl Compilation {
    pub fn ok(&self) -> bool {
        !self.diags.has_errors()
    }
}

/// Reads a file for the source map: a regular file of at most `cap` bytes (E0512/E0513
/// for a special or oversized one, E0806 when the system refuses; those are the `Err` of
/// [`compile`]). Text that is not UTF-8 is an error *in* the input: it is added to the
/// source map (lossily) and reported as `code` at the first bad byte.
fn read(
    sources: &mut SourceMap,
    path: &Path,
    what: &str,
    cap: u64,
    code: Code,
) -> Result<Result<String, Diagnostic>, Diagnostic> {
    let shown = path.display().to_string();
    let bytes = crate::source::read_capped(path, cap).map_err(|e| {
        e.diagnostic(what, &shown).unwrap_or_else(|| {
            Diagnostic::new(Code::E0806, format!("cannot read {what} `{shown}`: {e}"))
        })
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Ok(text)),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let id = sources.add(shown.clone(), lossy);
            // The lossy text holds U+FFFD where the bad byte was: point at all of it.
            let end = at + char::REPLACEMENT_CHARACTER.len_utf8();
            Ok(Err(Diagnostic::new(
                code,
                format!("{what} `{shown}` is not UTF-8 text"),
            )
            .at(crate::source::Span::new(id, at..end), "invalid UTF-8 here")
            .with_help("save the file as UTF-8")))
        }
    }
}

/// Parses, resolves, checks against `config` (when given) and lowers.
pub fn compile(model: &ModelSource, config: Option<&Path>) -> Result<Compilation, Diagnostic> {
    let mut c = Compilation::default();
    if let Some(path) = config {
        let text = match read(
            &mut c.sources,
            path,
            "config",
            crate::source::MAX_CONFIG,
            Code::E0302,
        )? {
            Ok(text) => text,
            Err(d) => {
                c.diags.push(d);
                return Ok(c);
            }
        };
        let id = c.sources.add(path.display().to_string(), text);
        match Config::parse(&c.sources, id) {
            Ok(cfg) => c.config = Some(cfg),
            Err(d) => {
                c.diags.push(d);
                return Ok(c);
            }
        }
    }
    let (name, text, origin) = match model {
        ModelSource::File(p) => {
            match read(
                &mut c.sources,
                p,
                "model file",
                crate::source::MAX_WMAP,
                Code::E0105,
            )? {
                Ok(text) => (p.display().to_string(), text, Origin::Disk(p.clone())),
                Err(d) => {
                    c.diags.push(d);
                    return Ok(c);
                }
            }
        }
        ModelSource::Text { name, text } => (name.clone(), text.clone(), Origin::Memory),
        ModelSource::StdlibName(n) => match stdlib_by_name(n) {
            Some(path) => stdlib_entry(path),
            None => {
                let known: Vec<String> = stdlib_models().into_iter().map(|m| m.name).collect();
                return Err(Diagnostic::new(
                    Code::E0805,
                    format!("no stdlib model is called `{n}`"),
                )
                .suggest(n, known.iter().map(String::as_str))
                .with_note(format!("stdlib models: {}", known.join(", "))));
            }
        },
        ModelSource::Detect => {
            let Some(cfg) = &c.config else {
                return Err(Diagnostic::new(
                    Code::E0803,
                    "pass a .wmap file or --config so the model can be detected",
                ));
            };
            match detect(cfg) {
                Ok(path) => stdlib_entry(path),
                Err(d) => {
                    c.diags.push(d);
                    return Ok(c);
                }
            }
        }
    };
    let (program, diags) = resolve::resolve(&mut c.sources, &name, &text, origin);
    c.diags.extend(diags);
    let Some(program) = program else {
        return Ok(c);
    };
    if let Some(cfg) = &c.config {
        match pick_model(&program, cfg) {
            Ok(model) => {
                c.model = Some(model);
                let (checked, diags) = check::check(&program, model, cfg);
                c.diags.extend(diags);
                if let Some(checked) = checked {
                    c.defaults = checked.defaults.clone();
                    c.lowered = Some(lower::lower(&program, checked));
                }
            }
            Err(d) => c.diags.push(d),
        }
    }
    c.program = Some(program);
    Ok(c)
}

fn stdlib_entry(path: &str) -> (String, String, Origin) {
    (
        format!("<stdlib>/{path}"),
        stdlib::get(path).unwrap_or_default().to_string(),
        Origin::Stdlib(path.to_string()),
    )
}

/// A stdlib model: its declaration name, file and the architectures it serves.
#[derive(Clone, Debug, PartialEq)]
pub struct StdlibModel {
    pub name: String,
    pub file: &'static str,
    pub architectures: Vec<String>,
}

/// Every model the stdlib declares, in file order.
pub fn stdlib_models() -> Vec<StdlibModel> {
    let mut out = Vec::new();
    let mut sources = SourceMap::new();
    for path in stdlib::model_files() {
        let id = sources.add(path, stdlib::get(path).unwrap_or_default());
        // The stdlib is tested to parse; a file that does not is skipped, not fatal.
        if let Ok(file) = syntax::parse(id, &sources.get(id).text) {
            for d in file.decls.iter().filter(|d| d.kind == DeclKind::Model) {
                out.push(StdlibModel {
                    name: d.name.node.clone(),
                    file: path,
                    architectures: d.serves.iter().map(|s| s.node.clone()).collect(),
                });
            }
        }
    }
    out
}

fn stdlib_by_name(name: &str) -> Option<&'static str> {
    stdlib_models().into_iter().find_map(|m| {
        let stem = m
            .file
            .trim_start_matches("models/")
            .trim_end_matches(".wmap");
        (m.name.eq_ignore_ascii_case(name) || stem == name).then_some(m.file)
    })
}

/// The stdlib file whose model serves one of the config's architectures.
fn detect(cfg: &Config) -> Result<&'static str, Diagnostic> {
    let archs = cfg.architectures();
    let models = stdlib_models();
    for (arch, _) in &archs {
        if let Some(m) = models.iter().find(|m| m.architectures.contains(arch)) {
            return Ok(m.file);
        }
    }
    let all: Vec<&str> = models
        .iter()
        .flat_map(|m| m.architectures.iter().map(String::as_str))
        .collect();
    let mut d = Diagnostic::new(
        Code::E0304,
        "no stdlib model serves this config's architectures",
    );
    // No "did you mean": architecture names that are close in spelling are not close
    // in structure (Gemma2 is no Mamba2); structure is compared where a checkpoint is.
    // Only a difference of case is taken for a typo.
    d = match archs.first() {
        Some((a, span)) => {
            let d = d.at(*span, format!("`{a}` is not served by the stdlib"));
            match all.iter().find(|s| s.eq_ignore_ascii_case(a)) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d,
            }
        }
        None => d.at(cfg.root.span, "config has no `architectures` list"),
    };
    Err(d
        .with_note(format!("stdlib architectures: {}", all.join(", ")))
        .with_note(
            "to go on, start a mapping from the checkpoint itself: `wmapc new --checkpoint DIR > my.wmap` \
             (or from the stdlib model nearest in structure, `wmapc stdlib` lists them), review it, \
             then `wmapc plan my.wmap --checkpoint DIR --strict` and `wmapc load DIR --model my.wmap`",
        ))
}

/// The model to check: the root file's only model, or the one serving the config; a
/// root file without models (overrides plus `use "models/…"`) takes a used model.
fn pick_model(program: &Program, cfg: &Config) -> Result<DeclId, Diagnostic> {
    let archs: Vec<String> = cfg.architectures().into_iter().map(|(a, _)| a).collect();
    let mut models = program.root_models();
    if models.is_empty() {
        models = (0..program.decls.len())
            .map(DeclId)
            .filter(|&m| {
                let d = program.decl(m);
                d.kind == DeclKind::Model && d.serves.iter().any(|s| archs.contains(&s.node))
            })
            .collect();
    }
    match models.as_slice() {
        [one] => Ok(*one),
        [] => Err(Diagnostic::new(Code::E0209, "this file declares no model")
            .at(
                crate::source::Span::new(program.root, 0..0),
                "expected a `model Name for \"Architecture\" { … }`",
            )
            .with_help("add a model that instantiates the modules, or `use` a stdlib model")),
        many => many
            .iter()
            .copied()
            .find(|&m| {
                program
                    .decl(m)
                    .serves
                    .iter()
                    .any(|s| archs.contains(&s.node))
            })
            .ok_or_else(|| {
                let first = program.decl(many[0]);
                Diagnostic::new(
                    Code::E0209,
                    format!("several models here, none serving {}", archs.join(", ")),
                )
                .at(first.name.span, "one of the candidates")
                .with_help("add the config's architecture to a model's `for` list")
            }),
    }
}

/// A compilation bound to a checkpoint.
pub struct Bound {
    pub checkpoint: crate::checkpoint::Checkpoint,
    pub plan: crate::plan::Plan,
}

/// Opens `dir` and binds the compiled IR to it, adding findings to `c.diags`.
/// `None` when the checkpoint is unusable or binding found errors.
pub fn bind(c: &mut Compilation, dir: &Path, strict: bool) -> Option<Bound> {
    if c.lowered.is_none() {
        suggest_by_structure(c, dir);
    }
    let (ir, spans) = c.lowered.as_ref()?;
    let checkpoint = match crate::checkpoint::Checkpoint::open(dir) {
        Ok(ck) => ck,
        Err(d) => {
            c.diags.push(d);
            return None;
        }
    };
    let (plan, diags) = crate::plan::bind(ir, spans, &checkpoint, strict);
    c.diags.extend(diags);
    plan.map(|plan| Bound { checkpoint, plan })
}

/// Checks the compiled model's shard rules against a load's TP / EP sizes (E0450,
/// E0451), adding findings to `c.diags`; `false` when one does not divide.
pub fn check_ranks(c: &mut Compilation, ranks: crate::ir::shard::Ranks) -> bool {
    let Some((ir, spans)) = c.lowered.as_ref() else {
        return false;
    };
    let diags = crate::plan::shard::check_sizes(ir, spans, ranks);
    let ok = !diags.has_errors();
    c.diags.extend(diags);
    ok
}

/// [`bind`], then the plan cut to one rank's shards ([`crate::plan::shard::for_rank`]);
/// with TP and EP size 1, exactly [`bind`].
pub fn bind_rank(
    c: &mut Compilation,
    dir: &Path,
    strict: bool,
    ranks: crate::ir::shard::Ranks,
) -> Option<Bound> {
    if ranks.is_whole() {
        return bind(c, dir, strict);
    }
    if c.lowered.is_some() && !check_ranks(c, ranks) {
        return None;
    }
    let mut b = bind(c, dir, strict)?;
    match crate::plan::shard::for_rank(&b.plan, ranks) {
        Ok(plan) => b.plan = plan,
        Err(d) => {
            c.diags.push(d);
            return None;
        }
    }
    Some(b)
}

/// With a checkpoint at hand, E0304 names the stdlib models whose tensor names the
/// checkpoint's resemble. A checkpoint that cannot be opened adds nothing here: the
/// caller reports it when it binds.
fn suggest_by_structure(c: &mut Compilation, dir: &Path) {
    let Some(d) = c.diags.items.iter_mut().find(|d| d.code == Code::E0304) else {
        return;
    };
    let Ok(ck) = crate::checkpoint::Checkpoint::open(dir) else {
        return;
    };
    let names: Vec<&str> = ck.tensors.keys().map(String::as_str).collect();
    let ranked = structure::nearest(&names);
    if !ranked.is_empty() {
        let shown: Vec<String> = ranked.iter().map(|(m, p)| format!("{m} ({p}%)")).collect();
        d.notes.push(format!(
            "by tensor names, the checkpoint looks most like: {} (`--model NAME` tries one)",
            shown.join(", ")
        ));
    }
}

/// `--model` takes a file when it names one (or ends in `.wmap`), else a stdlib model.
pub fn model_source(model: Option<&str>) -> ModelSource {
    match model {
        None => ModelSource::Detect,
        Some(m) if m.ends_with(".wmap") || Path::new(m).is_file() => {
            ModelSource::File(PathBuf::from(m))
        }
        Some(m) => ModelSource::StdlibName(m.to_string()),
    }
}
