//! P8 and CPU load throughput (issue targets; see BENCHMARKS.md).
//!
//! 1. `plan` against a header-only DeepSeek-V3-sized checkpoint (61 layers × 256 experts,
//!    FP8 weights with their `weight_scale_inv`, ~94 000 tensors): compile + open + bind.
//! 2. CPU load of a generated ~2 GB bf16 checkpoint from the page cache, next to
//!    `cat FILES > /dev/null` of the same files, with the peak RSS of this process.
//!
//! `cargo bench --bench plan_load`.

#[path = "../tests/common/sparse.rs"]
#[allow(dead_code)]
mod sparse;

use std::path::Path;
use std::time::{Duration, Instant};

use wmap::driver::{self, ModelSource};
use wmap::load::{self, Sink};

const DEEPSEEK_WMAP: &str = r#"
use "modules/norm.wmap"

# A DeepSeek-V3-sized MoE stand-in: FP8 experts stacked to bf16; scales left for later.
module Experts {
    param gate_up: [num_experts, 2 * moe_intermediate_size, hidden_size] quantizable offload_group = expert
        from stack(expert in 0..num_experts, fuse(dim = 0,
            "experts.{expert}.gate_proj.weight": [moe_intermediate_size, hidden_size],
            "experts.{expert}.up_proj.weight": [moe_intermediate_size, hidden_size]))
    param down: [num_experts, hidden_size, moe_intermediate_size] quantizable offload_group = expert
        from stack(expert in 0..num_experts, "experts.{expert}.down_proj.weight")
}

block Layer {
    norm: RmsNorm at "input_layernorm"
    experts: Experts at "mlp"
    ignore "mlp.experts.*.weight_scale_inv"
}

model DeepSeekLike for "DeepSeekLikeForCausalLM" {
    param embed: [vocab_size, hidden_size] from "model.embed_tokens.weight"
    layers: Layer[layer in 0..num_hidden_layers] at "model.layers.{layer}"
}
"#;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn p8(dir: &Path) {
    let (layers, experts, hidden, inter) = (61u64, 256u64, 7168u64, 2048u64);
    let mut specs: Vec<sparse::Spec> = vec![(
        "model.embed_tokens.weight".into(),
        "BF16",
        vec![129280, hidden],
    )];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        specs.push((format!("{p}.input_layernorm.weight"), "BF16", vec![hidden]));
        for e in 0..experts {
            for (w, shape) in [
                ("gate_proj", [inter, hidden]),
                ("up_proj", [inter, hidden]),
                ("down_proj", [hidden, inter]),
            ] {
                specs.push((
                    format!("{p}.mlp.experts.{e}.{w}.weight"),
                    "F8_E4M3",
                    shape.to_vec(),
                ));
                let scale = vec![shape[0].div_ceil(128), shape[1].div_ceil(128)];
                specs.push((
                    format!("{p}.mlp.experts.{e}.{w}.weight_scale_inv"),
                    "F32",
                    scale,
                ));
            }
        }
    }
    sparse::write_sparse(dir, &specs, 163);
    let config = serde_json::json!({
        "architectures": ["DeepSeekLikeForCausalLM"], "num_hidden_layers": layers, "num_experts": experts,
        "hidden_size": hidden, "moe_intermediate_size": inter, "vocab_size": 129280,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let wmap = dir.join("deepseek_like.wmap");
    std::fs::write(&wmap, DEEPSEEK_WMAP).unwrap();
    let run = || {
        let t = Instant::now();
        let mut c = driver::compile(
            &ModelSource::File(wmap.clone()),
            Some(&dir.join("config.json")),
        )
        .unwrap();
        let b = driver::bind(&mut c, dir, true);
        assert!(
            c.diags.is_empty() && b.is_some(),
            "{:?}",
            c.diags.items.first()
        );
        t.elapsed()
    };
    run();
    let times: Vec<Duration> = (0..5).map(|_| run()).collect();
    println!(
        "P8  plan, {} tensors header-only: median {:.0} ms (target <= 1000 ms)",
        specs.len(),
        median(times).as_secs_f64() * 1e3
    );
}

/// Drops every target after counting it: measures the loader, not a consumer.
struct Discard;

impl Sink for Discard {
    fn tensor(
        &self,
        _: &wmap::plan::Target,
        data: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, wmap::diag::Diagnostic> {
        std::hint::black_box(&data);
        Ok(Some(data))
    }
    fn tied(&self, _: &wmap::plan::Target, _: &str) -> Result<(), wmap::diag::Diagnostic> {
        Ok(())
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn throughput(dir: &Path) {
    // Llama-shaped, 2 GB of bf16: hidden 2048, 16 layers, random bytes (never zeros).
    let (layers, hidden, inter, vocab) = (16u64, 2048u64, 8192u64, 32000u64);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "num_hidden_layers": layers, "hidden_size": hidden,
        "intermediate_size": inter, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": vocab, "tie_word_embeddings": false,
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut specs: Vec<sparse::Spec> = vec![
        (
            "model.embed_tokens.weight".into(),
            "BF16",
            vec![vocab, hidden],
        ),
        ("model.norm.weight".into(), "BF16", vec![hidden]),
        ("lm_head.weight".into(), "BF16", vec![vocab, hidden]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("input_layernorm", vec![hidden]),
            ("post_attention_layernorm", vec![hidden]),
            ("self_attn.q_proj", vec![2048, hidden]),
            ("self_attn.k_proj", vec![1024, hidden]),
            ("self_attn.v_proj", vec![1024, hidden]),
            ("self_attn.o_proj", vec![hidden, 2048]),
            ("mlp.gate_proj", vec![inter, hidden]),
            ("mlp.up_proj", vec![inter, hidden]),
            ("mlp.down_proj", vec![hidden, inter]),
        ] {
            specs.push((format!("{p}.{n}.weight"), "BF16", s));
        }
    }
    sparse::write_sparse(dir, &specs, 4);
    // Fill the holes with pseudo-random bytes so the page cache holds real data.
    let files = sparse::safetensors_files(dir);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut total = 0u64;
    for f in &files {
        use std::io::{Seek, Write};
        let len = std::fs::metadata(f).unwrap().len();
        let mut prefix = [0u8; 8];
        std::io::Read::read_exact(&mut std::fs::File::open(f).unwrap(), &mut prefix).unwrap();
        let n = u64::from_le_bytes(prefix);
        let mut file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        file.seek(std::io::SeekFrom::Start(8 + n)).unwrap();
        let mut left = len - 8 - n;
        total += left;
        let mut buf = vec![0u8; 8 << 20];
        while left > 0 {
            for w in buf.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                w.copy_from_slice(&(state & 0x3FFF_3FFF_3FFF_3FFF).to_le_bytes());
                // finite bf16s
            }
            let k = left.min(buf.len() as u64) as usize;
            file.write_all(&buf[..k]).unwrap();
            left -= k as u64;
        }
    }
    let cat = || {
        let t = Instant::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cat {} > /dev/null",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
            .status()
            .unwrap();
        assert!(status.success());
        t.elapsed()
    };
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, dir, true).unwrap();
    let load_once = || {
        let t = Instant::now();
        load::execute(
            &b.plan,
            &b.checkpoint,
            &Discard,
            load::Options::default(),
            &|_| {},
        )
        .unwrap();
        t.elapsed()
    };
    cat();
    load_once(); // both warm: the files are in the page cache
    let cats: Vec<Duration> = (0..5).map(|_| cat()).collect();
    let loads: Vec<Duration> = (0..5).map(|_| load_once()).collect();
    let (tc, tl) = (median(cats).as_secs_f64(), median(loads).as_secs_f64());
    let gb = total as f64 / 1e9;
    println!(
        "CPU load {:.2} GB bf16: wmap {:.2} GB/s, cat {:.2} GB/s, ratio {:.0}% (target >= 50%), peak RSS {:.0} MiB (target <= 1024)",
        gb,
        gb / tl,
        gb / tc,
        100.0 * tc / tl,
        peak_rss_mib()
    );
}

fn main() {
    let root = std::env::temp_dir().join(format!("wmap-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    throughput(&root.join("llama2g"));
    p8(&root.join("deepseek"));
    let _ = std::fs::remove_dir_all(&root);
}
