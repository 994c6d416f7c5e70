//! wmap: a declarative language for mapping HuggingFace checkpoints onto a training
//! runtime's parameters, and its compiler.
//!
//! The pipeline, in the order the phases run:
//!
//! 1. [`source`]: files and spans.
//! 2. [`syntax`]: `.wmap` text → AST (pest).
//! 3. [`resolve`]: AST files + `use` imports + the embedded [`stdlib`] → a program with
//!    every declaration, instance and tied reference resolved.
//! 4. [`config`]: `config.json` → a spanned value tree with key lookup.
//! 5. [`check`]: program + config → a config-bound model: every shape evaluated,
//!    every `when` decided, every source type-checked.
//! 6. [`lower`]: bound model → the compact, versioned [`ir`].
//!
//! 7. [`plan`]: IR + checkpoint headers → a load plan (every target's recipe).
//! 8. [`load`]: plan → assembled targets streamed into a sink ([`quant`] quantizes,
//!    [`export`] writes HF naming, [`weights`] and [`offload`] serve them to a runtime,
//!    [`cuda`] does it on the GPU).
//!
//! [`diag`] holds the diagnostic codes all phases report with; [`driver`] strings the
//! front-end phases together; [`loader`] is the one entry point for a whole load
//! (`wmap::Loader`) that the CLI, the examples and the Python package share.
//!
//! After a compile, [`plan`] binds the IR to a checkpoint's headers, [`load`] executes
//! the plan, [`export`] writes a quantized load in HF naming, and [`reverse`] writes a
//! runtime-layout store back as the checkpoint it came from. [`scaffold`] writes a
//! starting `.wmap` for a checkpoint no stdlib model serves (`wmapc new`).

// Diagnostics are the error values of a compiler: built rarely, off the hot path, and
// richer than a pointer. Boxing them everywhere would buy nothing.
#![allow(clippy::result_large_err)]

pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod cuda;
pub mod diag;
pub mod driver;
pub mod export;
pub mod ir;
pub mod load;
pub mod loader;
pub mod lower;
pub mod offload;
pub mod plan;
pub mod quant;
pub mod resolve;
pub mod reverse;
pub mod scaffold;
pub mod source;
pub mod stdlib;
pub mod syntax;
pub mod weights;

pub use loader::Loader;
