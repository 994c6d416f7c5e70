//! Lower: a checked model → the compact, versioned IR.
//!
//! Input: [`crate::check::Checked`], whose repeated instances hold their distinct bodies, each
//! with the indices that have it. Output: an [`crate::ir::Ir`] with coalesced index ranges and —
//! when there are several bodies — each index's kind.
//! A 48-layer model whose layers are alike lowers to one body. Lowering cannot fail on
//! checked input.

use std::collections::BTreeMap;

use crate::check::Checked;
use crate::ir;
use crate::resolve::Program;

pub fn lower(program: &Program, checked: Checked) -> (ir::Ir, ir::Spans) {
    let decl = program.decl(checked.model);
    let ir = ir::Ir {
        ir_version: ir::IR_VERSION,
        model: decl.name.node.clone(),
        architectures: decl.serves.iter().map(|s| s.node.clone()).collect(),
        config: checked
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect::<BTreeMap<_, _>>(),
        root: compact_body(checked.root),
    };
    (ir, checked.spans)
}

fn compact_body(body: ir::Body) -> ir::Body {
    ir::Body {
        params: body.params,
        instances: body.instances.into_iter().map(compact_instance).collect(),
        ignore: body.ignore,
    }
}

fn compact_instance(mut inst: ir::Instance) -> ir::Instance {
    let variants = std::mem::take(&mut inst.variants);
    let Some(repeat) = &inst.repeat else {
        inst.variants = variants
            .into_iter()
            .map(|v| ir::Variant {
                body: compact_body(v.body),
                ..v
            })
            .collect();
        return inst;
    };
    // The checker already merged equal bodies; record each index's kind. The count is
    // at most `limits::MAX_REPEAT`, which the checker enforced.
    let count = usize::try_from(repeat.count).unwrap_or(0);
    let mut kinds = vec![String::new(); count];
    let mut width = 0u64;
    let mut merged = Vec::with_capacity(variants.len());
    for v in variants {
        for [a, b] in &v.indices {
            for i in *a..*b {
                let slot = i
                    .checked_sub(repeat.start)
                    .and_then(|k| usize::try_from(k).ok());
                if let Some(k) = slot.and_then(|k| kinds.get_mut(k)) {
                    k.clone_from(&v.kind);
                }
                width += 1;
            }
        }
        merged.push(ir::Variant {
            indices: coalesce(v.indices),
            kind: v.kind,
            body: compact_body(v.body),
        });
    }
    if merged.len() > 1 || width != repeat.count {
        inst.kinds = kinds;
    }
    inst.variants = merged;
    inst
}

/// Sorts and joins adjacent half-open ranges.
fn coalesce(mut ranges: Vec<[i64; 2]>) -> Vec<[i64; 2]> {
    ranges.sort_unstable();
    let mut out: Vec<[i64; 2]> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last[1] == r[0] => last[1] = r[1],
            _ => out.push(r),
        }
    }
    out
}
