//! `Tensor`: a view of bytes wmap owns, handed to numpy or torch through DLPack without
//! a copy.
//!
//! Input: an owner (anything `Send + Sync` that keeps the bytes alive: a store, a pooled
//! bf16 buffer, a small table) and the address, dtype and shape of the bytes inside it.
//! Output: a `dltensor` capsule whose `DLManagedTensor` holds a clone of the owner; the
//! consumer's call of the deleter (or the capsule's destructor, when nobody consumed it)
//! drops that clone. So the bytes outlive every array made from them, and the address a
//! consumer sees is the one [`Tensor::data_ptr`] reports.
//! Invariant: the bytes are never moved or freed while an owner clone lives. Consumers
//! must treat them as read-only (DLPack's unversioned capsule cannot say so).

use std::any::Any;
use std::ffi::{c_void, CStr};
use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;

/// Keeps a tensor's bytes alive.
pub type Owner = Arc<dyn Any + Send + Sync>;

/// Orders a consumer's CUDA stream after the work that fills a tensor's bytes, for
/// device memory a wmap stream may still be writing when it is handed out (a pooled bf16
/// buffer the weights manager just dequantized into).
pub trait StreamSync: Send + Sync {
    /// Makes `stream` (DLPack's number: 1 the legacy default stream, 2 the per-thread
    /// default stream, else a `cudaStream_t`) wait for the bytes, and remembers it, so
    /// the bytes are not reused before the work it queues on them has run.
    fn consumer(&self, stream: usize) -> Result<(), String>;
}

const DL_CPU: i32 = 1;
const DL_CUDA: i32 = 2;
const CAPSULE: &CStr = c"dltensor";

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// The managed tensor and what it points into, in one allocation: `managed` first, so a
/// `*mut DLManagedTensor` is a `*mut Managed`.
#[repr(C)]
struct Managed {
    managed: DLManagedTensor,
    shape: Vec<i64>,
    _owner: Owner,
}

/// The element types wmap hands out, with their DLPack codes and numpy-style names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    U8,
    I8,
    I32,
    I64,
    F16,
    Bf16,
    F32,
}

impl Dtype {
    fn dl(self) -> DLDataType {
        let (code, bits) = match self {
            Dtype::I8 => (0, 8),
            Dtype::I32 => (0, 32),
            Dtype::I64 => (0, 64),
            Dtype::U8 => (1, 8),
            Dtype::F16 => (2, 16),
            Dtype::F32 => (2, 32),
            Dtype::Bf16 => (4, 16),
        };
        DLDataType {
            code,
            bits,
            lanes: 1,
        }
    }

    pub fn size(self) -> usize {
        usize::from(self.dl().bits / 8)
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
            Dtype::F32 => "float32",
        }
    }

    /// A checkpoint dtype as handed out; FP8 goes out as its raw bytes.
    pub fn of(d: wmap::checkpoint::Dtype) -> Dtype {
        use wmap::checkpoint::Dtype as C;
        match d {
            C::F32 => Dtype::F32,
            C::F16 => Dtype::F16,
            C::Bf16 => Dtype::Bf16,
            C::I8 => Dtype::I8,
            C::I32 => Dtype::I32,
            C::I64 => Dtype::I64,
            _ => Dtype::U8,
        }
    }
}

/// A tensor wmap owns, exported through DLPack (`numpy.from_dlpack`, `torch.from_dlpack`)
/// without a copy. Treat it as read-only: tied names share bytes.
#[pyclass(frozen, module = "wmap._wmap")]
pub struct Tensor {
    owner: Owner,
    ptr: usize,
    dtype: Dtype,
    shape: Vec<u64>,
    device: (i32, i32),
    /// For device bytes still being written on a wmap stream; `None`: ready on any stream.
    sync: Option<Arc<dyn StreamSync>>,
}

impl Tensor {
    /// A host tensor over `len` bytes at `ptr` inside `owner`. `None` when the shape
    /// does not describe exactly those bytes.
    pub fn host(
        owner: Owner,
        ptr: *const u8,
        len: usize,
        dtype: Dtype,
        shape: Vec<u64>,
    ) -> Option<Tensor> {
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        let bytes = numel.checked_mul(dtype.size() as u64)?;
        (bytes == len as u64).then_some(Tensor {
            owner,
            ptr: ptr as usize,
            dtype,
            shape,
            device: (DL_CPU, 0),
            sync: None,
        })
    }

    /// A host tensor owning `values` (small tables, scales).
    pub fn from_f32(values: Vec<f32>, shape: Vec<u64>) -> Option<Tensor> {
        let values = Arc::new(values);
        let (ptr, len) = (values.as_ptr().cast::<u8>(), values.len() * 4);
        Tensor::host(values, ptr, len, Dtype::F32, shape)
    }

    /// A host tensor owning `bytes`.
    pub fn from_u8(bytes: Vec<u8>, shape: Vec<u64>) -> Option<Tensor> {
        let bytes = Arc::new(bytes);
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        Tensor::host(bytes, ptr, len, Dtype::U8, shape)
    }

    /// A tensor in CUDA device memory at `ptr` on device `ordinal`.
    #[cfg(feature = "cuda")]
    pub fn cuda(owner: Owner, ptr: u64, ordinal: usize, dtype: Dtype, shape: Vec<u64>) -> Tensor {
        Tensor {
            owner,
            ptr: ptr as usize,
            dtype,
            shape,
            device: (DL_CUDA, i32::try_from(ordinal).unwrap_or(i32::MAX)),
            sync: None,
        }
    }

    /// The same tensor, whose consumers' streams `sync` orders after the bytes' writer.
    #[cfg(feature = "cuda")]
    pub fn with_sync(self, sync: Arc<dyn StreamSync>) -> Tensor {
        Tensor {
            sync: Some(sync),
            ..self
        }
    }

    /// Orders the consumer's stream (DLPack's `stream` argument) after the bytes' writer.
    fn sync_consumer(&self, stream: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(sync) = self.sync.as_ref().filter(|_| self.device.0 == DL_CUDA) else {
            return Ok(());
        };
        // DLPack: no stream means the legacy default stream (1); -1 asks for no ordering.
        let stream: i64 = match stream {
            Some(s) if !s.is_none() => s.extract()?,
            _ => 1,
        };
        if stream == -1 {
            return Ok(());
        }
        let stream = usize::try_from(stream)
            .map_err(|_| PyBufferError::new_err(format!("invalid DLPack stream {stream}")))?;
        sync.consumer(stream).map_err(PyBufferError::new_err)
    }

    fn byte_len(&self) -> u64 {
        let numel = self.shape.iter().product::<u64>();
        numel.saturating_mul(self.dtype.size() as u64)
    }
}

/// The capsule's destructor: frees the managed tensor unless a consumer took it (then
/// the capsule was renamed `used_dltensor` and the consumer calls the deleter).
unsafe extern "C" fn capsule_destructor(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: called by Python with the capsule being destroyed; the name check tells
    // whether the pointer is still ours to free.
    unsafe {
        if pyo3::ffi::PyCapsule_IsValid(capsule, CAPSULE.as_ptr()) == 1 {
            let managed = pyo3::ffi::PyCapsule_GetPointer(capsule, CAPSULE.as_ptr())
                .cast::<DLManagedTensor>();
            if let Some(deleter) = (*managed).deleter {
                deleter(managed);
            }
        }
    }
}

/// The deleter DLPack consumers call once they are done with the memory.
unsafe extern "C" fn deleter(managed: *mut DLManagedTensor) {
    if !managed.is_null() {
        // SAFETY: `managed` came from `Box::into_raw(Box<Managed>)` in `__dlpack__`, and
        // `Managed` starts with the `DLManagedTensor` (`repr(C)`); DLPack calls this once.
        drop(unsafe { Box::from_raw(managed.cast::<Managed>()) });
    }
}

#[pymethods]
impl Tensor {
    /// A DLPack capsule over this tensor's bytes (no copy). `copy=True` is refused:
    /// copy the consumer's array instead. `stream`: the consumer's CUDA stream; a load's
    /// device memory is ready on any stream, and a `get` buffer still being written on
    /// wmap's stream makes the consumer's stream wait for it.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<PyObject>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = max_version;
        if copy == Some(true) {
            return Err(PyBufferError::new_err(
                "wmap exports tensors without a copy; copy the array you get instead",
            ));
        }
        if dl_device.is_some_and(|d| d != self.device) {
            return Err(PyBufferError::new_err(
                "wmap exports a tensor only on the device it lives on",
            ));
        }
        self.sync_consumer(stream.as_ref())?;
        let shape: Vec<i64> = self
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| PyBufferError::new_err("a dimension does not fit DLPack's int64"))?;
        let mut boxed = Box::new(Managed {
            managed: DLManagedTensor {
                dl_tensor: DLTensor {
                    data: self.ptr as *mut c_void,
                    device: DLDevice {
                        device_type: self.device.0,
                        device_id: self.device.1,
                    },
                    ndim: i32::try_from(shape.len()).unwrap_or(i32::MAX),
                    dtype: self.dtype.dl(),
                    shape: std::ptr::null_mut(),
                    strides: std::ptr::null_mut(),
                    byte_offset: 0,
                },
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(deleter),
            },
            shape,
            _owner: self.owner.clone(),
        });
        // The shape lives in the same box; a Vec's buffer does not move with the box.
        boxed.managed.dl_tensor.shape = boxed.shape.as_mut_ptr();
        let raw = Box::into_raw(boxed);
        // SAFETY: `raw` is a valid `Managed` whose first field is the `DLManagedTensor`;
        // the capsule's destructor or the consumer frees it exactly once.
        unsafe {
            let capsule = pyo3::ffi::PyCapsule_New(
                raw.cast::<c_void>(),
                CAPSULE.as_ptr(),
                Some(capsule_destructor),
            );
            if capsule.is_null() {
                drop(Box::from_raw(raw));
                return Err(PyErr::fetch(py));
            }
            Ok(Bound::from_owned_ptr(py, capsule))
        }
    }

    /// `(device_type, device_id)`: `(1, 0)` for host memory, `(2, N)` for CUDA device N.
    fn __dlpack_device__(&self) -> (i32, i32) {
        self.device
    }

    /// The same bytes as a flat `uint8` tensor (numpy has no bfloat16).
    fn as_uint8(&self) -> Tensor {
        Tensor {
            owner: self.owner.clone(),
            ptr: self.ptr,
            dtype: Dtype::U8,
            shape: vec![self.byte_len()],
            device: self.device,
            sync: self.sync.clone(),
        }
    }

    /// The address of the first byte: what `numpy.from_dlpack(t).ctypes.data` or
    /// `torch.from_dlpack(t).data_ptr()` must equal.
    #[getter]
    fn data_ptr(&self) -> usize {
        self.ptr
    }

    #[getter]
    fn shape(&self) -> Vec<u64> {
        self.shape.clone()
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    #[getter]
    fn nbytes(&self) -> u64 {
        self.byte_len()
    }

    /// `"cpu"` or `"cuda:N"`.
    #[getter]
    fn device(&self) -> String {
        match self.device {
            (DL_CUDA, n) => format!("cuda:{n}"),
            _ => "cpu".into(),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Tensor(shape={:?}, dtype={}, device={})",
            self.shape,
            self.dtype.name(),
            self.device()
        )
    }
}
