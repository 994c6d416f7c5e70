//! The weight store's failures, each with its diagnostic code.

use crate::diag::{Code, Diagnostic};

/// Why a weight could not be placed or fetched.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// `get` of a name the store does not hold (nor a slice key of one).
    UnknownTensor(String),
    /// Bringing the tensor's offload group to the device failed.
    Offload(crate::offload::Error),
    /// A state the store should never reach.
    Internal(&'static str),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::UnknownTensor(_) => Code::E0703,
            Error::Offload(e) => e.code(),
            Error::Internal(_) => Code::E0901,
        }
    }
}

impl From<crate::offload::Error> for Error {
    fn from(e: crate::offload::Error) -> Error {
        Error::Offload(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::UnknownTensor(name) => write!(f, "the weight store holds no tensor `{name}`"),
            Error::Offload(e) => write!(f, "{e}"),
            Error::Internal(what) => write!(f, "{what}; this is a bug in wmapc"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for Diagnostic {
    fn from(e: Error) -> Diagnostic {
        match e {
            Error::Offload(e) => e.into(),
            Error::UnknownTensor(_) => Diagnostic::new(e.code(), e.to_string())
                .with_help("stacked tensors stored per slice are named `name[i]` (`slice_key`)"),
            Error::Internal(_) => Diagnostic::new(e.code(), e.to_string()),
        }
    }
}
