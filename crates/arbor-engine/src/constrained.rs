//! An output constraint in progress: one of a few literal prefixes, one JSON object, a
//! literal suffix. `JsonObject` is the case with no prefix and an empty suffix; a forced
//! tool call wraps the arguments object in its format's markers, one prefix per
//! function it may call (`<tool_call>{"name": "f", "arguments": ` ... `}</tool_call>`).
//!
//! With a gate (`constraint_after`, `</think>` for a reasoning model), nothing is
//! masked until the output has written the gate text; what follows it in the same
//! token is the first text the constraint sees.
//!
//! While a prefix is being written, only tokens whose text continues one of the
//! prefixes still possible fit (a token may not run across the boundary into the object, which only
//! narrows how the same text is tokenized); inside the object, `JsonVocab` masks as
//! in plain JSON mode.

use std::sync::Arc;

use crate::api::OutputConstraint;
use crate::json_mode::{JsonMachine, JsonVocab};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Writing one of the prefixes (`written` holds what was written).
    Prefix,
    Json,
    /// Bytes of the suffix written.
    Suffix(usize),
    Done,
}

/// One sequence's constraint state.
#[derive(Clone, Debug)]
pub struct Constrained {
    /// The text still awaited before the constraint starts, and the tail of the output
    /// that may be the start of it.
    gate: Option<(Arc<str>, String)>,
    prefixes: Arc<[String]>,
    /// The prefix text written so far.
    written: String,
    suffix: Arc<str>,
    phase: Phase,
    json: JsonMachine,
}

impl Constrained {
    /// The start of `constraint`, held back until the output writes `after`.
    pub fn new(constraint: &OutputConstraint, after: Option<&str>) -> Self {
        let (prefixes, suffix) = match constraint {
            OutputConstraint::JsonObject => (&[][..], ""),
            OutputConstraint::JsonObjectWithin { prefixes, suffix } => {
                (prefixes.as_slice(), suffix.as_str())
            }
        };
        let phase = match prefixes.iter().any(String::is_empty) || prefixes.is_empty() {
            true => Phase::Json,
            false => Phase::Prefix,
        };
        Self {
            gate: after
                .filter(|gate| !gate.is_empty())
                .map(|gate| (gate.into(), String::new())),
            prefixes: prefixes.into(),
            written: String::new(),
            suffix: suffix.into(),
            phase,
            json: JsonMachine::default(),
        }
    }

    /// Whether everything was written: the sequence ends.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the constraint applies to the next token (its gate, if any, passed).
    pub fn is_active(&self) -> bool {
        self.gate.is_none()
    }

    /// Feeds the text of the token just sampled; false when it does not fit (only
    /// possible for a token sampled without a mask).
    pub fn feed(&mut self, text: &str) -> bool {
        let Some((gate, tail)) = self.gate.as_mut() else {
            return text.chars().all(|c| self.step(c));
        };
        tail.push_str(text);
        match tail.find(&**gate) {
            Some(at) => {
                let rest = tail[at + gate.len()..].to_string();
                self.gate = None;
                self.feed(&rest)
            }
            None => {
                // Keep only what could still be the start of the gate.
                let mut keep = tail.len().saturating_sub(gate.len() - 1);
                while !tail.is_char_boundary(keep) {
                    keep += 1;
                }
                tail.drain(..keep);
                true
            }
        }
    }

    /// Masks `row` to the tokens that fit next; false (row untouched) when none does
    /// or the constraint has not started.
    pub fn mask(&self, vocab: &JsonVocab, row: &mut [f32]) -> bool {
        if !self.is_active() {
            return false;
        }
        match self.phase {
            Phase::Prefix => {
                let left = self
                    .prefixes
                    .iter()
                    .filter_map(|p| p.strip_prefix(&self.written));
                vocab.mask_literals(&left.collect::<Vec<_>>(), row)
            }
            Phase::Json => vocab.mask(&self.json, row),
            Phase::Suffix(at) => vocab.mask_literals(&[&self.suffix[at..]], row),
            Phase::Done => false,
        }
    }

    fn step(&mut self, c: char) -> bool {
        match self.phase {
            Phase::Prefix => {
                self.written.push(c);
                let mut possible = self
                    .prefixes
                    .iter()
                    .filter(|p| p.starts_with(&self.written));
                match possible.next() {
                    None => return false,
                    Some(_) if self.prefixes.contains(&self.written) => self.phase = Phase::Json,
                    Some(_) => {}
                }
            }
            Phase::Json => {
                if !self.json.feed(c.encode_utf8(&mut [0; 4])) {
                    return false;
                }
                if self.json.is_done() {
                    self.phase = match self.suffix.is_empty() {
                        true => Phase::Done,
                        false => Phase::Suffix(0),
                    };
                }
            }
            Phase::Suffix(at) => match self.suffix[at..].strip_prefix(c) {
                Some("") => self.phase = Phase::Done,
                Some(rest) => self.phase = Phase::Suffix(self.suffix.len() - rest.len()),
                None => return false,
            },
            Phase::Done => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ByteDecoder;

    fn wrapped() -> Constrained {
        let constraint = OutputConstraint::JsonObjectWithin {
            prefixes: vec!["<t>{\"name\": \"f\", \"arguments\": ".into()],
            suffix: "}</t>".into(),
        };
        Constrained::new(&constraint, None)
    }

    #[test]
    fn one_of_several_prefixes_is_written_and_only_those_tokens_fit() {
        let vocab = JsonVocab::new(&ByteDecoder, 256);
        let constraint = OutputConstraint::JsonObjectWithin {
            prefixes: vec!["<a>".into(), "<ab>".into(), "<c>".into()],
            suffix: String::new(),
        };
        let kept = |c: &Constrained| {
            let mut row = vec![0.0f32; 256];
            assert!(c.mask(&vocab, &mut row));
            (0..=255u8)
                .filter(|&b| row[usize::from(b)].is_finite())
                .map(char::from)
                .collect::<String>()
        };
        let mut c = Constrained::new(&constraint, None);
        assert!(c.feed("<"));
        assert_eq!(kept(&c), "ac");
        assert!(c.feed("a"));
        assert_eq!(kept(&c), ">b");
        assert!(c.feed("b>{}") && c.is_done());
        let mut c = Constrained::new(&constraint, None);
        assert!(c.feed("<a>") && c.feed("{}") && c.is_done());
        assert!(!Constrained::new(&constraint, None).feed("<d"));
    }

    #[test]
    fn a_gated_constraint_starts_after_the_gate_text() {
        let vocab = JsonVocab::new(&ByteDecoder, 256);
        let mut c = Constrained::new(&OutputConstraint::JsonObject, Some("</think>"));
        let mut row = vec![0.0f32; 256];
        // Free text, even text JSON would refuse, until the gate is written; the gate
        // may be cut across tokens, and what follows it is the constraint's first text.
        for piece in ["Let me think. [not json", " </th", "ink>\n{\"a\""] {
            assert!(!c.is_active() && !c.mask(&vocab, &mut row));
            assert!(c.feed(piece), "{piece}");
        }
        assert!(c.is_active());
        assert!(c.mask(&vocab, &mut row));
        assert!(row[usize::from(b':')].is_finite() && row[usize::from(b'x')].is_infinite());
        assert!(c.feed(": 1}") && c.is_done());
        let mut never = Constrained::new(&OutputConstraint::JsonObject, Some("</think>"));
        assert!(never.feed("é</thin") && never.feed("k and on") && !never.is_active());
    }

    #[test]
    fn prefix_object_and_suffix_are_written_in_order() {
        let mut c = wrapped();
        assert!(c.feed("<t>{\"name\": \"f\", \"arguments\": "));
        assert!(c.feed("{\"x\": [1, 2]}"));
        assert!(!c.is_done());
        assert!(c.feed("}</t>") && c.is_done());
        assert!(!wrapped().feed("<x>"));
        let mut plain = Constrained::new(&OutputConstraint::JsonObject, None);
        assert!(plain.feed("{}") && plain.is_done());
    }

    #[test]
    fn literal_phases_allow_only_tokens_that_start_what_is_left() {
        let vocab = JsonVocab::new(&ByteDecoder, 256);
        let mut c = wrapped();
        let mut row = vec![0.0f32; 256];
        assert!(c.mask(&vocab, &mut row));
        let kept: Vec<usize> = (0..256).filter(|&id| row[id].is_finite()).collect();
        assert_eq!(kept, vec![usize::from(b'<')]);
        assert!(c.feed("<t>{\"name\": \"f\", \"arguments\": {}"));
        let mut row = vec![0.0f32; 256];
        assert!(c.mask(&vocab, &mut row));
        let kept: Vec<usize> = (0..256).filter(|&id| row[id].is_finite()).collect();
        assert_eq!(kept, vec![usize::from(b'}')]);
    }
}
