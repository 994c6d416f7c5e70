//! `wmapc load --out` as processes: what `--force` may replace, what is left behind after
//! refusals, signals and races, and that stale folders of dead runs are cleaned up.
//! (The refusals' exact messages are the `.cli` fixtures in `tests/fixtures/errors`.)
//! Races are driven by `WMAPC_TEST_DELAY_MS`, read by debug builds only.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn wmapc(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wmapc"));
    c.current_dir(dir).env("NO_COLOR", "1");
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    wmapc(dir).args(args).output().unwrap()
}

/// A fresh folder holding a copy of the llama fixture as `ck`.
fn workspace(name: &str) -> PathBuf {
    let dir = common::tempdir(&format!("output-{name}"));
    let ck = dir.join("ck");
    std::fs::create_dir(&ck).unwrap();
    for e in std::fs::read_dir(common::root().join("tests/fixtures/hf/llama")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    dir
}

/// Every entry below `dir`, relative, sorted: what a refused run must leave as it was.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for p in walk(dir) {
        let len = std::fs::symlink_metadata(&p).unwrap().len();
        out.push((p.strip_prefix(dir).unwrap().display().to_string(), len));
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn refused_outputs_leave_everything_in_place() {
    let dir = workspace("refused");
    std::fs::create_dir_all(dir.join("junk/sub")).unwrap();
    std::fs::write(dir.join("junk/notes.txt"), "keep").unwrap();
    std::fs::write(dir.join("junk/sub/more.txt"), "keep").unwrap();
    std::fs::write(dir.join("file"), "keep").unwrap();
    let before = tree(&dir);
    for (out, expect) in [
        ("ck", "E0603"),
        ("ck/inner", "E0603"),
        (".", "E0604"),
        ("..", "E0604"),
        ("junk", "E0602"),
        ("file", "E0605"),
    ] {
        let o = run(&dir, &["load", "ck", "--out", out, "--force", "--quiet"]);
        assert_eq!(code(&o), 2, "--out {out}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("[{expect}/")),
            "--out {out}: {}",
            stderr(&o)
        );
        assert_eq!(tree(&dir), before, "--out {out} changed the folder");
    }
    let parent = dir.join("nest");
    std::fs::create_dir(&parent).unwrap();
    std::fs::rename(dir.join("ck"), parent.join("ck")).unwrap();
    let before = tree(&dir);
    let o = run(
        &dir,
        &["load", "nest/ck", "--out", "nest", "--force", "--quiet"],
    );
    assert!(stderr(&o).contains("[E0603/"), "{}", stderr(&o));
    assert_eq!(tree(&dir), before);
}

#[test]
fn force_replaces_an_earlier_output_and_leaves_no_siblings() {
    let dir = workspace("force");
    let first = run(&dir, &["load", "ck", "--out", "out", "--quiet"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let marker = std::fs::read_to_string(dir.join("out/.wmapc-output")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&marker).unwrap();
    assert_eq!(m["files"], serde_json::json!(["model.safetensors"]));
    let ino = |p: PathBuf| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let old = ino(dir.join("out"));
    let again = run(&dir, &["load", "ck", "--out", "out", "--force", "--quiet"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_ne!(ino(dir.join("out")), old, "a new folder was renamed in");
    assert_eq!(names(&dir), ["ck", "out"], "no .tmp, .old or .lock left");
    assert_eq!(
        names(&dir.join("out")),
        [".wmapc-output", "model.safetensors"]
    );
}

/// A user's files where wmapc would put its lock or its own-PID temporary folder are
/// refused, never locked, unlinked or removed; a symlink there is not followed.
#[test]
fn files_in_the_way_of_the_lock_are_kept() {
    let dir = workspace("lock-in-way");
    std::fs::write(dir.join(".out.lock"), b"the user's notes").unwrap();
    let before = tree(&dir);
    let o = run(&dir, &["load", "ck", "--out", "out", "--quiet"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("[E0602/"), "{}", stderr(&o));
    assert_eq!(tree(&dir), before, "nothing changed");
    std::fs::remove_file(dir.join(".out.lock")).unwrap();
    std::fs::write(dir.join("target.txt"), b"kept").unwrap();
    std::os::unix::fs::symlink(dir.join("target.txt"), dir.join(".out.lock")).unwrap();
    let o = run(&dir, &["load", "ck", "--out", "out", "--quiet"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        dir.join(".out.lock").symlink_metadata().is_ok(),
        "the link is kept"
    );
    assert_eq!(std::fs::read(dir.join("target.txt")).unwrap(), b"kept");
}

/// Waits until a `.out.tmp-*` folder exists beside `out` (the run is past its checks).
fn wait_for_tmp(dir: &Path) {
    let start = Instant::now();
    while !names(dir).iter().any(|n| n.starts_with(".out.tmp-")) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no temporary folder appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn slow_load(dir: &Path, ms: u32) -> Child {
    wmapc(dir)
        .args(["load", "ck", "--out", "out", "--quiet"])
        .env("WMAPC_TEST_DELAY_MS", ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_signal_mid_load_removes_the_temporary_folder() {
    for (signal, status) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let dir = workspace(&format!("signal-{signal}"));
        let child = slow_load(&dir, 30_000);
        wait_for_tmp(&dir);
        // SAFETY: signals a child this test spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let o = child.wait_with_output().unwrap();
        assert_eq!(code(&o), status, "{}", stderr(&o));
        assert_eq!(names(&dir), ["ck"], "signal {signal} left files behind");
    }
}

#[test]
fn an_out_created_during_the_run_is_kept() {
    let dir = workspace("created");
    let child = slow_load(&dir, 1000);
    wait_for_tmp(&dir);
    std::fs::create_dir(dir.join("out")).unwrap();
    std::fs::write(dir.join("out/mine.txt"), "keep").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("[E0607/"), "{}", stderr(&o));
    assert_eq!(names(&dir), ["ck", "out"]);
    assert_eq!(names(&dir.join("out")), ["mine.txt"]);
}

#[test]
fn concurrent_loads_to_one_out_do_not_both_succeed() {
    let dir = workspace("concurrent");
    let first = slow_load(&dir, 3000);
    wait_for_tmp(&dir);
    let second = run(&dir, &["load", "ck", "--out", "out", "--force", "--quiet"]);
    assert_eq!(code(&second), 2);
    assert!(stderr(&second).contains("[E0606/"), "{}", stderr(&second));
    let o = first.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(names(&dir), ["ck", "out"]);
}

/// The PID of a process that has exited.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn stale_folders_of_dead_runs_are_removed() {
    let dir = workspace("stale");
    let (dead, dead_unmarked) = (dead_pid(), dead_pid());
    let marked = |name: &str| {
        let p = dir.join(name);
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join(".wmapc-output"), "{}").unwrap();
        std::fs::write(p.join("model.safetensors"), vec![0u8; 1000]).unwrap();
    };
    marked(&format!(".out.tmp-{dead}"));
    // A live process's folder and an unmarked one are not ours to remove.
    marked(&format!(".out.tmp-{}", std::process::id()));
    std::fs::create_dir(dir.join(format!(".out.tmp-{dead_unmarked}"))).unwrap();
    let o = run(&dir, &["load", "ck", "--out", "out", "--quiet"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut expect = vec![
        format!(".out.tmp-{dead_unmarked}"),
        format!(".out.tmp-{}", std::process::id()),
        "ck".to_string(),
        "out".to_string(),
    ];
    expect.sort();
    assert_eq!(names(&dir), expect);
}

#[test]
fn a_replacement_that_died_half_way_is_put_back() {
    let dir = workspace("half-way");
    let o = run(&dir, &["load", "ck", "--out", "out", "--quiet"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // As if a run died between moving the old output aside and moving the new one in.
    let aside = dir.join(format!(".out.old-{}", dead_pid()));
    std::fs::rename(dir.join("out"), &aside).unwrap();
    let o = run(&dir, &["load", "ck", "--out", "out", "--quiet"]);
    assert_eq!(code(&o), 2, "the earlier output is back, so it exists");
    assert!(stderr(&o).contains("[E0601/"), "{}", stderr(&o));
    assert_eq!(names(&dir), ["ck", "out"]);
}

#[test]
fn a_file_size_limit_is_reported_and_leaves_no_temporary_folder() {
    let dir = workspace("efbig");
    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 1 && exec \"$WMAPC\" load ck --out out --quiet")
        .env("WMAPC", env!("CARGO_BIN_EXE_wmapc"))
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "not killed by SIGXFSZ: {}", stderr(&o));
    assert!(stderr(&o).contains("[E0609/"), "{}", stderr(&o));
    assert_eq!(names(&dir), ["ck"]);
}
