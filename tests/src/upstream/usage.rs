//! Deterministic token counts: input = whitespace-separated words of all prompt text,
//! output = the requested maximum (16 when none is given).

use serde_json::Value;

use super::Knobs;

/// Output tokens when the request sets no maximum.
pub const DEFAULT_OUTPUT: u64 = 16;
/// Words actually generated at most; usage still reports the full count.
const MAX_GENERATED_WORDS: u64 = 4096;

/// The token counts one mock response reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub input: u64,
    pub cached: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl Usage {
    /// Counts the words under `prompt_fields` of the body and reads the first of
    /// `max_fields` (a `/`-separated path) that is set.
    pub fn of(body: &Value, prompt_fields: &[&str], max_fields: &[&str], knobs: Knobs) -> Usage {
        let input = prompt_fields
            .iter()
            .map(|f| words_in(&body[*f]))
            .sum::<u64>();
        let output = max_fields
            .iter()
            .find_map(|path| path.split('/').fold(body, |v, k| &v[k]).as_u64())
            .unwrap_or(DEFAULT_OUTPUT);
        Usage {
            input,
            cached: knobs.cached_tokens.min(input),
            output,
            reasoning: knobs.reasoning_tokens,
        }
    }

    /// The generated words, one string each: `w1`, `w2`, ...
    pub fn words(&self) -> Vec<String> {
        (1..=self.output.min(MAX_GENERATED_WORDS))
            .map(|i| format!("w{i}"))
            .collect()
    }

    pub fn text(&self) -> String {
        self.words().join(" ")
    }
}

/// Words of all text in a prompt value, whatever the provider's nesting: plain strings,
/// arrays of them, and objects whose `text`, `content` or `parts` hold text.
pub fn words_in(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(items) => items.iter().map(words_in).sum(),
        Value::Object(map) => ["text", "content", "parts"]
            .iter()
            .filter_map(|k| map.get(*k))
            .map(words_in)
            .sum(),
        _ => 0,
    }
}
