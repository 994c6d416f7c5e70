//! Tensors as flat bytes in a group's host storage, and back.

use std::sync::Arc;

use half::bf16;

use crate::checkpoint::Dtype;
use crate::load::HostTensor;
use crate::quant::{bnb4, leading_slice, Format, LeadingSlice, QuantizedTensor, Scales, Stored};

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
        /// NVFP4's tensor scale: its value lives in the bytes, at the layout's offset.
        tensor_scale: bool,
    },
}

/// A tensor's layout in its group's host storage (the bytes live there, not here).
#[derive(Clone, Debug)]
pub struct Packed {
    meta: Meta,
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn put_f32s(out: &mut [u8], v: &[f32]) {
    for (o, x) in out.chunks_exact_mut(4).zip(v) {
        o.copy_from_slice(&x.to_le_bytes());
    }
}

/// A quantized tensor described without its bytes: what its layout is made from. Host
/// tensors and device tensors both describe themselves this way.
#[derive(Clone, Copy, Debug)]
pub struct QuantDesc<'a> {
    pub format: Format,
    pub shape: &'a [u64],
    pub scale_shape: &'a [u64],
    pub data_len: usize,
    /// Scales as f32 values (else bytes), and how many.
    pub f32_scales: bool,
    pub scales_len: usize,
    /// Double quant: the length of the absmax's own scales.
    pub nested_absmax: Option<usize>,
    pub tensor_scale: bool,
}

impl QuantDesc<'_> {
    fn of(q: &QuantizedTensor) -> QuantDesc<'_> {
        let (f32_scales, scales_len) = match &q.scales {
            Scales::F32(v) => (true, v.len()),
            Scales::U8(v) => (false, v.len()),
        };
        QuantDesc {
            format: q.format,
            shape: &q.shape,
            scale_shape: &q.scale_shape,
            data_len: q.data.len(),
            f32_scales,
            scales_len,
            nested_absmax: q.nested.as_ref().map(|n| n.absmax.len()),
            tensor_scale: q.tensor_scale.is_some(),
        }
    }
}

impl Packed {
    /// The layout of a full-precision tensor of `len` bytes.
    pub fn full(dtype: Dtype, shape: Vec<u64>, len: usize) -> Packed {
        Packed {
            meta: Meta::Full { dtype, shape, len },
        }
    }

    /// The layout of a quantized tensor as a whole.
    pub fn quantized(d: QuantDesc<'_>) -> Packed {
        let (f, u) = match d.f32_scales {
            true => (d.scales_len, 0),
            false => (0, d.scales_len),
        };
        Packed {
            meta: Meta::Quant {
                format: d.format,
                shape: d.shape.to_vec(),
                scale_shape: d.scale_shape.to_vec(),
                data_len: d.data_len,
                scales_f32: f,
                scales_u8: u,
                nested_absmax: d.nested_absmax,
                tensor_scale: d.tensor_scale,
            },
        }
    }

    /// The layout of leading slice `i` of a quantized tensor and where its pieces lie in
    /// the whole one, when the format allows slicing ([`crate::quant::leading_slice`];
    /// double quant's offset is tensor-wide, so slices carry no nested scales).
    pub fn quantized_slice(d: QuantDesc<'_>, i: usize) -> Option<(Packed, LeadingSlice)> {
        let r = leading_slice(d.format, d.shape, d.f32_scales, d.tensor_scale, i)?;
        let packed = Packed::quantized(QuantDesc {
            shape: d.shape.get(1..)?,
            scale_shape: &r.scale_shape,
            data_len: r.data.len(),
            scales_len: r.scales.len(),
            nested_absmax: None,
            ..d
        });
        Some((packed, r))
    }

    /// The layout of `s` as a whole.
    pub fn of(s: &Stored) -> Packed {
        match s {
            Stored::Full(t) => Packed::full(t.dtype, t.shape.clone(), t.data.len()),
            Stored::Quantized(q) => Packed::quantized(QuantDesc::of(q)),
        }
    }

    /// The layout of slice `i` along the leading dim (an expert of a stacked tensor), when
    /// the storage allows slicing ([`QuantizedTensor::leading_slice`]).
    pub fn of_slice(s: &Stored, i: usize) -> Option<Packed> {
        match s {
            Stored::Full(t) => {
                let per = full_slice(t, i)?.len();
                Some(Packed::full(t.dtype, t.shape.get(1..)?.to_vec(), per))
            }
            Stored::Quantized(q) => Some(Packed::quantized_slice(QuantDesc::of(q), i)?.0),
        }
    }

    /// Writes `s` (or its leading slice `slice`) in this layout into `out`, which is
    /// exactly [`Packed::len`] bytes; `false` when `s` does not have this layout.
    pub fn write(&self, s: &Stored, slice: Option<usize>, out: &mut [u8]) -> bool {
        if out.len() != self.len() {
            return false;
        }
        match (s, layout_of(&self.meta)) {
            (Stored::Full(t), None) => {
                let src = match slice {
                    Some(i) => full_slice(t, i),
                    None => Some(&t.data[..]),
                };
                match src {
                    Some(src) if src.len() == out.len() => {
                        out.copy_from_slice(src);
                        true
                    }
                    _ => false,
                }
            }
            (Stored::Quantized(q), Some(l)) => write_quantized(q, slice, &l, out).is_some(),
            _ => false,
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
                let tensor_scale = match (tensor_scale, l.tensor_scale) {
                    (true, Some(at)) => Some(f32s(&bytes[at..at + 4])[0]),
                    _ => None,
                };
                Stored::Quantized(QuantizedTensor {
                    format: *format,
                    shape: shape.clone(),
                    data,
                    scales,
                    scale_shape: scale_shape.clone(),
                    nested,
                    tensor_scale,
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
    let ts = tensor_scale.then(|| {
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

/// Bytes of slice `i` of a full-precision tensor along its leading dim.
fn full_slice(t: &HostTensor, i: usize) -> Option<&[u8]> {
    t.data.get(full_slice_range(&t.shape, t.data.len(), i)?)
}

/// The byte range of slice `i` along the leading dim of a full-precision tensor of `len`
/// bytes shaped `shape` (host or device: only the shape and length matter).
pub fn full_slice_range(shape: &[u64], len: usize, i: usize) -> Option<std::ops::Range<usize>> {
    let lead = usize::try_from(*shape.first()?).ok()?;
    let per = len / lead.max(1);
    (i < lead).then(|| i * per..(i + 1) * per)
}

/// The pieces of `q` (or of its slice) at their layout offsets in `out`.
fn write_quantized(
    q: &QuantizedTensor,
    slice: Option<usize>,
    l: &QuantLayout,
    out: &mut [u8],
) -> Option<()> {
    let (data, scales) = match slice {
        Some(i) => {
            let r = q.leading_slice(i)?;
            (r.data, r.scales)
        }
        None => {
            let n = match &q.scales {
                Scales::F32(v) => v.len(),
                Scales::U8(v) => v.len(),
            };
            (0..q.data.len(), 0..n)
        }
    };
    out.get_mut(..l.data_len)?
        .copy_from_slice(q.data.get(data)?);
    match &q.scales {
        Scales::F32(v) => put_f32s(
            out.get_mut(l.scales..l.scales + 4 * l.scales_f32)?,
            v.get(scales)?,
        ),
        Scales::U8(v) => out
            .get_mut(l.scales..l.scales + l.scales_u8)?
            .copy_from_slice(v.get(scales)?),
    }
    if let (None, Some(n), Some(at), Some(off)) = (slice, &q.nested, l.nested, l.offset) {
        put_f32s(out.get_mut(at..at + 4 * n.absmax.len())?, &n.absmax);
        out.get_mut(off..off + 4)?
            .copy_from_slice(&n.offset.to_le_bytes());
    }
    if let (Some(t), Some(at)) = (q.tensor_scale, l.tensor_scale) {
        out.get_mut(at..at + 4)?.copy_from_slice(&t.to_le_bytes());
    }
    Some(())
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
