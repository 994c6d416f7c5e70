//! A small JSON reader that keeps the span of every value and key.
//!
//! `serde_json` drops positions; diagnostics need them to point at the `config.json`
//! key that decided a dimension. Accepts what Python's `json` writes besides strict
//! JSON (`NaN`, `Infinity`, `-Infinity`). Nesting is capped so hostile input cannot
//! exhaust the stack.

use crate::source::{FileId, Span};

const MAX_DEPTH: usize = 128;

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<JsonValue>),
    Object(Vec<(String, Span, JsonValue)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct JsonValue {
    pub value: Json,
    pub span: Span,
}

impl JsonValue {
    pub fn get(&self, key: &str) -> Option<(&Span, &JsonValue)> {
        match &self.value {
            Json::Object(items) => items
                .iter()
                .rev() // Python's json keeps the last of duplicate keys.
                .find(|(k, _, _)| k == key)
                .map(|(_, s, v)| (s, v)),
            _ => None,
        }
    }
}

/// A parse failure: what went wrong and where.
#[derive(Debug)]
pub struct JsonError {
    pub message: String,
    pub span: Span,
}

pub fn parse(file: FileId, text: &str) -> Result<JsonValue, JsonError> {
    let mut p = Reader {
        file,
        bytes: text.as_bytes(),
        text,
        pos: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.pos != p.bytes.len() {
        return Err(p.err("trailing characters after the JSON value", 1));
    }
    Ok(v)
}

struct Reader<'a> {
    file: FileId,
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Reader<'_> {
    fn err(&self, message: &str, len: usize) -> JsonError {
        let start = self.pos.min(self.bytes.len());
        let mut end = (start + len).min(self.bytes.len());
        while !self.text.is_char_boundary(end) {
            end += 1;
        }
        JsonError {
            message: message.to_string(),
            span: Span::new(self.file, start..end),
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.bytes[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<JsonValue, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("JSON nested too deeply", 1));
        }
        let start = self.pos;
        let value = match self.bytes.get(self.pos) {
            None => return Err(self.err("unexpected end of JSON", 0)),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Json::Str(self.string()?),
            Some(b't') if self.eat("true") => Json::Bool(true),
            Some(b'f') if self.eat("false") => Json::Bool(false),
            Some(b'n') if self.eat("null") => Json::Null,
            Some(b'N') if self.eat("NaN") => Json::Float(f64::NAN),
            Some(b'I') if self.eat("Infinity") => Json::Float(f64::INFINITY),
            Some(b'-') if self.eat("-Infinity") => Json::Float(f64::NEG_INFINITY),
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(self.err("expected a JSON value", 1)),
        };
        Ok(JsonValue {
            value,
            span: Span::new(self.file, start..self.pos),
        })
    }

    fn object(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat("}") {
            return Ok(Json::Object(items));
        }
        loop {
            self.ws();
            if self.bytes.get(self.pos) != Some(&b'"') {
                return Err(self.err("expected a string key", 1));
            }
            let kstart = self.pos;
            let key = self.string()?;
            let kspan = Span::new(self.file, kstart..self.pos);
            self.ws();
            if !self.eat(":") {
                return Err(self.err("expected `:` after the key", 1));
            }
            self.ws();
            let v = self.value(depth + 1)?;
            items.push((key, kspan, v));
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("}") {
                return Ok(Json::Object(items));
            }
            return Err(self.err("expected `,` or `}`", 1));
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat("]") {
            return Ok(Json::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth + 1)?);
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("]") {
                return Ok(Json::Array(items));
            }
            return Err(self.err("expected `,` or `]`", 1));
        }
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.err("unterminated string", 0));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.pos += 1;
                    let esc = self.bytes.get(self.pos).copied();
                    self.pos += 1;
                    match esc {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => out.push(self.unicode_escape()?),
                        _ => {
                            self.pos -= 1;
                            return Err(self.err("invalid escape", 1));
                        }
                    }
                }
                0..=0x1f => return Err(self.err("control character in string", 1)),
                _ => {
                    // Copy one whole UTF-8 character; the text is a `&str`, so it is valid.
                    let ch = self.text[self.pos..].chars().next().unwrap_or('\u{fffd}');
                    out.push(ch);
                    self.pos += ch.len_utf8();
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.err("expected four hex digits", 4))?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| self.err("bad hex", 4))?;
        self.pos += 4;
        Ok(v)
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) && self.eat("\\u") {
            let lo = self.hex4()?;
            0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
        } else {
            hi
        };
        Ok(char::from_u32(code).unwrap_or('\u{fffd}'))
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.pos;
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let mut is_float = false;
        while let Some(&b) = self.bytes.get(self.pos) {
            match b {
                b'0'..=b'9' => {}
                b'.' | b'e' | b'E' | b'+' | b'-' => is_float = true,
                _ => break,
            }
            self.pos += 1;
        }
        let s = &self.text[start..self.pos];
        if !is_float {
            if let Ok(v) = s.parse::<i64>() {
                return Ok(Json::Int(v));
            }
        }
        match s.parse::<f64>() {
            Ok(v) => Ok(Json::Float(v)),
            Err(_) => {
                self.pos = start;
                Err(self.err("malformed number", s.len().max(1)))
            }
        }
    }
}
