//! Source files and spans.
//!
//! Input: file names and texts (`.wmap` sources, `config.json`).
//! Output: a [`SourceMap`] that hands out [`FileId`]s, and [`Span`]s that point into it.
//! Invariant: a span's byte range lies inside its file and on `char` boundaries;
//! every AST node carries one (through [`Spanned`]), so every diagnostic can point at text.
//!
//! Every input file (`.wmap`, `config.json`, the shard index, safetensors shards) is
//! opened through [`open_regular`] or read through [`read_capped`]: only regular files,
//! opened without blocking (a FIFO never hangs the open), and read up to a size cap (a
//! symlink to `/dev/zero` or a 1 TB "config" never exhausts memory).

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use crate::diag::{Code, Diagnostic};

/// The largest `.wmap` file (or `use` import) read; real ones are a few kilobytes.
pub const MAX_WMAP: u64 = 16 << 20;
/// The largest `config.json` read; real ones are a few kilobytes.
pub const MAX_CONFIG: u64 = 64 << 20;
/// The largest shard index read; real ones are a few megabytes.
pub const MAX_INDEX: u64 = 256 << 20;

/// Why an input file could not be opened or read.
#[derive(Debug)]
pub enum ReadError {
    /// The operating system refused (missing file, permissions, …).
    Io(std::io::Error),
    /// The path names a FIFO, device, socket or folder (after following symlinks).
    NotRegular(&'static str),
    /// The file is larger than the cap for its kind.
    TooLarge { len: u64, cap: u64 },
}

impl ReadError {
    /// The coded diagnostic for `what` (`config`, `model file`) at `shown`; `None` for
    /// plain I/O errors, which each caller reports in its own terms.
    pub fn diagnostic(&self, what: &str, shown: &str) -> Option<Diagnostic> {
        match self {
            ReadError::Io(_) => None,
            ReadError::NotRegular(kind) => Some(
                Diagnostic::new(
                    Code::E0512,
                    format!("{what} `{shown}` is {kind}, not a regular file"),
                )
                .with_help(
                    "point wmapc at a regular file (FIFOs, devices and folders are never read)",
                ),
            ),
            ReadError::TooLarge { len, cap } => Some(Diagnostic::new(
                Code::E0513,
                format!("{what} `{shown}` is {len} bytes; a {what} may be at most {cap} bytes"),
            )),
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            ReadError::TooLarge { len, cap } => write!(f, "{len} bytes exceeds the {cap}-byte cap"),
        }
    }
}

/// `O_NONBLOCK` on Linux (x86-64 and AArch64 alike): opening a FIFO without a writer
/// returns at once instead of blocking; on a regular file the flag changes nothing.
const O_NONBLOCK: i32 = 0o4000;

/// Opens `path` for reading if it is a regular file (symlinks followed), and returns
/// its length. The check is on the opened descriptor, so the file cannot be swapped
/// between the check and the read.
pub fn open_regular(path: &Path) -> Result<(File, u64), ReadError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok((file, meta.len()));
    } else if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    };
    Err(ReadError::NotRegular(kind))
}

/// The bytes of the regular file `path`, refused when larger than `cap`.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let (file, len) = open_regular(path)?;
    if len > cap {
        return Err(ReadError::TooLarge { len, cap });
    }
    let mut bytes = Vec::new();
    // One byte past the cap tells a file that grew since `fstat` from one that fits.
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge {
            len: bytes.len() as u64,
            cap,
        });
    }
    Ok(bytes)
}

/// Index of a file in the [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub usize);

/// A byte range in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, range: Range<usize>) -> Span {
        Span {
            file,
            start: range.start,
            end: range.end,
        }
    }

    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// A value together with the source text it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(node: T, span: Span) -> Spanned<T> {
        Spanned { node, span }
    }
}

/// One source file: its display name and text.
#[derive(Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

/// All files a compilation has read, so diagnostics can quote any of them.
#[derive(Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> SourceMap {
        SourceMap::default()
    }

    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        let text = text.into();
        let line_starts = codespan_reporting::files::line_starts(&text).collect();
        self.files.push(SourceFile {
            name: name.into(),
            text,
            line_starts,
        });
        FileId(self.files.len() - 1)
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0]
    }

    /// The id of a file already added under `name`.
    pub fn find(&self, name: &str) -> Option<FileId> {
        self.files.iter().position(|f| f.name == name).map(FileId)
    }

    pub fn text(&self, span: Span) -> &str {
        &self.get(span.file).text[span.range()]
    }

    /// 1-based (line, column) of a byte offset; columns count chars.
    pub fn line_col(&self, file: FileId, offset: usize) -> (usize, usize) {
        let f = self.get(file);
        let line = match f.line_starts.binary_search(&offset) {
            Ok(l) => l,
            Err(l) => l - 1,
        };
        let start = f.line_starts[line];
        let col = f.text[start..offset.min(f.text.len())].chars().count();
        (line + 1, col + 1)
    }
}

impl<'a> codespan_reporting::files::Files<'a> for SourceMap {
    type FileId = FileId;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        self.files
            .get(id.0)
            .map(|f| f.name.as_str())
            .ok_or(codespan_reporting::files::Error::FileMissing)
    }

    fn source(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        self.files
            .get(id.0)
            .map(|f| f.text.as_str())
            .ok_or(codespan_reporting::files::Error::FileMissing)
    }

    fn line_index(
        &'a self,
        id: FileId,
        byte: usize,
    ) -> Result<usize, codespan_reporting::files::Error> {
        let f = self
            .files
            .get(id.0)
            .ok_or(codespan_reporting::files::Error::FileMissing)?;
        Ok(match f.line_starts.binary_search(&byte) {
            Ok(l) => l,
            Err(l) => l - 1,
        })
    }

    fn line_range(
        &'a self,
        id: FileId,
        line: usize,
    ) -> Result<Range<usize>, codespan_reporting::files::Error> {
        let f = self
            .files
            .get(id.0)
            .ok_or(codespan_reporting::files::Error::FileMissing)?;
        let start =
            *f.line_starts
                .get(line)
                .ok_or(codespan_reporting::files::Error::LineTooLarge {
                    given: line,
                    max: f.line_starts.len() - 1,
                })?;
        let end = f.line_starts.get(line + 1).copied().unwrap_or(f.text.len());
        Ok(start..end)
    }
}

impl Span {
    /// The smallest span covering both (same file assumed).
    pub fn join(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}
