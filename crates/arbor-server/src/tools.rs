//! Tool-call parsers: find the tool calls a model wrote in its answer and return them
//! as OpenAI `tool_calls`, while streaming or at once.
//!
//! Three formats, named as vLLM names its parsers:
//! - `deepseek-v3`: what DeepSeek-R1's chat template renders and its distills write,
//!   `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME` then the
//!   arguments in a json code fence and `<｜tool▁call▁end｜>`, one block per call
//!   (the V3.1 spelling `NAME<｜tool▁sep｜>ARGS` is read too);
//! - `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` as Qwen2.5
//!   writes it (a JSON list of calls inside one block is read too);
//! - `llama3-json`: an answer that is nothing but `{"name": ..., "parameters": {...}}`
//!   objects separated by `;`, as Llama 3.1 writes them.
//!
//! Text outside the calls stays `content`. A block whose body does not parse as a call
//! is given back as content, markers and the whitespace before it included. Whitespace just before a call and, once
//! a call was seen, whitespace at the end is dropped. Streaming gives the same result as
//! parsing the whole text at once, however it is cut into deltas: text that could still
//! turn out to be (part of) a marker is held back until it is known.

use std::str::FromStr;

use serde_json::Value as Json;

/// The tool-call formats the server can parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolParserKind {
    /// DeepSeek-V3/R1 blocks with `<｜tool▁call▁begin｜>` markers.
    DeepSeekV3,
    /// `<tool_call>` JSON `</tool_call>` (Hermes, Qwen2.5).
    Hermes,
    /// A whole answer of JSON call objects (Llama 3.1).
    Llama3Json,
}

impl FromStr for ToolParserKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "deepseek-v3" | "deepseekv3" | "deepseek-r1" => Ok(ToolParserKind::DeepSeekV3),
            "hermes" | "qwen25" | "qwen" => Ok(ToolParserKind::Hermes),
            "llama3-json" | "llama3" => Ok(ToolParserKind::Llama3Json),
            other => Err(format!(
                "unknown tool-call parser {other:?} (known: deepseek-v3, hermes, llama3-json)"
            )),
        }
    }
}

impl ToolParserKind {
    /// The parser a model's name suggests: `deepseek-v3` for DeepSeek-R1 and its
    /// distills, `hermes` for Qwen2.5 and Qwen3, none otherwise (a JSON-only answer is
    /// too common to read as a Llama call without being asked).
    pub fn for_model_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        if name.contains("deepseek-r1")
            || name.contains("deepseek_r1")
            || name.contains("r1-distill")
        {
            Some(ToolParserKind::DeepSeekV3)
        } else if ["qwen2.5", "qwen2_5", "qwen3"]
            .iter()
            .any(|q| name.contains(q))
        {
            Some(ToolParserKind::Hermes)
        } else {
            None
        }
    }

    /// A fresh parser for one sequence.
    pub fn parser(self) -> ToolParser {
        ToolParser {
            kind: self,
            held: String::new(),
            in_call: false,
            space_before: String::new(),
            n_calls: 0,
            json_answer: None,
        }
    }

    /// Markers that open and close one call, and markers dropped outside calls.
    fn markers(self) -> (&'static str, &'static str, &'static [&'static str]) {
        match self {
            ToolParserKind::DeepSeekV3 => (
                DS_CALL_BEGIN,
                DS_CALL_END,
                &["<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"],
            ),
            ToolParserKind::Hermes | ToolParserKind::Llama3Json => {
                ("<tool_call>", "</tool_call>", &[])
            }
        }
    }
}

const DS_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
const DS_SEP: &str = "<｜tool▁sep｜>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// One parsed call: the function's name and its arguments as JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The function to call.
    pub name: String,
    /// A JSON object, serialized.
    pub arguments: String,
}

/// The content and the calls released by one `push` or `finish`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolDelta {
    /// New answer text.
    pub content: String,
    /// Calls completed by this piece, in order.
    pub calls: Vec<ToolCall>,
}

/// Finds the tool calls of one sequence's answer, delta by delta.
#[derive(Clone, Debug)]
pub struct ToolParser {
    kind: ToolParserKind,
    /// Text seen but not yet released.
    held: String,
    /// Inside a call block: everything up to its closing marker is the call.
    in_call: bool,
    /// The whitespace dropped before the open block, given back if it is no call.
    space_before: String,
    n_calls: usize,
    /// `llama3-json` only: whether the answer starts like JSON, once known.
    json_answer: Option<bool>,
}

impl ToolParser {
    /// Calls released so far.
    pub fn n_calls(&self) -> usize {
        self.n_calls
    }

    /// Feeds the next piece of the answer and returns what can be released now.
    pub fn push(&mut self, text: &str) -> ToolDelta {
        self.held.push_str(text);
        let mut out = ToolDelta::default();
        if self.kind == ToolParserKind::Llama3Json {
            self.push_json_answer(&mut out);
        } else {
            while self.step_blocks(&mut out) {}
        }
        out
    }

    /// Releases everything still held at the end of the answer.
    pub fn finish(&mut self) -> ToolDelta {
        let mut out = self.push("");
        let held = std::mem::take(&mut self.held);
        if self.kind == ToolParserKind::Llama3Json {
            if self.json_answer == Some(true) {
                match json_answer_calls(&held) {
                    Some(calls) => self.release_calls(calls, &mut out),
                    None => out.content.push_str(&held),
                }
            } else {
                out.content.push_str(&held);
            }
        } else if self.in_call {
            // The answer ended inside a block (no closing marker): a call if it parses.
            let (open, _, _) = self.kind.markers();
            match self.block_calls(&held) {
                Some(calls) => self.release_calls(calls, &mut out),
                None => {
                    for part in [self.space_before.as_str(), open, held.as_str()] {
                        out.content.push_str(part);
                    }
                }
            }
        } else if self.n_calls > 0 {
            out.content.push_str(held.trim_end());
        } else {
            out.content.push_str(&held);
        }
        out
    }

    /// Parses a whole answer at once.
    pub fn parse(kind: ToolParserKind, text: &str) -> ToolDelta {
        let mut parser = kind.parser();
        let mut all = parser.push(text);
        let rest = parser.finish();
        all.content.push_str(&rest.content);
        all.calls.extend(rest.calls);
        all
    }

    /// One step of the block formats; returns true when a marker was consumed and the
    /// loop should go on.
    fn step_blocks(&mut self, out: &mut ToolDelta) -> bool {
        let (open, close, dropped) = self.kind.markers();
        if self.in_call {
            let Some(end) = self.held.find(close) else {
                return false;
            };
            let body = self.held[..end].to_string();
            self.held.drain(..end + close.len());
            self.in_call = false;
            match self.block_calls(&body) {
                Some(calls) => self.release_calls(calls, out),
                None => {
                    for part in [self.space_before.as_str(), open, body.as_str(), close] {
                        out.content.push_str(part);
                    }
                }
            }
            return true;
        }
        let next_marker = std::iter::once(open)
            .chain(dropped.iter().copied())
            .filter_map(|marker| self.held.find(marker).map(|at| (at, marker)))
            .min();
        if let Some((at, marker)) = next_marker {
            let text = self.held[..at].trim_end();
            out.content.push_str(text);
            self.space_before = self.held[text.len()..at].to_string();
            self.held.drain(..at + marker.len());
            self.in_call = marker == open;
            return true;
        }
        // Hold back a tail that could start a marker, and the whitespace before it,
        // which is dropped if a call follows.
        let partial = std::iter::once(open)
            .chain(dropped.iter().copied())
            .map(|marker| partial_suffix(&self.held, marker))
            .max()
            .unwrap_or(0);
        let cut = self.held[..self.held.len() - partial].trim_end().len();
        out.content.push_str(&self.held[..cut]);
        self.held.drain(..cut);
        false
    }

    /// `llama3-json`: holds the whole answer when it starts like JSON, else releases it.
    fn push_json_answer(&mut self, out: &mut ToolDelta) {
        if self.json_answer.is_none() {
            let start = self.held.trim_start();
            if start.starts_with('{') || start.starts_with(PYTHON_TAG) {
                self.json_answer = Some(true);
            } else if start.is_empty() || PYTHON_TAG.starts_with(start) {
                return;
            } else {
                self.json_answer = Some(false);
            }
        }
        if self.json_answer == Some(false) {
            out.content.push_str(&std::mem::take(&mut self.held));
        }
    }

    fn block_calls(&self, body: &str) -> Option<Vec<ToolCall>> {
        match self.kind {
            ToolParserKind::DeepSeekV3 => deepseek_call(body).map(|call| vec![call]),
            ToolParserKind::Hermes | ToolParserKind::Llama3Json => hermes_calls(body),
        }
    }

    fn release_calls(&mut self, calls: Vec<ToolCall>, out: &mut ToolDelta) {
        self.n_calls += calls.len();
        out.calls.extend(calls);
    }
}

/// The length of the longest proper prefix of `marker` that `text` ends with.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .filter(|&k| marker.is_char_boundary(k))
        .find(|&k| text.ends_with(&marker[..k]))
        .unwrap_or(0)
}

/// A call object: a string `name` and an object of arguments under one of `keys`
/// (an object, or a string holding one).
fn call_from_json(value: &Json, keys: &[&str]) -> Option<ToolCall> {
    let object = value.as_object()?;
    let name = object.get("name")?.as_str()?.trim();
    if name.is_empty() {
        return None;
    }
    let arguments = keys.iter().find_map(|key| object.get(*key))?;
    Some(ToolCall {
        name: name.to_string(),
        arguments: arguments_text(arguments)?,
    })
}

fn arguments_text(arguments: &Json) -> Option<String> {
    match arguments {
        Json::Object(_) => Some(arguments.to_string()),
        Json::String(text) => match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(_)) => Some(text.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// `hermes`: one call object, or a list of them.
fn hermes_calls(body: &str) -> Option<Vec<ToolCall>> {
    const KEYS: &[&str] = &["arguments", "parameters"];
    match serde_json::from_str::<Json>(body.trim()).ok()? {
        Json::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| call_from_json(item, KEYS))
            .collect(),
        value => call_from_json(&value, KEYS).map(|call| vec![call]),
    }
}

/// `deepseek-v3`: `function<｜tool▁sep｜>NAME\n```json\nARGS\n```` or `NAME<｜tool▁sep｜>ARGS`.
fn deepseek_call(body: &str) -> Option<ToolCall> {
    let (head, tail) = body.split_once(DS_SEP)?;
    let (name, arguments) = match tail.split_once('\n') {
        Some((name, arguments)) if head.trim() == "function" => (name, arguments),
        _ => (head, tail),
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let arguments = arguments.trim();
    let arguments = arguments
        .strip_prefix("```json")
        .or_else(|| arguments.strip_prefix("```"))
        .map(|rest| rest.trim_end().strip_suffix("```").unwrap_or(rest))
        .unwrap_or(arguments)
        .trim();
    match serde_json::from_str::<Json>(arguments).ok()? {
        Json::Object(_) => Some(ToolCall {
            name: name.to_string(),
            arguments: arguments.to_string(),
        }),
        _ => None,
    }
}

/// `llama3-json`: the whole answer as `;`-separated call objects, or `None`.
fn json_answer_calls(answer: &str) -> Option<Vec<ToolCall>> {
    let mut rest = answer.trim_start();
    rest = rest.strip_prefix(PYTHON_TAG).unwrap_or(rest);
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Json>();
        let value = values.next()?.ok()?;
        calls.push(call_from_json(&value, &["parameters", "arguments"])?);
        rest = rest[values.byte_offset()..].trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest);
    }
    (!calls.is_empty()).then_some(calls)
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
