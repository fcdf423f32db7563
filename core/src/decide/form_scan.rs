//! The `model` field of a `multipart/form-data` body (an upload), read as the body
//! arrives, window by window: only a part's headers, the model's value and a few bytes
//! that may begin a delimiter are held, never the file. It reads a body as
//! `model::form_facts` reads a whole one: the first part named `model` counts, and it
//! counts as soon as its value has ended.

use super::model::{is_model_field, BodyError, Facts};

/// Longest part head (its header lines) read; a longer one makes the body unreadable.
const HEAD_CAP: usize = 16 * 1024;
/// Longest model value kept; a longer one makes the body unreadable.
const VALUE_CAP: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for the first delimiter (a preamble may come before it).
    Preamble,
    /// Just after a delimiter: `--` ends the form, a line break begins a part.
    AfterDelimiter,
    /// In a part's header lines, up to the blank line.
    Head,
    /// In a part's content, up to the next delimiter (kept if it is the model's).
    Content {
        model: bool,
    },
    /// The model's value is read, or the form ended without one.
    Done,
    Failed,
}

/// Reads one upload, chunk by chunk (`feed`), then tells its model (`facts`).
#[derive(Debug)]
pub struct FormScan {
    /// `--` and the boundary: the first delimiter.
    first: Vec<u8>,
    /// A line break, `--` and the boundary: every later delimiter.
    next: Vec<u8>,
    state: State,
    /// Bytes not yet settled: the head or model value being read, or the end of a
    /// window that may begin a delimiter.
    held: Vec<u8>,
    model: Option<String>,
    offset: usize,
}

impl FormScan {
    pub fn new(boundary: &str) -> FormScan {
        let first = [b"--", boundary.as_bytes()].concat();
        let next = [b"\r\n", &first[..]].concat();
        FormScan {
            first,
            next,
            state: State::Preamble,
            held: Vec::new(),
            model: None,
            offset: 0,
        }
    }

    /// Bytes fed so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether the model is known (or known to be absent): the rest need not be read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    /// The upload's facts: its model once its value has ended; an error if the body so
    /// far is not a form, or ended before its model field (or the form's end) did.
    pub fn facts(&self) -> Result<Facts, BodyError> {
        match self.state {
            State::Done => Ok(Facts {
                model: self.model.clone(),
                ..Facts::default()
            }),
            _ => Err(BodyError::NotJson),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.offset += chunk.len();
        if matches!(self.state, State::Done | State::Failed) {
            return;
        }
        self.held.extend_from_slice(chunk);
        // Each pass settles a prefix of `held`; it stops when more bytes are needed.
        while self.step() {}
    }

    /// Settles what it can of `held`; `false` when it needs more bytes (or is finished).
    fn step(&mut self) -> bool {
        match self.state {
            State::Preamble => match find(&self.held, &self.first) {
                Some(at) => {
                    self.held.drain(..at + self.first.len());
                    self.state = State::AfterDelimiter;
                    true
                }
                None => {
                    self.keep_tail(self.first.len() - 1);
                    false
                }
            },
            State::AfterDelimiter => {
                if self.held.len() < 2 {
                    return false;
                }
                self.state = match &self.held[..2] {
                    b"--" => State::Done,
                    b"\r\n" => State::Head,
                    _ => State::Failed,
                };
                self.held.drain(..2);
                true
            }
            State::Head => match find(&self.held, b"\r\n\r\n") {
                Some(end) => {
                    let head = String::from_utf8_lossy(&self.held[..end]);
                    let model = is_model_field(&head);
                    self.held.drain(..end + 4);
                    self.state = State::Content { model };
                    true
                }
                None if self.held.len() > HEAD_CAP => {
                    self.state = State::Failed;
                    false
                }
                None => false,
            },
            State::Content { model } => match find(&self.held, &self.next) {
                Some(end) if model => {
                    self.state = match std::str::from_utf8(&self.held[..end]) {
                        Ok(value) => {
                            let value = value.trim();
                            self.model = (!value.is_empty()).then(|| value.to_string());
                            State::Done
                        }
                        Err(_) => State::Failed,
                    };
                    self.held.clear();
                    false
                }
                Some(end) => {
                    self.held.drain(..end + self.next.len());
                    self.state = State::AfterDelimiter;
                    true
                }
                None if model && self.held.len() > VALUE_CAP + self.next.len() => {
                    self.state = State::Failed;
                    false
                }
                None if model => false,
                None => {
                    // A file's bytes: only what may begin a delimiter is kept.
                    self.keep_tail(self.next.len() - 1);
                    false
                }
            },
            State::Done | State::Failed => false,
        }
    }

    /// Drops all but the last `n` held bytes.
    fn keep_tail(&mut self, n: usize) {
        let drop = self.held.len().saturating_sub(n);
        self.held.drain(..drop);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    pub(super) fn scan(body: &[u8], boundary: &str, cut: usize) -> FormScan {
        let mut scan = FormScan::new(boundary);
        for chunk in body.chunks(cut.max(1)) {
            scan.feed(chunk);
        }
        scan
    }

    fn upload(model_first: bool) -> Vec<u8> {
        let file = "x--XyZ is not a delimiter here\r\n".repeat(2000);
        let model = "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n";
        let audio = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\
             Content-Type: audio/mpeg\r\n\r\n{file}\r\n"
        );
        let (a, b) = if model_first {
            (model, audio.as_str())
        } else {
            (audio.as_str(), model)
        };
        format!("{a}{b}--XyZ--\r\n").into_bytes()
    }

    #[test]
    fn the_model_is_found_wherever_it_is_and_the_file_is_not_held() {
        for model_first in [true, false] {
            let body = upload(model_first);
            for cut in [1, 7, 1000, 65536] {
                let scanned = scan(&body, "XyZ", cut);
                assert_eq!(scanned.facts().unwrap().model.as_deref(), Some("whisper-1"));
                assert!(scanned.held.len() <= 16, "{}", scanned.held.len());
            }
        }
        // First: known before the file comes.
        let body = upload(true);
        let head = body.windows(5).position(|w| w == b"\r\n--X").unwrap() + 100;
        assert!(scan(&body[..head], "XyZ", 13).is_done());
    }

    #[test]
    fn what_is_not_a_form_is_unreadable() {
        for body in [&b"not a form"[..], b"--XyZ\r\nno blank line", b"--XyZ junk"] {
            assert_eq!(scan(body, "XyZ", 3).facts(), Err(BodyError::NotJson));
        }
        assert_eq!(scan(b"--XyZ--\r\n", "XyZ", 3).facts(), Ok(Facts::default()));
    }
}

/// Property tests (native only).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod props {
    use super::tests::scan;
    use crate::decide::model::form_facts;
    use proptest::prelude::*;

    fn part() -> impl Strategy<Value = String> {
        let name = prop_oneof![Just("model"), Just("file"), Just("MODEL"), Just("x")];
        let value = "[a-z0-9 \r\n-]{0,40}";
        (name, value, any::<bool>()).prop_map(|(name, value, quoted)| {
            let name = if quoted {
                format!("\"{name}\"")
            } else {
                name.to_string()
            };
            format!("--B0undary\r\nContent-Disposition: form-data; name={name}\r\n\r\n{value}\r\n")
        })
    }

    proptest! {
        #[test]
        fn reads_as_a_whole_body_is_read_however_it_is_cut(
            parts in prop::collection::vec(part(), 0..5),
            preamble in "[a-z\r\n-]{0,10}",
            end in any::<bool>(),
            cut in 1usize..50,
        ) {
            let mut body = format!("{preamble}{}", parts.concat());
            if end {
                body.push_str("--B0undary--\r\n");
            }
            let whole = form_facts(body.as_bytes(), "B0undary");
            let scanned = scan(body.as_bytes(), "B0undary", cut);
            // Where the whole body's reading finds a model (or the form's end), the scan
            // finds the same; where it fails, the scan is not done either.
            match whole {
                Ok(facts) => prop_assert_eq!(scanned.facts(), Ok(facts)),
                Err(_) => prop_assert!(scanned.facts().is_err()),
            }
        }

        #[test]
        fn any_bytes_are_read_without_panicking(
            body in prop::collection::vec(any::<u8>(), 0..300),
            cut in 1usize..20,
        ) {
            let _ = scan(&body, "B0undary", cut).facts();
        }
    }
}
