//! JSON mode (`response_format: {"type": "json_object"}`): constrained decoding that
//! lets a sequence write only a JSON object.
//!
//! [`JsonMachine`] is a pushdown automaton over characters that accepts exactly the
//! prefixes of JSON texts whose value is an object (RFC 8259, with at most
//! [`MAX_SPACE_RUN`] whitespace characters in a row so a model cannot stall on blank
//! lines). It is `Copy` (the container stack is a bit set), so trying a token on a copy
//! is cheap. [`JsonVocab`] holds every token's text once; before each sample, the
//! tokens whose text the machine would reject get `-inf` logits (stop tokens included),
//! and the sequence ends with `stop` as soon as its object closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most whitespace characters in a row.
pub const MAX_SPACE_RUN: u8 = 16;
/// Deepest nesting of objects and arrays.
const MAX_DEPTH: u8 = 64;

/// Where the automaton is within the JSON text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    /// Before the top-level value, which must be an object.
    Start,
    /// Right after `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After `:` or `,` in an array: a value.
    Value,
    /// Right after `[`: a value or `]`.
    ValueOrEnd,
    /// After a value inside a container: `,` or the container's close.
    AfterValue,
    /// Inside a string; `key` when it is an object key.
    Str { key: bool, escape: Escape },
    /// Inside a number.
    Num(Num),
    /// Inside `true`, `false` or `null`: `done` letters of `word` written.
    Word { word: &'static str, done: u8 },
    /// The top-level object is closed.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Escape {
    None,
    /// After a backslash.
    Backslash,
    /// Inside `\uXXXX` with this many hex digits still to come.
    Hex(u8),
}

/// Number states, named after what was written last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigit,
}

impl Num {
    /// Whether the number may end here.
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigit)
    }

    fn next(self, c: char) -> Option<Num> {
        let digit = c.is_ascii_digit();
        match (self, c) {
            (Num::Minus, '0') => Some(Num::Zero),
            (Num::Minus, _) if digit => Some(Num::Int),
            (Num::Int, _) if digit => Some(Num::Int),
            (Num::Zero | Num::Int, '.') => Some(Num::Dot),
            (Num::Dot | Num::Frac, _) if digit => Some(Num::Frac),
            (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') => Some(Num::Exp),
            (Num::Exp, '+' | '-') => Some(Num::ExpSign),
            (Num::Exp | Num::ExpSign | Num::ExpDigit, _) if digit => Some(Num::ExpDigit),
            _ => None,
        }
    }
}

/// The automaton; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JsonMachine {
    mode: Mode,
    /// Bit `i` set: container `i` (from the outside) is an object, else an array.
    objects: u64,
    depth: u8,
    space_run: u8,
}

impl Default for JsonMachine {
    fn default() -> Self {
        Self {
            mode: Mode::Start,
            objects: 0,
            depth: 0,
            space_run: 0,
        }
    }
}

impl JsonMachine {
    /// Whether the top-level object is complete: only stop tokens may follow.
    pub fn is_done(&self) -> bool {
        self.mode == Mode::Done
    }

    /// Inside a string with no escape pending: any text without `"`, `\\` or control
    /// characters continues it.
    fn in_plain_string(&self) -> bool {
        matches!(
            self.mode,
            Mode::Str {
                escape: Escape::None,
                ..
            }
        )
    }

    /// Feeds `text`; false (leaving the machine in an unspecified state) when some
    /// character cannot continue a JSON object.
    pub fn feed(&mut self, text: &str) -> bool {
        text.chars().all(|c| self.step(c))
    }

    /// Whether `text` could be written next.
    pub fn accepts(&self, text: &str) -> bool {
        let mut probe = *self;
        probe.feed(text)
    }

    fn step(&mut self, c: char) -> bool {
        let space = matches!(c, ' ' | '\t' | '\n' | '\r');
        match self.mode {
            Mode::Str { key, escape } => return self.step_string(key, escape, c),
            Mode::Word { word, done } => {
                if word[done as usize..].starts_with(c) {
                    let done = done + 1;
                    self.mode = match done as usize == word.len() {
                        true => Mode::AfterValue,
                        false => Mode::Word { word, done },
                    };
                    return true;
                }
                return false;
            }
            Mode::Num(num) => match num.next(c) {
                Some(next) => {
                    self.mode = Mode::Num(next);
                    return true;
                }
                None if num.complete() => self.mode = Mode::AfterValue,
                None => return false,
            },
            _ => {}
        }
        if space {
            if self.mode == Mode::Done || self.space_run >= MAX_SPACE_RUN {
                return false;
            }
            self.space_run += 1;
            return true;
        }
        self.space_run = 0;
        match (self.mode, c) {
            (Mode::Start, '{') => self.open(true),
            (Mode::KeyOrEnd, '}') => self.close(true),
            (Mode::KeyOrEnd | Mode::Key, '"') => {
                self.mode = Mode::Str {
                    key: true,
                    escape: Escape::None,
                };
                true
            }
            (Mode::Colon, ':') => {
                self.mode = Mode::Value;
                true
            }
            (Mode::ValueOrEnd, ']') => self.close(false),
            (Mode::Value | Mode::ValueOrEnd, _) => self.start_value(c),
            (Mode::AfterValue, ',') => {
                self.mode = match self.in_object() {
                    true => Mode::Key,
                    false => Mode::Value,
                };
                true
            }
            (Mode::AfterValue, '}') if self.in_object() => self.close(true),
            (Mode::AfterValue, ']') if !self.in_object() => self.close(false),
            _ => false,
        }
    }

    fn start_value(&mut self, c: char) -> bool {
        self.mode = match c {
            '{' => return self.open(true),
            '[' => return self.open(false),
            '"' => Mode::Str {
                key: false,
                escape: Escape::None,
            },
            '-' => Mode::Num(Num::Minus),
            '0' => Mode::Num(Num::Zero),
            '1'..='9' => Mode::Num(Num::Int),
            't' => Mode::Word {
                word: "true",
                done: 1,
            },
            'f' => Mode::Word {
                word: "false",
                done: 1,
            },
            'n' => Mode::Word {
                word: "null",
                done: 1,
            },
            _ => return false,
        };
        true
    }

    fn step_string(&mut self, key: bool, escape: Escape, c: char) -> bool {
        let escape = match (escape, c) {
            (Escape::None, '"') => {
                self.mode = match key {
                    true => Mode::Colon,
                    false => Mode::AfterValue,
                };
                return true;
            }
            (Escape::None, '\\') => Escape::Backslash,
            (Escape::None, c) if (c as u32) < 0x20 => return false,
            (Escape::None, _) => Escape::None,
            (Escape::Backslash, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => Escape::None,
            (Escape::Backslash, 'u') => Escape::Hex(4),
            (Escape::Hex(n), c) if c.is_ascii_hexdigit() => match n {
                1 => Escape::None,
                n => Escape::Hex(n - 1),
            },
            _ => return false,
        };
        self.mode = Mode::Str { key, escape };
        true
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && self.objects & (1 << (self.depth - 1)) != 0
    }

    fn open(&mut self, object: bool) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        let bit = 1u64 << self.depth;
        self.objects = match object {
            true => self.objects | bit,
            false => self.objects & !bit,
        };
        self.depth += 1;
        self.mode = match object {
            true => Mode::KeyOrEnd,
            false => Mode::ValueOrEnd,
        };
        true
    }

    fn close(&mut self, object: bool) -> bool {
        debug_assert_eq!(self.in_object(), object);
        self.depth -= 1;
        self.mode = match self.depth {
            0 => Mode::Done,
            _ => Mode::AfterValue,
        };
        true
    }
}

/// Machine states whose allowed tokens are remembered; the cache is cleared when full.
const MASK_CACHE_STATES: usize = 256;

/// Every token's text, for masking; `None` for tokens that decode to nothing when
/// special tokens are skipped (special tokens may never appear inside JSON). The
/// tokens allowed in a state are remembered: most steps repeat a recent state (inside
/// a string, after a value at the same depth), so they cost one pass over the row.
#[derive(Debug)]
pub struct JsonVocab {
    texts: Vec<Option<Box<str>>>,
    /// Tokens that are plain string content: no `"`, `\\` or control characters.
    plain: Vec<bool>,
    /// Token ids grouped by their first character: a group whose first character the
    /// machine rejects is skipped whole.
    by_first: Vec<(char, Vec<u32>)>,
    allowed: Mutex<HashMap<JsonMachine, Allowed>>,
}

impl JsonVocab {
    /// Decodes each of `vocab_size` ids once.
    pub fn new(decoder: &dyn crate::runner::TokenDecoder, vocab_size: usize) -> Self {
        let texts: Vec<Option<Box<str>>> = (0..vocab_size as u32)
            .map(|id| {
                let text = decoder.decode(&[id], true);
                (!text.is_empty()).then(|| text.into_boxed_str())
            })
            .collect();
        let plain = texts
            .iter()
            .map(|text| {
                text.as_deref().is_some_and(|text| {
                    !text
                        .chars()
                        .any(|c| c == '"' || c == '\\' || (c as u32) < 0x20)
                })
            })
            .collect();
        let mut groups: HashMap<char, Vec<u32>> = HashMap::new();
        for (id, text) in texts.iter().enumerate() {
            if let Some(first) = text.as_deref().and_then(|t| t.chars().next()) {
                groups.entry(first).or_default().push(id as u32);
            }
        }
        let mut by_first: Vec<(char, Vec<u32>)> = groups.into_iter().collect();
        by_first.sort_unstable_by_key(|(first, _)| *first);
        Self {
            texts,
            plain,
            by_first,
            allowed: Mutex::new(HashMap::new()),
        }
    }

    /// The text of token `id`; `None` for special and unknown tokens.
    pub fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize)?.as_deref()
    }

    /// Sets the logits of tokens `machine` cannot take next to `-inf`. Returns false,
    /// leaving `row` as it was, when no token fits (a vocabulary without the single
    /// characters JSON needs).
    pub fn mask(&self, machine: &JsonMachine, row: &mut [f32]) -> bool {
        match self.allowed_ids(machine) {
            Allowed::Only(ids) => keep_only(row, ids.iter().map(|&id| id as usize)),
            Allowed::AllBut(ids) => {
                for &id in ids.iter() {
                    if let Some(logit) = row.get_mut(id as usize) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
                if let Some(rest) = row.get_mut(self.texts.len()..) {
                    rest.fill(f32::NEG_INFINITY);
                }
                true
            }
        }
    }

    /// Masks `row` to the tokens whose text starts one of `literals` (what is left of
    /// the literals the output may write); false (row untouched) when none does.
    pub fn mask_literals(&self, literals: &[&str], row: &mut [f32]) -> bool {
        let fits = (0..row.len()).filter(|&id| {
            self.text(id as u32)
                .is_some_and(|text| literals.iter().any(|l| l.starts_with(text)))
        });
        keep_only(row, fits)
    }

    /// The ids of the tokens `machine` accepts, from the cache or computed.
    fn allowed_ids(&self, machine: &JsonMachine) -> Allowed {
        let mut cache = self.allowed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(allowed) = cache.get(machine) {
            return allowed.clone();
        }
        let in_string = machine.in_plain_string();
        let mut ids = Vec::new();
        for (first, group) in &self.by_first {
            let mut after_first = *machine;
            if !after_first.step(*first) {
                continue;
            }
            let skip = first.len_utf8();
            ids.extend(group.iter().copied().filter(|&id| {
                (in_string && self.plain[id as usize])
                    || self
                        .text(id)
                        .is_some_and(|text| after_first.accepts(&text[skip..]))
            }));
        }
        ids.sort_unstable();
        // Inside strings nearly every token fits: keep the shorter list.
        let allowed = if ids.len() > self.texts.len() / 2 {
            let mut fits = ids.iter().copied().peekable();
            let others: Vec<u32> = (0..self.texts.len() as u32)
                .filter(|&id| fits.next_if_eq(&id).is_none())
                .collect();
            Allowed::AllBut(others.into())
        } else {
            Allowed::Only(ids.into())
        };
        if cache.len() >= MASK_CACHE_STATES {
            cache.clear();
        }
        cache.insert(*machine, allowed.clone());
        allowed
    }
}

/// Keeps the logits of `ids` and sets every other one to `-inf`; false (row untouched)
/// when none of `ids` is in the row.
fn keep_only(row: &mut [f32], ids: impl Iterator<Item = usize>) -> bool {
    let kept: Vec<(usize, f32)> = ids
        .filter_map(|id| row.get(id).map(|&logit| (id, logit)))
        .collect();
    if kept.is_empty() {
        return false;
    }
    row.fill(f32::NEG_INFINITY);
    for (id, logit) in kept {
        row[id] = logit;
    }
    true
}

/// The tokens a state allows, as whichever list is shorter.
#[derive(Clone, Debug)]
enum Allowed {
    /// Only these ids.
    Only(Arc<[u32]>),
    /// Every id of the vocabulary but these.
    AllBut(Arc<[u32]>),
}

#[cfg(test)]
#[path = "json_mode_tests.rs"]
mod tests;
