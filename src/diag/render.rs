//! Rendering of diagnostics: human text via `codespan-reporting`, or JSON.

use codespan_reporting::diagnostic as cs;
use codespan_reporting::term;
use codespan_reporting::term::termcolor::Buffer;

use super::{Diagnostic, Diagnostics, Severity};
use crate::source::SourceMap;

/// Whether rendered text carries ANSI colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Never,
    Auto,
}

fn to_codespan(d: &Diagnostic) -> cs::Diagnostic<crate::source::FileId> {
    let base = match d.severity() {
        Severity::Error => cs::Diagnostic::error(),
        Severity::Warning => cs::Diagnostic::warning(),
    };
    let mut labels = Vec::new();
    if let Some(p) = &d.primary {
        labels.push(cs::Label::primary(p.span.file, p.span.range()).with_message(&p.message));
    }
    for s in &d.secondary {
        labels.push(cs::Label::secondary(s.span.file, s.span.range()).with_message(&s.message));
    }
    let mut notes = d.notes.clone();
    if let Some(h) = &d.help {
        notes.push(format!("help: {h}"));
    }
    base.with_code(format!("{}/{}", d.code.as_str(), d.code.name()))
        .with_message(&d.message)
        .with_labels(labels)
        .with_notes(notes)
}

/// Renders every diagnostic, then a one-line summary.
pub fn render_human(sources: &SourceMap, diags: &Diagnostics, color: Color) -> String {
    let config = term::Config::default();
    let mut buffer = match color {
        Color::Never => Buffer::no_color(),
        Color::Auto => {
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                Buffer::ansi()
            } else {
                Buffer::no_color()
            }
        }
    };
    for d in &diags.items {
        // Writing to an in-memory buffer only fails on a span outside its file,
        // which would be a bug in the phase that built the diagnostic.
        if term::emit(&mut buffer, &config, sources, &to_codespan(d)).is_err() {
            buffer_line(&mut buffer, d);
        }
    }
    let mut out = String::from_utf8_lossy(buffer.as_slice()).into_owned();
    let (e, w) = (diags.count(Severity::Error), diags.count(Severity::Warning));
    if e + w > 0 {
        out.push_str(&format!(
            "{} error{}, {} warning{}\n",
            e,
            plural(e),
            w,
            plural(w)
        ));
    }
    out
}

fn buffer_line(buffer: &mut Buffer, d: &Diagnostic) {
    use std::io::Write;
    let _ = writeln!(
        buffer,
        "{}[{}]: {}",
        sev_word(d),
        d.code.as_str(),
        d.message
    );
}

fn sev_word(d: &Diagnostic) -> &'static str {
    match d.severity() {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Machine-readable diagnostics: positions are byte offsets plus 1-based line/column.
pub fn render_json(sources: &SourceMap, diags: &Diagnostics) -> serde_json::Value {
    let label = |l: &super::Label, primary: bool| {
        let (line, column) = sources.line_col(l.span.file, l.span.start);
        serde_json::json!({
            "file": sources.get(l.span.file).name,
            "start": l.span.start,
            "end": l.span.end,
            "line": line,
            "column": column,
            "primary": primary,
            "message": l.message,
        })
    };
    let items: Vec<_> = diags
        .items
        .iter()
        .map(|d| {
            let mut labels: Vec<_> = d.primary.iter().map(|l| label(l, true)).collect();
            labels.extend(d.secondary.iter().map(|l| label(l, false)));
            serde_json::json!({
                "code": d.code.as_str(),
                "name": d.code.name(),
                "severity": sev_word(d),
                "message": d.message,
                "labels": labels,
                "notes": d.notes,
                "help": d.help,
            })
        })
        .collect();
    serde_json::json!({
        "diagnostics": items,
        "errors": diags.count(Severity::Error),
        "warnings": diags.count(Severity::Warning),
    })
}
