//! The offload layer's failures: one variant per way a move to the device can fail,
//! each with its diagnostic code.

use crate::diag::{Code, Diagnostic};

/// Why the offload manager could not bring a group to the device.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// The group is larger than the budget, or the rest of the budget is in use.
    DoesNotFit {
        group: String,
        bytes: u64,
        budget: u64,
    },
    /// The backend's copy failed (the copy thread stopped, a device copy or allocation
    /// failed, the host pool could not be page-locked).
    Copy(String),
    /// A state the manager should never reach.
    Internal(&'static str),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::DoesNotFit { .. } => Code::E0701,
            Error::Copy(_) => Code::E0702,
            Error::Internal(_) => Code::E0901,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::DoesNotFit {
                group,
                bytes,
                budget,
            } if bytes > budget => write!(
                f,
                "offload group `{group}` ({bytes} bytes) is larger than the whole {budget}-byte budget"
            ),
            Error::DoesNotFit {
                group,
                bytes,
                budget,
            } => write!(
                f,
                "offload group `{group}` ({bytes} bytes) does not fit: the budget is {budget} bytes and the rest is in use"
            ),
            Error::Copy(what) => write!(f, "copying an offload group to the device failed: {what}"),
            Error::Internal(what) => write!(f, "{what}; this is a bug in wmapc"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for Diagnostic {
    fn from(e: Error) -> Diagnostic {
        let d = Diagnostic::new(e.code(), e.to_string());
        match e {
            Error::DoesNotFit { .. } => d.with_help(
                "raise --offload-budget to at least the largest group plus the groups used at once",
            ),
            _ => d,
        }
    }
}
