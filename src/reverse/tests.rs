//! One test per inverse op: the traced layout against the forward op's definition, then
//! runtime bytes scattered back into the checkpoint tensors.

use super::trace::Ids;
use super::{trace, Assembler, Tensor};
use crate::checkpoint::Dtype;
use crate::diag::Code;
use crate::plan::Recipe;

fn read(name: &str, shape: &[u64]) -> Recipe {
    read_as(name, shape, Dtype::U8)
}

fn read_as(name: &str, shape: &[u64], dtype: Dtype) -> Recipe {
    Recipe::Read {
        file: 0,
        tensor: name.into(),
        offset: 0,
        length: 0,
        dtype,
        shape: shape.to_vec(),
    }
}

fn names(t: &super::Trace) -> Vec<&str> {
    t.leaves.iter().map(|l| l.tensor.as_str()).collect()
}

/// Scatters one U8 target (element `o` holds `values[o]`) and returns what it completed.
fn scatter_one(recipe: &Recipe, values: &[u8]) -> Vec<Tensor> {
    let t = trace(recipe).unwrap();
    let mut a = Assembler::default();
    a.expect(names(&t));
    let done = a.add("x", &t, Dtype::U8, values).unwrap();
    a.finish().unwrap();
    done
}

fn tensor(name: &str, shape: &[u64], bytes: &[u8]) -> Tensor {
    Tensor {
        name: name.into(),
        dtype: Dtype::U8,
        shape: shape.to_vec(),
        bytes: bytes.to_vec(),
    }
}

#[test]
fn fuse_on_dim_1_splits_rows_apart() {
    // a = [[0, 1], [2, 3]], b = [[4], [5]] → [[0, 1, 4], [2, 3, 5]]
    let r = Recipe::Fuse {
        dim: 1,
        parts: vec![read("a", &[2, 2]), read("b", &[2, 1])],
    };
    let t = trace(&r).unwrap();
    assert_eq!(
        (t.shape.clone(), t.ids.clone()),
        (vec![2, 3], Ids::Table(vec![0, 1, 4, 2, 3, 5]))
    );
    let done = scatter_one(&r, &[10, 11, 14, 12, 13, 15]);
    assert_eq!(
        done,
        vec![
            tensor("a", &[2, 2], &[10, 11, 12, 13]),
            tensor("b", &[2, 1], &[14, 15])
        ]
    );
}

#[test]
fn stack_unstacks() {
    let r = Recipe::Stack {
        parts: vec![read("e0", &[2]), read("e1", &[2])],
    };
    let t = trace(&r).unwrap();
    assert_eq!((t.shape, t.ids), (vec![2, 2], Ids::Identity(4)));
    let done = scatter_one(&r, &[1, 2, 3, 4]);
    assert_eq!(
        done,
        vec![tensor("e0", &[2], &[1, 2]), tensor("e1", &[2], &[3, 4])]
    );
}

/// GPT-OSS's interleaved gate/up: even rows and odd rows of one tensor, in two params.
fn interleaved(start: u64) -> Recipe {
    Recipe::Slice {
        dim: 0,
        start,
        end: 4,
        step: 2,
        source: Box::new(read("gate_up", &[4, 2])),
    }
}

#[test]
fn slices_with_step_scatter_back_into_one_source() {
    let (even, odd) = (
        trace(&interleaved(0)).unwrap(),
        trace(&interleaved(1)).unwrap(),
    );
    assert_eq!(even.ids, Ids::Table(vec![0, 1, 4, 5]));
    assert_eq!(odd.ids, Ids::Table(vec![2, 3, 6, 7]));
    let mut a = Assembler::default();
    a.expect(names(&even));
    a.expect(names(&odd));
    assert!(a
        .add("gate", &even, Dtype::U8, &[0, 1, 4, 5])
        .unwrap()
        .is_empty());
    let done = a.add("up", &odd, Dtype::U8, &[2, 3, 6, 7]).unwrap();
    assert_eq!(
        done,
        vec![tensor("gate_up", &[4, 2], &[0, 1, 2, 3, 4, 5, 6, 7])]
    );
    a.finish().unwrap();
}

#[test]
fn a_slice_leaving_rows_out_is_not_invertible() {
    let even = trace(&interleaved(0)).unwrap();
    let mut a = Assembler::default();
    a.expect(names(&even));
    assert!(a
        .add("gate", &even, Dtype::U8, &[0, 1, 4, 5])
        .unwrap()
        .is_empty());
    let e = a.finish().unwrap_err();
    assert_eq!(e.code, Code::E0520);
    assert!(
        e.message.contains("rows 1, 3 (dim 0, of 4) of `gate_up`"),
        "{}",
        e.message
    );
}

#[test]
fn overlapping_reads_that_disagree_conflict() {
    let r = read("w", &[2]);
    let t = trace(&r).unwrap();
    let mut a = Assembler::default();
    a.expect(names(&t));
    a.expect(names(&t));
    a.add("first", &t, Dtype::U8, &[1, 2]).unwrap();
    let e = a.add("second", &t, Dtype::U8, &[1, 3]).unwrap_err();
    assert_eq!(e.code, Code::E0524);
}

#[test]
fn transpose_swaps_back() {
    // s = [[0, 1, 2], [3, 4, 5]] → sᵀ = [[0, 3], [1, 4], [2, 5]]
    let r = Recipe::Transpose {
        dims: [0, 1],
        source: Box::new(read("s", &[2, 3])),
    };
    let t = trace(&r).unwrap();
    assert_eq!(
        (t.shape.clone(), t.ids.clone()),
        (vec![3, 2], Ids::Table(vec![0, 3, 1, 4, 2, 5]))
    );
    let done = scatter_one(&r, &[0, 3, 1, 4, 2, 5]);
    assert_eq!(done, vec![tensor("s", &[2, 3], &[0, 1, 2, 3, 4, 5])]);
}

#[test]
fn reshape_and_squeeze_keep_bytes() {
    let r = Recipe::Reshape {
        shape: vec![6],
        source: Box::new(read("conv", &[6, 1])),
    };
    let done = scatter_one(&r, &[9, 8, 7, 6, 5, 4]);
    assert_eq!(done, vec![tensor("conv", &[6, 1], &[9, 8, 7, 6, 5, 4])]);
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn widened_reads_narrow_back_exactly_or_not_at_all() {
    let r = read_as("A_log", &[2], Dtype::Bf16);
    let t = trace(&r).unwrap();
    let mut a = Assembler::default();
    a.expect(names(&t));
    let done = a
        .add("A_log", &t, Dtype::F32, &f32_bytes(&[1.5, -2.0]))
        .unwrap();
    let want: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect();
    assert_eq!(done[0].bytes, want);
    assert_eq!(done[0].dtype, Dtype::Bf16);
    // 1 + 2^-10 needs 10 mantissa bits; bf16 has 7.
    let mut a = Assembler::default();
    a.expect(names(&t));
    let e = a
        .add(
            "A_log",
            &t,
            Dtype::F32,
            &f32_bytes(&[1.0, 1.0 + 2f32.powi(-10)]),
        )
        .unwrap_err();
    assert_eq!(e.code, Code::E0523);
    assert!(e.message.contains("element 1 of `A_log`"), "{}", e.message);
}

#[test]
fn a_tie_inside_a_recipe_is_a_bug() {
    let e = trace(&Recipe::Tied {
        target: "embed".into(),
    })
    .unwrap_err();
    assert_eq!(e.code, Code::E0901);
}
