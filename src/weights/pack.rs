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
                let mut bytes = q.data.clone();
                let (mut f, mut u) = (0, 0);
                match &q.scales {
                    Scales::F32(v) => {
                        f = v.len();
                        bytes.extend(f32_bytes(v));
                    }
                    Scales::U8(v) => {
                        u = v.len();
                        bytes.extend_from_slice(v);
                    }
                }
                let nested_absmax = q.nested.as_ref().map(|n| {
                    bytes.extend(f32_bytes(&n.absmax));
                    bytes.extend(n.offset.to_le_bytes());
                    n.absmax.len()
                });
                Packed {
                    meta: Meta::Quant {
                        format: q.format,
                        shape: q.shape.clone(),
                        scale_shape: q.scale_shape.clone(),
                        data_len: q.data.len(),
                        scales_f32: f,
                        scales_u8: u,
                        nested_absmax,
                        tensor_scale: q.tensor_scale,
                    },
                    bytes,
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        match &self.meta {
            Meta::Full { len, .. } => *len,
            Meta::Quant {
                data_len,
                scales_f32,
                scales_u8,
                nested_absmax,
                ..
            } => data_len + 4 * scales_f32 + scales_u8 + nested_absmax.map_or(0, |n| 4 * n + 4),
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
                let mut at = *data_len;
                let data = bytes[..at].to_vec();
                let scales = if *scales_u8 > 0 || *scales_f32 == 0 {
                    let s = Scales::U8(bytes[at..at + scales_u8].to_vec());
                    at += scales_u8;
                    s
                } else {
                    let s = Scales::F32(f32s(&bytes[at..at + 4 * scales_f32]));
                    at += 4 * scales_f32;
                    s
                };
                let nested = nested_absmax.map(|n| {
                    let absmax = f32s(&bytes[at..at + 4 * n]);
                    let offset = f32s(&bytes[at + 4 * n..at + 4 * n + 4])[0];
                    let codes = match &scales {
                        Scales::U8(c) => c.clone(),
                        Scales::F32(_) => Vec::new(),
                    };
                    bnb4::Nested {
                        codes,
                        absmax,
                        offset,
                        blocksize: bnb4::NESTED_BLOCKSIZE,
                    }
                });
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
