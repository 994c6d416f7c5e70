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
//!
//! Runtime codes (output, usage) have `.cli` fixtures instead: a POSIX sh script with the
//! header `# expect = "E0601"` and `# exit = 2`, run by `sh` in a fresh empty folder with
//! `WMAPC` (the binary) and `FIXTURES` (absolute `tests/fixtures`) in its environment. Its
//! last command is the `wmapc` invocation under test; the script's exit status must be
//! `exit`, its stderr must hold `[<CODE>/`, and the snapshot holds the script and its
//! output with the temporary folder's path redacted. `# requires = "cuda"` (or
//! `"no-cuda"`) runs a fixture only in builds with (without) the `cuda` feature, where
//! its message differs.

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

/// A `.cli` fixture: a shell script ending in the `wmapc` run under test.
struct CliFixture {
    path: PathBuf,
    expect: String,
    exit: i32,
    /// `# requires = "cuda"` or `"no-cuda"`: runs only in builds with (without) the
    /// `cuda` feature, whose messages differ; `None` runs everywhere.
    cuda: Option<bool>,
}

fn cli_fixtures() -> Vec<CliFixture> {
    let dir = common::root().join("tests/fixtures/errors");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cli"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let header = |key: &str| {
                header_value(&text, key)
                    .unwrap_or_else(|| panic!("{} has no `# {key} = …` header", path.display()))
            };
            let exit = header("exit")
                .parse()
                .unwrap_or_else(|_| panic!("{}: `# exit` must be a number", path.display()));
            CliFixture {
                expect: header("expect"),
                exit,
                cuda: match header_value(&text, "requires").as_deref() {
                    Some("cuda") => Some(true),
                    Some("no-cuda") => Some(false),
                    _ => None,
                },
                path: common::rel(&path),
            }
        })
        .collect()
}

/// Runs one `.cli` script in a fresh folder; returns (exit status, stdout, stderr) with
/// the folder's path replaced by `[TMP]`.
fn run_cli_fixture(f: &CliFixture) -> (i32, String, String) {
    let stem = f.path.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = common::tempdir(&format!("cli-{stem}"));
    let out = std::process::Command::new("sh")
        .arg(common::root().join(&f.path))
        .current_dir(&dir)
        .env("WMAPC", env!("CARGO_BIN_EXE_wmapc"))
        .env("FIXTURES", common::root().join("tests/fixtures"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: cannot run sh: {e}", f.path.display()));
    let redact = |b: &[u8]| {
        let text = String::from_utf8_lossy(b).into_owned();
        redact_pids(&text.replace(&dir.display().to_string(), "[TMP]"))
    };
    let run = (
        out.status.code().unwrap_or(-1),
        redact(&out.stdout),
        redact(&out.stderr),
    );
    let _ = std::fs::remove_dir_all(&dir);
    run
}

/// `.out.tmp-4242` → `.out.tmp-[PID]` and `main.rs:12:5` → `main.rs:[LINE]`: process ids
/// differ from run to run, and a panic's line moves with every edit of its file.
fn redact_pids(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    loop {
        let next = [(".tmp-", "[PID]"), (".old-", "[PID]"), (".rs:", "[LINE]")]
            .iter()
            .filter_map(|(m, with)| rest.find(m).map(|i| (i + m.len(), *with)))
            .min();
        let Some((at, with)) = next else { break };
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            rest = rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == ':');
            out.push_str(with);
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn every_cli_fixture_reports_its_code() {
    for f in cli_fixtures() {
        if f.cuda.is_some_and(|c| c != cfg!(feature = "cuda")) {
            continue;
        }
        let (code, stdout, stderr) = run_cli_fixture(&f);
        let shown =
            format!("exit: {code}\n----- stdout -----\n{stdout}----- stderr -----\n{stderr}");
        assert_eq!(code, f.exit, "{}: exit status\n{shown}", f.path.display());
        assert!(
            stderr.contains(&format!("[{}/", f.expect)),
            "{}: stderr lacks [{}/\n{shown}",
            f.path.display(),
            f.expect
        );
        let text = std::fs::read_to_string(common::root().join(&f.path)).unwrap();
        let name = f.path.file_name().unwrap().to_string_lossy().into_owned();
        insta::with_settings!({ snapshot_path => "snapshots/errors", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(name, format!("{text}\n{shown}"));
        });
    }
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
    // Codes no fixture can reach on a machine without a GPU, each covered elsewhere:
    let no_fixture = [
        // a bug in wmapc; no input is supposed to reach it
        Code::E0901,
        // a file that changes under the loader (or a full disk): tests/checkpoint.rs
        Code::E0511,
        // a copy thread or device copy that fails: cuda/error.rs unit test
        Code::E0702,
        // a library caller's `get` of an unknown name (the CLI asks only for known ones):
        // tests/weights.rs
        Code::E0703,
        // a GPU with fewer devices than asked for: cuda/error.rs unit test
        Code::E0712,
        // a CUDA build whose NVRTC fails: tests/kernels.rs, cuda/error.rs unit test
        Code::E0713,
        // GPU kernels' limits (block sizes, whole-tensor formats): cuda/error.rs unit test
        Code::E0714,
        // a failing CUDA driver call (out of memory, …): cuda/error.rs unit test
        Code::E0715,
        // IR JSON read by library users, which no CLI command reads: tests/ir.rs
        Code::E0413,
    ];
    let fixtures = fixtures();
    // (file stem, expected code) of every fixture: `.wmap` ones and `.cli` scripts.
    let mut named: Vec<(String, String)> = fixtures
        .iter()
        .map(|f| {
            (
                f.path.file_stem().unwrap().to_string_lossy().into_owned(),
                f.expect.clone(),
            )
        })
        .collect();
    for path in walk(&common::root().join("tests/fixtures/errors")) {
        if path.extension().is_some_and(|e| e == "cli") {
            let text = std::fs::read_to_string(&path).unwrap();
            let expect = header_value(&text, "expect")
                .unwrap_or_else(|| panic!("{} has no `# expect` header", path.display()));
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            named.push((stem, expect));
        }
    }
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
        let fx: Vec<&String> = named
            .iter()
            .filter(|(_, e)| e == c)
            .map(|(stem, _)| stem)
            .collect();
        if !no_fixture.contains(code) {
            assert!(
                !fx.is_empty(),
                "{c} has no fixture in tests/fixtures/errors"
            );
        }
        // `E0501-checkpoint-not-found`, or `E0501-checkpoint-not-found-2` for a second one.
        let base = format!("{c}-{}", code.name());
        for stem in fx {
            let suffix = stem.strip_prefix(&base);
            assert!(
                suffix.is_some_and(|s| s.is_empty()
                    || s.strip_prefix('-')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))),
                "fixture `{stem}` must be named `{base}` or `{base}-<n>`"
            );
        }
    }
    for (stem, expect) in &named {
        assert!(
            Code::ALL.iter().any(|c| c.as_str() == expect),
            "fixture {stem} expects unknown code {expect}"
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
