//! One fixture per diagnostic code: `tests/fixtures/errors/<CODE>-<slug>.wmap`.
//!
//! Each fixture starts with a comment header:
//!   `# expect = "E0301"`             the code the first diagnostic must carry
//!   `# config = "hf/llama/config.json"` optional, relative to `tests/fixtures/`
//!   `# mode = "detect"`              optional: run without the file, detecting the model
//!                                      from the config (for codes about detection)
//!   `# checkpoint = "errors/checkpoints/x"` optional, relative to `tests/fixtures/`: also
//!                                      bind to this checkpoint folder (codes E05xx)
//!   `# strict = true`                optional: unclaimed tensors are errors
//! The snapshot holds the source and the rendered diagnostics, so a reviewer sees both.

mod common;

use std::path::PathBuf;

use wmap::diag::{self, Code, Color};
use wmap::driver::{self, ModelSource};

struct Fixture {
    path: PathBuf,
    expect: String,
    config: Option<PathBuf>,
    detect: bool,
    checkpoint: Option<PathBuf>,
    strict: bool,
}

fn header_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| {
            let rest = l.trim_start_matches('#').trim();
            let (k, v) = rest.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
}

fn fixtures() -> Vec<Fixture> {
    let dir = common::root().join("tests/fixtures/errors");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wmap"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            let expect = header_value(&text, "expect").unwrap_or_else(|| {
                panic!("{} has no `# expect = \"CODE\"` header", path.display())
            });
            let config =
                header_value(&text, "config").map(|c| PathBuf::from("tests/fixtures").join(c));
            let detect = header_value(&text, "mode").as_deref() == Some("detect");
            let checkpoint =
                header_value(&text, "checkpoint").map(|c| PathBuf::from("tests/fixtures").join(c));
            let strict = header_value(&text, "strict").as_deref() == Some("true");
            Fixture {
                path: common::rel(&path),
                expect,
                config,
                detect,
                checkpoint,
                strict,
            }
        })
        .collect()
}

#[test]
fn every_error_fixture_reports_its_code() {
    let fixtures = fixtures();
    assert!(!fixtures.is_empty());
    for f in fixtures {
        let source = if f.detect {
            ModelSource::Detect
        } else {
            ModelSource::File(f.path.clone())
        };
        let mut c = driver::compile(&source, f.config.as_deref())
            .unwrap_or_else(|e| panic!("{}: application error {e:?}", f.path.display()));
        if let Some(dir) = &f.checkpoint {
            driver::bind(&mut c, dir, f.strict);
        }
        let first = c.diags.items.first().map(|d| d.code.as_str());
        assert_eq!(
            first,
            Some(f.expect.as_str()),
            "{}: first diagnostic",
            f.path.display()
        );
        let rendered = diag::render_human(&c.sources, &c.diags, Color::Never);
        let text = String::from_utf8_lossy(&std::fs::read(&f.path).unwrap()).into_owned();
        let name = f.path.file_stem().unwrap().to_string_lossy().into_owned();
        insta::with_settings!({ snapshot_path => "snapshots/errors", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(name, format!("{text}\n----- diagnostics -----\n{rendered}"));
        });
    }
}

/// Codes, explain pages, fixtures and uses in `src/` must not drift apart.
#[test]
fn codes_pages_fixtures_and_uses_agree() {
    // E0901 marks a bug in wmapc; no input is supposed to reach it. E0511 needs a file
    // that changes under the loader (or a full disk); `tests/checkpoint.rs` covers it.
    // E0413 is about IR JSON read by library users, which no CLI command reads;
    // `tests/ir.rs` covers it.
    let no_fixture = [Code::E0901, Code::E0511, Code::E0413];
    let fixtures = fixtures();
    let mut src = String::new();
    for entry in walk(&common::root().join("src")) {
        if entry.extension().is_some_and(|e| e == "rs") && !entry.ends_with("diag/codes.rs") {
            src.push_str(&std::fs::read_to_string(&entry).unwrap());
        }
    }
    for code in Code::ALL {
        let c = code.as_str();
        assert!(
            code.explain()
                .starts_with(&format!("# {c}: {}\n", code.name())),
            "explain page of {c} must start with `# {c}: {}`",
            code.name()
        );
        assert!(
            code.explain().contains("## Example"),
            "explain page of {c} needs an example"
        );
        assert!(
            src.contains(&format!("Code::{c}")),
            "{c} is never reported by src/"
        );
        if !no_fixture.contains(code) {
            let fx: Vec<_> = fixtures.iter().filter(|f| f.expect == c).collect();
            assert!(
                !fx.is_empty(),
                "{c} has no fixture in tests/fixtures/errors"
            );
            for f in fx {
                let stem = f.path.file_stem().unwrap().to_string_lossy().into_owned();
                assert!(
                    stem.starts_with(&format!("{c}-")),
                    "{} must be named {c}-<slug>.wmap",
                    f.path.display()
                );
            }
        }
    }
    for f in &fixtures {
        assert!(
            Code::ALL.iter().any(|c| c.as_str() == f.expect),
            "{} expects unknown code {}",
            f.path.display(),
            f.expect
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
