//! Tensors as flat bytes in a group's host storage, and back.

use std::sync::Arc;

use half::bf16;

use crate::checkpoint::Dtype;
use crate::load::HostTensor;
use crate::quant::{bnb4, Format, QuantizedTensor, Scales, Stored};

#[derive(Clone, Debug)]
enum Meta {
    Full {
        dtype: Dtype,
        shape: Vec<u64>,
        len: usize,
    },
    Quant {
        format: Format,
        shape: Vec<u64>,
        scale_shape: Vec<u64>,
        data_len: usize,
        scales_f32: usize,
        scales_u8: usize,
        nested_absmax: Option<usize>,
        tensor_scale: Option<f32>,
    },
}

/// A tensor's layout, with or without its bytes.
#[derive(Clone, Debug)]
pub struct Packed {
    meta: Meta,
    bytes: Vec<u8>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Packed {
    pub fn of(s: &Stored) -> Packed {
        match s {
            Stored::Full(t) => Packed {
                meta: Meta::Full {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    len: t.data.len(),
                },
                bytes: t.data.to_vec(),
            },
            Stored::Quantized(q) => {
                let (f, u) = match &q.scales {
                    Scales::F32(v) => (v.len(), 0),
                    Scales::U8(v) => (0, v.len()),
                };
                let meta = Meta::Quant {
                    format: q.format,
                    shape: q.shape.clone(),
                    scale_shape: q.scale_shape.clone(),
                    data_len: q.data.len(),
                    scales_f32: f,
                    scales_u8: u,
                    nested_absmax: q.nested.as_ref().map(|n| n.absmax.len()),
                    tensor_scale: q.tensor_scale,
                };
                let l = layout_of(&meta).unwrap_or_default();
                let mut bytes = vec![0u8; l.total];
                bytes[..q.data.len()].copy_from_slice(&q.data);
                match &q.scales {
                    Scales::F32(v) => {
                        bytes[l.scales..l.scales + 4 * v.len()].copy_from_slice(&f32_bytes(v))
                    }
                    Scales::U8(v) => bytes[l.scales..l.scales + v.len()].copy_from_slice(v),
                }
                if let (Some(n), Some(at), Some(off)) = (&q.nested, l.nested, l.offset) {
                    bytes[at..at + 4 * n.absmax.len()].copy_from_slice(&f32_bytes(&n.absmax));
                    bytes[off..off + 4].copy_from_slice(&n.offset.to_le_bytes());
                }
                if let (Some(t), Some(at)) = (q.tensor_scale, l.tensor_scale) {
                    bytes[at..at + 4].copy_from_slice(&t.to_le_bytes());
                }
                Packed { meta, bytes }
            }
        }
    }

    /// Where each piece of a quantized tensor sits in its bytes (`None` for a full tensor).
    pub fn layout(&self) -> Option<QuantLayout> {
        layout_of(&self.meta)
    }

    pub fn format(&self) -> Option<Format> {
        match &self.meta {
            Meta::Quant { format, .. } => Some(*format),
            Meta::Full { .. } => None,
        }
    }

    pub fn shape(&self) -> &[u64] {
        match &self.meta {
            Meta::Quant { shape, .. } | Meta::Full { shape, .. } => shape,
        }
    }

    /// The dtype of a full-precision tensor.
    pub fn full_dtype(&self) -> Option<Dtype> {
        match &self.meta {
            Meta::Full { dtype, .. } => Some(*dtype),
            Meta::Quant { .. } => None,
        }
    }

    pub fn len(&self) -> usize {
        match &self.meta {
            Meta::Full { len, .. } => *len,
            Meta::Quant { .. } => layout_of(&self.meta).map_or(0, |l| l.total),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The layout alone (the bytes live in the group's storage).
    pub fn without_bytes(mut self) -> Packed {
        self.bytes = Vec::new();
        self
    }

    /// Rebuilds the tensor from `bytes` (exactly [`Packed::len`] long).
    pub fn unpack(&self, bytes: &[u8]) -> Stored {
        match &self.meta {
            Meta::Full { dtype, shape, .. } => Stored::Full(HostTensor {
                dtype: *dtype,
                shape: shape.clone(),
                data: Arc::new(bytes.to_vec()),
            }),
            Meta::Quant {
                format,
                shape,
                scale_shape,
                data_len,
                scales_f32,
                scales_u8,
                nested_absmax,
                tensor_scale,
            } => {
                let l = layout_of(&self.meta).unwrap_or_default();
                let data = bytes[..*data_len].to_vec();
                let scales = if *scales_u8 > 0 || *scales_f32 == 0 {
                    Scales::U8(bytes[l.scales..l.scales + scales_u8].to_vec())
                } else {
                    Scales::F32(f32s(&bytes[l.scales..l.scales + 4 * scales_f32]))
                };
                let nested = match (nested_absmax, l.nested, l.offset) {
                    (Some(n), Some(at), Some(off)) => Some(bnb4::Nested {
                        codes: match &scales {
                            Scales::U8(c) => c.clone(),
                            Scales::F32(_) => Vec::new(),
                        },
                        absmax: f32s(&bytes[at..at + 4 * n]),
                        offset: f32s(&bytes[off..off + 4])[0],
                        blocksize: bnb4::NESTED_BLOCKSIZE,
                    }),
                    _ => None,
                };
                Stored::Quantized(QuantizedTensor {
                    format: *format,
                    shape: shape.clone(),
                    data,
                    scales,
                    scale_shape: scale_shape.clone(),
                    nested,
                    tensor_scale: *tensor_scale,
                })
            }
        }
    }
}

/// Byte offsets of a quantized tensor's pieces; f32 pieces start 4-byte aligned so a
/// device buffer holding the bytes can be viewed as f32 in place.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QuantLayout {
    pub data_len: usize,
    pub scales: usize,
    pub scales_f32: usize,
    pub scales_u8: usize,
    pub nested: Option<usize>,
    pub nested_len: usize,
    pub offset: Option<usize>,
    pub tensor_scale: Option<usize>,
    pub total: usize,
}

fn align4(x: usize) -> usize {
    x.div_ceil(4) * 4
}

fn layout_of(m: &Meta) -> Option<QuantLayout> {
    let Meta::Quant {
        data_len,
        scales_f32,
        scales_u8,
        nested_absmax,
        tensor_scale,
        ..
    } = m
    else {
        return None;
    };
    let scales = align4(*data_len);
    let mut at = align4(scales + 4 * scales_f32 + scales_u8);
    let (nested, offset) = match nested_absmax {
        Some(n) => {
            let r = (Some(at), Some(at + 4 * n));
            at += 4 * n + 4;
            r
        }
        None => (None, None),
    };
    let ts = tensor_scale.map(|_| {
        let r = at;
        at += 4;
        r
    });
    Some(QuantLayout {
        data_len: *data_len,
        scales,
        scales_f32: *scales_f32,
        scales_u8: *scales_u8,
        nested,
        nested_len: nested_absmax.unwrap_or(0),
        offset,
        tensor_scale: ts,
        total: at,
    })
}

pub fn shape_of(s: &Stored) -> Vec<u64> {
    match s {
        Stored::Full(t) => t.shape.clone(),
        Stored::Quantized(q) => q.shape.clone(),
    }
}

/// Slice `i` along the leading dim, when the storage allows it.
pub fn slice_leading(s: &Stored, i: usize) -> Option<Stored> {
    match s {
        Stored::Quantized(q) => q.slice_leading(i).map(Stored::Quantized),
        Stored::Full(t) => {
            let lead = *t.shape.first()? as usize;
            let per = t.data.len() / lead.max(1);
            (i < lead).then(|| {
                Stored::Full(HostTensor {
                    dtype: t.dtype,
                    shape: t.shape[1..].to_vec(),
                    data: Arc::new(t.data[i * per..(i + 1) * per].to_vec()),
                })
            })
        }
    }
}

/// The tensor as bf16: dequantized, or converted from its dtype.
pub fn dequantize_into(s: &Stored, out: &mut [bf16]) {
    match s {
        Stored::Quantized(q) => q.dequantize_bf16(out),
        Stored::Full(t) => {
            let mut raw = vec![0u8; out.len() * 2];
            if crate::load::convertible(t.dtype, Dtype::Bf16) {
                crate::load::convert(t.dtype, &t.data, Dtype::Bf16, &mut raw);
            }
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]);
            }
        }
    }
}
