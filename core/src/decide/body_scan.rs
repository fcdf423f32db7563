//! What a JSON request body tells, read as it arrives: a push scanner, fed the body chunk
//! by chunk, that checks the body is one well-formed JSON object (RFC 8259) and keeps only
//! the few small values the gate needs (`Facts`, and where `stream_options` sits), so the
//! VM never holds a body whole, however large it is.
//!
//! It reads a body as serde_json reads it into `Facts`: a field of the wrong type reads as
//! absent, a field named twice (escaped or not: `"mod\u0065l"` is `model`) makes the body
//! unreadable, since the scanner and the upstream could read different values.

use serde_json::Value;

use super::model::{BodyError, Facts};

/// Deepest nesting accepted (serde_json's own limit).
const MAX_DEPTH: usize = 128;
/// Longest raw key compared with the names read: no name read is longer, even escaped.
const KEY_CAP: usize = 160;
/// Longest raw value kept (a model name, a number, a `stream_options` object).
const VALUE_CAP: usize = 4096;

/// How many bytes `bytes` starts with that are plain string content: neither `"` nor `\\`
/// nor a control character. Eight at a time (a string's bytes are most of a body).
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `v` is zero: its high bit in the result (the lowest such byte exactly).
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut at = 0;
    for word in bytes.chunks_exact(8) {
        let mut eight = [0; 8];
        eight.copy_from_slice(word);
        let x = u64::from_ne_bytes(eight);
        let special = zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if special != 0 {
            break;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| matches!(b, b'"' | b'\\' | 0..=0x1f))
        .unwrap_or(bytes.len() - at)
}

/// A top-level field the gate reads (or, `OutputLimitInConfig`, Gemini's
/// `generationConfig.maxOutputTokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Model,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    GenerationConfig,
    Background,
    Stream,
    StreamOptions,
    OutputLimitInConfig,
}

impl Field {
    fn top_level(name: &[u8]) -> Option<Field> {
        Some(match name {
            b"model" => Field::Model,
            b"max_tokens" => Field::MaxTokens,
            b"max_completion_tokens" => Field::MaxCompletionTokens,
            b"max_output_tokens" => Field::MaxOutputTokens,
            b"generationConfig" => Field::GenerationConfig,
            b"background" => Field::Background,
            b"stream" => Field::Stream,
            b"stream_options" => Field::StreamOptions,
            _ => return None,
        })
    }

    /// Whether naming it twice makes the body unreadable (as for serde_json reading
    /// `Facts`); the stream fields are read as the upstream reads them, the last one wins.
    fn once_only(self) -> bool {
        !matches!(self, Field::Stream | Field::StreamOptions)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// Where the lexer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// A value comes next.
    Value,
    /// Just after `{`: a key or `}`.
    FirstKey,
    /// After a `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,`, the closing bracket or, at the top, the end.
    After,
    /// Just after `[`: a value or `]`.
    FirstItem,
    Str {
        key: bool,
    },
    Escape {
        key: bool,
    },
    Unicode {
        key: bool,
        left: u8,
    },
    Number(Num),
    Literal {
        word: &'static [u8],
        at: u8,
    },
    /// The object is closed: only whitespace may follow.
    Done,
    Failed,
}

/// Where a number is in its grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn next(self, b: u8) -> Option<Num> {
        use Num::*;
        Some(match (self, b) {
            (Minus, b'0') => Zero,
            (Minus, b'1'..=b'9') => Int,
            (Int, b'0'..=b'9') => Int,
            (Zero | Int, b'.') => Dot,
            (Zero | Int | Frac, b'e' | b'E') => E,
            (Dot | Frac, b'0'..=b'9') => Frac,
            (E, b'+' | b'-') => ESign,
            (E | ESign | Exp, b'0'..=b'9') => Exp,
            _ => return None,
        })
    }

    fn is_complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

/// A value being kept: where it started and its bytes (up to `VALUE_CAP`).
#[derive(Debug)]
struct Capture {
    field: Field,
    /// Nesting depth at which it started: it ends when the scanner is back there.
    depth: usize,
    start: usize,
    bytes: Vec<u8>,
    over: bool,
}

/// The body's `stream_options` value: its place, and its bytes if short enough to edit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    start: usize,
    end: usize,
    bytes: Option<Vec<u8>>,
}

/// How a streaming Chat Completions body is made to ask for usage
/// (`stream_options.include_usage`) without the VM holding it whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageEdit {
    /// The body's first `len` bytes (whitespace and its `{`) become `data`, which opens the
    /// object with the option: no other byte of the body is touched.
    Prefix { len: usize, data: Vec<u8> },
    /// The body's own `stream_options` value (bytes `start..end`) becomes `data`; the caller
    /// rewrites the bytes before it too (Envoy replaces only a body's first bytes).
    Value {
        start: usize,
        end: usize,
        data: Vec<u8>,
    },
}

/// Reads one JSON request body, chunk by chunk (`feed`), then tells what it read
/// (`facts`, `usage_edit`).
#[derive(Debug)]
pub struct BodyScan {
    lex: Lex,
    /// Open containers, `{` or `[`.
    stack: Vec<u8>,
    /// Bytes fed so far.
    offset: usize,
    /// Where the top-level object's `{` is.
    open_at: usize,
    /// The key being read (raw, as sent), when it is one the gate may read.
    key: Option<Vec<u8>>,
    /// The field whose value comes next.
    pending: Option<Field>,
    capture: Option<Capture>,
    /// The object at depth 2 is `generationConfig`'s value.
    in_config: bool,
    /// Fields seen so far (`Field::bit`).
    seen: u16,
    facts: Facts,
    /// The output limits read, the first set one counting: `max_completion_tokens`,
    /// `max_tokens`, `max_output_tokens`, `generationConfig.maxOutputTokens`.
    limits: [Option<u64>; 4],
    /// The model's value was longer than anything kept.
    model_too_long: bool,
    stream: bool,
    options: Option<Options>,
    options_twice: bool,
}

impl Default for BodyScan {
    fn default() -> Self {
        BodyScan::new()
    }
}

impl BodyScan {
    pub fn new() -> BodyScan {
        BodyScan {
            lex: Lex::Value,
            stack: Vec::new(),
            offset: 0,
            open_at: 0,
            key: None,
            pending: None,
            capture: None,
            in_config: false,
            seen: 0,
            facts: Facts::default(),
            limits: [None; 4],
            model_too_long: false,
            stream: false,
            options: None,
            options_twice: false,
        }
    }

    /// Bytes fed so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether the body read so far cannot be a well-formed JSON object.
    pub fn failed(&self) -> bool {
        self.lex == Lex::Failed
    }

    /// Reads the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let start = self.offset;
        self.offset += chunk.len();
        let mut i = 0;
        while i < chunk.len() && self.lex != Lex::Failed {
            // The plain bytes of a string (most of a body: its messages) change no state:
            // they are passed over as a run, not byte by byte.
            if let Lex::Str { key } = self.lex {
                let rest = &chunk[i..];
                let run = plain_run(rest);
                if run > 0 {
                    self.keep_run(&rest[..run]);
                    if key {
                        self.key_run(&rest[..run]);
                    }
                    i += run;
                    continue;
                }
            }
            self.step(chunk[i], start + i);
            i += 1;
        }
    }

    /// What the whole body tells: an error unless all of it was one well-formed object.
    pub fn facts(&self) -> Result<Facts, BodyError> {
        if self.lex != Lex::Done || self.model_too_long {
            return Err(BodyError::NotJson);
        }
        Ok(self.facts.clone())
    }

    /// How to make a streaming request ask for usage, if it is one that does not (as
    /// `include_usage::add_to_request`): `None` if the body is not a well-formed object,
    /// does not stream, asks already, or has a `stream_options` that is not an object (the
    /// provider answers that) or that cannot be edited where it is (named twice, or
    /// longer than anything kept).
    pub fn usage_edit(&self) -> Option<UsageEdit> {
        if self.facts().is_err() || !self.stream || self.options_twice {
            return None;
        }
        let Some(options) = &self.options else {
            return Some(UsageEdit::Prefix {
                len: self.open_at + 1,
                data: br#"{"stream_options":{"include_usage":true},"#.to_vec(),
            });
        };
        let mut value: Value = serde_json::from_slice(options.bytes.as_deref()?).ok()?;
        if value.is_null() {
            value = Value::Object(serde_json::Map::new());
        }
        let object = value.as_object_mut()?;
        if object.get("include_usage").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        object.insert("include_usage".into(), Value::Bool(true));
        Some(UsageEdit::Value {
            start: options.start,
            end: options.end,
            data: serde_json::to_vec(&value).ok()?,
        })
    }

    fn fail(&mut self) {
        self.lex = Lex::Failed;
        self.capture = None;
        self.key = None;
    }

    fn step(&mut self, b: u8, pos: usize) {
        // A number ends at the first byte that cannot go on with it; that byte is read
        // after it.
        if let Lex::Number(num) = self.lex {
            if let Some(next) = num.next(b) {
                self.lex = Lex::Number(next);
                self.keep(b);
                return;
            }
            if !num.is_complete() {
                return self.fail();
            }
            self.lex = Lex::After;
            self.value_ended(pos);
        }
        self.keep(b);
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        match self.lex {
            Lex::Value | Lex::FirstItem if ws => {}
            Lex::FirstItem if b == b']' => self.close(b'[', pos),
            Lex::Value | Lex::FirstItem => self.begin_value(b, pos),
            Lex::FirstKey | Lex::Key | Lex::Colon | Lex::After | Lex::Done if ws => {}
            Lex::FirstKey if b == b'}' => self.close(b'{', pos),
            Lex::FirstKey | Lex::Key if b == b'"' => {
                let read = self.stack.len() == 1 || (self.stack.len() == 2 && self.in_config);
                self.key = read.then(Vec::new);
                self.lex = Lex::Str { key: true };
            }
            Lex::Colon if b == b':' => self.lex = Lex::Value,
            Lex::After => match (b, self.stack.last()) {
                (b',', Some(b'{')) => self.lex = Lex::Key,
                (b',', Some(b'[')) => self.lex = Lex::Value,
                (b'}', Some(b'{')) => self.close(b'{', pos),
                (b']', Some(b'[')) => self.close(b'[', pos),
                _ => self.fail(),
            },
            Lex::Str { key } => match b {
                b'"' => {
                    if key {
                        self.key_ended();
                    } else {
                        self.lex = Lex::After;
                        self.value_ended(pos + 1);
                    }
                }
                b'\\' => {
                    self.key_byte(key, b);
                    self.lex = Lex::Escape { key };
                }
                0..=0x1f => self.fail(),
                _ => self.key_byte(key, b),
            },
            Lex::Escape { key } => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    self.key_byte(key, b);
                    self.lex = Lex::Str { key };
                }
                b'u' => {
                    self.key_byte(key, b);
                    self.lex = Lex::Unicode { key, left: 4 };
                }
                _ => self.fail(),
            },
            Lex::Unicode { key, left } if b.is_ascii_hexdigit() => {
                self.key_byte(key, b);
                self.lex = if left == 1 {
                    Lex::Str { key }
                } else {
                    Lex::Unicode {
                        key,
                        left: left - 1,
                    }
                };
            }
            Lex::Literal { word, at } if word.get(at as usize) == Some(&b) => {
                if at as usize + 1 == word.len() {
                    self.lex = Lex::After;
                    self.value_ended(pos + 1);
                } else {
                    self.lex = Lex::Literal { word, at: at + 1 };
                }
            }
            _ => self.fail(),
        }
    }

    /// Keeps `b` if a value is being kept.
    fn keep(&mut self, b: u8) {
        if let Some(capture) = &mut self.capture {
            if capture.bytes.len() < VALUE_CAP {
                capture.bytes.push(b);
            } else {
                capture.over = true;
            }
        }
    }

    /// Keeps a run of string bytes if a value is being kept.
    fn keep_run(&mut self, run: &[u8]) {
        if let Some(capture) = &mut self.capture {
            let room = VALUE_CAP - capture.bytes.len();
            capture.bytes.extend_from_slice(&run[..run.len().min(room)]);
            capture.over |= run.len() > room;
        }
    }

    fn key_run(&mut self, run: &[u8]) {
        if let Some(bytes) = &mut self.key {
            if bytes.len() + run.len() <= KEY_CAP {
                bytes.extend_from_slice(run);
            } else {
                self.key = None;
            }
        }
    }

    fn key_byte(&mut self, key: bool, b: u8) {
        if !key {
            return;
        }
        if let Some(bytes) = &mut self.key {
            if bytes.len() < KEY_CAP {
                bytes.push(b);
            } else {
                self.key = None;
            }
        }
    }

    /// A key's closing quote: which field, if any, its value is.
    fn key_ended(&mut self) {
        self.lex = Lex::Colon;
        self.pending = None;
        let Some(raw) = self.key.take() else {
            return;
        };
        // Escapes are read as the upstream reads them: `"mod\u0065l"` is `model`.
        let name = if raw.contains(&b'\\') {
            let quoted = [&b"\""[..], &raw, b"\""].concat();
            match serde_json::from_slice::<String>(&quoted) {
                Ok(name) => name.into_bytes(),
                Err(_) => return self.fail(),
            }
        } else if std::str::from_utf8(&raw).is_err() {
            return self.fail();
        } else {
            raw
        };
        let field = if self.stack.len() == 1 {
            Field::top_level(&name)
        } else {
            (name == b"maxOutputTokens").then_some(Field::OutputLimitInConfig)
        };
        let Some(field) = field else {
            return;
        };
        if field.once_only() && self.seen & field.bit() != 0 {
            return self.fail();
        }
        self.seen |= field.bit();
        self.pending = Some(field);
    }

    /// The first byte of a value.
    fn begin_value(&mut self, b: u8, pos: usize) {
        let field = self.pending.take();
        if self.stack.is_empty() && b != b'{' {
            // A request body is an object.
            return self.fail();
        }
        match field {
            Some(Field::GenerationConfig) => {
                self.in_config = b == b'{';
            }
            Some(field) => {
                self.capture = Some(Capture {
                    field,
                    depth: self.stack.len(),
                    start: pos,
                    bytes: vec![b],
                    over: false,
                });
            }
            None => {}
        }
        match b {
            b'{' | b'[' => {
                if self.stack.len() == MAX_DEPTH {
                    return self.fail();
                }
                if self.stack.is_empty() {
                    self.open_at = pos;
                }
                self.stack.push(b);
                self.lex = if b == b'{' {
                    Lex::FirstKey
                } else {
                    Lex::FirstItem
                };
            }
            b'"' => self.lex = Lex::Str { key: false },
            b'-' => self.lex = Lex::Number(Num::Minus),
            b'0' => self.lex = Lex::Number(Num::Zero),
            b'1'..=b'9' => self.lex = Lex::Number(Num::Int),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.fail(),
        }
    }

    fn literal(&mut self, word: &'static [u8]) {
        self.lex = Lex::Literal { word, at: 1 };
    }

    /// A closing bracket (checked to match by the caller).
    fn close(&mut self, open: u8, pos: usize) {
        debug_assert_eq!(self.stack.last(), Some(&open));
        self.stack.pop();
        if self.stack.len() == 1 {
            self.in_config = false;
        }
        if self.stack.is_empty() {
            self.lex = Lex::Done;
            return;
        }
        self.lex = Lex::After;
        self.value_ended(pos + 1);
    }

    /// A value ended just before `end`: if it is the one being kept, it is read.
    fn value_ended(&mut self, end: usize) {
        if self.capture.as_ref().map(|c| c.depth) != Some(self.stack.len()) {
            return;
        }
        let Some(capture) = self.capture.take() else {
            return;
        };
        let value = match capture.over {
            // Well-formed, it may still be beyond what JSON numbers hold (`1e309`) or
            // hold a string that is not UTF-8: unreadable for a fact, absent for a
            // stream field.
            false => match serde_json::from_slice::<Value>(&capture.bytes) {
                Ok(value) => Some(value),
                Err(_) if capture.field.once_only() => return self.fail(),
                Err(_) => None,
            },
            true => None,
        };
        let count = || value.as_ref().and_then(Value::as_u64);
        match capture.field {
            Field::Model => {
                self.model_too_long = capture.over;
                self.facts.model = match &value {
                    Some(Value::String(model)) => Some(model.clone()),
                    _ => None,
                };
            }
            Field::MaxTokens => self.limits[1] = count(),
            Field::MaxCompletionTokens => self.limits[0] = count(),
            Field::MaxOutputTokens => self.limits[2] = count(),
            Field::OutputLimitInConfig => self.limits[3] = count(),
            Field::Background => self.facts.background = value == Some(Value::Bool(true)),
            Field::Stream => self.stream = value == Some(Value::Bool(true)),
            Field::StreamOptions => {
                self.options_twice = self.options.is_some();
                self.options = Some(Options {
                    start: capture.start,
                    end,
                    bytes: value.is_some().then_some(capture.bytes),
                });
            }
            Field::GenerationConfig => {}
        }
        self.facts.max_output_tokens = self.limits.iter().flatten().next().copied();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// How serde_json reads `Facts` from a whole body: what the scanner must agree with.
    pub(super) fn reference(body: &[u8]) -> Result<Facts, BodyError> {
        #[derive(serde::Deserialize)]
        struct Request {
            #[serde(default)]
            model: Option<Value>,
            #[serde(default)]
            max_tokens: Option<Value>,
            #[serde(default)]
            max_completion_tokens: Option<Value>,
            #[serde(default)]
            max_output_tokens: Option<Value>,
            #[serde(default, rename = "generationConfig")]
            generation_config: Option<Config>,
            #[serde(default)]
            background: Option<Value>,
        }
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(default, rename = "maxOutputTokens")]
            max_output_tokens: Option<Value>,
        }
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(BodyError::NotJson);
        }
        let request: Request = serde_json::from_slice(body).map_err(|_| BodyError::NotJson)?;
        let limit = [
            request.max_completion_tokens,
            request.max_tokens,
            request.max_output_tokens,
            request.generation_config.and_then(|g| g.max_output_tokens),
        ]
        .into_iter()
        .flatten()
        .find_map(|v| v.as_u64());
        Ok(Facts {
            model: match request.model {
                Some(Value::String(model)) => Some(model),
                _ => None,
            },
            max_output_tokens: limit,
            background: request.background == Some(Value::Bool(true)),
        })
    }

    pub(super) fn scan(body: &[u8], cut: usize) -> BodyScan {
        let mut scan = BodyScan::new();
        for chunk in body.chunks(cut.max(1)) {
            scan.feed(chunk);
        }
        scan
    }

    /// The body as the upstream gets it once `edit` is made.
    pub(super) fn edited(body: &[u8], edit: &UsageEdit) -> Vec<u8> {
        match edit {
            UsageEdit::Prefix { len, data } => [&data[..], &body[*len..]].concat(),
            UsageEdit::Value { start, end, data } => {
                [&body[..*start], &data[..], &body[*end..]].concat()
            }
        }
    }

    #[test]
    fn a_plain_run_ends_at_the_first_quote_backslash_or_control_byte() {
        for at in 0..20 {
            for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                let mut bytes = vec![b'a'; 24];
                bytes[at] = 0xe9; // not special: a UTF-8 byte above 0x7f
                bytes[(at + 1).min(23)] = b' ';
                bytes[at.max(2)] = special;
                assert_eq!(plain_run(&bytes), at.max(2), "{at} {special}");
            }
        }
        assert_eq!(plain_run(&[0xff; 19]), 19);
        assert_eq!(plain_run(b""), 0);
    }

    #[test]
    fn reads_what_a_body_tells() {
        let facts = |body: &str| scan(body.as_bytes(), 3).facts();
        let read = facts(
            r#" {"messages":[{"role":"user","content":"model \"x\" {"}],"model":"gpt-4o",
                "max_tokens":12,"generationConfig":{"maxOutputTokens":7},"background":true} "#,
        )
        .unwrap();
        assert_eq!(read.model.as_deref(), Some("gpt-4o"));
        assert_eq!(read.max_output_tokens, Some(12));
        assert!(read.background);
        assert_eq!(
            facts(r#"{"generationConfig":{"maxOutputTokens":7}}"#)
                .unwrap()
                .max_output_tokens,
            Some(7)
        );
        // Wrong types read as absent.
        let read = facts(r#"{"model":42,"max_tokens":-1,"max_output_tokens":1.5}"#).unwrap();
        assert_eq!(read, Facts::default());
        // A nested `model` is not the request's.
        assert_eq!(facts(r#"{"tools":[{"model":"x"}]}"#).unwrap().model, None);
        assert_eq!(
            facts(r#"{"model":"a\u00e9"}"#).unwrap().model.as_deref(),
            Some("aé")
        );
    }

    /// Neither the scanner (fed `cut` bytes at a time) nor serde_json can read `body`.
    fn unreadable(body: &str, cut: usize) {
        let read = (
            scan(body.as_bytes(), cut).facts(),
            reference(body.as_bytes()),
        );
        assert_eq!(
            read,
            (Err(BodyError::NotJson), Err(BodyError::NotJson)),
            "{body:?}"
        );
    }

    #[test]
    fn a_field_named_twice_escaped_or_not_is_unreadable() {
        for body in [
            r#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#,
            r#"{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o"}"#,
            r#"{"max_tokens":1,"max_tokens":100000}"#,
            r#"{"generationConfig":{"maxOutputTokens":1,"maxOutputTokens":9}}"#,
        ] {
            unreadable(body, 1);
        }
    }

    #[test]
    fn anything_but_one_well_formed_object_is_unreadable() {
        for body in [
            "",
            " ",
            "[]",
            "\"model\"",
            "42",
            "{",
            "{}}",
            "{} x",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"\n\"}",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            r#"{,}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[}"#,
            r#"{"a":{]}"#,
            r#"{"model":"a""#,
        ] {
            unreadable(body, 2);
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(scan(deep.as_bytes(), 64).facts(), Err(BodyError::NotJson));
        let model = format!("{{\"model\":\"{}\"}}", "m".repeat(VALUE_CAP));
        assert_eq!(scan(model.as_bytes(), 64).facts(), Err(BodyError::NotJson));
    }

    #[test]
    fn a_stream_is_made_to_ask_for_usage_touching_as_little_as_it_can() {
        let edit = |body: &str| {
            let scanned = scan(body.as_bytes(), 5);
            scanned.usage_edit().map(|e| {
                (
                    e.clone(),
                    String::from_utf8(edited(body.as_bytes(), &e)).unwrap(),
                )
            })
        };
        let (how, body) = edit(r#"  {"stream":true,"messages":[]}"#).unwrap();
        assert!(matches!(how, UsageEdit::Prefix { len: 3, .. }));
        assert_eq!(
            body,
            r#"{"stream_options":{"include_usage":true},"stream":true,"messages":[]}"#
        );
        let (how, body) = edit(r#"{"stream":true,"stream_options":null,"n":1}"#).unwrap();
        assert!(matches!(
            how,
            UsageEdit::Value {
                start: 32,
                end: 36,
                ..
            }
        ));
        assert_eq!(
            body,
            r#"{"stream":true,"stream_options":{"include_usage":true},"n":1}"#
        );
        let (_, body) =
            edit(r#"{"stream_options":{"include_usage":false,"x":[1]},"stream":true}"#).unwrap();
        let sent: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], Value::Bool(true));
        assert_eq!(sent["stream_options"]["x"], serde_json::json!([1]));
        for body in [
            r#"{"stream":false}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":true,"stream_options":"x"}"#,
            r#"{"stream":true,"stream_options":{},"stream_options":{}}"#,
            r#"{"stream":true,"stream":false}"#,
            r#"{"stream":true"#,
        ] {
            assert_eq!(edit(body), None, "{body}");
        }
    }
}

/// Property tests (native only: proptest does not build for wasm32).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod props {
    use super::tests::{edited, reference, scan};
    use super::*;
    use proptest::prelude::*;

    /// A JSON value, as a client might build one.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z\"\\\\ é\u{1f600}\n/]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("model".to_string()),
            Just("max_tokens".to_string()),
            Just("maxOutputTokens".to_string()),
            Just("stream".to_string()),
            "[a-zA-Z_]{0,8}",
        ]
    }

    /// A request body's members (raw JSON text), keys at times written with escapes.
    fn member() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("model"),
            Just("max_tokens"),
            Just("max_completion_tokens"),
            Just("max_output_tokens"),
            Just("background"),
            Just("stream"),
            Just("stream_options"),
            Just("messages"),
            Just("x"),
        ];
        let config = prop_oneof![
            Just(Value::Null),
            prop::collection::vec((key(), json_value()), 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            any::<u32>().prop_map(|n| serde_json::json!({ "maxOutputTokens": n })),
        ];
        prop_oneof![
            (name, json_value(), any::<bool>()).prop_map(|(name, value, escape)| {
                let name = match escape {
                    true => name.replacen('e', "\\u0065", 1),
                    false => name.to_string(),
                };
                format!("\"{name}\" : {value}")
            }),
            (any::<u32>(), "[a-z0-9-]{1,12}")
                .prop_map(|(n, model)| { format!("\"max_tokens\":{n},\"model\":\"{model}\"") }),
            config.prop_map(|c| format!("\"generationConfig\":{c}")),
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        (prop::collection::vec(member(), 0..6), " {0,2}")
            .prop_map(|(members, ws)| format!("{ws}{{{}}}{ws}", members.join(",")).into_bytes())
    }

    proptest! {
        #[test]
        fn reads_as_serde_json_reads_however_the_body_is_cut(body in body(), cut in 1usize..40) {
            let scanned = scan(&body, cut);
            prop_assert_eq!(scanned.facts(), reference(&body));
            // Its edit gives the body `add_to_request` gives, as the upstream reads it.
            let edit = scanned.usage_edit().map(|e| edited(&body, &e));
            let expected = crate::usage::include_usage::add_to_request(&body);
            let read = |b: Option<Vec<u8>>| b.map(|b| serde_json::from_slice::<Value>(&b).ok());
            if scanned.facts().is_ok() && !(scanned.options_twice) {
                prop_assert_eq!(read(edit), read(expected));
            }
        }

        #[test]
        fn a_damaged_body_reads_as_serde_json_reads_it(
            body in body(),
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![Just(b'"'), Just(b'{'), Just(b'}'), Just(b','), Just(b':'),
                Just(b'\\'), Just(b'0'), Just(b'-'), Just(b'.'), Just(b'e'), Just(b'['),
                Just(b']'), Just(b' '), Just(b'u'), Just(b'n'), Just(0x01u8)],
            how in 0..3u8,
            cut in 1usize..40,
        ) {
            let mut body = body;
            let at = at.index(body.len() + 1);
            match how {
                0 => body.insert(at, byte),
                1 if at < body.len() => { body.remove(at); }
                _ if at < body.len() => body[at] = byte,
                _ => {}
            }
            prop_assert_eq!(scan(&body, cut).facts(), reference(&body), "{}", String::from_utf8_lossy(&body));
        }

        #[test]
        fn any_bytes_are_read_without_panicking(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let scanned = scan(&body, 7);
            let _ = (scanned.facts(), scanned.usage_edit());
        }
    }
}
