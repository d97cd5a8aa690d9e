use super::*;
use proptest::prelude::*;

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        name: name.to_string(),
        arguments: arguments.to_string(),
    }
}

fn streamed(kind: ToolParserKind, pieces: &[&str]) -> ToolDelta {
    let mut parser = kind.parser();
    let mut all = ToolDelta::default();
    let mut deltas: Vec<ToolDelta> = pieces.iter().map(|p| parser.push(p)).collect();
    deltas.push(parser.finish());
    for delta in deltas {
        all.content.push_str(&delta.content);
        all.calls.extend(delta.calls);
    }
    all
}

/// Two calls the way DeepSeek-R1's chat template renders them for an assistant turn.
const DEEPSEEK_TWO_CALLS: &str = "Let me look that up.\n\n<｜tool▁calls▁begin｜>\
<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```\
<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n\
{\"zone\": \"CET\", \"fmt\": [1, 2]}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";

#[test]
fn deepseek_blocks_become_calls_and_the_text_before_them_content() {
    let out = ToolParser::parse(ToolParserKind::DeepSeekV3, DEEPSEEK_TWO_CALLS);
    assert_eq!(out.content, "Let me look that up.");
    assert_eq!(
        out.calls,
        vec![
            call("get_weather", r#"{"city": "Paris"}"#),
            call("get_time", r#"{"zone": "CET", "fmt": [1, 2]}"#),
        ]
    );
}

#[test]
fn deepseek_v31_spelling_without_type_and_fence_is_read() {
    let text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>search<｜tool▁sep｜>{\"q\": \"rust\"}\
<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let out = ToolParser::parse(ToolParserKind::DeepSeekV3, text);
    assert_eq!(out.content, "");
    assert_eq!(out.calls, vec![call("search", r#"{"q": "rust"}"#)]);
}

#[test]
fn hermes_blocks_with_one_call_or_a_list_are_read() {
    let text = "Checking.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>\n\
<tool_call>[{\"name\": \"g\", \"arguments\": {}}, {\"name\": \"h\", \"parameters\": {\"y\": \"z\"}}]</tool_call>\n";
    let out = ToolParser::parse(ToolParserKind::Hermes, text);
    assert_eq!(out.content, "Checking.");
    assert_eq!(
        out.calls,
        vec![
            call("f", r#"{"x":1}"#),
            call("g", "{}"),
            call("h", r#"{"y":"z"}"#)
        ]
    );
}

#[test]
fn string_arguments_holding_an_object_are_kept_as_given() {
    let text = r#"<tool_call>{"name": "f", "arguments": "{\"a\": 2}"}</tool_call>"#;
    let out = ToolParser::parse(ToolParserKind::Hermes, text);
    assert_eq!(out.calls, vec![call("f", r#"{"a": 2}"#)]);
}

#[test]
fn a_block_that_is_not_a_call_is_given_back_as_content() {
    for body in [
        "not json",
        r#"{"arguments": {}}"#,
        r#"{"name": "f", "arguments": 3}"#,
        r#"{"name": "", "arguments": {}}"#,
        "[]",
    ] {
        let text = format!("a <tool_call>{body}</tool_call> b");
        let out = ToolParser::parse(ToolParserKind::Hermes, &text);
        assert_eq!(out.calls, vec![], "{body}");
        assert_eq!(out.content, text);
    }
    let bad = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n[1]\n```<｜tool▁call▁end｜>";
    let out = ToolParser::parse(ToolParserKind::DeepSeekV3, bad);
    assert!(out.calls.is_empty());
    assert_eq!(out.content, bad);
}

#[test]
fn an_unclosed_block_at_the_end_is_a_call_only_if_it_parses() {
    let out = ToolParser::parse(
        ToolParserKind::Hermes,
        r#"<tool_call>{"name": "f", "arguments": {}}"#,
    );
    assert_eq!(out.calls, vec![call("f", "{}")]);
    let cut = r#"<tool_call>{"name": "f", "argu"#;
    let out = ToolParser::parse(ToolParserKind::Hermes, cut);
    assert!(out.calls.is_empty());
    assert_eq!(out.content, cut);
}

#[test]
fn text_after_the_calls_stays_content_and_trailing_whitespace_goes() {
    let text = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>\nDone.\n\n";
    let out = ToolParser::parse(ToolParserKind::Hermes, text);
    assert_eq!(out.content, "\nDone.");
    // Without calls the answer is untouched, trailing whitespace included.
    let plain = "  Just an answer.\n";
    assert_eq!(
        ToolParser::parse(ToolParserKind::Hermes, plain).content,
        plain
    );
    assert_eq!(
        ToolParser::parse(ToolParserKind::DeepSeekV3, plain).content,
        plain
    );
}

#[test]
fn a_partial_marker_is_held_back_until_resolved() {
    let mut parser = ToolParserKind::Hermes.parser();
    assert_eq!(parser.push("abc <tool_").content, "abc");
    let delta = parser.push("call>{\"name\": \"f\", \"arguments\": {}}</tool_");
    assert_eq!(delta, ToolDelta::default());
    let delta = parser.push("call> ok");
    assert_eq!(
        (delta.content.as_str(), delta.calls.len(), parser.n_calls()),
        (" ok", 1, 1)
    );
    // A false alarm is released as soon as it cannot be a marker.
    let mut parser = ToolParserKind::Hermes.parser();
    assert_eq!(parser.push("x <to").content, "x");
    assert_eq!(parser.push("y").content, " <toy");
}

#[test]
fn llama3_json_answers_are_calls_and_other_answers_stream_at_once() {
    let kind = ToolParserKind::Llama3Json;
    let text = r#"{"name": "f", "parameters": {"a": 1}}; {"name": "g", "arguments": {}}"#;
    let out = ToolParser::parse(kind, text);
    assert_eq!(out.content, "");
    assert_eq!(out.calls, vec![call("f", r#"{"a":1}"#), call("g", "{}")]);
    let tagged = ToolParser::parse(kind, "<|python_tag|>{\"name\": \"f\", \"parameters\": {}}");
    assert_eq!(tagged.calls, vec![call("f", "{}")]);
    // JSON that is not a call (no arguments) is an answer.
    let data = r#"{"name": "Bob", "age": 3}"#;
    let out = ToolParser::parse(kind, data);
    assert_eq!((out.content.as_str(), out.calls.len()), (data, 0));
    let mut parser = kind.parser();
    assert_eq!(parser.push(" Hello").content, " Hello");
    assert_eq!(parser.push(" {").content, " {");
}

#[test]
fn parser_names_parse_and_follow_model_names() {
    assert_eq!("deepseek_v3".parse(), Ok(ToolParserKind::DeepSeekV3));
    assert_eq!("hermes".parse(), Ok(ToolParserKind::Hermes));
    assert_eq!("llama3_json".parse(), Ok(ToolParserKind::Llama3Json));
    assert!("mistral".parse::<ToolParserKind>().is_err());
    let r1 = ToolParserKind::for_model_name("DeepSeek-R1-Distill-Llama-8B-Q4_K_M.gguf");
    assert_eq!(r1, Some(ToolParserKind::DeepSeekV3));
    let qwen = ToolParserKind::for_model_name("Qwen2.5-7B-Instruct");
    assert_eq!(qwen, Some(ToolParserKind::Hermes));
    assert_eq!(
        ToolParserKind::for_model_name("SmolLM2-135M-Instruct"),
        None
    );
}

fn piece() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "<tool_call>",
        "</tool_call>",
        "<tool_",
        "{\"name\": \"f\", \"arguments\": {\"k\": [1]}}",
        "[{\"name\": \"g\", \"parameters\": {}}]",
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁call▁begin｜>",
        "function<｜tool▁sep｜>f\n```json\n{\"a\": 1}\n```",
        "<｜tool▁call▁end｜>",
        "<｜tool▁calls▁end｜>",
        "<｜tool",
        "<|python_tag|>",
        ";",
        " ",
        "\n",
        "a",
        "é",
    ])
    .prop_map(str::to_string)
}

proptest! {
    #[test]
    fn streaming_matches_parsing_the_whole_answer_for_any_chunking(
        pieces in prop::collection::vec(piece(), 0..10),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let text: String = pieces.concat();
        let chunks = crate::test_support::cut_at(&text, &cuts);
        for kind in [ToolParserKind::DeepSeekV3, ToolParserKind::Hermes, ToolParserKind::Llama3Json] {
            prop_assert_eq!(streamed(kind, &chunks), ToolParser::parse(kind, &text));
        }
    }
}
