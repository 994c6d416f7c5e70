//! Bad input never panics: a bounded, deterministic corpus of mutated `.wmap` files and
//! configs goes through the whole front end. Every run sees the same cases (a fixed
//! seed), so a failure reproduces; the case index is in the message. Time limits here are
//! generous (a minute for a debug build on a shared 2-core machine): they tell "bounded"
//! from "runs for hours", not fast from slow; BENCHMARKS.md has the timings.

// `driver::compile`'s error is a `Diagnostic`, as everywhere in the library.
#![allow(clippy::result_large_err)]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use wmap::driver::{self, ModelSource};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ",",
    ":",
    "=",
    "|",
    "..",
    "\"",
    "#",
    "\n",
    " ",
    "0",
    "-1",
    "99999999999999999999",
    "param",
    "module",
    "block",
    "model",
    "for",
    "use",
    "config",
    "when",
    "from",
    "at",
    "fuse(dim = 0, ",
    "stack(e in 0..0, ",
    "tied(",
    "slice(",
    "split(",
    "reshape(",
    "squeeze(",
    "transpose(",
    "quantizable",
    "optional",
    "offload_group = ",
    "dtype = f8",
    "not",
    "in",
    "and",
    "or",
    "/",
    "% 0",
    "* 9223372036854775807",
    "{layer}",
    "{nope}",
    "len(",
    "null",
    "1.5",
    "\"\\q\"",
    "ignore",
    "layer",
    "hidden_size",
    "é",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(chars.len() + 1);
        match rng.below(5) {
            0 => chars.truncate(at),
            1 => {
                let end = (at + 1 + rng.below(12)).min(chars.len());
                if at < end {
                    chars.drain(at..end);
                }
            }
            2 | 3 => {
                let tok = TOKENS[rng.below(TOKENS.len())];
                chars.splice(at..at, tok.chars());
            }
            _ => {
                let end = (at + 1 + rng.below(20)).min(chars.len());
                let piece: Vec<char> = chars[at.min(end)..end].to_vec();
                let to = rng.below(chars.len() + 1);
                chars.splice(to..to, piece);
            }
        }
    }
    chars.into_iter().collect()
}

fn corpus() -> Vec<String> {
    let mut out: Vec<String> = wmap::stdlib::FILES
        .iter()
        .map(|(_, t)| t.to_string())
        .collect();
    for dir in ["tests/fixtures/errors", "tests/fixtures/lang"] {
        let mut paths: Vec<_> = std::fs::read_dir(common::root().join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "wmap"))
            .collect();
        paths.sort();
        // Lossy: the E0105 fixture is deliberately not UTF-8.
        out.extend(
            paths
                .iter()
                .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned()),
        );
    }
    out
}

fn compile_text(text: &str, config: &Path) -> Result<(), String> {
    let source = ModelSource::Text {
        name: "fuzz.wmap".into(),
        text: text.into(),
    };
    match catch_unwind(AssertUnwindSafe(|| driver::compile(&source, Some(config)))) {
        Ok(Ok(c)) => {
            // Rendering must not panic either.
            let _ = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
            let _ = wmap::diag::render_json(&c.sources, &c.diags);
            Ok(())
        }
        Ok(Err(_)) => Ok(()), // an application error is a fine answer
        Err(_) => Err(text.to_string()),
    }
}

#[test]
fn mutated_wmap_files_never_panic() {
    let configs = [
        common::root().join("tests/fixtures/hf/llama/config.json"),
        common::root().join("tests/fixtures/hf/nemotron_h_moe/config.hub.json"),
    ];
    let corpus = corpus();
    let mut rng = Rng(0x5EED_0001);
    for case in 0..4000 {
        let base = &corpus[rng.below(corpus.len())];
        let text = mutate(&mut rng, base);
        let config = &configs[case % configs.len()];
        if let Err(text) = compile_text(&text, config) {
            panic!("case {case} panicked on:\n{text}");
        }
    }
}

#[test]
fn pathological_nesting_is_a_diagnostic_not_a_crash() {
    let config = common::root().join("tests/fixtures/hf/llama/config.json");
    let deep = format!(
        "model M for \"X\" {{ param p: [{}1{}] from \"w\" }}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let c = driver::compile(
        &ModelSource::Text {
            name: "deep.wmap".into(),
            text: deep,
        },
        Some(&config),
    )
    .unwrap();
    assert_eq!(c.diags.items[0].code.as_str(), "E0104");
    // Nesting within the limit still parses.
    let ok = format!(
        "model M for \"X\" {{ param p: [{}8{}] from \"w\" }}",
        "(".repeat(40),
        ")".repeat(40)
    );
    let c = driver::compile(
        &ModelSource::Text {
            name: "ok.wmap".into(),
            text: ok,
        },
        Some(&config),
    )
    .unwrap();
    assert!(c.ok());
}

#[test]
fn mutated_configs_never_panic() {
    let dir = std::env::temp_dir().join(format!("wmap-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bases: Vec<String> = common::hf_configs()
        .iter()
        .map(|(_, p)| std::fs::read_to_string(common::root().join(p)).unwrap())
        .collect();
    let mut rng = Rng(0x5EED_0002);
    let path = dir.join("config.json");
    for case in 0..400 {
        let text = match case {
            0 => "[".repeat(100_000),
            1 => "{\"a\": ".repeat(10_000),
            2 => "\u{feff}{}".to_string(),
            _ => {
                let base = &bases[rng.below(bases.len())];
                mutate(&mut rng, base)
            }
        };
        std::fs::write(&path, &text).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            driver::compile(&ModelSource::Detect, Some(&path))
        }));
        assert!(r.is_ok(), "config case {case} panicked on:\n{text}");
    }
}

/// Compiles `text` against `config` (JSON text) on a thread with the default 2 MiB stack,
/// returning the first diagnostic's code and how long it took. The limits must hold
/// without the big-stack thread the CLI runs on.
fn first_code(text: String, config: String) -> (Option<String>, std::time::Duration) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = common::tempdir(&format!("fuzz-limits-{n}")).join("config.json");
    std::fs::write(&path, config).unwrap();
    let worker = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let started = std::time::Instant::now();
            let source = ModelSource::Text {
                name: "hostile.wmap".into(),
                text,
            };
            let c = driver::compile(&source, Some(&path)).unwrap();
            let first = c.diags.items.first().map(|d| d.code.as_str().to_string());
            // Dropping the compilation (and its AST) is part of the work being bounded.
            drop(c);
            (first, started.elapsed())
        })
        .unwrap();
    worker.join().expect("the compiler thread must not crash")
}

const LLAMA_LIKE: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8,
    "num_hidden_layers": 2, "num_experts": 4, "vocab_size": 16}"#;

/// A model whose single param's first dimension is `expr`.
fn with_dim(expr: &str) -> String {
    format!("model M for \"X\" {{ config d = {expr}\n param p: [d] from \"w\" }}")
}

fn assert_code(what: &str, text: String, config: &str, code: &str) {
    let (first, took) = first_code(text, config.to_string());
    assert_eq!(first.as_deref(), Some(code), "{what}");
    assert!(took.as_secs() < 60, "{what}: took {took:?}");
}

#[test]
fn operator_chains_are_limited_where_the_tree_is_built() {
    for n in [10_000, 100_000] {
        let chain = vec!["1"; n].join(" + ");
        assert_code(
            &format!("{n}-term chain"),
            with_dim(&chain),
            LLAMA_LIKE,
            "E0104",
        );
    }
    let mixed = vec!["1"; 20_000].join(" * 1 + ");
    assert_code("mixed chain", with_dim(&mixed), LLAMA_LIKE, "E0104");
    // Within the limit, a long chain still evaluates.
    let ok = vec!["1"; 200].join(" + ");
    assert_eq!(first_code(with_dim(&ok), LLAMA_LIKE.into()).0, None);
}

#[test]
fn prefix_runs_are_limited_before_the_pratt_parser() {
    for n in [10_000, 100_000] {
        let neg = format!("{}1", "- ".repeat(n));
        assert_code(&format!("{n} `-`"), with_dim(&neg), LLAMA_LIKE, "E0104");
        let not = format!("{}true", "not ".repeat(n));
        let text = format!("model M for \"X\" {{ param p: [1] when {not} from \"w\" }}");
        assert_code(&format!("{n} `not`"), text, LLAMA_LIKE, "E0104");
    }
    // Just under the prefix limit the Pratt parser recurses 256 times: that must fit the
    // default stack, and the tree it builds is then limited by depth.
    let neg = format!("{}1", "- ".repeat(256));
    assert_code("256 `-`", with_dim(&neg), LLAMA_LIKE, "E0104");
    let spread = vec!["not 1"; 256].join(" == ");
    let text = format!("model M for \"X\" {{ param p: [1] when {spread} from \"w\" }}");
    assert_code("256 spread `not`", text, LLAMA_LIKE, "E0104");
    let ok = format!("{}1", "- ".repeat(200));
    assert_eq!(first_code(with_dim(&ok), LLAMA_LIKE.into()).0, None);
    // `not` takes the rest of a comparison chain as its operand: not consecutive, still deep.
    let spread = vec!["not 1"; 5_000].join(" == ");
    let text = format!("model M for \"X\" {{ param p: [1] when {spread} from \"w\" }}");
    assert_code("spread `not`", text, LLAMA_LIKE, "E0104");
}

#[test]
fn postfix_chains_are_limited() {
    for n in [10_000, 100_000] {
        let idx = format!("[1]{}", "[0]".repeat(n));
        assert_code(&format!("{n} `[0]`"), with_dim(&idx), LLAMA_LIKE, "E0104");
    }
}

#[test]
fn deep_config_chains_end_in_a_code() {
    let chain: String = (1..20_000)
        .map(|i| format!("config a{i} = a{} + 1\n", i - 1))
        .collect();
    let text =
        format!("config a0 = 1\n{chain}model M for \"X\" {{ param p: [a19999] from \"w\" }}");
    assert_code("20k config chain", text, LLAMA_LIKE, "E0305");
    let doubling: String = (1..60)
        .map(|i| format!("config a{i} = a{} + a{}\n", i - 1, i - 1))
        .collect();
    let text =
        format!("config a0 = 1\n{doubling}model M for \"X\" {{ param p: [a59] from \"w\" }}");
    assert_code("doubling chain", text, LLAMA_LIKE, "E0306");
    // Inside a declaration, chained items are scoped `config` members: same limit.
    let chain: String = (1..20_000)
        .map(|i| format!("config a{i} = a{} + 1\n", i - 1))
        .collect();
    let text =
        format!("model M for \"X\" {{ config a0 = 1\n{chain} param p: [a19999] from \"w\" }}");
    assert_code("20k member chain", text, LLAMA_LIKE, "E0305");
}

#[test]
fn deep_instance_chains_end_in_a_code() {
    let chain: String = (1..20_000)
        .map(|i| format!("module M{i} {{ x: M{} }}\n", i + 1))
        .collect();
    let text = format!(
        "model Top for \"X\" {{ m: M1 }}\n{chain}module M20000 {{ param w: [1] from \"w\" }}"
    );
    assert_code("20k instance chain", text, LLAMA_LIKE, "E0211");
    // A cycle through 20k modules is still found, without recursion.
    let cycle: String = (1..20_000)
        .map(|i| format!("module M{i} {{ x: M{} }}\n", i % 19_999 + 1))
        .collect();
    let text = format!("model Top for \"X\" {{ m: M1 }}\n{cycle}");
    assert_code("20k instance cycle", text, LLAMA_LIKE, "E0205");
}

/// The worst a file may do within every limit: the deepest instance chain, with the
/// deepest evaluation at the bottom. It must fit the default 2 MiB stack in a debug build.
#[test]
fn all_limits_at_once_fit_the_default_stack() {
    let depth = wmap::resolve::MAX_INSTANCE_DEPTH - 1;
    let chain: String = (1..depth)
        .map(|i| format!("module M{i} {{ x: M{} }}\n", i + 1))
        .collect();
    let items: String = (1..120)
        .map(|i| format!("config a{i} = a{} + 1\n", i - 1))
        .collect();
    let text = format!(
        "config a0 = 1\n{items}model Top for \"X\" {{ m: M1 }}\n{chain}module M{depth} {{ param w: [a119] from \"w\" }}"
    );
    let (first, _) = first_code(text, LLAMA_LIKE.into());
    assert_eq!(first, None);
    // The same with every level a repeat (of one index, whose `when` reads it): the
    // repeat walk adds frames per level, and the bottom still nests through 120 items.
    let chain: String = (1..depth)
        .map(|i| {
            format!(
                "module M{i} {{ x: M{}[v{i} in 0..1] when v{i} >= 0 }}\n",
                i + 1
            )
        })
        .collect();
    let text = format!(
        "config a0 = 1\n{items}model Top for \"X\" {{ m: M1 }}\n{chain}module M{depth} {{ param w: [a119 + v1] from \"w\" }}"
    );
    let (first, _) = first_code(text, LLAMA_LIKE.into());
    assert_eq!(first, None);
    // Sources nest as deep as brackets allow (64 with the module's `{` and the `[1]`),
    // at the bottom of the deepest instance chain.
    let nested = format!("{}\"w\": [1]{}", "reshape(".repeat(62), ", [1])".repeat(62));
    let text = format!(
        "model Top for \"X\" {{ m: M1 }}\n{chain}module M{depth} {{ param w: [1] from {nested} }}"
    );
    let (first, _) = first_code(text, LLAMA_LIKE.into());
    assert_eq!(first, None);
}

/// A stdlib model's config with `keys` set to literal JSON values, compiled with model
/// detection; returns the first error code and the time taken.
fn with_config_values(model: &str, keys: &[(&str, &str)]) -> (Option<String>, std::time::Duration) {
    let path = common::root().join(format!("tests/fixtures/hf/{model}/config.json"));
    let mut json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (key, _) in keys {
        json.insert(key.to_string(), serde_json::Value::Null);
    }
    let mut text = serde_json::to_string(&json).unwrap();
    for (key, value) in keys {
        text = text.replace(&format!("\"{key}\":null"), &format!("\"{key}\":{value}"));
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cfg = common::tempdir(&format!("fuzz-count-{n}")).join("config.json");
    std::fs::write(&cfg, text).unwrap();
    let started = std::time::Instant::now();
    let c = driver::compile(&ModelSource::Detect, Some(&cfg)).unwrap();
    let first = c
        .diags
        .items
        .iter()
        .find(|d| d.code.as_str().starts_with('E'));
    (
        first.map(|d| d.code.as_str().to_string()),
        started.elapsed(),
    )
}

#[test]
fn huge_layer_counts_are_capped_in_bounded_time() {
    let cases = [
        ("1000000", Some("E0412")),
        ("1000000000", Some("E0412")),
        ("100000000000000000", Some("E0412")),
        ("9223372036854775807", Some("E0412")),
        // 2^63 does not fit an integer: the config's type is wrong.
        ("9223372036854775808", Some("E0303")),
        ("-5", Some("E0401")),
        ("1e9", Some("E0303")),
        ("12.5", Some("E0303")),
        // At the cap, a model whose layers are alike is checked once, not 65 536 times.
        ("65536", None),
    ];
    for (value, want) in cases {
        let (got, took) = with_config_values("llama", &[("num_hidden_layers", value)]);
        assert_eq!(got.as_deref(), want, "num_hidden_layers = {value}");
        assert!(took.as_secs() < 60, "num_hidden_layers = {value}: {took:?}");
    }
}

#[test]
fn huge_expert_counts_are_capped_in_bounded_time() {
    for (value, want) in [
        ("1000000000", Some("E0412")),
        ("100000000000000000", Some("E0412")),
        // [i64::MAX, 256, 128] does not even fit 64 bits.
        ("9223372036854775807", Some("E0411")),
        ("8.5", Some("E0303")),
        // No experts: the `when num_experts > 0` guards pick the dense MLP.
        ("-1", None),
        ("65536", None),
    ] {
        let (got, took) = with_config_values("qwen3_moe", &[("num_experts", value)]);
        assert_eq!(got.as_deref(), want, "num_experts = {value}");
        assert!(took.as_secs() < 60, "num_experts = {value}: {took:?}");
    }
    // Each count within its cap, their product is not: the model as a whole is refused.
    let both = [("num_experts", "1000"), ("num_hidden_layers", "65536")];
    let (got, took) = with_config_values("qwen3_moe", &both);
    assert_eq!(got.as_deref(), Some("E0412"));
    assert!(took.as_secs() < 60, "{took:?}");
}

/// `catch_unwind` cannot see a stack overflow or an allocation failure: they abort the
/// process. Run the real binary on the worst inputs and require a clean exit 1.
#[test]
fn the_binary_exits_1_on_hostile_input_without_a_signal() {
    let dir = common::tempdir("fuzz-process");
    let config = dir.join("config.json");
    std::fs::write(&config, LLAMA_LIKE).unwrap();
    let chain = vec!["1"; 100_000].join(" + ");
    let cases = [
        ("chain", with_dim(&chain), "E0104"),
        (
            "neg",
            with_dim(&format!("{}1", "- ".repeat(100_000))),
            "E0104",
        ),
        (
            "not",
            with_dim(&format!("{}true", "not ".repeat(100_000))),
            "E0104",
        ),
        (
            "index",
            with_dim(&format!("[1]{}", "[0]".repeat(100_000))),
            "E0104",
        ),
    ];
    for (name, text, code) in cases {
        let file = dir.join(format!("{name}.wmap"));
        std::fs::write(&file, text).unwrap();
        assert_exit_1(
            &[file.as_os_str(), "--config".as_ref(), config.as_os_str()],
            code,
        );
    }
    let billion = dir.join("billion.json");
    let llama = common::root().join("tests/fixtures/hf/llama/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(llama).unwrap()).unwrap();
    json["num_hidden_layers"] = 1_000_000_000u64.into();
    std::fs::write(&billion, json.to_string()).unwrap();
    assert_exit_1(&["--config".as_ref(), billion.as_os_str()], "E0412");
    // Text that is not UTF-8 is an error in the input (exit 1), not an I/O failure.
    let latin1 = dir.join("latin1.json");
    std::fs::write(&latin1, b"{\"name\": \"caf\xe9\"}").unwrap();
    assert_exit_1(&["--config".as_ref(), latin1.as_os_str()], "E0302");
    let model = dir.join("latin1.wmap");
    std::fs::write(&model, b"# mod\xe8le\n").unwrap();
    assert_exit_1(
        &[model.as_os_str(), "--config".as_ref(), config.as_os_str()],
        "E0105",
    );
}

fn assert_exit_1(args: &[&std::ffi::OsStr], code: &str) {
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wmapc"))
        .arg("check")
        .args(args)
        .args(["--color", "never"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: {:?}\n{stderr}",
        out.status
    );
    assert!(stderr.contains(&format!("[{code}/")), "{args:?}:\n{stderr}");
    assert!(
        started.elapsed().as_secs() < 60,
        "{args:?}: {:?}",
        started.elapsed()
    );
}

#[test]
fn integer_edge_cases_are_errors_not_panics() {
    let min = "(-9223372036854775807 - 1)";
    for (expr, code) in [
        (format!("{min} % -1"), "E0411"),
        (format!("{min} / -1"), "E0411"),
        (format!("-{min}"), "E0411"),
        (format!("{min} * -1"), "E0411"),
        (format!("{min} - 1"), "E0411"),
        ("7 / 0".to_string(), "E0409"),
        ("7 % 0".to_string(), "E0409"),
        ("7 / 2".to_string(), "E0402"),
    ] {
        let (first, _) = first_code(with_dim(&expr), LLAMA_LIKE.into());
        assert_eq!(first.as_deref(), Some(code), "{expr}");
    }
    // 896 × 7905747460161236407 wraps to 128: a reshape of a [128] tensor must not pass.
    let text = r#"model M for "X" { param w: [128] from reshape("w": [128], [896, 7905747460161236407]) }"#;
    let (first, _) = first_code(text.to_string(), LLAMA_LIKE.into());
    assert_eq!(first.as_deref(), Some("E0411"));
}

/// Bodies that differ at every index are walked once per index, and no more: nested
/// repeats cannot multiply the walks past a cap.
#[test]
fn index_dependent_bodies_are_bounded() {
    let per_layer = r#"module Block { param w: [layer + 1] from "w" }
model M for "X" { layers: Block[layer in 0..num_hidden_layers] at "l.{layer}" }"#;
    let config = r#"{"num_hidden_layers": 65536, "num_experts": 2}"#;
    let (first, took) = first_code(per_layer.to_string(), config.to_string());
    assert_eq!(first, None, "65 536 distinct layers are allowed");
    assert!(took.as_secs() < 90, "{took:?}");
    let nested = r#"module Expert { param w: [layer + e + 1] from "w" }
module Block { experts: Expert[e in 0..num_experts] at "e.{e}" }
model M for "X" { layers: Block[layer in 0..num_hidden_layers] at "l.{layer}" }"#;
    assert_code("nested distinct", nested.to_string(), config, "E0412");
}
