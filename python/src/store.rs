//! `Store`: what `wmap.load` returns — runtime names → tensors, over a weights manager.
//!
//! Input: a [`wmap::loader::Loaded`] from a CPU load. Output: a read-only mapping whose
//! values are DLPack [`Tensor`]s (full precision) or [`Quantized`] params (packed codes
//! plus the quantization state in bitsandbytes' form), and `get` / `prefetch` / `stats`
//! through the [`WeightsManager`] (host backend). Every tensor handed out holds a clone
//! of the store's `Arc`, so the bytes outlive the `Store` object itself.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::dlpack::{Dtype, Owner, Tensor};
use wmap::offload::HostBackend;
use wmap::quant::{Format, QuantizedTensor, Scales, Stored};
use wmap::weights::WeightsManager;

pub struct Inner {
    pub model: String,
    /// Runtime names in plan order, with their dtype before quantization.
    pub names: Vec<(String, wmap::checkpoint::Dtype)>,
    pub weights: Mutex<WeightsManager<HostBackend>>,
    pub stats: wmap::load::Stats,
    pub quant: Option<(Format, wmap::quant::QuantReport)>,
}

/// The tensors of one load, by runtime name.
#[pyclass(frozen, module = "wmap._wmap")]
pub struct Store {
    pub inner: Arc<Inner>,
}

/// A quantized param: its packed codes and the state that dequantizes them.
#[pyclass(frozen, module = "wmap._wmap")]
pub struct Quantized {
    #[pyo3(get)]
    format: &'static str,
    #[pyo3(get)]
    shape: Vec<u64>,
    /// The param's dtype before quantization (what dequantization returns).
    #[pyo3(get)]
    dtype: &'static str,
    /// Packed codes: 4-bit formats two per byte (first element in the high nibble),
    /// shaped `[bytes, 1]` as bitsandbytes' `Params4bit` holds them; FP8 one per byte.
    #[pyo3(get)]
    data: Py<Tensor>,
    #[pyo3(get)]
    scales: Py<Tensor>,
    /// NVFP4's per-tensor scale.
    #[pyo3(get)]
    tensor_scale: Option<f32>,
    state: Option<Py<PyDict>>,
}

#[pymethods]
impl Quantized {
    /// bitsandbytes' quant state for NF4/FP4 (`None` for other formats): `absmax`,
    /// `code` (the 16-value table), `blocksize`, `shape`, `dtype`, `quant_type`, and
    /// with double quant `offset` and `state2` (`absmax`, `code`, `blocksize`).
    #[getter]
    fn quant_state(&self, py: Python<'_>) -> Option<Py<PyDict>> {
        self.state.as_ref().map(|s| s.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        format!(
            "Quantized(format={}, shape={:?}, dtype={})",
            self.format, self.shape, self.dtype
        )
    }
}

fn tensor(py: Python<'_>, t: Option<Tensor>) -> PyResult<Py<Tensor>> {
    let t = t.ok_or_else(|| internal("a tensor's shape does not match its bytes"))?;
    Py::new(py, t)
}

/// E0703: a group name the manager does not have.
pub fn unknown_group(group: &str) -> PyErr {
    crate::error(&wmap::diag::Diagnostic::new(
        wmap::diag::Code::E0703,
        format!("the store has no offload group `{group}`"),
    ))
}

pub fn internal(what: &str) -> PyErr {
    crate::error(&wmap::diag::Diagnostic::new(
        wmap::diag::Code::E0901,
        format!("{what}; this is a bug in wmap"),
    ))
}

/// A host tensor over bytes the store owns.
fn host(owner: &Owner, bytes: &[u8], dtype: Dtype, shape: Vec<u64>) -> Option<Tensor> {
    Tensor::host(owner.clone(), bytes.as_ptr(), bytes.len(), dtype, shape)
}

fn quantized(
    py: Python<'_>,
    owner: &Owner,
    q: &QuantizedTensor,
    dtype: Dtype,
) -> PyResult<Quantized> {
    let data = host(owner, &q.data, Dtype::U8, vec![q.data.len() as u64, 1]);
    let scales = match &q.scales {
        Scales::F32(v) => host(owner, bytemuck_f32(v), Dtype::F32, vec![v.len() as u64]),
        Scales::U8(v) => host(owner, v, Dtype::U8, vec![v.len() as u64]),
    };
    let nested = match &q.nested {
        Some(n) => {
            let len = n.absmax.len() as u64;
            let absmax = host(owner, bytemuck_f32(&n.absmax), Dtype::F32, vec![len]);
            let offset = Tensor::from_f32(vec![n.offset], vec![]);
            Some((checked(absmax)?, checked(offset)?))
        }
        None => None,
    };
    let (data, scales) = (checked(data)?, checked(scales)?);
    Quantized::new(
        py,
        q.format,
        q.shape.clone(),
        dtype,
        data,
        scales,
        nested,
        q.tensor_scale,
    )
}

fn checked(t: Option<Tensor>) -> PyResult<Tensor> {
    t.ok_or_else(|| internal("a tensor's shape does not match its bytes"))
}

impl Quantized {
    /// A quantized param over tensors that live wherever the store's bytes do (host or
    /// device); `nested` is double quant's (absmax, offset).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        py: Python<'_>,
        format: Format,
        shape: Vec<u64>,
        dtype: Dtype,
        data: Tensor,
        scales: Tensor,
        nested: Option<(Tensor, Tensor)>,
        tensor_scale: Option<f32>,
    ) -> PyResult<Quantized> {
        let scales = Py::new(py, scales)?;
        let state = bnb_state(py, format, &shape, &scales, dtype, nested)?;
        Ok(Quantized {
            format: format.name(),
            shape,
            dtype: dtype.name(),
            data: Py::new(py, data)?,
            scales,
            tensor_scale,
            state,
        })
    }
}

/// The bytes of f32 values, as they sit in memory.
fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and every byte pattern is a valid u8; the slice covers
    // exactly the values' memory and borrows it for the same lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// NF4/FP4 state in bitsandbytes' `QuantState` form.
fn bnb_state(
    py: Python<'_>,
    format: Format,
    shape: &[u64],
    scales: &Py<Tensor>,
    dtype: Dtype,
    nested: Option<(Tensor, Tensor)>,
) -> PyResult<Option<Py<PyDict>>> {
    use wmap::quant::bnb4::Kind;
    let (kind, blocksize) = match format {
        Format::Nf4 { blocksize } | Format::Nf4Dq { blocksize } => (Kind::Nf4, blocksize),
        Format::Fp4 { blocksize } => (Kind::Fp4, blocksize),
        _ => return Ok(None),
    };
    let d = PyDict::new(py);
    d.set_item("quant_type", kind.name())?;
    d.set_item("blocksize", blocksize)?;
    d.set_item("shape", shape.to_vec())?;
    d.set_item("dtype", dtype.name())?;
    d.set_item("absmax", scales.clone_ref(py))?;
    d.set_item(
        "code",
        tensor(py, Tensor::from_f32(kind.table().to_vec(), vec![16]))?,
    )?;
    if let Some((absmax, offset)) = nested {
        let s2 = PyDict::new(py);
        s2.set_item("absmax", Py::new(py, absmax)?)?;
        let map = wmap::quant::dynamic::signed_map().to_vec();
        let len = map.len() as u64;
        s2.set_item("code", tensor(py, Tensor::from_f32(map, vec![len]))?)?;
        s2.set_item("blocksize", wmap::quant::bnb4::NESTED_BLOCKSIZE)?;
        // A 0-d float32 tensor: on the device it is device memory, as bnb keeps it.
        d.set_item("offset", Py::new(py, offset)?)?;
        d.set_item("state2", s2)?;
    }
    Ok(Some(d.unbind()))
}

impl Store {
    fn value(&self, py: Python<'_>, name: &str) -> PyResult<PyObject> {
        let dtype = self
            .inner
            .names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .ok_or_else(|| PyKeyError::new_err(name.to_string()))?;
        let owner: Owner = self.inner.clone();
        let w = self.inner.weights.lock().unwrap_or_else(|p| p.into_inner());
        let stored = w.resident(name).ok_or_else(|| {
            crate::error(
                &wmap::diag::Diagnostic::new(
                    wmap::diag::Code::E0703,
                    format!("`{name}` is offloaded: it has no resident bytes to export"),
                )
                .with_help("read it with store.get(name), which brings its group in"),
            )
        })?;
        match stored {
            Stored::Full(t) => {
                let t = host(&owner, &t.data, Dtype::of(t.dtype), t.shape.clone());
                Ok(tensor(py, t)?.into_any())
            }
            Stored::Quantized(q) => {
                Ok(Py::new(py, quantized(py, &owner, q, Dtype::of(dtype))?)?.into_any())
            }
        }
    }
}

#[pymethods]
impl Store {
    /// The model the store was loaded with.
    #[getter]
    fn model(&self) -> String {
        self.inner.model.clone()
    }

    fn __getitem__(&self, py: Python<'_>, name: &str) -> PyResult<PyObject> {
        self.value(py, name)
    }

    fn __len__(&self) -> usize {
        self.inner.names.len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.inner.names.iter().any(|(n, _)| n == name)
    }

    /// Runtime names, in the plan's order.
    fn keys(&self) -> Vec<String> {
        self.inner.names.iter().map(|(n, _)| n.clone()).collect()
    }

    fn __iter__(&self, py: Python<'_>) -> PyResult<PyObject> {
        let keys = pyo3::types::PyList::new(py, self.keys())?;
        Ok(keys.try_iter()?.into_any().unbind())
    }

    /// `name` dequantized to bfloat16 (full-precision params converted) in a pooled
    /// buffer of the weights manager; an offloaded param's group is brought in first.
    /// The buffer returns to the pool when the last array made from it is gone.
    fn get(&self, py: Python<'_>, name: &str) -> PyResult<Tensor> {
        let view = py.allow_threads(|| {
            let mut w = self.inner.weights.lock().unwrap_or_else(|p| p.into_inner());
            w.get(name)
        });
        let view = view.map_err(|e| crate::error(&e.into()))?;
        let shape = view.shape.clone();
        let (ptr, len) = (view.as_ptr().cast::<u8>(), std::mem::size_of_val(&*view));
        let owner: Owner = Arc::new(view);
        Tensor::host(owner, ptr, len, Dtype::Bf16, shape)
            .ok_or_else(|| internal("a view's shape does not match its buffer"))
    }

    /// Starts bringing the offload group `group` (e.g. `layer=3/expert=5`) in; returns
    /// whether a copy was started. Unknown groups are E0703.
    fn prefetch(&self, group: &str) -> PyResult<bool> {
        let mut w = self.inner.weights.lock().unwrap_or_else(|p| p.into_inner());
        let g = w.offload.find(group).ok_or_else(|| unknown_group(group))?;
        w.prefetch_group(g).map_err(|e| crate::error(&e.into()))
    }

    /// Drops the device copy of the offload group `group` if nothing is using it (frozen
    /// weights: nothing is written back), making room for prefetches; returns whether it
    /// was dropped. E0703 for an unknown group.
    fn unload(&self, group: &str) -> PyResult<bool> {
        let mut w = self.inner.weights.lock().unwrap_or_else(|p| p.into_inner());
        let g = w.offload.find(group).ok_or_else(|| unknown_group(group))?;
        w.offload.unload(g).map_err(|e| crate::error(&e.into()))
    }

    /// The offload groups' names, in the manager's order (none without an
    /// `offload_budget`).
    fn groups(&self) -> Vec<String> {
        let w = self.inner.weights.lock().unwrap_or_else(|p| p.into_inner());
        let o = &w.offload;
        (0..o.group_count())
            .map(|g| o.name(g).to_string())
            .collect()
    }

    /// The offload group of `name` (a runtime name, or `name[i]` for expert `i` of a
    /// stacked param offloaded per expert); `None` when it is resident or unknown.
    fn group_of(&self, name: &str) -> Option<String> {
        let w = self.inner.weights.lock().unwrap_or_else(|p| p.into_inner());
        w.group_of(name).map(|g| w.offload.name(g).to_string())
    }

    /// Load and weights-manager statistics as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use std::sync::atomic::Ordering::Relaxed;
        let d = PyDict::new(py);
        let s = &self.inner.stats;
        d.set_item("tensors", s.tensors)?;
        d.set_item("tied", s.tied)?;
        d.set_item("bytes_read", s.bytes_read)?;
        d.set_item("bytes_out", s.bytes_out)?;
        d.set_item("seconds", s.elapsed.as_secs_f64())?;
        if let Some((format, r)) = &self.inner.quant {
            d.set_item("quant_format", format.name())?;
            d.set_item("quantized", r.quantized)?;
            d.set_item("bytes_before", r.bytes_before)?;
            d.set_item("bytes_after", r.bytes_after)?;
            d.set_item("mean_abs_error", r.error.mean_abs())?;
        }
        let w = self.inner.weights.lock().unwrap_or_else(|p| p.into_inner());
        let o = &w.offload;
        d.set_item("offload_groups", o.group_count())?;
        d.set_item("budget", o.budget())?;
        d.set_item("host_bytes", o.host_bytes())?;
        d.set_item("resident_bytes", o.device_bytes())?;
        d.set_item("hits", o.stats.hits)?;
        d.set_item("misses", o.stats.misses)?;
        d.set_item("bytes_moved", o.stats.bytes_moved)?;
        d.set_item("evictions", o.stats.evictions)?;
        d.set_item("prefetches", o.stats.prefetches)?;
        d.set_item("waited_seconds", o.stats.waited.as_secs_f64())?;
        d.set_item("buffers_reused", w.pool().reused.load(Relaxed))?;
        d.set_item("buffers_allocated", w.pool().allocated.load(Relaxed))?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Store(model={:?}, {} tensors)",
            self.inner.model,
            self.inner.names.len()
        )
    }
}
