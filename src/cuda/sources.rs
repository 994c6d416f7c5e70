//! The CUDA sources, embedded; each kernel file is compiled with the shared header
//! prepended, so NVRTC needs no include path. [`device_code`] goes through the on-disk
//! cache ([`super::cache`]), so a machine compiles each kernel file once.

const COMMON: &str = include_str!("../../kernels/common.cuh");

/// (module name, source) of every kernel file.
pub const FILES: &[(&str, &str)] = &[
    ("bnb4", include_str!("../../kernels/bnb4.cu")),
    ("bnb4_v2", include_str!("../../kernels/bnb4_v2.cu")),
    ("fp8", include_str!("../../kernels/fp8.cu")),
    ("fp4", include_str!("../../kernels/fp4.cu")),
    ("convert", include_str!("../../kernels/convert.cu")),
    ("prequant", include_str!("../../kernels/prequant.cu")),
];

/// A kernel file with the shared header in front.
pub fn full_source(body: &str) -> String {
    format!("{}\n{}", COMMON.replace("#pragma once", ""), body)
}

/// NVRTC options for bit-exactness: no multiply-add contraction, IEEE division and square
/// root, no flush-to-zero (kernels ask for `.ftz` explicitly where bitsandbytes does).
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--ftz=false".into(),
        "--std=c++17".into(),
    ]
}

#[cfg(feature = "cuda")]
/// Compiles every kernel file for `arch` (e.g. `sm_90`) with NVRTC; needs only libnvrtc.
pub fn compile_all(arch: &str) -> Result<Vec<(&'static str, cudarc::nvrtc::Ptx)>, super::Error> {
    // cudarc panics when the library is missing; ask first.
    // SAFETY: probing for a shared library has no preconditions.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(super::Error::KernelCompile("libnvrtc could not be loaded (install the CUDA toolkit or the nvidia-cuda-nvrtc wheel and put it on LD_LIBRARY_PATH)".into()));
    }
    FILES
        .iter()
        .map(|(name, body)| {
            let opts = cudarc::nvrtc::CompileOptions {
                options: options(arch),
                name: Some(format!("{name}.cu")),
                ..Default::default()
            };
            cudarc::nvrtc::compile_ptx_with_opts(full_source(body), opts)
                .map(|ptx| (*name, ptx))
                .map_err(|e| {
                    super::Error::KernelCompile(format!(
                        "kernels/{name}.cu does not compile for {arch}: {e}"
                    ))
                })
        })
        .collect()
}

/// How the kernels of one process were obtained, for the setup report.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOrigins {
    pub cached: usize,
    pub compiled: usize,
}

/// A kernel file's name and its CUBIN.
pub type DeviceCode = (&'static str, Vec<u8>);

#[cfg(feature = "cuda")]
/// Device code (CUBIN) of every kernel file for `arch`, from the kernel cache or compiled
/// now and cached. The caller falls back to [`compile_all`]'s PTX if a CUBIN will not load.
pub fn device_code(arch: &str) -> Result<(Vec<DeviceCode>, KernelOrigins), super::Error> {
    use super::cache;
    // SAFETY: probing for a shared library has no preconditions.
    let nvrtc_present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    // Without libnvrtc a cached image still serves; its key then names no NVRTC version.
    let nvrtc = if nvrtc_present {
        cache::nvrtc_version().map_err(super::Error::KernelCompile)?
    } else {
        "absent".to_string()
    };
    let folder = cache::folder();
    let mut origins = KernelOrigins::default();
    let mut out = Vec::with_capacity(FILES.len());
    for (name, body) in FILES {
        let (source, opts) = (full_source(body), options(arch));
        let key = cache::key(name, &source, &opts, &nvrtc);
        let (image, origin) = cache::cubin(folder.as_deref(), &key, || {
            if !nvrtc_present {
                return Err("libnvrtc could not be loaded (install the CUDA toolkit or the nvidia-cuda-nvrtc wheel and put it on LD_LIBRARY_PATH)".into());
            }
            cache::compile_cubin(&format!("{name}.cu"), &source, &opts)
        })
        .map_err(|e| {
            super::Error::KernelCompile(format!("kernels/{name}.cu does not compile for {arch}: {e}"))
        })?;
        match origin {
            cache::Origin::Cached => origins.cached += 1,
            cache::Origin::Compiled => origins.compiled += 1,
        }
        out.push((*name, image));
    }
    Ok((out, origins))
}
