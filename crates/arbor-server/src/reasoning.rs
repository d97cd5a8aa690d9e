//! Reasoning parsers: split a reasoning model's output into the reasoning
//! (`reasoning_content`) and the answer (`content`), while streaming or at once.
//!
//! DeepSeek-R1 writes `<think>` reasoning `</think>` answer. Its chat template may
//! already have opened the `<think>` block in the prompt, so the parser starts in
//! reasoning mode: a leading `<think>` is dropped if the model writes one, everything
//! up to `</think>` is reasoning, and an output that never closes the block is all
//! reasoning. Whitespace around the reasoning and at the start of the answer is
//! trimmed. Streaming gives exactly the same split as parsing the whole text at once,
//! however the text is cut into deltas: text that could still turn out to be (part of)
//! `</think>` or trailing whitespace of the reasoning is held back until it is known.

use std::str::FromStr;

const THINK_OPEN: &str = "<think>";
/// What ends the reasoning.
pub const THINK_CLOSE: &str = "</think>";

/// The reasoning formats the server can parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningParserKind {
    /// `<think>...</think>` as DeepSeek-R1 and its distills write it.
    DeepSeekR1,
}

impl FromStr for ReasoningParserKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "deepseek-r1" => Ok(ReasoningParserKind::DeepSeekR1),
            other => Err(format!(
                "unknown reasoning parser {other:?} (known: deepseek-r1)"
            )),
        }
    }
}

impl ReasoningParserKind {
    /// The parser a model's name suggests: `deepseek-r1` for DeepSeek-R1 and its
    /// distills, none otherwise.
    pub fn for_model_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        (name.contains("deepseek-r1")
            || name.contains("deepseek_r1")
            || name.contains("r1-distill"))
        .then_some(ReasoningParserKind::DeepSeekR1)
    }

    /// A fresh parser for one sequence.
    pub fn parser(self) -> ReasoningParser {
        ReasoningParser::default()
    }
}

/// The reasoning and answer text released by one `push` or `finish`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReasoningDelta {
    /// New reasoning text.
    pub reasoning: String,
    /// New answer text.
    pub content: String,
}

/// Splits one sequence's output, delta by delta.
#[derive(Clone, Debug, Default)]
pub struct ReasoningParser {
    phase: Phase,
    /// Text seen but not yet released.
    held: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Nothing but whitespace seen; a `<think>` may still come.
    #[default]
    Opening,
    /// Inside the reasoning; `started` once non-whitespace was released.
    Reasoning { started: bool },
    /// After `</think>`; `started` once non-whitespace was released.
    Content { started: bool },
}

impl ReasoningParser {
    /// Whether `</think>` has been seen: later text is answer.
    pub fn in_content(&self) -> bool {
        matches!(self.phase, Phase::Content { .. })
    }

    /// Feeds the next piece of output and returns what can be released now.
    pub fn push(&mut self, text: &str) -> ReasoningDelta {
        self.held.push_str(text);
        let mut out = ReasoningDelta::default();
        loop {
            match self.phase {
                Phase::Opening => {
                    if !self.step_opening() {
                        return out;
                    }
                }
                Phase::Reasoning { started } => {
                    if !self.step_reasoning(started, &mut out) {
                        return out;
                    }
                }
                Phase::Content { started } => {
                    self.step_content(started, &mut out);
                    return out;
                }
            }
        }
    }

    /// Releases everything still held at the end of the output.
    pub fn finish(&mut self) -> ReasoningDelta {
        let held = std::mem::take(&mut self.held);
        match self.phase {
            Phase::Opening | Phase::Reasoning { started: false } => ReasoningDelta {
                reasoning: held.trim().to_string(),
                content: String::new(),
            },
            Phase::Reasoning { started: true } => ReasoningDelta {
                reasoning: held.trim_end().to_string(),
                content: String::new(),
            },
            Phase::Content { started } => ReasoningDelta {
                reasoning: String::new(),
                content: if started {
                    held
                } else {
                    held.trim_start().to_string()
                },
            },
        }
    }

    /// Parses a whole output at once: `(reasoning, content)`, each `None` when empty.
    pub fn split(text: &str) -> (Option<String>, Option<String>) {
        let mut parser = ReasoningParser::default();
        let mut all = parser.push(text);
        let rest = parser.finish();
        all.reasoning.push_str(&rest.reasoning);
        all.content.push_str(&rest.content);
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        (non_empty(all.reasoning), non_empty(all.content))
    }

    /// Returns true when the phase changed and the loop should go on.
    fn step_opening(&mut self) -> bool {
        let trimmed = self.held.trim_start();
        if let Some(rest) = trimmed.strip_prefix(THINK_OPEN) {
            self.held = rest.to_string();
        } else if THINK_OPEN.starts_with(trimmed) {
            // Only whitespace or a partial `<think>` so far: wait for more.
            self.held = trimmed.to_string();
            return false;
        } else {
            self.held = trimmed.to_string();
        }
        self.phase = Phase::Reasoning { started: false };
        true
    }

    /// Returns true when `</think>` was found and the loop should go on.
    fn step_reasoning(&mut self, started: bool, out: &mut ReasoningDelta) -> bool {
        if !started {
            self.held = self.held.trim_start().to_string();
            if self.held.is_empty() {
                return false;
            }
            self.phase = Phase::Reasoning { started: true };
        }
        if let Some(idx) = self.held.find(THINK_CLOSE) {
            out.reasoning.push_str(self.held[..idx].trim_end());
            self.held = self.held[idx + THINK_CLOSE.len()..].to_string();
            self.phase = Phase::Content { started: false };
            return true;
        }
        // Hold back a tail that could start `</think>`, and the whitespace before it,
        // which is trimmed if the reasoning ends there.
        let partial = (1..THINK_CLOSE.len())
            .rev()
            .find(|&k| self.held.ends_with(&THINK_CLOSE[..k]))
            .unwrap_or(0);
        let cut = self.held[..self.held.len() - partial].trim_end().len();
        out.reasoning.push_str(&self.held[..cut]);
        self.held = self.held[cut..].to_string();
        false
    }

    fn step_content(&mut self, started: bool, out: &mut ReasoningDelta) {
        let held = std::mem::take(&mut self.held);
        let text = if started {
            held.as_str()
        } else {
            held.trim_start()
        };
        if !text.is_empty() {
            self.phase = Phase::Content { started: true };
            out.content.push_str(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The split, written directly from the rules in the module doc.
    fn reference_split(text: &str) -> (String, String) {
        let t = text.trim_start();
        let t = t.strip_prefix(THINK_OPEN).unwrap_or(t);
        match t.find(THINK_CLOSE) {
            Some(idx) => (
                t[..idx].trim().to_string(),
                t[idx + THINK_CLOSE.len()..].trim_start().to_string(),
            ),
            None => (t.trim().to_string(), String::new()),
        }
    }

    fn streamed(pieces: &[&str]) -> (String, String) {
        let mut parser = ReasoningParser::default();
        let (mut reasoning, mut content) = (String::new(), String::new());
        for piece in pieces {
            let delta = parser.push(piece);
            reasoning.push_str(&delta.reasoning);
            content.push_str(&delta.content);
        }
        let delta = parser.finish();
        reasoning.push_str(&delta.reasoning);
        content.push_str(&delta.content);
        (reasoning, content)
    }

    #[test]
    fn text_before_think_close_is_reasoning_and_the_rest_content() {
        let (reasoning, content) =
            ReasoningParser::split("<think>\nLet me see.\n</think>\n\nIt is 4.");
        assert_eq!(reasoning.as_deref(), Some("Let me see."));
        assert_eq!(content.as_deref(), Some("It is 4."));
    }

    #[test]
    fn parser_starts_in_reasoning_when_the_template_opened_think() {
        let (reasoning, content) = ReasoningParser::split("Hmm.</think>Four.");
        assert_eq!(
            (reasoning.as_deref(), content.as_deref()),
            (Some("Hmm."), Some("Four."))
        );
    }

    #[test]
    fn output_without_think_close_is_all_reasoning() {
        let (reasoning, content) = ReasoningParser::split("<think>still thinking");
        assert_eq!(
            (reasoning.as_deref(), content),
            (Some("still thinking"), None)
        );
    }

    #[test]
    fn a_partial_close_tag_is_held_back_until_resolved() {
        let mut parser = ReasoningParser::default();
        assert_eq!(parser.push("abc </th").reasoning, "abc");
        assert!(!parser.in_content());
        let delta = parser.push("ink> answer");
        assert_eq!(
            (delta.reasoning.as_str(), delta.content.as_str()),
            ("", "answer")
        );
        assert!(parser.in_content());
    }

    #[test]
    fn a_false_alarm_close_prefix_is_released_as_reasoning() {
        assert_eq!(
            streamed(&["a </", "b"]),
            ("a </b".to_string(), String::new())
        );
    }

    #[test]
    fn parser_names_parse_and_follow_model_names() {
        assert_eq!("deepseek_r1".parse(), Ok(ReasoningParserKind::DeepSeekR1));
        assert!("qwen3".parse::<ReasoningParserKind>().is_err());
        let r1 = ReasoningParserKind::for_model_name("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf");
        assert_eq!(r1, Some(ReasoningParserKind::DeepSeekR1));
        assert_eq!(
            ReasoningParserKind::for_model_name("SmolLM2-135M-Instruct"),
            None
        );
    }

    fn piece() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "<think>", "</think>", "</th", "ink>", "<", "/", "t", " ", "\n", "a", "é", "x y",
        ])
        .prop_map(str::to_string)
    }

    proptest! {
        #[test]
        fn streaming_matches_the_whole_text_split_for_any_chunking(
            pieces in prop::collection::vec(piece(), 0..12),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let text: String = pieces.concat();
            let chunks = crate::test_support::cut_at(&text, &cuts);
            prop_assert_eq!(streamed(&chunks), reference_split(&text));
        }
    }
}
