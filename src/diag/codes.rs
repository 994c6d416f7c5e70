//! The registry of diagnostic codes: the one list that `explain`, the renderers
//! and the drift test read. The first two digits of a code name its phase:
//! 01 syntax, 02 resolve, 03 config, 04 check, 05 checkpoint binding and loading,
//! 06 output writing, 07 runtime layers (offload, weights, CUDA), 08 command-line
//! usage, 09 internal.

macro_rules! codes {
    ($($id:ident $name:literal $summary:literal;)*) => {
        /// A stable diagnostic code. `E` codes are errors, `W` codes warnings.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $($id),* }

        impl Code {
            /// Every code, in order.
            pub const ALL: &'static [Code] = &[$(Code::$id),*];

            /// `E0301`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$id => stringify!($id)),* }
            }

            /// `unknown-config-symbol`.
            pub fn name(self) -> &'static str {
                match self { $(Code::$id => $name),* }
            }

            /// One line saying what the code means.
            pub fn summary(self) -> &'static str {
                match self { $(Code::$id => $summary),* }
            }

            /// The code's page: what it means, why, an example and the fix.
            pub fn explain(self) -> &'static str {
                match self { $(Code::$id => include_str!(concat!("explain/", stringify!($id), ".md"))),* }
            }
        }
    };
}

codes! {
    E0101 "syntax-error" "the .wmap text does not follow the grammar";
    E0102 "invalid-literal" "a number or string literal cannot be represented";
    E0103 "duplicate-attribute" "a param or instance states the same attribute twice";
    E0104 "nesting-too-deep" "brackets or an expression nest deeper than the parser allows";
    E0105 "invalid-utf8" "a .wmap file is not UTF-8 text";
    E0106 "unknown-type" "`is` names a type that config values do not have";
    E0107 "unnamed-match-arm" "a `match` arm declares an instance with no name";
    E0108 "unknown-let" "a source names a `let` that its declaration does not define before it";
    E0109 "let-too-large" "a `let` expands deeper or larger than the parser allows";
    E0201 "unknown-declaration" "an instance names a module, block or model that does not exist";
    E0202 "duplicate-declaration" "two declarations or two members share one name";
    E0203 "use-not-found" "a `use` names a file that is neither beside the source nor in the stdlib";
    E0204 "unknown-index-variable" "a name template or offload group uses an index variable not in scope";
    E0205 "recursive-instantiation" "a declaration instantiates itself, directly or through others";
    E0206 "missing-source" "a param has no `from` clause";
    E0207 "unknown-tied-param" "`tied(...)` names a param that does not exist";
    E0208 "unknown-dtype" "a `dtype =` names a type the runtime does not have";
    E0209 "no-model" "the file declares no model, or several where one was needed";
    E0210 "misplaced-member" "a declaration holds a member its kind does not allow";
    E0211 "instances-too-deep" "instances nest deeper than the checker allows";
    E0230 "unknown-import" "a `use` list names a declaration the imported file does not have";
    E0231 "not-imported" "a file instantiates a declaration its `use` list leaves out";
    E0232 "unknown-module-argument" "an instance passes an argument its declaration has no parameter for";
    E0233 "missing-module-argument" "an instance leaves out a parameter that has no default";
    W0201 "unused-declaration" "a module or block is declared but never instantiated";
    W0202 "inherited-rebinding" "a declaration reads a config name that an enclosing declaration rebinds";
    W0203 "unreachable-match-arm" "a `match` pattern comes after `_` or repeats an earlier one";
    E0301 "unknown-config-symbol" "an expression names a config key that config.json does not have";
    E0302 "invalid-config" "config.json is not valid JSON or not an object";
    E0303 "config-type-mismatch" "a config value has the wrong type for its use";
    E0304 "no-model-for-architecture" "no stdlib model serves the config's `architectures`";
    E0305 "evaluation-too-deep" "config items and expressions nest deeper than evaluation allows";
    E0306 "evaluation-too-long" "evaluating one value takes more steps than allowed";
    W0301 "config-default-used" "a config key is absent and a declared default was used";
    E0401 "non-positive-dimension" "a shape dimension evaluates to zero or less";
    E0402 "inexact-division" "an integer division in a shape leaves a remainder";
    E0403 "fuse-shape-mismatch" "the parts of a `fuse` do not add up to the param's shape";
    E0404 "stack-count-mismatch" "a `stack` count differs from the param's leading dimension";
    E0405 "type-error" "an operator or condition is applied to values of the wrong type";
    E0406 "index-out-of-range" "indexing a config string or list past its end";
    E0407 "source-shape-mismatch" "a source's declared shape does not fit the param";
    E0408 "dim-out-of-range" "a `dim` argument names a dimension the tensor does not have";
    E0409 "division-by-zero" "an expression divides by zero";
    E0410 "invalid-offload-group" "an offload group is not an integer over index variables";
    E0411 "integer-overflow" "an expression overflows 64-bit integers";
    E0412 "limit-exceeded" "a repeat, stack, tensor or model is larger than wmapc's caps";
    E0413 "invalid-ir" "an IR read from JSON breaks the invariants the checker guarantees";
    E0430 "no-match-arm" "a `match` meets a config value none of its arms matches";
    E0431 "module-argument-type" "a module argument's type differs from its parameter's default";
    E0440 "invalid-quant-block" "a pre-quantized source's `block =` is not two positive integers";
    E0441 "quantized-source-not-2d" "a pre-quantized source is not a [rows, cols] matrix";
    E0450 "tp-indivisible" "a param's heads or rows do not divide by the tensor-parallel size";
    E0451 "ep-indivisible" "a param's experts do not divide by the expert-parallel size";
    E0452 "invalid-shard-rule" "a `shard` attribute names an unknown rule or does not fit the param's shape";
    E0501 "checkpoint-not-found" "the folder holds no safetensors checkpoint";
    E0502 "pickle-checkpoint" "the folder holds only pickle weights, which are never read";
    E0503 "invalid-header" "a safetensors header is truncated, oversized, not UTF-8 or not valid JSON";
    E0504 "invalid-tensor-extent" "a tensor's byte range is out of the file, overlaps another, or disagrees with its shape";
    E0505 "invalid-shard-index" "the shard index is malformed, names a missing shard or a path outside the folder";
    E0506 "duplicate-tensor" "one tensor name appears in two shards";
    E0507 "unsupported-dtype" "a tensor's dtype does not convert implicitly to its param's (FP8, integer or packed into float, …)";
    E0508 "missing-tensor" "a tensor a param needs is not in the checkpoint";
    E0509 "tensor-shape-mismatch" "a checkpoint tensor's shape differs from what the mapping expects";
    E0510 "unclaimed-tensor-refused" "`load` (or --strict) found checkpoint tensors nothing loads or ignores";
    E0511 "tensor-io-failed" "reading checkpoint bytes or writing output failed";
    E0512 "not-a-regular-file" "an input file is a FIFO, device, socket or folder";
    E0513 "input-too-large" "an input file exceeds the size wmapc reads for its kind";
    E0514 "too-many-shards" "the shard index names more shard files than wmapc opens";
    E0515 "tensor-too-large" "a tensor needs a buffer larger than the load may allocate";
    E0520 "not-invertible" "a checkpoint tensor is only partly read by the mapping, so a save cannot rebuild it";
    E0521 "runtime-tensor-missing" "the runtime store lacks a param the mapping builds";
    E0522 "runtime-tensor-mismatch" "a param in the runtime store has another shape or dtype than the mapping builds";
    E0523 "inexact-narrowing" "a runtime value does not fit the checkpoint's narrower dtype exactly";
    E0524 "conflicting-values" "params read from the same checkpoint elements (or tied) hold different values";
    E0525 "runtime-store-mismatch" "the runtime store was written for another model than --like binds";
    E0530 "quantized-dtype-mismatch" "a pre-quantized tensor or its scale is stored in a dtype its format does not use";
    E0531 "quant-scale-shape-mismatch" "a pre-quantized tensor's scales do not tile it by the declared block";
    E0540 "rank-out-of-range" "a --tp-rank or --ep-rank is not below its size, or a rank is given without a size";
    E0541 "unshardable-param" "a param cannot be cut to a rank's slice (a tie to a param split another way)";
    W0501 "unclaimed-tensor" "the checkpoint has tensors nothing loads or ignores";
    E0601 "output-exists" "`--out` names a path that exists and `--force` was not given";
    E0602 "output-not-wmapc" "`--force` would replace a folder that is not an unchanged earlier wmapc output";
    E0603 "output-overlaps-input" "`--out` is, contains, or lies inside the input checkpoint";
    E0604 "output-contains-working-directory" "`--out` is `.`, `..`, the working directory or one of its ancestors";
    E0605 "output-not-a-directory" "`--out` exists but is not a directory";
    E0606 "output-locked" "another wmapc is writing the same `--out`";
    E0607 "output-changed" "`--out` changed while wmapc was writing the new output";
    E0608 "write-failed" "creating, writing or moving the output failed";
    E0609 "output-too-large" "a write exceeded the process's file-size limit";
    E0610 "export-unsupported" "the output cannot be written in HF naming for this format or mapping";
    E0801 "usage-error" "the command line does not parse";
    E0802 "invalid-flag-value" "a flag's value is not of its type or out of range";
    E0803 "flag-combination" "a flag needs another, has no effect without it, or conflicts with one given";
    E0805 "unknown-name" "a code or stdlib model named on the command line does not exist";
    E0806 "file-unreadable" "an input file named on the command line cannot be read";
    E0701 "offload-budget-too-small" "an offload group does not fit the device budget beside the groups in use";
    E0702 "offload-copy-failed" "copying an offload group to the device failed";
    E0703 "unknown-tensor" "the weight store was asked for a tensor it does not hold";
    E0711 "cuda-unavailable" "CUDA cannot be used: no driver on this machine, or wmapc was built without it";
    E0712 "cuda-device-not-found" "the requested CUDA device ordinal does not exist";
    E0713 "kernel-compile-failed" "NVRTC is missing or could not compile wmapc's kernels";
    E0714 "gpu-unsupported" "the GPU path does not support this format, block size or dtype";
    E0715 "cuda-call-failed" "a CUDA driver call failed (out of memory, a failed copy or launch, …)";
    E0901 "internal-error" "wmapc reached a state it should not; this is a bug in wmapc";
}
