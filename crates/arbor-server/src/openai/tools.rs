//! Tools in chat requests and responses: checking `tools` and `tool_choice`, and the
//! `tool_calls` of an assistant message or a streamed delta.

use serde::Serialize;
use serde_json::Value as Json;

use arbor_engine::OutputConstraint;

use crate::error::ApiError;
use crate::tools::{ToolCall, ToolParserKind};

/// What a request asks of tools: nothing, calls if the model makes them, or a call it
/// must make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolMode {
    /// No tools, or `tool_choice: "none"`: the answer is left as written.
    Off,
    /// `auto` (the default with tools): calls the model writes become `tool_calls`.
    Auto,
    /// `required` or a named function: the output is constrained to a call.
    Forced(ForcedCall),
}

/// The call a request forces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForcedCall {
    /// This function (named, or the only tool under `required`).
    Named(String),
    /// One of these functions (`required` with several tools).
    AnyOf(Vec<String>),
}

/// Checks `tools` (each a `{"type": "function", "function": {"name": ...}}`) and
/// `tool_choice` (default `auto` with tools, `none` without).
pub fn tool_mode(tools: Option<&[Json]>, tool_choice: Option<&Json>) -> Result<ToolMode, ApiError> {
    let tools = tools.unwrap_or_default();
    let names = tools
        .iter()
        .enumerate()
        .map(|(idx, tool)| function_name(idx, tool))
        .collect::<Result<Vec<_>, _>>()?;
    let needs_tools = |choice: &str| {
        ApiError::invalid_value(
            "tool_choice",
            format!("tool_choice {choice:?} is only allowed when tools are given"),
        )
    };
    match tool_choice {
        None if tools.is_empty() => Ok(ToolMode::Off),
        None => Ok(ToolMode::Auto),
        Some(Json::String(choice)) => match choice.as_str() {
            "none" => Ok(ToolMode::Off),
            "auto" | "required" if tools.is_empty() => Err(needs_tools(choice)),
            "auto" => Ok(ToolMode::Auto),
            "required" => Ok(ToolMode::Forced(match names.as_slice() {
                [only] => ForcedCall::Named(only.to_string()),
                _ => ForcedCall::AnyOf(names.iter().map(|n| n.to_string()).collect()),
            })),
            other => Err(ApiError::invalid_value(
                "tool_choice",
                format!("unknown tool_choice {other:?} (none, auto, required or a function)"),
            )),
        },
        Some(named) => {
            let name = named
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Json::as_str)
                .filter(|_| named.get("type").and_then(Json::as_str) == Some("function"))
                .ok_or_else(|| {
                    ApiError::invalid_value(
                        "tool_choice",
                        "tool_choice must be \"none\", \"auto\", \"required\" or \
                         {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !names.contains(&name) {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not among the tools"),
                ));
            }
            Ok(ToolMode::Forced(ForcedCall::Named(name.to_string())))
        }
    }
}

/// The constraint that makes the model write `call` in `format`: the format's markers
/// and a function's name (one prefix per function it may call) as literal text before
/// one JSON object, the arguments, and the closing markers after it. With a reasoning
/// parser on, the output first closes the (empty) reasoning, so the call lands in the
/// answer.
pub fn forced_call_constraint(
    call: &ForcedCall,
    format: Option<ToolParserKind>,
    closes_reasoning: bool,
) -> Result<OutputConstraint, ApiError> {
    let format = format.ok_or_else(|| {
        ApiError::invalid_value(
            "tool_choice",
            "forcing a tool call needs a tool-call format: start the server with \
             --tool-call-parser",
        )
    })?;
    let names = match call {
        ForcedCall::Named(name) => std::slice::from_ref(name),
        ForcedCall::AnyOf(names) => names.as_slice(),
    };
    let quoted = |name: &str| Json::from(name).to_string();
    let opening = |name: &str| match format {
        ToolParserKind::Hermes => {
            format!("<tool_call>\n{{\"name\": {}, \"arguments\": ", quoted(name))
        }
        ToolParserKind::Llama3Json => format!("{{\"name\": {}, \"parameters\": ", quoted(name)),
        ToolParserKind::DeepSeekV3 => format!(
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n"
        ),
    };
    let think = if closes_reasoning { "</think>\n\n" } else { "" };
    let prefixes = names
        .iter()
        .map(|name| format!("{think}{}", opening(name)))
        .collect();
    let suffix = match format {
        ToolParserKind::Hermes => "}\n</tool_call>",
        ToolParserKind::Llama3Json => "}",
        ToolParserKind::DeepSeekV3 => "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    };
    Ok(OutputConstraint::JsonObjectWithin {
        prefixes,
        suffix: suffix.to_string(),
    })
}

fn function_name(idx: usize, tool: &Json) -> Result<&str, ApiError> {
    let is_function = tool.get("type").and_then(Json::as_str) == Some("function");
    tool.get("function")
        .and_then(|f| f.get("name"))
        .and_then(Json::as_str)
        .filter(|name| is_function && !name.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_value(
                &format!("tools[{idx}]"),
                "each tool must be {\"type\": \"function\", \"function\": {\"name\": ..., \
                 \"parameters\": ...}}",
            )
        })
}

/// One call in `message.tool_calls`, or in a streamed `delta.tool_calls` (with `index`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolCallBody {
    /// Position among the choice's calls; only in streamed deltas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Unique per call; a `tool` message answers it by this id.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What to call.
    pub function: FunctionCall,
}

/// The function and its arguments.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object serialized as a string.
    pub arguments: String,
}

impl ToolCallBody {
    /// The wire form of `call`, call number `number` of its choice.
    pub fn new(call: ToolCall, id: String, number: usize, streamed: bool) -> Self {
        ToolCallBody {
            index: streamed.then_some(number),
            id,
            kind: "function",
            function: FunctionCall {
                name: call.name,
                arguments: call.arguments,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wanted(tools: Json, choice: Option<Json>) -> Result<ToolMode, ApiError> {
        let tools: Option<Vec<Json>> = serde_json::from_value(tools).unwrap();
        tool_mode(tools.as_deref(), choice.as_ref())
    }

    fn weather() -> Json {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    }

    fn message(err: ApiError) -> String {
        err.to_string()
    }

    #[test]
    fn tools_default_to_auto_and_none_turns_parsing_off() {
        assert_eq!(wanted(weather(), None).unwrap(), ToolMode::Auto);
        assert_eq!(
            wanted(weather(), Some(json!("auto"))).unwrap(),
            ToolMode::Auto
        );
        assert_eq!(
            wanted(weather(), Some(json!("none"))).unwrap(),
            ToolMode::Off
        );
        assert_eq!(wanted(json!(null), None).unwrap(), ToolMode::Off);
        assert_eq!(
            wanted(json!([]), Some(json!("none"))).unwrap(),
            ToolMode::Off
        );
    }

    #[test]
    fn required_and_named_choices_force_a_call() {
        let forced = |name: &str| ToolMode::Forced(ForcedCall::Named(name.into()));
        assert_eq!(
            wanted(weather(), Some(json!("required"))).unwrap(),
            forced("get_weather")
        );
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(
            wanted(weather(), Some(named)).unwrap(),
            forced("get_weather")
        );
        let two = json!([{"type": "function", "function": {"name": "a"}},
            {"type": "function", "function": {"name": "b"}}]);
        assert_eq!(
            wanted(two, Some(json!("required"))).unwrap(),
            ToolMode::Forced(ForcedCall::AnyOf(vec!["a".into(), "b".into()]))
        );
    }

    #[test]
    fn malformed_choices_are_refused_with_a_reason() {
        let unknown = json!({"type": "function", "function": {"name": "nope"}});
        let unknown = message(wanted(weather(), Some(unknown)).unwrap_err());
        assert!(unknown.contains("not among the tools"), "{unknown}");
        let no_tools = message(wanted(json!(null), Some(json!("auto"))).unwrap_err());
        assert!(no_tools.contains("only allowed when tools"), "{no_tools}");
        assert!(wanted(json!(null), Some(json!("required"))).is_err());
        assert!(wanted(weather(), Some(json!("sometimes"))).is_err());
        assert!(wanted(weather(), Some(json!(3))).is_err());
    }

    #[test]
    fn forced_calls_are_written_in_each_format_and_parse_back() {
        use crate::tools::ToolParser;
        let any = ForcedCall::AnyOf(vec!["get_time".into(), "get_weather".into()]);
        let args = r#"{"city": "Paris"}"#;
        for kind in [
            ToolParserKind::Hermes,
            ToolParserKind::Llama3Json,
            ToolParserKind::DeepSeekV3,
        ] {
            let OutputConstraint::JsonObjectWithin { prefixes, suffix } =
                forced_call_constraint(&any, Some(kind), false).unwrap()
            else {
                panic!("a wrapped object");
            };
            assert_eq!(prefixes.len(), 2);
            for (prefix, name) in prefixes.iter().zip(["get_time", "get_weather"]) {
                let out = ToolParser::parse(kind, &format!("{prefix}{args}{suffix}"));
                assert_eq!(out.calls.len(), 1, "{kind:?}");
                assert_eq!(out.calls[0].name, name);
                let parsed: Json = serde_json::from_str(&out.calls[0].arguments).unwrap();
                assert_eq!(parsed, json!({"city": "Paris"}));
                assert_eq!(out.content, "", "{kind:?}");
            }
        }
        let named = ForcedCall::Named("get_weather".into());
        let with_think = forced_call_constraint(&named, Some(ToolParserKind::Hermes), true);
        assert!(
            matches!(with_think, Ok(OutputConstraint::JsonObjectWithin { prefixes, .. })
            if prefixes.len() == 1 && prefixes[0].starts_with("</think>"))
        );
        assert!(forced_call_constraint(&named, None, false).is_err());
    }

    #[test]
    fn a_tool_without_a_function_name_is_refused_naming_it() {
        let tools = json!([{"type": "function", "function": {"name": "a"}}, {"type": "function"}]);
        match wanted(tools, None).unwrap_err() {
            ApiError::BadRequest { param, .. } => assert_eq!(param.as_deref(), Some("tools[1]")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(wanted(json!([{"type": "code", "function": {"name": "a"}}]), None).is_err());
    }

    #[test]
    fn call_bodies_carry_an_index_only_when_streamed() {
        let call = ToolCall {
            name: "f".into(),
            arguments: "{}".into(),
        };
        let body = ToolCallBody::new(call.clone(), "call_1".into(), 2, false);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}})
        );
        let streamed = ToolCallBody::new(call, "call_1".into(), 2, true);
        assert_eq!(serde_json::to_value(&streamed).unwrap()["index"], json!(2));
    }
}
