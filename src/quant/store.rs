//! The quantizing sink: params marked `quantizable` are quantized as they arrive; every
//! other target stays in full precision. It also measures the reconstruction error.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{quantize_bytes, ErrorStats, Format, QuantizedTensor};
use crate::diag::Diagnostic;
use crate::load::{HostTensor, Runs, Sink};
use crate::plan::Target;

/// A loaded tensor: quantized, or full precision.
#[derive(Clone, Debug)]
pub enum Stored {
    Quantized(QuantizedTensor),
    Full(HostTensor),
}

/// What quantization did to a load.
#[derive(Clone, Debug, Default)]
pub struct QuantReport {
    pub quantized: usize,
    /// Of `quantized`, the targets stored in the format already: their codes passed
    /// through, with no error to measure.
    pub passed_through: usize,
    pub full: usize,
    /// Bytes of the quantizable targets before (in their dtype) and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Bytes of the targets left in full precision.
    pub full_bytes: u64,
    pub error: ErrorStats,
}

pub struct QuantStore {
    pub format: Format,
    tensors: Mutex<BTreeMap<String, Stored>>,
    report: Mutex<QuantReport>,
}

impl QuantStore {
    pub fn new(format: Format) -> QuantStore {
        QuantStore {
            format,
            tensors: Mutex::default(),
            report: Mutex::default(),
        }
    }

    pub fn report(&self) -> QuantReport {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn into_tensors(self) -> BTreeMap<String, Stored> {
        self.tensors.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl QuantStore {
    /// Keeps a quantized target, `before` bytes in full precision, and counts it.
    fn keep(&self, target: &Target, before: u64, q: QuantizedTensor, err: &ErrorStats) {
        {
            let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
            r.quantized += 1;
            r.bytes_before += before;
            r.bytes_after += q.byte_size();
            r.error.merge(err);
        }
        self.tensors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.name.clone(), Stored::Quantized(q));
    }
}

impl Sink for QuantStore {
    fn tensor(&self, target: &Target, data: Vec<u8>) -> Result<Option<Vec<u8>>, Diagnostic> {
        if !target.quantizable {
            let bytes = data.len() as u64;
            let t = HostTensor {
                dtype: target.dtype,
                shape: target.shape.clone(),
                data: std::sync::Arc::new(data),
            };
            self.tensors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(target.name.clone(), Stored::Full(t));
            let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
            r.full += 1;
            r.full_bytes += bytes;
            return Ok(None);
        }
        let (q, err) = quantize_bytes(self.format, target.dtype, &data, &target.shape);
        self.keep(target, data.len() as u64, q, &err);
        Ok(Some(data))
    }

    fn takes_runs(&self, target: &Target) -> bool {
        target.quantizable && super::streams(self.format, target.dtype)
    }

    fn tensor_runs(&self, target: &Target, runs: &Runs) -> Result<(), Diagnostic> {
        let (q, err) = super::quantize_runs(self.format, runs, &target.shape)?;
        self.keep(target, runs.len(), q, &err);
        Ok(())
    }

    fn quantizes_to(&self) -> Option<Format> {
        Some(self.format)
    }

    /// The stored codes pass through: no reconstruction error to measure, since they are
    /// the checkpoint's own.
    fn stored_quantized(&self, target: &Target, q: QuantizedTensor) -> Result<(), Diagnostic> {
        {
            let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
            r.quantized += 1;
            r.passed_through += 1;
            r.bytes_before += crate::load::bytes_of(&target.shape, target.dtype).unwrap_or(0);
            r.bytes_after += q.byte_size();
        }
        self.tensors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.name.clone(), Stored::Quantized(q));
        Ok(())
    }

    fn tied(&self, target: &Target, to: &str) -> Result<(), Diagnostic> {
        crate::load::tie(&self.tensors, target, to)
    }
}
