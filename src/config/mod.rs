//! Config: `config.json` → a spanned value tree with key lookup.
//!
//! Input: the text of an HF `config.json`. Output: a [`Config`] whose values keep their
//! spans, so a diagnostic can say "`num_key_value_heads` is 2 here" pointing at the file.
//! Lookups try the top level first, then a nested `text_config` (multimodal configs keep
//! the language model's keys there). Non-standard numbers are accepted: bare `NaN` /
//! `Infinity` and transformers 5's `{"__float__": "Infinity"}`.

pub mod json;

use crate::diag::{Code, Diagnostic};
use crate::source::{FileId, SourceMap, Span};
pub use json::{Json, JsonValue};

/// A parsed `config.json`.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: FileId,
    pub root: JsonValue,
}

/// A config value found by key, with where it was found.
#[derive(Clone, Debug)]
pub struct Found<'c> {
    /// The dotted key path as it appears in the file (`text_config.hidden_size`).
    pub key: String,
    pub key_span: Span,
    pub value: &'c JsonValue,
}

/// The key under which multimodal configs nest the language model's settings.
const NESTED_TEXT: &str = "text_config";

impl Config {
    /// Reads a config; the text must already be in `sources` as `file`.
    pub fn parse(sources: &SourceMap, file: FileId) -> Result<Config, Diagnostic> {
        let text = &sources.get(file).text;
        let root = json::parse(file, text).map_err(|e| {
            Diagnostic::new(
                Code::E0302,
                format!("config is not valid JSON: {}", e.message),
            )
            .at(e.span, e.message)
        })?;
        if !matches!(root.value, Json::Object(_)) {
            return Err(Diagnostic::new(Code::E0302, "config must be a JSON object")
                .at(root.span, "expected `{ … }`"));
        }
        Ok(Config { file, root })
    }

    /// Looks up a dotted key path: top level first, then inside `text_config`.
    pub fn lookup(&self, path: &[String]) -> Option<Found<'_>> {
        let (first, rest) = path.split_first()?;
        let (mut key, mut key_span, mut value) = match self.root.get(first) {
            Some((s, v)) => (first.clone(), *s, v),
            None => {
                let (_, nested) = self.root.get(NESTED_TEXT)?;
                let (s, v) = nested.get(first)?;
                (format!("{NESTED_TEXT}.{first}"), *s, v)
            }
        };
        for seg in rest {
            let (s, v) = value.get(seg)?;
            key = format!("{key}.{seg}");
            key_span = *s;
            value = v;
        }
        Some(Found {
            key,
            key_span,
            value,
        })
    }

    /// Every key a lookup could find at the first level, for suggestions.
    pub fn keys(&self) -> Vec<&str> {
        fn keys_of(v: &JsonValue) -> impl Iterator<Item = &str> {
            let items = match &v.value {
                Json::Object(items) => items.as_slice(),
                _ => &[],
            };
            items.iter().map(|(k, _, _)| k.as_str())
        }
        let mut out: Vec<&str> = keys_of(&self.root).collect();
        if let Some((_, nested)) = self.root.get(NESTED_TEXT) {
            out.extend(keys_of(nested));
        }
        out
    }

    /// The HF `architectures` list (empty when absent or malformed).
    pub fn architectures(&self) -> Vec<(String, Span)> {
        match self.root.get("architectures") {
            Some((
                _,
                JsonValue {
                    value: Json::Array(items),
                    ..
                },
            )) => items
                .iter()
                .filter_map(|v| match &v.value {
                    Json::Str(s) => Some((s.clone(), v.span)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn model_type(&self) -> Option<String> {
        match self.root.get("model_type") {
            Some((
                _,
                JsonValue {
                    value: Json::Str(s),
                    ..
                },
            )) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Reads transformers 5's encoding of non-finite floats: `{"__float__": "Infinity"}`.
pub fn special_float(v: &JsonValue) -> Option<f64> {
    match &v.value {
        Json::Object(items) if items.len() == 1 && items[0].0 == "__float__" => {
            match &items[0].2.value {
                Json::Str(s) => match s.as_str() {
                    "Infinity" | "inf" => Some(f64::INFINITY),
                    "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
                    "NaN" | "nan" => Some(f64::NAN),
                    other => other.parse().ok(),
                },
                _ => None,
            }
        }
        _ => None,
    }
}
