//! Lower: a checked model → the compact, versioned IR.
//!
//! Input: [`crate::check::Checked`], whose repeated instances hold one body per index.
//! Output: an [`ir::Ir`] where each repeated instance keeps only its distinct bodies, each
//! with the index ranges that share it, and — when there are several — each index's kind.
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
    // Merge indices with equal bodies, keeping first-appearance order.
    let mut merged: Vec<ir::Variant> = Vec::new();
    let mut kinds = vec![String::new(); repeat.count as usize];
    for v in variants {
        let body = compact_body(v.body);
        for [a, b] in &v.indices {
            for i in *a..*b {
                kinds[(i - repeat.start) as usize] = v.kind.clone();
            }
        }
        match merged
            .iter_mut()
            .find(|m| m.body == body && m.kind == v.kind)
        {
            Some(m) => m.indices.extend(v.indices),
            None => merged.push(ir::Variant {
                indices: v.indices,
                kind: v.kind,
                body,
            }),
        }
    }
    for m in &mut merged {
        m.indices = coalesce(std::mem::take(&mut m.indices));
    }
    if merged.len() > 1 || merged.iter().map(|m| width(&m.indices)).sum::<i64>() != repeat.count {
        inst.kinds = kinds;
    }
    inst.variants = merged;
    inst
}

fn width(ranges: &[[i64; 2]]) -> i64 {
    ranges.iter().map(|[a, b]| b - a).sum()
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
