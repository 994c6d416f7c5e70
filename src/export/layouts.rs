//! The on-disk layouts: which tensors one quantized weight becomes, and the
//! `quantization_config` that tells the reader.

use super::{py_repr, torch_dtype, Part};
use crate::checkpoint::Dtype;
use crate::load::Entry;
use crate::quant::{bnb4, dynamic, Format, QuantizedTensor, Scales};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// bitsandbytes 4-bit as transformers saves it: `W` packed, `W.absmax`,
    /// `W.quant_map`, `W.quant_state.bitsandbytes__<type>` (+ nested tensors).
    Bnb,
    /// Fine-grained FP8: `W` in E4M3, `W_scale_inv` per 128×128 block.
    Fp8Block,
    /// ModelOpt NVFP4: `W` packed, `W_scale` (E4M3), `W_scale_2` (F32 scalar).
    ModelOptNvfp4,
}

fn rows_cols(shape: &[u64]) -> (u64, u64) {
    let cols = shape.last().copied().unwrap_or(1);
    let numel = crate::ir::numel(shape).unwrap_or(u64::MAX);
    (numel / cols.max(1), cols)
}

fn base(name: &str) -> &str {
    name.strip_suffix(".weight").unwrap_or(name)
}

/// bnb's quant type name for the state key.
fn bnb_type(format: Format) -> &'static str {
    match format {
        Format::Fp4 { .. } => "fp4",
        _ => "nf4",
    }
}

fn blocksize(format: Format) -> usize {
    match format {
        Format::Nf4 { blocksize } | Format::Nf4Dq { blocksize } | Format::Fp4 { blocksize } => {
            blocksize
        }
        _ => 64,
    }
}

/// Widest Python float repr (`-1.1754943508222875e-38`), so the double-quant state's
/// length is known before its offset is.
const MAX_REPR: usize = 24;

/// bitsandbytes' quant-state JSON, as `json.dumps` writes it. With double quant the
/// offset is only known after quantizing, so the text is padded with trailing spaces
/// (JSON whitespace) to a fixed length.
fn quant_state(format: Format, shape: &[u64], dtype: Dtype, offset: Option<f32>) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let mut s = format!(
        "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
        bnb_type(format),
        blocksize(format),
        torch_dtype(dtype),
        dims.join(", ")
    );
    if matches!(format, Format::Nf4Dq { .. }) {
        let fixed = s.len()
            + ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": }"
                .len()
            + MAX_REPR;
        s.push_str(&format!(
            ", \"nested_blocksize\": {}, \"nested_dtype\": \"float32\", \"nested_offset\": {}}}",
            bnb4::NESTED_BLOCKSIZE,
            py_repr(offset.unwrap_or(0.0) as f64)
        ));
        while s.len() < fixed {
            s.push(' ');
        }
    } else {
        s.push('}');
    }
    s.into_bytes()
}

/// The tensors one quantized checkpoint tensor becomes (names, dtypes, shapes).
pub fn entries(layout: Layout, format: Format, p: &Part, dtype: Dtype) -> Vec<Entry> {
    let n = p.numel as u64;
    let (rows, cols) = rows_cols(&p.shape);
    let b = base(&p.name);
    match layout {
        Layout::Bnb => {
            let nblocks = n.div_ceil(blocksize(format) as u64);
            let mut e = vec![
                Entry::new(p.name.clone(), Dtype::U8, vec![n.div_ceil(2), 1]),
                Entry::new(format!("{}.quant_map", p.name), Dtype::F32, vec![16]),
            ];
            let state = quant_state(format, &p.shape, dtype, Some(0.0));
            e.push(Entry::new(
                format!("{}.quant_state.bitsandbytes__{}", p.name, bnb_type(format)),
                Dtype::U8,
                vec![state.len() as u64],
            ));
            if matches!(format, Format::Nf4Dq { .. }) {
                e.push(Entry::new(
                    format!("{}.absmax", p.name),
                    Dtype::U8,
                    vec![nblocks],
                ));
                e.push(Entry::new(
                    format!("{}.nested_absmax", p.name),
                    Dtype::F32,
                    vec![nblocks.div_ceil(bnb4::NESTED_BLOCKSIZE as u64)],
                ));
                e.push(Entry::new(
                    format!("{}.nested_quant_map", p.name),
                    Dtype::F32,
                    vec![256],
                ));
            } else {
                e.push(Entry::new(
                    format!("{}.absmax", p.name),
                    Dtype::F32,
                    vec![nblocks],
                ));
            }
            e
        }
        Layout::Fp8Block => vec![
            Entry::new(p.name.clone(), Dtype::F8E4M3, p.shape.clone()),
            Entry::new(
                format!("{b}.weight_scale_inv"),
                Dtype::F32,
                vec![rows.div_ceil(128), cols.div_ceil(128)],
            ),
        ],
        Layout::ModelOptNvfp4 => vec![
            Entry::new(p.name.clone(), Dtype::U8, vec![rows, cols.div_ceil(2)]),
            Entry::new(
                format!("{b}.weight_scale"),
                Dtype::F8E4M3,
                vec![rows, cols.div_ceil(16)],
            ),
            Entry::new(format!("{b}.weight_scale_2"), Dtype::F32, vec![]),
        ],
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The bytes of the tensors [`entries`] laid out, for one quantized part.
pub fn tensors(
    layout: Layout,
    q: &QuantizedTensor,
    p: &Part,
    dtype: Dtype,
) -> Vec<(String, Vec<u8>)> {
    let b = base(&p.name);
    match (layout, &q.scales) {
        (Layout::Bnb, scales) => {
            let mut out = vec![(p.name.clone(), q.data.clone())];
            let map = match q.format {
                Format::Fp4 { .. } => bnb4::fp4_table(),
                _ => bnb4::NF4,
            };
            out.push((format!("{}.quant_map", p.name), f32_bytes(&map)));
            let offset = q.nested.as_ref().map(|n| n.offset);
            out.push((
                format!(
                    "{}.quant_state.bitsandbytes__{}",
                    p.name,
                    bnb_type(q.format)
                ),
                quant_state(q.format, &p.shape, dtype, offset),
            ));
            match (scales, &q.nested) {
                (Scales::F32(absmax), _) => {
                    out.push((format!("{}.absmax", p.name), f32_bytes(absmax)))
                }
                (Scales::U8(codes), Some(n)) => {
                    out.push((format!("{}.absmax", p.name), codes.clone()));
                    out.push((format!("{}.nested_absmax", p.name), f32_bytes(&n.absmax)));
                    out.push((
                        format!("{}.nested_quant_map", p.name),
                        f32_bytes(&dynamic::signed_map()),
                    ));
                }
                (Scales::U8(_), None) => {}
            }
            out
        }
        (Layout::Fp8Block, Scales::F32(s)) => vec![
            (p.name.clone(), q.data.clone()),
            (format!("{b}.weight_scale_inv"), f32_bytes(s)),
        ],
        (Layout::ModelOptNvfp4, Scales::U8(s)) => vec![
            (p.name.clone(), q.data.clone()),
            (format!("{b}.weight_scale"), s.clone()),
            (
                format!("{b}.weight_scale_2"),
                f32_bytes(&[q.tensor_scale.unwrap_or(1.0)]),
            ),
        ],
        _ => Vec::new(),
    }
}

/// The original `config.json` with a `quantization_config` for the layout.
pub fn config_with_quantization(
    config_json: &str,
    layout: Layout,
    format: Format,
    kept_modules: &[String],
) -> Result<String, String> {
    let mut cfg: serde_json::Value = serde_json::from_str(config_json)
        .map_err(|e| format!("config.json is not valid JSON: {e}"))?;
    let q = match layout {
        // The keys and values transformers 5 writes for `BitsAndBytesConfig(load_in_4bit=True, …)`.
        Layout::Bnb => serde_json::json!({
            "_load_in_4bit": true,
            "_load_in_8bit": false,
            "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": bnb_type(format),
            "bnb_4bit_use_double_quant": matches!(format, Format::Nf4Dq { .. }),
            "llm_int8_enable_fp32_cpu_offload": false,
            "llm_int8_has_fp16_weight": false,
            "llm_int8_skip_modules": null,
            "llm_int8_threshold": 6.0,
            "load_in_4bit": true,
            "load_in_8bit": false,
            "quant_method": "bitsandbytes",
        }),
        Layout::Fp8Block => serde_json::json!({
            "activation_scheme": "dynamic",
            "modules_to_not_convert": null,
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
        }),
        Layout::ModelOptNvfp4 => serde_json::json!({
            "exclude_modules": kept_modules,
            "group_size": 16,
            "quant_algo": "NVFP4",
            "quant_method": "modelopt",
        }),
    };
    let obj = cfg.as_object_mut().ok_or("config.json is not an object")?;
    obj.insert("quantization_config".into(), q);
    let mut text = serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?;
    text.push('\n');
    Ok(text)
}
