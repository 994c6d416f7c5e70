//! CUDA: NVRTC-compiled kernels, the device quantizers, and the GPU's side of the loader.
//!
//! Input: bf16 tensors on the device. Output: quantized tensors on the device, byte-for-
//! byte what the CPU reference in [`crate::quant`] produces (the tests compare every
//! kernel with it). Everything here is behind the `cuda` feature; a missing driver or
//! GPU is a coded error at run time, never a panic. Kernels are compiled once per
//! machine for the device's architecture and kept in an on-disk cache.

#[cfg(feature = "cuda")]
pub mod cache;
mod error;
pub mod sources;
pub mod tables;

pub use error::Error;

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub mod loader;
#[cfg(feature = "cuda")]
pub mod offload;
#[cfg(feature = "cuda")]
pub mod weights;
#[cfg(feature = "cuda")]
pub use device::*;
#[cfg(feature = "cuda")]
pub use loader::Ready;
