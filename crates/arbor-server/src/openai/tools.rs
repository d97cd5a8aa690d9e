//! Tools in chat requests and responses: checking `tools` and `tool_choice`, and the
//! `tool_calls` of an assistant message or a streamed delta.

use serde::Serialize;
use serde_json::Value as Json;

use crate::error::ApiError;
use crate::tools::ToolCall;

/// Whether the answer should be searched for tool calls: `tools` must each be a
/// `{"type": "function", "function": {"name": ...}}`, and `tool_choice` (default
/// `auto` with tools, `none` without) must be one Arbor can honour.
pub fn tool_calls_wanted(
    tools: Option<&[Json]>,
    tool_choice: Option<&Json>,
) -> Result<bool, ApiError> {
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
    // Limitation: no constrained decoding, so a call cannot be forced; `required` and a
    // named function are refused rather than silently treated as `auto`.
    let cannot_force = |what: &str| {
        ApiError::invalid_value(
            "tool_choice",
            format!(
                "tool_choice {what} is not supported: Arbor cannot force a tool call \
                 (no constrained decoding); use \"auto\" or \"none\""
            ),
        )
    };
    match tool_choice {
        None => Ok(!tools.is_empty()),
        Some(Json::String(choice)) => match choice.as_str() {
            "none" => Ok(false),
            "auto" if tools.is_empty() => Err(needs_tools("auto")),
            "auto" => Ok(true),
            "required" if tools.is_empty() => Err(needs_tools("required")),
            "required" => Err(cannot_force("\"required\"")),
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
            Err(cannot_force(&format!("naming the function {name:?}")))
        }
    }
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

    fn wanted(tools: Json, choice: Option<Json>) -> Result<bool, ApiError> {
        let tools: Option<Vec<Json>> = serde_json::from_value(tools).unwrap();
        tool_calls_wanted(tools.as_deref(), choice.as_ref())
    }

    fn weather() -> Json {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    }

    fn message(err: ApiError) -> String {
        err.to_string()
    }

    #[test]
    fn tools_default_to_auto_and_none_turns_parsing_off() {
        assert!(wanted(weather(), None).unwrap());
        assert!(wanted(weather(), Some(json!("auto"))).unwrap());
        assert!(!wanted(weather(), Some(json!("none"))).unwrap());
        assert!(!wanted(json!(null), None).unwrap());
        assert!(!wanted(json!([]), Some(json!("none"))).unwrap());
    }

    #[test]
    fn forced_calls_and_malformed_choices_are_refused_with_a_reason() {
        let required = message(wanted(weather(), Some(json!("required"))).unwrap_err());
        assert!(required.contains("cannot force"), "{required}");
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let named = message(wanted(weather(), Some(named)).unwrap_err());
        assert!(
            named.contains("get_weather") && named.contains("cannot force"),
            "{named}"
        );
        let unknown = json!({"type": "function", "function": {"name": "nope"}});
        let unknown = message(wanted(weather(), Some(unknown)).unwrap_err());
        assert!(unknown.contains("not among the tools"), "{unknown}");
        let no_tools = message(wanted(json!(null), Some(json!("auto"))).unwrap_err());
        assert!(no_tools.contains("only allowed when tools"), "{no_tools}");
        assert!(wanted(weather(), Some(json!("sometimes"))).is_err());
        assert!(wanted(weather(), Some(json!(3))).is_err());
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
