//! CUDA builds only: a device load's tensors, exported through DLPack as `(kDLCUDA, N)`
//! without a copy, and with an offload budget the GPU weights manager behind them.
//!
//! Input: the [`wmap::loader::DeviceLoad`] (or, with `offload_budget`, the
//! [`wmap::loader::DeviceOffload`]) of a `device="cuda:N"` load. Output: a `DeviceStore`
//! mapping runtime names to [`Tensor`]s whose pointers are the device memory the loader
//! filled, and [`Quantized`] params whose codes and scales are device tensors too (the
//! 16-value table stays on the host: it is a constant). Every tensor holds a clone of
//! the store's `Arc`, so the device memory outlives the consumers' arrays. The load's
//! stream is synchronized before the first export, so the memory is ready on any stream.
//! With a weights manager, `get` / `prefetch` / `groups` / `group_of` reach it (see
//! [`crate::pooled`]). Unproven without a GPU: no test here can run this path.

use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{CudaSlice, DevicePtr};
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;

use crate::dlpack::{Dtype, Owner, Tensor};
use crate::store::{internal, unknown_group, Quantized};
use wmap::cuda::loader::DeviceTensor;
use wmap::cuda::weights::DeviceWeights;
use wmap::cuda::Gpu;
use wmap::diag::{Code, Diagnostic};
use wmap::loader::{DeviceLoad, DeviceOffload};

pub struct Inner {
    pub model: String,
    pub ordinal: usize,
    pub names: Vec<(String, wmap::checkpoint::Dtype)>,
    pub gpu: Arc<Gpu>,
    pub tensors: Tensors,
}

/// Where a device store's tensors live.
pub enum Tensors {
    /// All on the device, as the loader left them.
    Resident(DeviceLoad),
    /// The params with an offload group in page-locked host memory behind the weights
    /// manager (one lock: the manager's state and pool are not shared between threads).
    Offloaded(Box<Mutex<Managed>>),
}

/// The weights manager and what the store measured about it.
pub struct Managed {
    pub weights: DeviceWeights,
    pub load: wmap::cuda::loader::GpuLoadStats,
    /// Device bytes after the load, before the groups moved out, and the move's time.
    pub loaded_bytes: u64,
    pub moved_out: f64,
    /// The most group bytes on the device after any `get` or `prefetch`.
    pub peak_group_bytes: u64,
    /// Bytes of the pooled bf16 buffers allocated so far (the pool keeps them).
    pub pool_bytes: u64,
    pub gets: u64,
    /// Host time inside `get` (waits for copies included) and inside `prefetch`.
    pub get_seconds: f64,
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
            gpu: load.gpu.clone(),
            tensors: Tensors::Resident(load),
        }),
    })
}

/// A store over an offloaded load's weights manager, after its stream is synchronized.
pub fn offloaded(
    model: String,
    ordinal: usize,
    names: Vec<(String, wmap::checkpoint::Dtype)>,
    load: DeviceOffload,
) -> PyResult<DeviceStore> {
    let gpu = load.weights.gpu().clone();
    gpu.sync().map_err(|e| crate::error(&e.into()))?;
    let managed = Managed {
        peak_group_bytes: load.weights.offload.device_bytes(),
        weights: load.weights,
        load: load.stats,
        loaded_bytes: load.loaded_bytes,
        moved_out: load.moved_out.as_secs_f64(),
        pool_bytes: 0,
        gets: 0,
        get_seconds: 0.0,
    };
    Ok(DeviceStore {
        inner: Arc::new(Inner {
            model,
            ordinal,
            names,
            gpu,
            tensors: Tensors::Offloaded(Box::new(Mutex::new(managed))),
        }),
    })
}

/// E0803: the weights manager's calls on a store loaded without a budget.
fn no_manager(call: &str) -> PyErr {
    crate::error(
        &Diagnostic::new(
            Code::E0803,
            format!(
                "store.{call} needs the weights manager: this device load had no offload_budget"
            ),
        )
        .with_help("load with offload_budget=BYTES (the device budget for the offloaded groups)"),
    )
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

impl Inner {
    /// The weights manager, locked; E0803 without one.
    fn managed(&self, call: &str) -> PyResult<MutexGuard<'_, Managed>> {
        match &self.tensors {
            Tensors::Offloaded(m) => Ok(m.lock().unwrap_or_else(|p| p.into_inner())),
            Tensors::Resident(_) => Err(no_manager(call)),
        }
    }

    /// `name` as exported: a device tensor or a quantized param over the resident bytes.
    fn value(self: &Arc<Self>, py: Python<'_>, name: &str, dtype: Dtype) -> PyResult<PyObject> {
        let guard;
        let found = match &self.tensors {
            Tensors::Resident(load) => load.store.get(name),
            Tensors::Offloaded(m) => {
                guard = m.lock().unwrap_or_else(|p| p.into_inner());
                if guard.weights.group_of(&format!("{name}[0]")).is_some()
                    || guard.weights.group_of(name).is_some()
                {
                    return Err(offloaded_here(name));
                }
                guard.weights.resident(name)
            }
        };
        match found {
            Some(DeviceTensor::Full { dtype, shape, data }) => {
                let t = self.tensor(data, Dtype::of(*dtype), shape.clone());
                Ok(Py::new(py, t)?.into_any())
            }
            Some(DeviceTensor::Quantized(q)) => {
                let q = self.quantized(py, q, dtype)?;
                Ok(Py::new(py, q)?.into_any())
            }
            _ => Err(PyKeyError::new_err(name.to_string())),
        }
    }
}

/// E0703: an offloaded param has no resident device bytes to export.
fn offloaded_here(name: &str) -> PyErr {
    crate::error(
        &Diagnostic::new(
            Code::E0703,
            format!("`{name}` is offloaded: it has no resident device bytes to export"),
        )
        .with_help(
            "read it with store.get(name), or store.get(f\"{name}[i]\") for expert i of a stacked param",
        ),
    )
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
        self.inner.value(py, name, Dtype::of(dtype))
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

    /// `name` (a runtime name, or `name[i]` for expert `i` of a stacked param that is
    /// offloaded per expert) dequantized to a bfloat16 device tensor in a pooled buffer
    /// of the weights manager, its group brought in first (within the budget). The
    /// buffer returns to the pool when the last array made from it is gone, after the
    /// work queued on the consumer's stream (DLPack's `stream`) so far. E0803 without an
    /// `offload_budget`, E0703 for an unknown name.
    fn get(&self, py: Python<'_>, name: &str) -> PyResult<Tensor> {
        let gpu = self.inner.gpu.clone();
        let got = py.allow_threads(|| {
            let mut m = self.inner.managed("get")?;
            let t = std::time::Instant::now();
            let allocated = m.weights.allocated;
            let view = m.weights.get(name).map_err(|e| crate::error(&e.into()));
            m.get_seconds += t.elapsed().as_secs_f64();
            let view = view?;
            if m.weights.allocated > allocated {
                m.pool_bytes = m.pool_bytes.saturating_add(view_bytes(&view.shape));
            }
            m.gets += 1;
            m.peak_group_bytes = m.peak_group_bytes.max(m.weights.offload.device_bytes());
            crate::pooled::Pooled::new(gpu, view).map_err(|e| crate::error(&e.into()))
        })?;
        got.tensor(self.inner.ordinal)
            .ok_or_else(|| internal("a pooled view without its buffer"))
    }

    /// Starts copying the offload group `group` (e.g. `layer=3/expert=5`) to the device
    /// if it is not there; returns whether it is there or on its way (false: no room
    /// without evicting a group in use). E0703 for an unknown group.
    fn prefetch(&self, py: Python<'_>, group: &str) -> PyResult<bool> {
        py.allow_threads(|| {
            let mut m = self.inner.managed("prefetch")?;
            let g = m
                .weights
                .offload
                .find(group)
                .ok_or_else(|| unknown_group(group))?;
            let t = std::time::Instant::now();
            let started = m.weights.prefetch_group(g);
            m.get_seconds += t.elapsed().as_secs_f64();
            m.peak_group_bytes = m.peak_group_bytes.max(m.weights.offload.device_bytes());
            started.map_err(|e| crate::error(&e.into()))
        })
    }

    /// Drops the device copy of the offload group `group` if nothing is using it (frozen
    /// weights: nothing is written back), making room for prefetches; returns whether it
    /// was dropped. E0703 for an unknown group.
    fn unload(&self, py: Python<'_>, group: &str) -> PyResult<bool> {
        py.allow_threads(|| {
            let mut m = self.inner.managed("unload")?;
            let g = m
                .weights
                .offload
                .find(group)
                .ok_or_else(|| unknown_group(group))?;
            m.weights
                .offload
                .unload(g)
                .map_err(|e| crate::error(&e.into()))
        })
    }

    /// The offload groups' names, in the manager's order.
    fn groups(&self) -> PyResult<Vec<String>> {
        let m = self.inner.managed("groups")?;
        let o = &m.weights.offload;
        Ok((0..o.group_count())
            .map(|g| o.name(g).to_string())
            .collect())
    }

    /// The offload group of `name` (a runtime name or a slice key `name[i]`); `None`
    /// when it is resident on the device or unknown.
    fn group_of(&self, name: &str) -> PyResult<Option<String>> {
        let m = self.inner.managed("group_of")?;
        let g = m.weights.group_of(name);
        Ok(g.map(|g| m.weights.offload.name(g).to_string()))
    }

    /// The load's figures; with a weights manager also its counters: `hits`, `misses`,
    /// `bytes_moved`, `evictions`, `prefetches`, `waited_seconds` (host time blocked on
    /// copies), `get_seconds`, `group_bytes` / `peak_group_bytes` (groups on the device
    /// now / at most), `pool_bytes` (pooled bf16 buffers), `resident_bytes` (tensors that
    /// stay on the device), and `peak_device_bytes`: their sum with the groups' peak, a
    /// bound of wmap's device memory since the load.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let d = pyo3::types::PyDict::new(py);
        let put = |d: &Bound<'py, pyo3::types::PyDict>, s: &wmap::cuda::loader::GpuLoadStats| {
            d.set_item("tensors", s.tensors)?;
            d.set_item("bytes_read", s.bytes_read)?;
            d.set_item("seconds", s.seconds)?;
            d.set_item("load_peak_device_bytes", s.peak_device_bytes)
        };
        match &self.inner.tensors {
            Tensors::Resident(load) => {
                put(&d, &load.stats)?;
                d.set_item("device_bytes", load.stats.device_bytes)?;
                d.set_item("peak_device_bytes", load.stats.peak_device_bytes)?;
            }
            Tensors::Offloaded(_) => {
                let m = self.inner.managed("stats")?;
                put(&d, &m.load)?;
                manager_stats(&d, &m)?;
            }
        }
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

/// Bytes of a bf16 buffer of `shape`.
fn view_bytes(shape: &[u64]) -> u64 {
    shape
        .iter()
        .try_fold(2u64, |a, &d| a.checked_mul(d))
        .unwrap_or(u64::MAX)
}

/// The weights manager's counters into `d` (see `DeviceStore.stats`).
fn manager_stats(d: &Bound<'_, pyo3::types::PyDict>, m: &Managed) -> PyResult<()> {
    let o = &m.weights.offload;
    let resident = m.loaded_bytes.saturating_sub(o.host_bytes());
    d.set_item("offload_groups", o.group_count())?;
    d.set_item("budget", o.budget())?;
    d.set_item("host_bytes", o.host_bytes())?;
    d.set_item("resident_bytes", resident)?;
    d.set_item("group_bytes", o.device_bytes())?;
    d.set_item("peak_group_bytes", m.peak_group_bytes)?;
    d.set_item("pool_bytes", m.pool_bytes)?;
    d.set_item("device_bytes", resident + o.device_bytes() + m.pool_bytes)?;
    d.set_item(
        "peak_device_bytes",
        resident + m.peak_group_bytes + m.pool_bytes,
    )?;
    d.set_item("hits", o.stats.hits)?;
    d.set_item("misses", o.stats.misses)?;
    d.set_item("bytes_moved", o.stats.bytes_moved)?;
    d.set_item("evictions", o.stats.evictions)?;
    d.set_item("prefetches", o.stats.prefetches)?;
    d.set_item("waited_seconds", o.stats.waited.as_secs_f64())?;
    d.set_item("gets", m.gets)?;
    d.set_item("get_seconds", m.get_seconds)?;
    d.set_item("moved_out_seconds", m.moved_out)?;
    d.set_item("buffers_reused", m.weights.reused)?;
    d.set_item("buffers_allocated", m.weights.allocated)?;
    Ok(())
}
