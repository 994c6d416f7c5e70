//! CUDA builds only: a device load's tensors, exported through DLPack as `(kDLCUDA, N)`
//! without a copy.
//!
//! Input: the [`wmap::loader::DeviceLoad`] of a `device="cuda:N"` load. Output: a
//! `DeviceStore` mapping runtime names to [`Tensor`]s whose pointers are the device
//! memory the loader filled, and [`Quantized`] params whose codes and scales are device
//! tensors too (the 16-value table stays on the host: it is a constant). Every tensor
//! holds a clone of the store's `Arc`, so the device memory outlives the consumers'
//! arrays. The load's stream is synchronized before the first export, so the memory is
//! ready on any stream. Unproven without a GPU: no test here can run this path.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr};
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;

use crate::dlpack::{Dtype, Owner, Tensor};
use crate::store::{internal, Quantized};
use wmap::cuda::loader::DeviceTensor;
use wmap::loader::DeviceLoad;

pub struct Inner {
    pub model: String,
    pub ordinal: usize,
    pub names: Vec<(String, wmap::checkpoint::Dtype)>,
    pub load: DeviceLoad,
}

/// The tensors of one device load, by runtime name.
#[pyclass(frozen, module = "wmap._wmap")]
pub struct DeviceStore {
    pub inner: Arc<Inner>,
}

/// A store over `load`, after its stream is synchronized.
pub fn store(
    model: String,
    ordinal: usize,
    names: Vec<(String, wmap::checkpoint::Dtype)>,
    load: DeviceLoad,
) -> PyResult<DeviceStore> {
    load.gpu.sync().map_err(|e| crate::error(&e.into()))?;
    Ok(DeviceStore {
        inner: Arc::new(Inner {
            model,
            ordinal,
            names,
            load,
        }),
    })
}

impl Inner {
    /// A device tensor over `slice`, typed `dtype` and shaped `shape`.
    fn tensor<T>(self: &Arc<Self>, slice: &CudaSlice<T>, dtype: Dtype, shape: Vec<u64>) -> Tensor {
        let stream = slice.stream().clone();
        let (ptr, _sync) = slice.device_ptr(&stream);
        let owner: Owner = self.clone();
        Tensor::cuda(owner, ptr, self.ordinal, dtype, shape)
    }

    fn quantized(
        self: &Arc<Self>,
        py: Python<'_>,
        q: &wmap::cuda::DeviceQuantized,
        dtype: Dtype,
    ) -> PyResult<Quantized> {
        let data = self.tensor(&q.data, Dtype::U8, vec![q.data.len() as u64, 1]);
        let scales = match (&q.scales_f32, &q.scales_u8) {
            (Some(s), _) => self.tensor(s, Dtype::F32, vec![s.len() as u64]),
            (None, Some(s)) => self.tensor(s, Dtype::U8, vec![s.len() as u64]),
            (None, None) => return Err(internal("a device tensor without scales")),
        };
        let nested = match (&q.nested_absmax, &q.offset) {
            (Some(a), Some(o)) => Some((
                self.tensor(a, Dtype::F32, vec![a.len() as u64]),
                self.tensor(o, Dtype::F32, vec![]),
            )),
            _ => None,
        };
        Quantized::new(
            py,
            q.format,
            q.shape.clone(),
            dtype,
            data,
            scales,
            nested,
            None,
        )
    }
}

#[pymethods]
impl DeviceStore {
    #[getter]
    fn model(&self) -> String {
        self.inner.model.clone()
    }

    fn __getitem__(&self, py: Python<'_>, name: &str) -> PyResult<PyObject> {
        let dtype = self
            .inner
            .names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .ok_or_else(|| PyKeyError::new_err(name.to_string()))?;
        match self.inner.load.store.get(name) {
            Some(DeviceTensor::Full { dtype, shape, data }) => {
                let t = self.inner.tensor(data, Dtype::of(*dtype), shape.clone());
                Ok(Py::new(py, t)?.into_any())
            }
            Some(DeviceTensor::Quantized(q)) => {
                let q = self.inner.quantized(py, q, Dtype::of(dtype))?;
                Ok(Py::new(py, q)?.into_any())
            }
            _ => Err(PyKeyError::new_err(name.to_string())),
        }
    }

    fn __len__(&self) -> usize {
        self.inner.names.len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.inner.names.iter().any(|(n, _)| n == name)
    }

    fn keys(&self) -> Vec<String> {
        self.inner.names.iter().map(|(n, _)| n.clone()).collect()
    }

    fn __iter__(&self, py: Python<'_>) -> PyResult<PyObject> {
        let keys = pyo3::types::PyList::new(py, self.keys())?;
        Ok(keys.try_iter()?.into_any().unbind())
    }

    /// Device bytes, read bytes and the load's time.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let d = pyo3::types::PyDict::new(py);
        let s = &self.inner.load.stats;
        d.set_item("tensors", s.tensors)?;
        d.set_item("bytes_read", s.bytes_read)?;
        d.set_item("device_bytes", s.device_bytes)?;
        d.set_item("peak_device_bytes", s.peak_device_bytes)?;
        d.set_item("seconds", s.seconds)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "DeviceStore(model={:?}, device=cuda:{}, {} tensors)",
            self.inner.model,
            self.inner.ordinal,
            self.inner.names.len()
        )
    }
}
