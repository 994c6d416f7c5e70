//! `wmap._wmap`: the Python binding of [`wmap::Loader`] and the front end.
//!
//! Input: Python arguments (paths, names, sizes). Output: JSON text for `check` / `plan`
//! (the Python layer turns it into typed objects), a [`store::Store`] for `load`, and for
//! every failure a `WmapError` carrying the diagnostic's code, its rendered text and its
//! JSON form. Loads run with the GIL released; the progress callback takes it briefly.
//! Nothing here touches CUDA unless a load asks for `cuda:N` (the driver is loaded then,
//! lazily), so the module imports on a machine without a GPU.

// Diagnostics are the error values of a compiler: built rarely and richer than a pointer.
#![allow(clippy::result_large_err)]

#[cfg(feature = "cuda")]
mod device;
mod dlpack;
#[cfg(feature = "cuda")]
mod pooled;
mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use wmap::diag::{self, Code, Diagnostic, Diagnostics};
use wmap::loader::{Device, Failure, Loader, Tensors};
use wmap::source::SourceMap;

create_exception!(
    _wmap,
    WmapError,
    PyException,
    "A wmap failure: `.code`, `.rendered`, `.diagnostic`."
);

/// A `WmapError` for diagnostics `diags` (the first error names it).
fn error_of(sources: &SourceMap, diags: &Diagnostics) -> PyErr {
    let first = diags
        .items
        .iter()
        .find(|d| d.severity() == diag::Severity::Error)
        .or(diags.items.first());
    let code = first.map_or("E0901", |d| d.code.as_str());
    let message = first.map_or("unknown failure", |d| d.message.as_str());
    let rendered = diag::render_human(sources, diags, diag::Color::Never);
    let json = diag::render_json(sources, diags);
    let structured = json["diagnostics"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|d| d["severity"] == "error")
                .or(all.first())
        })
        .cloned()
        .unwrap_or_default();
    Python::with_gil(|py| {
        let err = WmapError::new_err(format!("[{code}] {message}"));
        let value = err.value(py);
        let set = || -> PyResult<()> {
            value.setattr("code", code)?;
            value.setattr("rendered", &rendered)?;
            let loads = py.import("json")?.getattr("loads")?;
            value.setattr("diagnostic", loads.call1((structured.to_string(),))?)?;
            value.setattr("diagnostics", loads.call1((json.to_string(),))?)?;
            Ok(())
        };
        // Failing to attach the details (out of memory) is reported instead.
        match set() {
            Ok(()) => err,
            Err(e) => e,
        }
    })
}

/// One coded diagnostic outside the inputs as a `WmapError`.
pub(crate) fn error(d: &Diagnostic) -> PyErr {
    let mut diags = Diagnostics::default();
    diags.push(d.clone());
    error_of(&SourceMap::new(), &diags)
}

fn failure(f: &Failure) -> PyErr {
    error_of(&f.sources, &f.diags)
}

/// A Python argument of the wrong value: E0802, as the CLI's flag of that name.
fn invalid(what: &str, value: &str, expected: &str) -> PyErr {
    error(&Diagnostic::new(
        Code::E0802,
        format!("invalid value `{value}` for `{what}`: {expected}"),
    ))
}

/// `wmap.check`: JSON `{"diagnostics": [...], "errors": N, "warnings": N, "model": ...}`.
#[pyfunction]
#[pyo3(signature = (config=None, model=None, checkpoint=None, strict=false))]
fn check(
    py: Python<'_>,
    config: Option<PathBuf>,
    model: Option<String>,
    checkpoint: Option<PathBuf>,
    strict: bool,
) -> PyResult<String> {
    let config = config.or_else(|| checkpoint.as_ref().map(|d| d.join("config.json")));
    let result = py.allow_threads(|| {
        let source = wmap::driver::model_source(model.as_deref());
        let mut c = wmap::driver::compile(&source, config.as_deref())?;
        let bound = checkpoint
            .as_ref()
            .and_then(|d| wmap::driver::bind(&mut c, d, strict));
        let mut json = diag::render_json(&c.sources, &c.diags);
        json["model"] = match (&bound, &c.lowered) {
            (Some(b), _) => b.plan.model.clone().into(),
            (None, Some((ir, _))) => ir.model.clone().into(),
            _ => serde_json::Value::Null,
        };
        json["defaults"] = serde_json::to_value(&c.defaults).unwrap_or_default();
        Ok::<_, Diagnostic>(json.to_string())
    });
    result.map_err(|d| error(&d))
}

/// `wmap.plan`: the plan as JSON, or a `WmapError` when binding fails.
#[pyfunction]
#[pyo3(signature = (checkpoint, model=None, config=None, strict=false))]
fn plan(
    py: Python<'_>,
    checkpoint: PathBuf,
    model: Option<String>,
    config: Option<PathBuf>,
    strict: bool,
) -> PyResult<String> {
    let config = config.unwrap_or_else(|| checkpoint.join("config.json"));
    let result = py.allow_threads(|| {
        let source = wmap::driver::model_source(model.as_deref());
        let mut c = wmap::driver::compile(&source, Some(&config)).map_err(Failure::from)?;
        match wmap::driver::bind(&mut c, &checkpoint, strict) {
            Some(b) => serde_json::to_string(&b.plan).map_err(|e| {
                Failure::from(Diagnostic::new(
                    Code::E0901,
                    format!("cannot serialize the plan: {e}"),
                ))
            }),
            None => Err(Failure::in_inputs(c.sources, c.diags)),
        }
    });
    result.map_err(|f| failure(&f))
}

/// The loader the arguments describe; a bad value is E0802.
#[allow(clippy::too_many_arguments)]
fn loader_of(
    path: PathBuf,
    model: Option<String>,
    quant: Option<&str>,
    device: &str,
    offload_budget: Option<u64>,
    offload_policy: &str,
    threads: usize,
    allow_unclaimed: bool,
) -> PyResult<Loader> {
    let mut loader = Loader::new(path)
        .threads(threads)
        .allow_unclaimed(allow_unclaimed);
    loader.model = model;
    if let Some(q) = quant {
        let names = wmap::quant::Format::NAMES.join(", ");
        loader.quant = Some(
            wmap::quant::Format::parse(q)
                .ok_or_else(|| invalid("quant", q, &format!("expected one of {names}")))?,
        );
    }
    loader.device = Device::parse(device)
        .ok_or_else(|| invalid("device", device, "expected cpu, cuda, cuda:N or auto"))?;
    let policy = match offload_policy {
        "order" => wmap::offload::Policy::OrderAware,
        "lru" => wmap::offload::Policy::Lru,
        other => return Err(invalid("offload_policy", other, "expected order or lru")),
    };
    loader.offload = offload_budget.map(|b| (b, policy));
    Ok(loader)
}

/// `wmap.load`: reads a checkpoint into a [`store::Store`].
#[pyfunction]
#[pyo3(signature = (path, model=None, quant=None, device="cpu", offload_budget=None, offload_policy="order", threads=0, allow_unclaimed=false, progress=None, keep=None, tp_rank=0, tp_size=1, ep_rank=0, ep_size=1))]
#[allow(clippy::too_many_arguments)]
fn load(
    py: Python<'_>,
    path: PathBuf,
    model: Option<String>,
    quant: Option<&str>,
    device: &str,
    offload_budget: Option<u64>,
    offload_policy: &str,
    threads: usize,
    allow_unclaimed: bool,
    progress: Option<PyObject>,
    keep: Option<Vec<String>>,
    tp_rank: u64,
    tp_size: u64,
    ep_rank: u64,
    ep_size: u64,
) -> PyResult<PyObject> {
    let loader = loader_of(
        path,
        model,
        quant,
        device,
        offload_budget,
        offload_policy,
        threads,
        allow_unclaimed,
    )?
    // One rank's shards: each param cut by its `shard` rule, only its bytes read.
    .ranks(wmap::loader::Ranks {
        tp_rank,
        tp_size,
        ep_rank,
        ep_size,
    });
    let keep = keep.unwrap_or_default();
    let loaded = py.allow_threads(|| {
        let mut bound = loader.bind()?;
        keep_full_precision(&mut bound.plan, &keep).map_err(Failure::from)?;
        let total = bound.total_bytes();
        let bound = match progress {
            Some(cb) => bound.with_progress(progress_fn(cb, total)),
            None => bound,
        };
        let notes = bound.notes.clone();
        let loaded = bound
            .load()
            .map_err(|d| Failure::single(d, notes.clone()))?;
        Ok::<_, Failure>((loaded, notes))
    });
    let (loaded, notes) = loaded.map_err(|f| failure(&f))?;
    // What the CLI prints as notes (`auto`'s choice) reaches Python as warnings.
    for note in notes {
        let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
        PyErr::warn(
            py,
            &category,
            &std::ffi::CString::new(note).unwrap_or_default(),
            1,
        )?;
    }
    into_store(py, loaded)
}

/// Marks the targets named in `keep` not quantizable, so they load in full precision
/// (e.g. experts a model holds as plain 3-D parameters). A name the plan lacks is E0802.
fn keep_full_precision(plan: &mut wmap::plan::Plan, keep: &[String]) -> Result<(), Diagnostic> {
    for name in keep {
        let target = plan.targets.iter_mut().find(|t| &t.name == name);
        match target {
            Some(t) => t.quantizable = false,
            None => {
                return Err(Diagnostic::new(
                    Code::E0802,
                    format!(
                        "invalid value `{name}` for `keep`: the plan has no target of that name"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Calls `cb(done, total)` under the GIL after each tensor; an exception in it is
/// reported as unraisable (a progress bar must not abort a load half-way). The count
/// is advanced while the GIL is held, so calls from several reader threads reach the
/// callback in increasing order and the last one reports the total.
fn progress_fn(cb: PyObject, total: u64) -> wmap::loader::ProgressFn {
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Arc::new(move |n| {
        Python::with_gil(|py| {
            let now = done
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed)
                .saturating_add(n);
            if let Err(e) = cb.call1(py, (now, total)) {
                e.write_unraisable(py, None);
            }
        });
    })
}

/// A CPU load's tensors behind a weights manager. Without an offload budget every
/// tensor stays resident (the plan's offload groups are ignored), so each is exported
/// without a copy.
fn into_store(py: Python<'_>, loaded: wmap::loader::Loaded) -> PyResult<PyObject> {
    let names: Vec<(String, wmap::checkpoint::Dtype)> = loaded
        .plan
        .targets
        .iter()
        .map(|t| (t.name.clone(), t.dtype))
        .collect();
    let weights = match loaded.tensors {
        Tensors::Offloaded(w) => *w,
        Tensors::Host(tensors) => {
            let mut plan = loaded.plan.clone();
            for t in &mut plan.targets {
                t.offload = None;
            }
            wmap::weights::WeightsManager::new(
                wmap::offload::HostBackend::default(),
                &plan,
                tensors,
                u64::MAX,
                wmap::offload::Policy::OrderAware,
            )
            .map_err(|e| error(&e.into()))?
        }
        Tensors::Written(_) => return Err(store::internal("a load without export wrote a folder")),
        #[cfg(feature = "cuda")]
        Tensors::Device(load) => {
            let Device::Cuda(ordinal) = loaded.device else {
                return Err(store::internal("a device load not on a CUDA device"));
            };
            let s = device::store(loaded.plan.model.clone(), ordinal, names, *load)?;
            return Ok(Py::new(py, s)?.into_any());
        }
        #[cfg(feature = "cuda")]
        Tensors::DeviceOffloaded(load) => {
            let Device::Cuda(ordinal) = loaded.device else {
                return Err(store::internal("a device load not on a CUDA device"));
            };
            let s = device::offloaded(loaded.plan.model.clone(), ordinal, names, *load)?;
            return Ok(Py::new(py, s)?.into_any());
        }
    };
    let s = store::Store {
        inner: Arc::new(store::Inner {
            model: loaded.plan.model.clone(),
            names,
            weights: Mutex::new(weights),
            stats: loaded.stats,
            quant: loaded.quant,
        }),
    };
    Ok(Py::new(py, s)?.into_any())
}

/// Whether this build can load onto CUDA and a device is present (probes the driver).
#[pyfunction]
fn cuda_available() -> bool {
    wmap::loader::cuda_available()
}

/// The stdlib models: `[(name, file, [architectures])]`.
#[pyfunction]
fn stdlib_models() -> Vec<(String, String, Vec<String>)> {
    wmap::driver::stdlib_models()
        .into_iter()
        .map(|m| (m.name, m.file.to_string(), m.architectures))
        .collect()
}

#[pymodule]
fn _wmap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("WmapError", m.py().get_type::<WmapError>())?;
    m.add_class::<dlpack::Tensor>()?;
    m.add_class::<store::Store>()?;
    m.add_class::<store::Quantized>()?;
    #[cfg(feature = "cuda")]
    m.add_class::<device::DeviceStore>()?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(plan, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(stdlib_models, m)?)?;
    Ok(())
}
