//! Removing temporary output folders when the process is stopped by SIGINT or SIGTERM,
//! or panics; ignoring SIGXFSZ so an oversize write fails with EFBIG instead of killing
//! the process.
//!
//! SIGINT and SIGTERM are blocked in every thread and taken by one thread with
//! `sigwait`, so the cleanup runs as ordinary code (locks and allocation allowed), not
//! in a signal handler.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The temporary folders and lock files to remove if the process is stopped.
static REGISTRY: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// The registry, locked; a panic while it was held leaves it usable.
pub(super) fn registry() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn register(dir: &Path) {
    registry().insert(dir.to_path_buf());
}

pub(super) fn deregister(path: &Path) {
    registry().remove(path);
}

pub(super) fn deregister_locked(mut registry: MutexGuard<'_, BTreeSet<PathBuf>>, dir: &Path) {
    registry.remove(dir);
}

/// Removes every registered folder. Called from the panic hook, so it never waits: a
/// holder of the registry is mid-commit or mid-cleanup and finishes (or unwinds) itself.
pub fn remove_registered() {
    if let Ok(mut dirs) = REGISTRY.try_lock() {
        for d in std::mem::take(&mut *dirs) {
            super::remove_any(&d);
        }
    }
}

/// Call once, before any other thread starts (they inherit the signal mask).
pub fn install_signal_handlers() {
    // SAFETY: plain libc calls on local, initialized signal sets; SIG_IGN for SIGXFSZ
    // only changes the disposition of a signal this program never handles otherwise.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let waiter = std::thread::Builder::new()
            .name("wmapc-signals".into())
            .spawn(move || wait_and_clean(set));
        if waiter.is_err() {
            // Without the waiting thread, let the signals kill the process as before.
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

fn wait_and_clean(set: libc::sigset_t) {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialized signal set and `sig` a valid out pointer.
    if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
        return;
    }
    // Held until exit: a commit waiting for it never starts its renames.
    let mut dirs = registry();
    for d in std::mem::take(&mut *dirs) {
        super::remove_any(&d);
    }
    // The shell convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    std::process::exit(128 + sig);
}
