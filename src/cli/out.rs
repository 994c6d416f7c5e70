//! Writing to stdout and stderr without panicking.
//!
//! `println!` panics when stdout is a closed pipe (`wmapc explain | head -1`): Rust ignores
//! SIGPIPE, so the write returns EPIPE. Here a closed stdout ends the process quietly with
//! status 0 (the reader asked for no more), and a failing stderr is ignored: there is
//! nowhere left to report it.

use std::io::Write;

/// Writes to stdout; on a closed pipe, exits 0 at once.
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Writes to stderr, ignoring failure.
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// `print!` through [`stdout`].
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::out::stdout(format_args!($($t)*)) };
}

/// `println!` through [`stdout`].
macro_rules! outln {
    ($($t:tt)*) => { $crate::cli::out::stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// `eprint!` through [`stderr`].
macro_rules! err {
    ($($t:tt)*) => { $crate::cli::out::stderr(format_args!($($t)*)) };
}

pub(crate) use {err, out, outln};
