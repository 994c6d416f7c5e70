//! Scaffold: a checkpoint's headers + `config.json` → a starting `.wmap` (`wmapc new`).
//!
//! Input: a checkpoint folder. Output: `.wmap` text that instantiates stdlib modules and
//! blocks, chosen by matching tensor names against the names the stdlib reads
//! ([`catalog`]), then verified by compiling and binding the candidate with `--strict`:
//! among name matches, the choice with the fewest errors wins. Dimensions bind to the
//! config key holding the same value. Guarantees: deterministic output; no weight is
//! ever `ignore`d (only patterns the stdlib itself ignores); a tensor inside a layer
//! that no module claims stays unclaimed, listed in a `#` comment. Architecture
//! knowledge comes only from the stdlib; `hidden` models' files are left out of it.

pub mod catalog;
mod layout;

use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::config::{Config, Json};
use crate::diag::{Code, Diagnostic, Severity};
use crate::driver::{self, ModelSource};
use catalog::Catalog;
use layout::Layout;

/// How many candidate scaffolds one layer kind may try.
const MAX_OPTIONS: usize = 16;

/// Scaffolds a mapping for the checkpoint in `dir`, hiding the stdlib models named in
/// `hidden` (so a family's own model cannot answer for it).
pub fn scaffold(dir: &Path, hidden: &[String]) -> Result<String, Diagnostic> {
    let known: Vec<String> = driver::stdlib_models()
        .into_iter()
        .map(|m| m.name)
        .collect();
    if let Some(h) = hidden
        .iter()
        .find(|h| !known.iter().any(|k| k.eq_ignore_ascii_case(h)))
    {
        // Hiding a model that does not exist would measure nothing; say so.
        return Err(
            Diagnostic::new(Code::E0805, format!("no stdlib model is called `{h}`"))
                .suggest(h, known.iter().map(String::as_str)),
        );
    }
    let checkpoint = Checkpoint::open(dir)?;
    let config_path = dir.join("config.json");
    let config = read_config(&config_path)?;
    let catalog = Catalog::new(hidden);
    let mut layout = Layout::new(&checkpoint, &config, &catalog);
    // Choices decided before a missing symbol was bound all failed alike: decide again.
    choose(&mut layout, &config_path, dir);
    bind_missing(&mut layout, &config_path, dir);
    choose(&mut layout, &config_path, dir);
    Ok(layout.emit())
}

/// Coordinate descent: each layer kind in turn takes its option with the fewest errors
/// while the others stay put.
fn choose(layout: &mut Layout, config: &Path, dir: &Path) {
    for g in 0..layout.groups.len() {
        let mut best = (usize::MAX, 0);
        for o in 0..layout.groups[g].options.len().min(MAX_OPTIONS) {
            layout.groups[g].chosen = o;
            let errors = errors_of(&layout.emit(), config, dir);
            if errors < best.0 {
                best = (errors, o);
            }
            if errors == 0 {
                break;
            }
        }
        layout.groups[g].chosen = best.1;
    }
}

/// How many config symbols the stdlib modules use but the config lacks may be bound.
const MAX_BINDINGS: usize = 4;

/// Binds symbols the chosen modules read but the config lacks (E0301) to the config
/// key whose binding plans with the fewest errors (`moe_intermediate_size =
/// intermediate_size` where a family names its expert width differently).
fn bind_missing(layout: &mut Layout, config: &Path, dir: &Path) {
    let keys: Vec<String> = layout.ranked_keys();
    for _ in 0..MAX_BINDINGS {
        let Some(symbol) = unknown_symbol(&layout.emit(), config) else {
            return;
        };
        // A symbol still unknown after it was bound is read where the model's configs do
        // not reach (a module parameter's default); binding it again would only declare
        // it twice (E0202).
        if layout.bindings.iter().any(|(bound, _)| *bound == symbol) {
            return;
        }
        let mut best: Option<(usize, &String)> = None;
        for k in &keys {
            layout.bindings.push((symbol.clone(), k.clone()));
            let errors = errors_of(&layout.emit(), config, dir);
            layout.bindings.pop();
            if best.is_none_or(|(e, _)| errors < e) {
                best = Some((errors, k));
            }
        }
        match best {
            Some((_, k)) => layout.bindings.push((symbol, k.clone())),
            None => return,
        }
    }
}

/// The first config symbol a candidate reads that nothing defines.
fn unknown_symbol(text: &str, config: &Path) -> Option<String> {
    let source = ModelSource::Text {
        name: "<scaffold>".into(),
        text: text.into(),
    };
    let c = driver::compile(&source, Some(config)).ok()?;
    c.diags.items.iter().find_map(|d| {
        // E0301's message names the symbol in backticks.
        (d.code == Code::E0301)
            .then(|| d.message.split('`').nth(1).map(str::to_string))
            .flatten()
    })
}

/// The number of errors a candidate earns when compiled and bound with `--strict`.
fn errors_of(text: &str, config: &Path, dir: &Path) -> usize {
    let source = ModelSource::Text {
        name: "<scaffold>".into(),
        text: text.into(),
    };
    let Ok(mut c) = driver::compile(&source, Some(config)) else {
        return usize::MAX;
    };
    if c.lowered.is_some() {
        driver::bind(&mut c, dir, true);
    }
    let errors = c.diags.count(Severity::Error);
    // A candidate that did not get as far as a plan is worse than any that did.
    if c.lowered.is_none() {
        return errors.saturating_add(1 << 20);
    }
    errors
}

fn read_config(path: &Path) -> Result<Config, Diagnostic> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::new(Code::E0806, format!("cannot read config `{shown}`: {e}")))?;
    let mut sources = crate::source::SourceMap::new();
    let id = sources.add(shown.clone(), text);
    // The diagnostic's spans point into this local source map: keep only its words.
    Config::parse(&sources, id)
        .map_err(|d| Diagnostic::new(d.code, format!("`{shown}`: {}", d.message)))
}

/// Config keys (top level, then `text_config`) holding integers, with their values.
pub(crate) fn int_keys(config: &Config) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut add = |v: &crate::config::JsonValue| {
        if let Json::Object(items) = &v.value {
            for (k, _, v) in items {
                if let Json::Int(i) = v.value {
                    out.push((k.clone(), i));
                }
            }
        }
    };
    add(&config.root);
    if let Some((_, nested)) = config.root.get("text_config") {
        add(nested);
    }
    out
}
