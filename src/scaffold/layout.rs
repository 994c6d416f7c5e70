//! The scaffold's shape: the repeated layer prefix, layers grouped by kind, each kind's
//! candidate placements of stdlib declarations, the top-level params; and its text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::catalog::{self, Catalog};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, Json};

/// A stdlib declaration instantiated at one segment of a layer (`""`: the whole layer).
#[derive(Clone, Debug)]
pub struct Placement {
    pub seg: String,
    pub entry: usize,
    pub flags: Vec<(String, bool)>,
}

/// One way to cover a layer kind: placements plus the names none of them claim.
#[derive(Clone, Debug, Default)]
pub struct Choice {
    pub placements: Vec<Placement>,
    pub unplaced: Vec<String>,
}

/// Layers whose tensors have the same names and shapes.
pub struct Group {
    pub layers: Vec<u64>,
    pub names: Vec<String>,
    pub options: Vec<Choice>,
    pub chosen: usize,
}

pub struct Layout<'a> {
    catalog: &'a Catalog,
    checkpoint: &'a Checkpoint,
    config: &'a Config,
    ints: Vec<(String, i64)>,
    /// `model.layers` for `model.layers.{n}.…`.
    layer_prefix: Option<String>,
    layer_count: u64,
    pub groups: Vec<Group>,
    /// Tensors outside the layers, and stdlib-ignored buffers among all tensors.
    top: Vec<String>,
    ignored: Vec<String>,
    /// `config symbol = key` lines for symbols the stdlib reads but the config lacks.
    pub bindings: Vec<(String, String)>,
}

impl<'a> Layout<'a> {
    pub fn new(checkpoint: &'a Checkpoint, config: &'a Config, catalog: &'a Catalog) -> Self {
        let mut ignored = Vec::new();
        let mut top = Vec::new();
        let layer_prefix = layer_prefix(checkpoint.tensors.keys());
        let mut per_layer: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for name in checkpoint.tensors.keys() {
            if catalog.ignores.iter().any(|p| ignore_fits(p, name)) {
                ignored.push(name.clone());
                continue;
            }
            match layer_prefix.as_deref().and_then(|p| split_layer(p, name)) {
                Some((i, rel)) => per_layer.entry(i).or_default().push(rel.to_string()),
                None => top.push(name.clone()),
            }
        }
        let layer_count = per_layer
            .keys()
            .next_back()
            .map_or(0, |m| m.saturating_add(1));
        let mut layout = Layout {
            catalog,
            checkpoint,
            config,
            ints: super::int_keys(config),
            layer_prefix,
            layer_count,
            groups: Vec::new(),
            top,
            ignored,
            bindings: Vec::new(),
        };
        layout.group_layers(per_layer);
        layout
    }

    /// Groups layers by their (name, shape) signature, in order of first layer.
    fn group_layers(&mut self, per_layer: BTreeMap<u64, Vec<String>>) {
        let mut by_sig: Vec<(String, Group)> = Vec::new();
        for (i, names) in per_layer {
            let sig: String = names
                .iter()
                .map(|n| format!("{n}{:?};", self.shape(&self.full(i, n))))
                .collect();
            match by_sig.iter_mut().find(|(s, _)| *s == sig) {
                Some((_, g)) => g.layers.push(i),
                None => by_sig.push((
                    sig,
                    Group {
                        layers: vec![i],
                        names,
                        options: Vec::new(),
                        chosen: 0,
                    },
                )),
            }
        }
        for (_, mut g) in by_sig {
            g.options = options(self.catalog, &g.names);
            self.groups.push(g);
        }
    }

    fn full(&self, layer: u64, rel: &str) -> String {
        format!(
            "{}.{layer}.{rel}",
            self.layer_prefix.as_deref().unwrap_or("")
        )
    }

    fn shape(&self, name: &str) -> Vec<u64> {
        self.checkpoint
            .tensors
            .get(name)
            .map(|t| t.shape.clone())
            .unwrap_or_default()
    }

    /// The config's integer keys, those the stdlib uses most first.
    pub fn ranked_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.ints.iter().map(|(k, _)| k.clone()).collect();
        keys.sort_by_key(|k| {
            (
                std::cmp::Reverse(self.catalog.key_rank.get(k).copied().unwrap_or(0)),
                k.clone(),
            )
        });
        keys.dedup();
        keys
    }

    /// A config expression for `value`: the key holding it that the stdlib uses most.
    fn key_for(&self, value: u64) -> String {
        self.ranked_keys()
            .into_iter()
            .find(|k| {
                self.ints
                    .iter()
                    .any(|(name, v)| name == k && u64::try_from(*v).ok() == Some(value))
            })
            .unwrap_or_else(|| value.to_string())
    }

    /// The scaffold text for the current choices.
    pub fn emit(&self) -> String {
        let mut files = BTreeSet::new();
        let mut flags: BTreeMap<String, bool> = BTreeMap::new();
        let block = self.emit_block(&mut files, &mut flags);
        let mut out = String::new();
        let arch = self.config.architectures().into_iter().next().map(|a| a.0);
        let _ = writeln!(
            out,
            "# A starting mapping written by `wmapc new` from {} tensors; review it, then\n\
             # `wmapc plan THIS.wmap --checkpoint DIR --strict`.",
            self.checkpoint.tensors.len()
        );
        for f in &files {
            let _ = writeln!(out, "use \"{f}\"");
        }
        out.push('\n');
        out.push_str(&block);
        match &arch {
            Some(a) => {
                let _ = writeln!(out, "model Scaffold for \"{a}\" {{");
            }
            None => out.push_str("model Scaffold {\n"),
        }
        for (symbol, key) in &self.bindings {
            let _ = writeln!(out, "    config {symbol} = {key}");
        }
        for (flag, want) in &flags {
            let has = matches!(
                self.config.lookup(std::slice::from_ref(flag)).map(|f| &f.value.value),
                Some(Json::Bool(b)) if b == want
            );
            if !has {
                let _ = writeln!(out, "    config {flag} = {want}");
            }
        }
        self.emit_top(&mut out);
        out.push_str("}\n");
        out
    }

    fn emit_block(
        &self,
        files: &mut BTreeSet<&'static str>,
        flags: &mut BTreeMap<String, bool>,
    ) -> String {
        let Some(prefix) = &self.layer_prefix else {
            return String::new();
        };
        let (uses, unplaced) = self.uses(flags);
        let all: usize = self.groups.iter().map(|g| g.layers.len()).sum();
        let mut out = String::from("block Layer {\n");
        for ((seg, entry), layers) in &uses {
            let e = &self.catalog.entries[*entry];
            files.insert(e.file);
            let shared = uses.iter().filter(|((s, _), _)| s == seg).count() > 1;
            let name = instance_name(seg, &e.name, shared);
            let mut line = format!("    {name}: {}", e.name);
            if !seg.is_empty() {
                let _ = write!(line, " at \"{seg}\"");
            }
            if layers.len() != all {
                let mut sorted = layers.clone();
                sorted.sort_unstable();
                let _ = write!(line, " when layer in {sorted:?}");
            }
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str(&unplaced);
        let ignored: BTreeSet<&str> = self
            .ignored
            .iter()
            .filter_map(|n| split_layer(prefix, n).map(|(_, rel)| rel))
            .collect();
        for rel in ignored {
            let _ = writeln!(out, "    ignore \"{rel}\"");
        }
        out.push_str("}\n\n");
        out
    }

    /// The chosen placements as (segment, entry) → the layers using it, in first-use
    /// order, and the `# unplaced` comment lines; records the flags placements need.
    fn uses(&self, flags: &mut BTreeMap<String, bool>) -> (Vec<Use>, String) {
        let mut uses: Vec<Use> = Vec::new();
        let mut unplaced = String::new();
        for g in &self.groups {
            let Some(choice) = g.options.get(g.chosen) else {
                continue;
            };
            for p in &choice.placements {
                let key = (p.seg.clone(), p.entry);
                match uses.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, layers)) => layers.extend(&g.layers),
                    None => uses.push((key, g.layers.clone())),
                }
                for (f, v) in &p.flags {
                    flags.entry(f.clone()).or_insert(*v);
                }
            }
            for n in &choice.unplaced {
                let first = g.layers.first().copied().unwrap_or(0);
                let t = self.checkpoint.tensors.get(&self.full(first, n));
                let _ = writeln!(
                    unplaced,
                    "    # unplaced in layers {:?}: `{n}` {:?} {}",
                    g.layers,
                    t.map(|t| t.shape.clone()).unwrap_or_default(),
                    t.map_or("", |t| t.dtype.name())
                );
            }
        }
        (uses, unplaced)
    }

    fn emit_top(&self, out: &mut String) {
        let mut seen = BTreeSet::new();
        let mut tied_done = false;
        for name in &self.top {
            let pname = self.param_name(name, &mut seen);
            let dims = self.dims(&self.shape(name));
            let _ = writeln!(out, "    param {pname}: [{dims}] from \"{name}\"");
            if tied_done {
                continue;
            }
            // A tied fallback the stdlib uses, for a head the checkpoint may omit.
            for (head, target) in &self.catalog.ties {
                if target == name && !self.checkpoint.tensors.contains_key(head) {
                    let hname = self.param_name(head, &mut seen);
                    let _ = writeln!(
                        out,
                        "    param {hname}: [{dims}] from [\"{head}\", tied({pname})]"
                    );
                    tied_done = true;
                    break;
                }
            }
        }
        if let Some(prefix) = &self.layer_prefix {
            let _ = writeln!(
                out,
                "    layers: Layer[layer in 0..{}] at \"{prefix}.{{layer}}\"",
                self.key_for(self.layer_count)
            );
        }
        for n in self.ignored.iter().filter(|n| {
            self.layer_prefix
                .as_deref()
                .is_none_or(|p| split_layer(p, n).is_none())
        }) {
            let _ = writeln!(out, "    ignore \"{n}\"");
        }
    }

    fn dims(&self, shape: &[u64]) -> String {
        let dims: Vec<String> = shape.iter().map(|&d| self.key_for(d)).collect();
        dims.join(", ")
    }

    /// The stdlib's name for a source, else one made from the tensor name; unique.
    fn param_name(&self, source: &str, seen: &mut BTreeSet<String>) -> String {
        let base = self
            .catalog
            .param_names
            .get(source)
            .cloned()
            .unwrap_or_else(|| ident(source.strip_suffix(".weight").unwrap_or(source)));
        let mut name = base.clone();
        let mut k = 2;
        while !seen.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }
}

/// Every way to cover a layer kind: whole stdlib blocks first, then per-segment covers
/// by modules; a segment no cover fits keeps its names unplaced.
fn options(catalog: &Catalog, names: &[String]) -> Vec<Choice> {
    let mut out = Vec::new();
    for (i, e) in catalog.entries.iter().enumerate() {
        if e.kind != crate::syntax::ast::DeclKind::Block {
            continue;
        }
        if let Some((claimed, flags)) = catalog::claim(e, names) {
            if claimed.len() == names.len() {
                out.push(Choice {
                    placements: vec![Placement {
                        seg: String::new(),
                        entry: i,
                        flags,
                    }],
                    unplaced: Vec::new(),
                });
            }
        }
    }
    let mut segs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for n in names {
        let (seg, rest) = n.split_once('.').unwrap_or(("", n));
        segs.entry(seg).or_default().push(rest.to_string());
    }
    let mut combos = vec![Choice::default()];
    for (seg, rest) in segs {
        let mut covers = covers(catalog, &rest);
        if covers.is_empty() {
            // No exact cover: place what the largest disjoint claims take, list the rest.
            let (cover, left) = partial_cover(catalog, &rest);
            for c in &mut combos {
                c.unplaced
                    .extend(left.iter().map(|r| catalog::join(seg, r)));
            }
            if cover.is_empty() {
                continue;
            }
            covers.push(cover);
        }
        combos = combos
            .iter()
            .flat_map(|c| {
                covers.iter().map(move |cover| {
                    let mut c = c.clone();
                    c.placements
                        .extend(cover.iter().map(|(entry, flags)| Placement {
                            seg: seg.to_string(),
                            entry: *entry,
                            flags: flags.clone(),
                        }));
                    c
                })
            })
            .take(super::MAX_OPTIONS)
            .collect();
    }
    out.extend(combos);
    out
}

type Cover = Vec<(usize, catalog::Flags)>;

/// A (segment, entry) placement and the layers using it.
type Use = ((String, usize), Vec<u64>);

/// A module entry and what it claims.
type Fit = (usize, Vec<String>, catalog::Flags);

/// Exact covers of `names` by disjoint module claims, a few at most.
fn covers(catalog: &Catalog, names: &[String]) -> Vec<Cover> {
    let fits = module_fits(catalog, names);
    let mut out = Vec::new();
    let mut chosen = Vec::new();
    search(&fits, names, &mut BTreeSet::new(), &mut chosen, &mut out);
    out
}

/// Every module that claims part of `names`, with its claim.
fn module_fits(catalog: &Catalog, names: &[String]) -> Vec<Fit> {
    catalog
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == crate::syntax::ast::DeclKind::Module)
        .filter_map(|(i, e)| catalog::claim(e, names).map(|(c, f)| (i, c, f)))
        .collect()
}

/// Greedy disjoint claims, largest first; the names none of them take.
fn partial_cover(catalog: &Catalog, names: &[String]) -> (Cover, Vec<String>) {
    let mut fits = module_fits(catalog, names);
    fits.sort_by_key(|(i, claimed, _)| (std::cmp::Reverse(claimed.len()), *i));
    let mut covered = BTreeSet::new();
    let mut cover = Cover::new();
    for (entry, claimed, flags) in fits {
        if claimed.iter().all(|c| !covered.contains(c)) {
            covered.extend(claimed);
            cover.push((entry, flags));
        }
    }
    let left = names
        .iter()
        .filter(|n| !covered.contains(*n))
        .cloned()
        .collect();
    (cover, left)
}

fn search(
    fits: &[Fit],
    names: &[String],
    covered: &mut BTreeSet<String>,
    chosen: &mut Cover,
    out: &mut Vec<Cover>,
) {
    if out.len() >= super::MAX_OPTIONS {
        return;
    }
    let Some(next) = names.iter().find(|n| !covered.contains(*n)) else {
        out.push(chosen.clone());
        return;
    };
    for (entry, claimed, flags) in fits {
        if !claimed.contains(next) || claimed.iter().any(|c| covered.contains(c)) {
            continue;
        }
        covered.extend(claimed.iter().cloned());
        chosen.push((*entry, flags.clone()));
        search(fits, names, covered, chosen, out);
        chosen.pop();
        for c in claimed {
            covered.remove(c);
        }
    }
}

/// The prefix before the first numeric segment that the most tensors share.
fn layer_prefix<'n>(names: impl Iterator<Item = &'n String>) -> Option<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in names {
        let segs: Vec<&str> = n.split('.').collect();
        if let Some(i) = segs
            .iter()
            .position(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        {
            if i > 0 {
                *counts.entry(segs[..i].join(".")).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|(p, c)| (*c, std::cmp::Reverse(p.clone())))
        .map(|(p, _)| p)
}

/// `(layer, rest)` for `prefix.{layer}.rest`.
fn split_layer<'n>(prefix: &str, name: &'n str) -> Option<(u64, &'n str)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let (index, rest) = rest.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// Whether a stdlib `ignore` pattern covers `name`: exactly, as a `*` prefix, or as the
/// tail of a name under some prefix.
fn ignore_fits(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(head) => name.starts_with(head),
        None => name == pattern || name.ends_with(&format!(".{pattern}")),
    }
}

const RESERVED: &[&str] = &[
    "config", "param", "ignore", "use", "module", "block", "model", "from", "when", "at", "in",
    "not", "and", "or", "true", "false", "null", "layer",
];

/// A `.wmap` identifier made from tensor-name text.
fn ident(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) || RESERVED.contains(&s.as_str())
    {
        s.insert(0, 'p');
        s.insert(1, '_');
    }
    s
}

fn instance_name(seg: &str, entry: &str, shared: bool) -> String {
    let snake: String = entry
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(c.to_ascii_lowercase()))
        })
        .collect();
    match (seg.is_empty(), shared) {
        (true, _) => ident(&snake),
        (false, false) => ident(seg),
        (false, true) => ident(&format!("{seg}_{snake}")),
    }
}
