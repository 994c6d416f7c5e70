//! Bad input never panics: a bounded, deterministic corpus of mutated `.wmap` files and
//! configs goes through the whole front end. Every run sees the same cases (a fixed
//! seed), so a failure reproduces; the case index is in the message.

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
        out.extend(paths.iter().map(|p| std::fs::read_to_string(p).unwrap()));
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
    assert_eq!(c.diags.items[0].code.as_str(), "E0101");
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
