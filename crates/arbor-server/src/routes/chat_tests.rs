//! The chat writer over scripted engine events: the same reasoning, content and tool
//! calls whether streamed or answered at once.

use serde_json::{Value, json};

use super::*;

/// A DeepSeek-R1 answer: reasoning, a sentence, then two calls in its template's format.
const R1_OUTPUT: &str = "I need the weather and the time.\n</think>\n\nLet me check.\n\
<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n\
{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>\
get_time\n```json\n{\"zone\": \"CET\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";

fn writer(tools: Option<ToolParserKind>, max_calls: usize) -> ChatWriter {
    ChatWriter {
        meta: ChatMeta {
            id: "chatcmpl-1a2b-7".to_string(),
            created: 1,
            model: "m".to_string(),
            want_logprobs: false,
            include_usage: false,
        },
        choices: vec![ChoiceState::new(
            Some(ReasoningParserKind::DeepSeekR1),
            tools,
            max_calls,
        )],
    }
}

/// The output cut into pieces of `size` characters, as token events, then the end.
fn events(text: &str, size: usize, reason: FinishReason) -> Vec<Event> {
    let chars: Vec<char> = text.chars().collect();
    let mut events: Vec<Event> = chars
        .chunks(size)
        .map(|piece| Event::Token {
            index: 0,
            token_ids: vec![1],
            text: piece.iter().collect(),
            logprobs: Vec::new(),
        })
        .collect();
    events.push(Event::Finished {
        index: 0,
        reason,
        matched_stop: None,
        usage: Usage::default(),
    });
    events
}

fn answer(mut writer: ChatWriter, events: Vec<Event>) -> Value {
    for event in events {
        writer.absorb(event);
    }
    serde_json::to_value(writer.into_response()).unwrap()
}

/// The streamed chunks' JSON, without the `data: ` framing.
fn stream(mut writer: ChatWriter, events: Vec<Event>) -> Vec<Value> {
    let mut frames = writer.start();
    for event in events {
        frames.extend(writer.on_event(event));
    }
    frames.extend(writer.end());
    frames
        .iter()
        .map(|frame| {
            let text = std::str::from_utf8(frame).unwrap();
            let body = text.trim().strip_prefix("data: ").unwrap();
            serde_json::from_str(body).unwrap()
        })
        .collect()
}

/// The streamed deltas put together: (reasoning, content, calls, finish reasons).
fn joined(chunks: &[Value]) -> (String, String, Vec<Value>, Vec<String>) {
    let (mut reasoning, mut content, mut calls, mut reasons) =
        (String::new(), String::new(), Vec::new(), Vec::new());
    for choice in chunks.iter().flat_map(|c| c["choices"].as_array().unwrap()) {
        let delta = &choice["delta"];
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
        content.push_str(delta["content"].as_str().unwrap_or(""));
        calls.extend(delta["tool_calls"].as_array().cloned().unwrap_or_default());
        if let Some(reason) = choice["finish_reason"].as_str() {
            reasons.push(reason.to_string());
        }
    }
    (reasoning, content, calls, reasons)
}

#[test]
fn tool_calls_after_reasoning_come_back_whole_with_finish_reason_tool_calls() {
    let body = answer(
        writer(Some(ToolParserKind::DeepSeekV3), usize::MAX),
        events(R1_OUTPUT, 7, FinishReason::Stop),
    );
    let choice = &body["choices"][0];
    let message = &choice["message"];
    assert_eq!(
        message["reasoning_content"],
        "I need the weather and the time."
    );
    assert_eq!(message["content"], "Let me check.");
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(calls[1]["function"]["name"], "get_time");
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    assert!(calls[0].get("index").is_none());
    assert_eq!(choice["finish_reason"], "tool_calls");
}

#[test]
fn streaming_sends_the_same_split_with_indexed_calls_for_any_piece_size() {
    let whole = answer(
        writer(Some(ToolParserKind::DeepSeekV3), usize::MAX),
        events(R1_OUTPUT, 1000, FinishReason::Stop),
    );
    let message = &whole["choices"][0]["message"];
    for size in [1, 2, 5, 13] {
        let chunks = stream(
            writer(Some(ToolParserKind::DeepSeekV3), usize::MAX),
            events(R1_OUTPUT, size, FinishReason::Stop),
        );
        let (reasoning, content, calls, reasons) = joined(&chunks);
        assert_eq!(reasoning, message["reasoning_content"].as_str().unwrap());
        assert_eq!(content, message["content"].as_str().unwrap());
        assert_eq!(reasons, vec!["tool_calls".to_string()]);
        assert_eq!(calls.len(), 2, "size {size}");
        for (k, (streamed, whole)) in calls
            .iter()
            .zip(message["tool_calls"].as_array().unwrap())
            .enumerate()
        {
            assert_eq!(streamed["index"], json!(k));
            assert_eq!(streamed["id"], whole["id"]);
            assert_eq!(streamed["function"], whole["function"]);
        }
    }
}

#[test]
fn parallel_tool_calls_false_keeps_the_first_call() {
    let body = answer(
        writer(Some(ToolParserKind::DeepSeekV3), 1),
        events(R1_OUTPUT, 3, FinishReason::Stop),
    );
    let calls = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let (_, _, streamed, _) = joined(&stream(
        writer(Some(ToolParserKind::DeepSeekV3), 1),
        events(R1_OUTPUT, 3, FinishReason::Stop),
    ));
    assert_eq!(streamed.len(), 1);
}

#[test]
fn a_length_cut_keeps_its_reason_and_without_a_parser_calls_stay_text() {
    let body = answer(
        writer(Some(ToolParserKind::DeepSeekV3), usize::MAX),
        events(R1_OUTPUT, 4, FinishReason::Length),
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let body = answer(
        writer(None, usize::MAX),
        events(R1_OUTPUT, 4, FinishReason::Stop),
    );
    let message = &body["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none());
    assert!(
        message["content"]
            .as_str()
            .unwrap()
            .contains("<｜tool▁call▁begin｜>function")
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}
