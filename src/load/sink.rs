//! Sinks: where assembled targets go.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::checkpoint::Dtype;
use crate::diag::{Code, Diagnostic};
use crate::plan::Target;

/// Receives assembled targets; called from several threads at once.
pub trait Sink: Sync {
    /// One assembled target, in its target dtype, row-major. A sink that does not keep
    /// the buffer hands it back, so the loader can reuse it (fresh allocations cost a
    /// page fault per 4 KiB, which dominates a load from the page cache).
    fn tensor(&self, target: &Target, data: Vec<u8>) -> Result<Option<Vec<u8>>, Diagnostic>;
    /// The format this sink quantizes `quantizable` targets to, if any. A target the
    /// checkpoint already stores in exactly that format is delivered as its stored codes
    /// ([`Sink::stored_quantized`]), never dequantized and requantized.
    fn quantizes_to(&self) -> Option<crate::quant::Format> {
        None
    }
    /// A `quantizable` target's codes and scales as the checkpoint stores them, in the
    /// format of [`Sink::quantizes_to`]. Only a sink that names a format receives this.
    fn stored_quantized(
        &self,
        target: &Target,
        _q: crate::quant::QuantizedTensor,
    ) -> Result<(), Diagnostic> {
        Err(Diagnostic::new(
            Code::E0901,
            format!(
                "`{}` arrived quantized at a sink that does not quantize",
                target.name
            ),
        ))
    }
    /// Whether this sink takes `target` straight from the checkpoint's bytes
    /// ([`Sink::tensor_runs`]) when its recipe only reads them, instead of as an
    /// assembled buffer.
    fn takes_runs(&self, _target: &Target) -> bool {
        false
    }
    /// A target whose bytes are the checkpoint's own, read a piece at a time by the
    /// sink. Only a sink whose [`Sink::takes_runs`] said so receives this.
    fn tensor_runs(&self, target: &Target, _runs: &super::Runs) -> Result<(), Diagnostic> {
        Err(Diagnostic::new(
            Code::E0901,
            format!(
                "`{}` arrived as runs at a sink that takes buffers",
                target.name
            ),
        ))
    }
    /// `target` is the same tensor as the already delivered `to`.
    fn tied(&self, target: &Target, to: &str) -> Result<(), Diagnostic>;
    /// Called once after the last target.
    fn finish(&self) -> Result<(), Diagnostic> {
        Ok(())
    }
}

/// Records `target` as the same stored value as the already delivered `to` (an `Arc`
/// clone for host tensors: no second copy).
pub fn tie<T: Clone>(
    map: &Mutex<BTreeMap<String, T>>,
    target: &Target,
    to: &str,
) -> Result<(), Diagnostic> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    let shared = map.get(to).cloned().ok_or_else(|| {
        Diagnostic::new(
            Code::E0901,
            format!(
                "`{}` is tied to `{to}`, which was not delivered; this is a bug in wmapc",
                target.name
            ),
        )
    })?;
    map.insert(target.name.clone(), shared);
    Ok(())
}

/// A full-precision tensor in host memory, in the runtime layout.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Shared: a tied target points at the same bytes.
    pub data: Arc<Vec<u8>>,
}

/// The first sink: every target materialized in host memory, by runtime name.
#[derive(Default)]
pub struct HostStore {
    tensors: Mutex<BTreeMap<String, HostTensor>>,
}

impl HostStore {
    pub fn into_tensors(self) -> BTreeMap<String, HostTensor> {
        self.tensors.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sink for HostStore {
    fn tensor(&self, target: &Target, data: Vec<u8>) -> Result<Option<Vec<u8>>, Diagnostic> {
        let t = HostTensor {
            dtype: target.dtype,
            shape: target.shape.clone(),
            data: Arc::new(data),
        };
        self.tensors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.name.clone(), t);
        Ok(None)
    }

    fn tied(&self, target: &Target, to: &str) -> Result<(), Diagnostic> {
        tie(&self.tensors, target, to)
    }
}
