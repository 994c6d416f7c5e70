//! Values of `.wmap` expressions, and where they came from.

use std::fmt;

use crate::config::{special_float, Json, JsonValue};
use crate::diag::Label;
use crate::source::Span;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    List(Vec<Value>),
    /// A JSON object from the config; only `null`-checks and equality make sense on it.
    Object,
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bool(_) => "boolean",
            Value::Null => "null",
            Value::List(_) => "list",
            Value::Object => "object",
        }
    }

    pub fn from_json(v: &JsonValue) -> Value {
        if let Some(f) = special_float(v) {
            return Value::Float(f);
        }
        match &v.value {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::Int(*i),
            Json::Float(f) => Value::Float(*f),
            Json::Str(s) => Value::Str(s.clone()),
            Json::Array(items) => Value::List(items.iter().map(Value::from_json).collect()),
            Json::Object(_) => Value::Object,
        }
    }

    /// The value as JSON for the IR; non-finite floats become strings (JSON has none).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => (*i).into(),
            Value::Float(f) if f.is_finite() => (*f).into(),
            Value::Float(f) => format!("{f}").into(),
            Value::Str(s) => s.clone().into(),
            Value::Bool(b) => (*b).into(),
            Value::Null | Value::Object => serde_json::Value::Null,
            Value::List(items) => items.iter().map(Value::to_json).collect(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Null => write!(f, "null"),
            Value::Object => write!(f, "{{…}}"),
            Value::List(items) => {
                let shown: Vec<String> = items.iter().take(8).map(ToString::to_string).collect();
                let more = if items.len() > 8 { ", …" } else { "" };
                write!(f, "[{}{more}]", shown.join(", "))
            }
        }
    }
}

/// A config key that decided a value: shown as a secondary label in `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub key: String,
    pub span: Span,
    pub shown: String,
}

/// A value with the config keys it was computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Val {
    pub value: Value,
    pub origins: Vec<Origin>,
}

impl Val {
    pub fn plain(value: Value) -> Val {
        Val {
            value,
            origins: Vec::new(),
        }
    }

    pub fn with_origins(mut self, more: &[Origin]) -> Val {
        for o in more {
            if !self.origins.iter().any(|x| x.span == o.span) {
                self.origins.push(o.clone());
            }
        }
        self
    }

    /// Secondary labels: "`num_key_value_heads` is 2 here".
    pub fn labels(&self) -> Vec<Label> {
        self.origins
            .iter()
            .map(|o| Label {
                span: o.span,
                message: format!("`{}` is {} here", o.key, o.shown),
            })
            .collect()
    }
}
