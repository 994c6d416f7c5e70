//! The standard library: `.wmap` files embedded in the binary.
//!
//! Input: nothing (the files are compiled in). Output: their texts by stdlib path
//! (`models/llama.wmap`). Architecture knowledge lives only in these files.

macro_rules! stdlib_files {
    ($($path:literal),* $(,)?) => {
        /// Every stdlib file as (path relative to `stdlib/`, text).
        pub const FILES: &[(&str, &str)] = &[
            $(($path, include_str!(concat!("../stdlib/", $path)))),*
        ];
    };
}

stdlib_files![
    "modules/norm.wmap",
    "modules/quantized.wmap",
    "modules/attention.wmap",
    "modules/mlp.wmap",
    "modules/moe.wmap",
    "modules/mamba.wmap",
    "modules/mamba2.wmap",
    "modules/gated_delta_net.wmap",
    "modules/decoder.wmap",
    "models/llama.wmap",
    "models/qwen3.wmap",
    "models/qwen3_moe.wmap",
    "models/phi3.wmap",
    "models/mamba2.wmap",
    "models/nemotron_h.wmap",
    "models/qwen2.wmap",
    "models/qwen2_moe.wmap",
    "models/granite.wmap",
    "models/olmo2.wmap",
    "models/olmoe.wmap",
    "models/gemma.wmap",
    "models/gemma2.wmap",
    "models/mixtral.wmap",
    "models/starcoder2.wmap",
    "models/phi.wmap",
    "models/stablelm.wmap",
    "models/cohere.wmap",
    "models/gemma3.wmap",
    "models/phimoe.wmap",
    "models/glm4.wmap",
    "models/smollm3.wmap",
    "models/gpt_neox.wmap",
    "models/seed_oss.wmap",
    "models/exaone4.wmap",
    "models/arcee.wmap",
    "models/ernie4_5.wmap",
    "models/mamba.wmap",
    "models/jamba.wmap",
    "models/bamba.wmap",
    "models/falcon_h1.wmap",
    "models/gpt_oss.wmap",
    "models/deepseek_v3.wmap",
    "models/granitemoehybrid.wmap",
    "models/qwen3_next.wmap",
];

/// The text of a stdlib file.
pub fn get(path: &str) -> Option<&'static str> {
    FILES.iter().find(|(p, _)| *p == path).map(|(_, t)| *t)
}

/// The stdlib files that declare models.
pub fn model_files() -> impl Iterator<Item = &'static str> {
    FILES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| p.starts_with("models/"))
}
