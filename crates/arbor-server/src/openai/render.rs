//! Rendering chat messages with a model's template in the form the template expects.
//!
//! OpenAI clients send an assistant turn that called tools with `content: null` and
//! each call's `arguments` as JSON text. Chat templates disagree on both: Qwen- and
//! Llama-style templates (and transformers' documentation) want `arguments` as an
//! object and print it with `tojson`; DeepSeek-R1's concatenates it as text; templates
//! written for text only fail on a null `content`. A template is tried with the
//! arguments as objects first, then as sent, then each again with null contents as
//! empty text; the first form that renders wins. When none does, the error is the one
//! of the messages as sent.

use arbor_models::chat_template::{ChatTemplate, ChatTemplateError, RenderOptions};
use serde_json::Value as Json;

/// Renders `messages` (template form, see `chat::template_messages`) with `template`.
pub fn render_messages(
    template: &ChatTemplate,
    messages: &[Json],
    options: &RenderOptions,
) -> Result<String, ChatTemplateError> {
    let objects = arguments_as_objects(messages);
    if let Some(objects) = &objects
        && let Ok(prompt) = template.render(objects, options)
    {
        return Ok(prompt);
    }
    let as_sent = template.render(messages, options);
    if as_sent.is_ok() {
        return as_sent;
    }
    let fallbacks = [objects.as_deref(), Some(messages)]
        .into_iter()
        .flatten()
        .filter_map(null_content_as_text);
    for candidate in fallbacks {
        if let Ok(prompt) = template.render(&candidate, options) {
            tracing::debug!("chat template rendered with null contents as empty text");
            return Ok(prompt);
        }
    }
    as_sent
}

/// The messages with every tool call's `arguments` text parsed into its JSON value;
/// `None` when no call has arguments text that parses.
fn arguments_as_objects(messages: &[Json]) -> Option<Vec<Json>> {
    let mut changed = false;
    let out = messages
        .iter()
        .map(|message| {
            let mut message = message.clone();
            let calls = message.get_mut("tool_calls").and_then(Json::as_array_mut);
            for call in calls.into_iter().flatten() {
                let arguments = call
                    .get_mut("function")
                    .and_then(|f| f.get_mut("arguments"));
                if let Some(arguments) = arguments
                    && let Some(parsed) = arguments
                        .as_str()
                        .and_then(|text| serde_json::from_str::<Json>(text).ok())
                {
                    *arguments = parsed;
                    changed = true;
                }
            }
            message
        })
        .collect();
    changed.then_some(out)
}

/// The messages with each null `content` replaced by `""`; `None` when none is null.
fn null_content_as_text(messages: &[Json]) -> Option<Vec<Json>> {
    let is_null = |m: &Json| m.get("content").is_some_and(Json::is_null);
    messages.iter().any(is_null).then(|| {
        messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if is_null(&m) {
                    m["content"] = Json::String(String::new());
                }
                m
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arbor_models::tokenizer::SpecialTokens;
    use serde_json::json;

    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(source, SpecialTokens::default()).unwrap()
    }

    /// A user question, the assistant's call (as OpenAI clients send it) and its answer.
    fn conversation() -> Vec<Json> {
        vec![
            json!({"role": "user", "content": "Weather in Paris?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "get_weather",
                "arguments": "{\"city\": \"Paris\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}),
        ]
    }

    fn render(source: &str) -> Result<String, ChatTemplateError> {
        render_messages(
            &template(source),
            &conversation(),
            &RenderOptions::default(),
        )
    }

    #[test]
    fn templates_that_print_arguments_with_tojson_get_an_object() {
        let source = "{% for m in messages %}{% for c in m.tool_calls or [] %}\
            {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}{% endfor %}";
        // Printed as Python's json.dumps would, as transformers renders it.
        assert_eq!(render(source).unwrap(), r#"get_weather {"city": "Paris"}"#);
    }

    #[test]
    fn deepseek_r1_concatenating_arguments_text_gets_the_text() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/deepseek-r1-distill-qwen/chat_template.jinja");
        let source = std::fs::read_to_string(path).unwrap();
        let prompt = render(&source).unwrap();
        assert!(
            prompt.contains("get_weather\n```json\n{\"city\": \"Paris\"}\n```"),
            "{prompt}"
        );
        assert!(prompt.contains("<｜tool▁output▁begin｜>Sunny"), "{prompt}");
    }

    #[test]
    fn text_only_templates_read_a_null_content_as_empty() {
        let source = "{% for m in messages %}[{{ m.role + ': ' + m.content }}]{% endfor %}";
        assert_eq!(
            render(source).unwrap(),
            "[user: Weather in Paris?][assistant: ][tool: Sunny]"
        );
    }

    #[test]
    fn a_template_that_fails_every_form_reports_the_error_of_the_messages_as_sent() {
        let err = render("{{ raise_exception('no tools here') }}").unwrap_err();
        assert!(err.to_string().contains("no tools here"), "{err}");
    }
}
