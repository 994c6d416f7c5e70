//! `wmapc` as a process: closed pipes, the panic hook, and load summaries that tell the
//! truth (snapshotted whole, with timings redacted).

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};

fn wmapc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wmapc"));
    c.current_dir(common::root()).env("NO_COLOR", "1");
    c
}

/// Runs with stdout the write end of a pipe whose read end is already closed, so every
/// write to stdout fails with EPIPE.
fn with_closed_stdout(args: &[&str]) -> Output {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe(2) returned two fresh descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    wmapc()
        .args(args)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_ends_quietly() {
    for args in [
        &["explain"][..],
        &["explain", "E0301"],
        &["stdlib"],
        &[
            "plan",
            "--checkpoint",
            "tests/fixtures/hf/qwen3_moe",
            "--format",
            "json",
        ],
        &[
            "lower",
            "--model",
            "llama",
            "--config",
            "tests/fixtures/hf/llama/config.json",
        ],
        &["load", "tests/fixtures/hf/llama", "--quiet"],
    ] {
        let o = with_closed_stdout(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn a_panic_is_one_bug_report_line_and_exit_2() {
    let o = wmapc()
        .arg("stdlib")
        .env("WMAPC_TEST_PANIC", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error[E0901/internal-error]: wmapc crashed: WMAPC_TEST_PANIC is set at src/cli/mod.rs:"),
        "{stderr}"
    );
    assert!(
        lines[0].ends_with("; this is a bug in wmapc, please report it"),
        "{stderr}"
    );
    assert!(o.stdout.is_empty());
}

/// `0.012 s` → `[T] s` and `0.06 GB/s` → `[T] GB/s` (timings differ run to run), and
/// the output folder → `[OUT]`.
fn redact(text: &str, out: &str) -> String {
    let text = if out.is_empty() {
        text.to_string()
    } else {
        text.replace(out, "[OUT]")
    };
    let mut shown = String::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let redacted: Vec<&str> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let unit = words.get(i + 1).map(|u| u.trim_end_matches(','));
                let timed = matches!(unit, Some("s" | "GB/s")) && w.parse::<f64>().is_ok();
                if timed {
                    "[T]"
                } else {
                    w
                }
            })
            .collect();
        shown.push_str(&redacted.join(" "));
        shown.push('\n');
    }
    shown
}

fn snapshot(name: &str, args: &[&str], out: &str) {
    let o = wmapc().args(args).output().unwrap();
    let text = format!(
        "args: {}\nexit: {}\n----- stdout -----\n{}----- stderr -----\n{}",
        redact(&args.join(" "), out).trim_end(),
        o.status.code().unwrap_or(-1),
        redact(&String::from_utf8_lossy(&o.stdout), out),
        redact(&String::from_utf8_lossy(&o.stderr), out),
    );
    insta::with_settings!({ snapshot_path => "snapshots/cli", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn quant_summary_has_no_error_line_and_counts_produced_bytes() {
    snapshot(
        "load_quant_summary",
        &[
            "load",
            "tests/fixtures/hf/llama",
            "--quiet",
            "--quant",
            "nf4",
        ],
        "",
    );
}

#[test]
fn quant_out_prints_the_summary_and_the_bytes_written() {
    let dir = common::tempdir("cli-quant-out");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    snapshot(
        "load_quant_out_summary",
        &[
            "load",
            "tests/fixtures/hf/llama",
            "--quiet",
            "--quant",
            "nf4",
            "--out",
            o,
        ],
        o,
    );
    let written: u64 = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let again = wmapc()
        .args([
            "load",
            "tests/fixtures/hf/llama",
            "--quiet",
            "--quant",
            "nf4",
            "--out",
            o,
            "--force",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    let shown = format!("{:.1} MB written", written as f64 / 1e6);
    assert!(stdout.contains(&shown), "{shown} in {stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(
    feature = "cuda",
    ignore = "a CUDA build may find a device and not fall back"
)]
fn device_auto_says_when_it_falls_back_to_the_cpu() {
    snapshot(
        "load_device_auto_note",
        &[
            "load",
            "tests/fixtures/hf/llama",
            "--quiet",
            "--device",
            "auto",
        ],
        "",
    );
}

#[test]
fn progress_off_a_terminal_is_plain_labelled_lines() {
    // A load shorter than 2 s prints no progress lines in a log.
    let short = wmapc()
        .args(["load", "tests/fixtures/hf/qwen3_moe"])
        .output()
        .unwrap();
    assert_eq!(short.status.code(), Some(0));
    assert!(
        short.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    // Lines from the start (the 2 s wait set to 0 in this test build).
    let o = wmapc()
        .args(["load", "tests/fixtures/hf/qwen3_moe"])
        .env("WMAPC_TEST_PROGRESS_AFTER_MS", "0")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "{stderr}");
    for l in &lines {
        assert!(l.starts_with("loading Qwen3Moe: "), "{l}");
    }
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("loading Qwen3Moe: 100 % ("),
        "{stderr}"
    );
    let quiet = wmapc()
        .args(["load", "tests/fixtures/hf/qwen3_moe", "--quiet"])
        .output()
        .unwrap();
    assert!(quiet.stderr.is_empty());
}
