//! The CUDA layer's failures, each with its diagnostic code. Compiled in every build:
//! a wmapc without the `cuda` feature reports [`Error::NotBuilt`] through it.

use crate::diag::{Code, Diagnostic};

/// Why a GPU step failed.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// This wmapc was built without the `cuda` feature.
    NotBuilt,
    /// `libcuda` is not on this machine.
    NoDriver,
    /// The ordinal is not below the device count.
    NoDevice { ordinal: usize, count: i32 },
    /// NVRTC is missing or refused the kernels.
    KernelCompile(String),
    /// The GPU path does not do this (a block size, a format on a slice, a dtype).
    Unsupported(String),
    /// A driver call failed; the text names the call and the driver's error.
    Call(String),
    /// The weight store was asked for a name it does not hold.
    UnknownTensor(String),
    /// Moving an offload group failed.
    Offload(crate::offload::Error),
    /// A state the GPU path should never reach.
    Internal(String),
    /// The checkpoint failed a check the GPU path shares with the host (a pre-quantized
    /// source's quant state, say): its own diagnostic, code included.
    Input(Box<Diagnostic>),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::NotBuilt | Error::NoDriver => Code::E0711,
            Error::NoDevice { .. } => Code::E0712,
            Error::KernelCompile(_) => Code::E0713,
            Error::Unsupported(_) => Code::E0714,
            Error::Call(_) => Code::E0715,
            Error::UnknownTensor(_) => Code::E0703,
            Error::Offload(e) => e.code(),
            Error::Internal(_) => Code::E0901,
            Error::Input(d) => d.code,
        }
    }
}

/// Driver-call failures are built as text at the call site (`what: {driver error}`);
/// `?` turns that text into [`Error::Call`].
impl From<String> for Error {
    fn from(what: String) -> Error {
        Error::Call(what)
    }
}

impl From<Diagnostic> for Error {
    fn from(d: Diagnostic) -> Error {
        Error::Input(Box::new(d))
    }
}

impl From<crate::offload::Error> for Error {
    fn from(e: crate::offload::Error) -> Error {
        Error::Offload(e)
    }
}

impl From<crate::weights::Error> for Error {
    fn from(e: crate::weights::Error) -> Error {
        match e {
            crate::weights::Error::UnknownTensor(name) => Error::UnknownTensor(name),
            crate::weights::Error::Offload(e) => Error::Offload(e),
            crate::weights::Error::Internal(what) => Error::Internal(what.into()),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotBuilt => write!(f, "this wmapc was built without CUDA support"),
            Error::NoDriver => write!(f, "no CUDA driver (libcuda) on this machine"),
            Error::NoDevice { ordinal, count } => {
                write!(f, "no CUDA device {ordinal} (this machine has {count})")
            }
            Error::KernelCompile(what) | Error::Unsupported(what) | Error::Call(what) => {
                write!(f, "{what}")
            }
            Error::UnknownTensor(name) => write!(f, "the weight store holds no tensor `{name}`"),
            Error::Offload(e) => write!(f, "{e}"),
            Error::Internal(what) => write!(f, "{what}; this is a bug in wmapc"),
            Error::Input(d) => write!(f, "{}", d.message),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for Diagnostic {
    fn from(e: Error) -> Diagnostic {
        let d = Diagnostic::new(e.code(), e.to_string());
        match e {
            Error::Input(d) => *d,
            Error::Offload(e) => e.into(),
            Error::NotBuilt => d.with_help(
                "rebuild with `cargo build --release --features cuda`, or load with `--device cpu`",
            ),
            Error::NoDriver => {
                d.with_help("load with `--device cpu`, or install the NVIDIA driver")
            }
            _ => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes a GPU-less machine cannot reach, and the text each renders.
    #[test]
    fn every_variant_has_its_code_and_text() {
        let cases = [
            (
                Error::NoDriver,
                "E0711",
                "no CUDA driver (libcuda) on this machine",
            ),
            (
                Error::NoDevice {
                    ordinal: 3,
                    count: 1,
                },
                "E0712",
                "no CUDA device 3 (this machine has 1)",
            ),
            (Error::KernelCompile("nvrtc: x".into()), "E0713", "nvrtc: x"),
            (
                Error::Unsupported("blocksize 48".into()),
                "E0714",
                "blocksize 48",
            ),
            (
                Error::from("cuMemAlloc: OOM".to_string()),
                "E0715",
                "cuMemAlloc: OOM",
            ),
            (
                Error::UnknownTensor("w".into()),
                "E0703",
                "the weight store holds no tensor `w`",
            ),
            (
                Error::from(crate::offload::Error::Copy("stream".into())),
                "E0702",
                "copying an offload group to the device failed: stream",
            ),
            (
                Error::from(Diagnostic::new(Code::E0531, "bad quant state")),
                "E0531",
                "bad quant state",
            ),
        ];
        for (e, code, text) in cases {
            let d = Diagnostic::from(e);
            assert_eq!((d.code.as_str(), d.message.as_str()), (code, text));
        }
    }
}
