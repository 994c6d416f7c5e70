//! Scale semantics of the FP8 and NVFP4 formats, against the reference tools' own bytes
//! (`tests/fixtures/golden/scales.safetensors`, written by `scripts/make_goldens.py` on a
//! GPU machine: transformers' `Fp8Quantize`/`Fp8Dequantize` for fine-grained FP8,
//! ModelOpt's `NVFP4QTensor` for NVFP4), and of wmap's exports of real layers: the
//! exported codes times the exported scales give back the source weights.
//!
//! Storing `1 / weight_scale_inv`, or `1 / weight_scale_2`, fails every test here.

mod common;

use common::same;

use std::path::{Path, PathBuf};

use wmap::checkpoint::Dtype;
use wmap::quant::{self, Format, Scales};

struct Golden(Vec<u8>);

impl Golden {
    fn load() -> Golden {
        Golden(
            std::fs::read(common::root().join("tests/fixtures/golden/scales.safetensors")).unwrap(),
        )
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
        t.data().to_vec()
    }
    fn shape(&self, name: &str) -> Vec<u64> {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
        t.shape().iter().map(|&d| d as u64).collect()
    }
    fn cases(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
                st.tensor(&format!("{prefix}.case{i}.input")).is_ok()
            })
            .count()
    }
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    u32s(b).into_iter().map(f32::from_bits).collect()
}

fn bf16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn dequant_bf16_bits(q: &quant::QuantizedTensor) -> Vec<u16> {
    let mut out = vec![half::bf16::ZERO; q.numel()];
    q.dequantize_bf16(&mut out);
    out.iter().map(|b| b.to_bits()).collect()
}

/// transformers' fine-grained FP8: the same E4M3 codes, the same `weight_scale_inv`
/// (the dequantization multiplier, amax / 448), and the same bf16 after dequantization.
#[test]
fn fp8_blocks_match_transformers() {
    let g = Golden::load();
    let n = g.cases("fp8");
    assert_eq!(n, 4, "fp8 cases in the golden file");
    for i in 0..n {
        let p = format!("fp8.case{i}");
        let shape = g.shape(&format!("{p}.input"));
        let x = quant::to_f32(Dtype::Bf16, &g.bytes(&format!("{p}.input")));
        let q = quant::quantize(Format::Fp8Block { block: 128 }, &x, &shape);
        same(
            &q.data,
            &g.bytes(&format!("{p}.weight")),
            &format!("{p} codes"),
        );
        let Scales::F32(s) = &q.scales else {
            panic!("{p}: fp8 scales are f32")
        };
        let got: Vec<u32> = s.iter().map(|v| v.to_bits()).collect();
        same(
            &got,
            &u32s(&g.bytes(&format!("{p}.weight_scale_inv"))),
            &format!("{p} weight_scale_inv"),
        );
        same(
            &dequant_bf16_bits(&q),
            &bf16s(&g.bytes(&format!("{p}.dequant"))),
            &format!("{p} dequant"),
        );
    }
}

/// ModelOpt's NVFP4: the same packed E2M1 codes (negative zero included), the same E4M3
/// block scales (`weight_scale`), the same tensor scale (`weight_scale_2` = amax / 2688),
/// and the same bf16 after dequantization.
#[test]
fn nvfp4_matches_modelopt() {
    let g = Golden::load();
    let n = g.cases("nvfp4");
    assert_eq!(n, 4, "nvfp4 cases in the golden file");
    for i in 0..n {
        let p = format!("nvfp4.case{i}");
        let shape = g.shape(&format!("{p}.input"));
        let x = quant::to_f32(Dtype::Bf16, &g.bytes(&format!("{p}.input")));
        let q = quant::quantize(Format::Nvfp4, &x, &shape);
        same(
            &q.data,
            &g.bytes(&format!("{p}.weight")),
            &format!("{p} codes"),
        );
        let Scales::U8(s) = &q.scales else {
            panic!("{p}: nvfp4 block scales are bytes")
        };
        same(
            s,
            &g.bytes(&format!("{p}.weight_scale")),
            &format!("{p} weight_scale"),
        );
        let ws2 = u32s(&g.bytes(&format!("{p}.weight_scale_2")));
        assert_eq!(
            q.tensor_scale
                .map(f32::to_bits)
                .into_iter()
                .collect::<Vec<_>>(),
            ws2,
            "{p} weight_scale_2"
        );
        same(
            &dequant_bf16_bits(&q),
            &bf16s(&g.bytes(&format!("{p}.dequant"))),
            &format!("{p} dequant"),
        );
    }
}

// ---------------------------------------------------------------- exports of real layers

/// E4M3 → f32, written out here so the check does not lean on the code it checks.
fn e4m3(b: u8) -> f32 {
    let (e, m) = (((b >> 3) & 0xF) as i32, (b & 7) as f32);
    let v = if e == 0 {
        m / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    if b & 0x80 != 0 {
        -v
    } else {
        v
    }
}

/// ModelOpt's E2M1 table (`e2m1_values`): code 8, negative zero, reads as +0.0.
fn e2m1(c: u8) -> f32 {
    [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ][(c & 15) as usize]
}

fn export(format: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("wmap-scales-{format}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_wmapc"))
        .args([
            "load",
            "tests/fixtures/hf/llama",
            "--quiet",
            "--quant",
            format,
            "--out",
        ])
        .arg(&out)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

struct Exported {
    bytes: Vec<u8>,
}

impl Exported {
    fn open(dir: &Path) -> Exported {
        Exported {
            bytes: std::fs::read(dir.join("model.safetensors")).unwrap(),
        }
    }
    fn names_with(&self, suffix: &str) -> Vec<String> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let mut v: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| n.ends_with(suffix))
            .cloned()
            .collect();
        v.sort();
        v
    }
    fn get(&self, name: &str) -> (Vec<u8>, Vec<u64>) {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
        (
            t.data().to_vec(),
            t.shape().iter().map(|&d| d as u64).collect(),
        )
    }
}

/// The source tensor of an exported weight, from the fixture.
fn source(name: &str) -> Vec<f32> {
    let bytes =
        std::fs::read(common::root().join("tests/fixtures/hf/llama/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    quant::to_f32(Dtype::Bf16, st.tensor(name).unwrap().data())
}

/// Every FP8 weight of the export: `q × weight_scale_inv` per 128×128 block is within
/// E4M3's rounding of the source (half a step: 1/16 of the value, or 2^-10 of the block's
/// scale for subnormals), and equals wmap's own dequantization bit for bit.
#[test]
fn exported_fp8_blocks_dequantize_to_the_source() {
    let dir = export("fp8-block");
    let ex = Exported::open(&dir);
    let names = ex.names_with(".weight_scale_inv");
    assert_eq!(names.len(), 14, "7 linear weights per layer, 2 layers");
    for scale_name in names {
        let w = scale_name.replace(".weight_scale_inv", ".weight");
        let (q, shape) = ex.get(&w);
        let (s, s_shape) = ex.get(&scale_name);
        let (s, (rows, cols)) = (f32s(&s), (shape[0] as usize, shape[1] as usize));
        assert_eq!(
            s_shape,
            [rows.div_ceil(128) as u64, cols.div_ceil(128) as u64]
        );
        let x = source(&w);
        assert_eq!(x.len(), q.len(), "{w}");
        let mut deq = Vec::with_capacity(q.len());
        for (i, &b) in q.iter().enumerate() {
            let scale = s[(i / cols / 128) * cols.div_ceil(128) + (i % cols) / 128];
            let v = e4m3(b) * scale;
            let bound = (v.abs() / 16.0).max(scale * 2f32.powi(-10));
            assert!(
                (v - x[i]).abs() <= bound,
                "{w}[{i}]: {v} vs source {}",
                x[i]
            );
            deq.push(half::bf16::from_f32(v).to_bits());
        }
        let mine = quant::quantize(Format::Fp8Block { block: 128 }, &x, &shape);
        same(
            &deq,
            &dequant_bf16_bits(&mine),
            &format!("{w}: export vs store"),
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Every NVFP4 weight of the export: `e2m1 × (weight_scale × weight_scale_2)` is within
/// one E2M1 step of the source (the widest step, 4 → 6, is a third of a block's
/// maximum), and equals wmap's own dequantization bit for bit.
#[test]
fn exported_nvfp4_dequantizes_to_the_source() {
    let dir = export("nvfp4");
    let ex = Exported::open(&dir);
    let names = ex.names_with(".weight_scale_2");
    assert_eq!(names.len(), 14, "7 linear weights per layer, 2 layers");
    for ws2_name in names {
        let w = ws2_name.replace(".weight_scale_2", ".weight");
        let (packed, shape) = ex.get(&w);
        let (ws, _) = ex.get(&ws2_name.replace("_scale_2", "_scale"));
        let ws2 = f32s(&ex.get(&ws2_name).0)[0];
        let cols = shape[1] as usize * 2;
        let x = source(&w);
        assert_eq!(x.len(), packed.len() * 2, "{w}");
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(ws2, amax / 2688.0, "{w}: weight_scale_2 = amax / (6 × 448)");
        let mut deq = Vec::with_capacity(x.len());
        for (i, &xi) in x.iter().enumerate() {
            let byte = packed[i / 2];
            let code = if i % 2 == 0 { byte & 0xF } else { byte >> 4 };
            let block_scale = e4m3(ws[(i / cols) * cols.div_ceil(16) + (i % cols) / 16]) * ws2;
            let v = e2m1(code) * block_scale;
            assert!(
                (v - xi).abs() <= block_scale * 1.0 + amax * 1e-6,
                "{w}[{i}]: {v} vs source {xi}"
            );
            deq.push(half::bf16::from_f32(v).to_bits());
        }
        let mine = quant::quantize(Format::Nvfp4, &x, &[shape[0], cols as u64]);
        same(
            &deq,
            &dequant_bf16_bits(&mine),
            &format!("{w}: export vs store"),
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
