//! Stdlib models ranked by structure: how many of a checkpoint's tensor-name patterns
//! end in a tensor name one of the model's files writes (`q_proj.weight`, `A_log`).
//! Used by E0304 when a checkpoint is at hand; architecture names that look alike say
//! nothing about layout (Gemma2 is no Mamba2), tensor names do.
//!
//! Input: the checkpoint's tensor names. Output: up to three `(model, percent)` pairs,
//! best first, each with a score above zero. Reads only the embedded stdlib text.

use std::collections::BTreeSet;

use crate::stdlib;

/// Literals too generic to say anything about structure.
const GENERIC: [&str; 2] = ["weight", "bias"];

pub fn nearest(tensors: &[&str]) -> Vec<(String, u32)> {
    let patterns: BTreeSet<String> = tensors
        .iter()
        .map(|t| crate::plan::templatize(t).0)
        .collect();
    if patterns.is_empty() {
        return Vec::new();
    }
    // (model, percent of the checkpoint's patterns it names, per mille of its own names
    // the checkpoint has, how many names it has): ties go to the model that expects least
    // beyond what the checkpoint holds, then to the smallest vocabulary of names.
    let mut scored: Vec<(String, u32, usize, usize)> = super::stdlib_models()
        .into_iter()
        .filter_map(|m| {
            let names = literals(m.file);
            let hits = patterns
                .iter()
                .filter(|p| names.iter().any(|n| ends_with_segments(p, n)))
                .count();
            let used = names
                .iter()
                .filter(|n| patterns.iter().any(|p| ends_with_segments(p, n)))
                .count();
            let percent = u32::try_from(hits * 100 / patterns.len()).ok()?;
            let precision = used * 1000 / names.len().max(1);
            (hits > 0).then_some((m.name, percent, precision, names.len()))
        })
        .collect();
    scored.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| b.2.cmp(&a.2))
            .then_with(|| a.3.cmp(&b.3))
            .then_with(|| a.0.cmp(&b.0))
    });
    scored.truncate(3);
    scored.into_iter().map(|(m, p, _, _)| (m, p)).collect()
}

/// `name` ends with `lit` at a segment boundary, before or after dropping a generic
/// last segment (`input_layernorm.weight` matches a prefix `input_layernorm` whose
/// module reads `"weight"`).
fn ends_with_segments(name: &str, lit: &str) -> bool {
    let ends = |n: &str| n == lit || n.strip_suffix(lit).is_some_and(|h| h.ends_with('.'));
    let trimmed = GENERIC
        .iter()
        .find_map(|g| name.strip_suffix(g)?.strip_suffix('.'));
    ends(name) || trimmed.is_some_and(ends)
}

/// The tensor-name literals of a stdlib file and the files it uses, with `{…}` holes
/// and everything before them dropped (`experts.{expert}.{gate}.weight` → `weight`).
fn literals(file: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut queue = vec![file.to_string()];
    let mut out = BTreeSet::new();
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let Some(text) = stdlib::get(&path) else {
            continue;
        };
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        for line in text.lines() {
            let code = line.split('#').next().unwrap_or("");
            let quoted: Vec<&str> = code.split('"').skip(1).step_by(2).collect();
            if code.trim_start().starts_with("use ") {
                for q in quoted {
                    queue.push(format!("{dir}/{q}"));
                    queue.push(q.to_string());
                }
                continue;
            }
            for q in quoted {
                let tail = q.rsplit('}').next().unwrap_or(q).trim_start_matches('.');
                if !tail.is_empty() && !GENERIC.contains(&tail) && !tail.contains(' ') {
                    out.insert(tail.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mamba_checkpoint_looks_like_mamba_not_like_llama() {
        let names = [
            "backbone.layers.0.mixer.A_log",
            "backbone.layers.0.mixer.in_proj.weight",
            "backbone.layers.0.mixer.conv1d.weight",
            "backbone.layers.0.norm.weight",
        ];
        let ranked = nearest(&names);
        let first = ranked.first().map(|(m, _)| m.as_str());
        assert!(matches!(first, Some("Mamba2" | "NemotronH")), "{ranked:?}");
        assert!(!ranked.iter().any(|(m, _)| m == "Llama"), "{ranked:?}");
    }

    #[test]
    fn attention_names_point_at_attention_models() {
        let names = [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.input_layernorm.weight",
        ];
        // Many stdlib families share these modules, so the top three tie at 100 %; what
        // matters is that they are attention models, not the Mamba ones.
        let ranked = nearest(&names);
        assert_eq!(ranked.len(), 3, "{ranked:?}");
        assert!(ranked.iter().all(|(_, p)| *p == 100), "{ranked:?}");
        assert!(
            !ranked
                .iter()
                .any(|(m, _)| m == "Mamba2" || m == "NemotronH"),
            "{ranked:?}"
        );
    }
}
