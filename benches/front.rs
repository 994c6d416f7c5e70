//! Front-end benchmark: parse + resolve + check + lower of every stdlib model against its
//! fixture config, and of a synthetic MoE with 100 layers × 256 experts.
//! Run with `cargo bench --bench front`; prints medians of repeated runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wmap::driver::{self, ModelSource};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm-up
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn compile(source: &ModelSource, config: &Path) {
    let c = driver::compile(source, Some(config)).expect("compiles");
    assert!(c.lowered.is_some(), "{}", config.display());
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let configs = [
        "llama",
        "mistral",
        "phi3",
        "qwen3",
        "qwen3_moe",
        "mamba2",
        "nemotron_h",
        "nemotron_h_moe",
    ];
    println!("{:<34} {:>12}", "case", "median");
    let mut total = Duration::ZERO;
    for name in configs {
        let cfg = root.join(format!("tests/fixtures/hf/{name}/config.json"));
        let t = time(50, || compile(&ModelSource::Detect, &cfg));
        total += t;
        println!(
            "{:<34} {:>9.3} ms",
            format!("stdlib {name}"),
            t.as_secs_f64() * 1e3
        );
    }
    println!(
        "{:<34} {:>9.3} ms",
        "whole stdlib (sum)",
        total.as_secs_f64() * 1e3
    );

    // A synthetic DeepSeek-sized MoE: 100 layers × 256 experts, from the Qwen3-MoE model.
    let dir = std::env::temp_dir().join(format!("wmap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text =
        std::fs::read_to_string(root.join("tests/fixtures/hf/qwen3_moe/config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["num_hidden_layers"] = 100.into();
    cfg["num_local_experts"] = 256.into();
    cfg["hidden_size"] = 7168.into();
    cfg["moe_intermediate_size"] = 2048.into();
    cfg["num_attention_heads"] = 64.into();
    cfg["num_key_value_heads"] = 8.into();
    cfg["head_dim"] = 128.into();
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let t = time(20, || compile(&ModelSource::Detect, &path));
    println!(
        "{:<34} {:>9.3} ms",
        "synthetic 100 layers x 256 experts",
        t.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
}
