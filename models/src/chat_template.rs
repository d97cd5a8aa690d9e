//! The chat template: turns a list of chat messages into the prompt text the model was
//! trained on, before tokenization.
//!
//! Templates are Jinja, rendered with `minijinja` in an environment that mirrors the one
//! Hugging Face `transformers` renders with, so prompts match byte for byte:
//! `trim_blocks` and `lstrip_blocks`, `break`/`continue`, Python string and dict methods
//! (`minijinja-contrib`'s `pycompat`), `raise_exception(message)`,
//! `strftime_now(format)`, a `tojson` that writes what Python's `json.dumps` writes, and
//! the variables `messages`, `tools`, `documents`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, `unk_token` and `pad_token`.

mod tojson;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::tokenizer::SpecialTokens;

/// Name under which the template is compiled; it appears in error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// Why a chat template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template file could not be read.
    #[error("could not read chat template {}: {message}", .path.display())]
    Read { path: PathBuf, message: String },
    /// A JSON file that should hold a `chat_template` holds none.
    #[error("{} has no usable `chat_template`", .path.display())]
    NotInConfig { path: PathBuf },
    /// The template is not valid Jinja.
    #[error("invalid chat template: {0}")]
    Syntax(String),
    /// The template called `raise_exception`: the messages do not suit this model
    /// (for example roles that do not alternate). The message is the template's own.
    #[error("chat template rejected the messages: {0}")]
    Raised(String),
    /// Rendering failed for another reason (a missing field, a type error).
    #[error("chat template failed to render: {0}")]
    Render(String),
    /// The messages or options could not be turned into template values.
    #[error("chat template input is invalid: {0}")]
    Input(String),
}

/// One chat message with plain text content. Any `Serialize` value with `role` and
/// `content` fields (and more, such as `tool_calls`) can be rendered; this is the
/// simplest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the message.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What a render passes besides the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Whether to open the assistant's turn at the end (true when asking the model to
    /// reply).
    pub add_generation_prompt: bool,
    /// Tool (function) schemas, as OpenAI's `tools` field; `None` renders as Python's
    /// `None`, as `transformers` passes it.
    pub tools: Option<Vec<Json>>,
    /// Retrieval documents for templates that take them; `None` when absent.
    pub documents: Option<Vec<Json>>,
    /// Further template variables (such as `enable_thinking`); they override the
    /// variables above of the same name.
    pub extra_context: serde_json::Map<String, Json>,
}

/// A compiled chat template; cloning shares it. `Send + Sync`.
#[derive(Clone)]
pub struct ChatTemplate {
    inner: Arc<Inner>,
}

struct Inner {
    env: Environment<'static>,
    source: String,
    special: SpecialTokens,
}

impl ChatTemplate {
    /// Compiles a template from its Jinja source. `special` supplies `bos_token`,
    /// `eos_token`, `unk_token` and `pad_token`.
    pub fn new(
        source: impl Into<String>,
        special: SpecialTokens,
    ) -> Result<Self, ChatTemplateError> {
        let source = source.into();
        let mut env = hf_environment();
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(&source))
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                env,
                source,
                special,
            }),
        })
    }

    /// Loads a user-supplied template file: a Jinja file, or a JSON file (such as a
    /// `tokenizer_config.json`) whose `chat_template` field holds the template.
    pub fn from_file(
        path: impl AsRef<Path>,
        special: SpecialTokens,
    ) -> Result<Self, ChatTemplateError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ChatTemplateError::Read {
            path: path.into(),
            message: e.to_string(),
        })?;
        if path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
        {
            let json: Json = serde_json::from_str(&text).map_err(|e| ChatTemplateError::Read {
                path: path.into(),
                message: e.to_string(),
            })?;
            let source = template_from_config(&json)
                .ok_or_else(|| ChatTemplateError::NotInConfig { path: path.into() })?;
            return Self::new(source, special);
        }
        Self::new(text, special)
    }

    /// The template of a Hugging Face model directory: `chat_template.jinja` when
    /// present (newer `transformers` save it there), else the `chat_template` field of
    /// `tokenizer_config.json`; `None` when the model has neither.
    pub fn from_hf_dir(
        dir: impl AsRef<Path>,
        special: SpecialTokens,
    ) -> Result<Option<Self>, ChatTemplateError> {
        let dir = dir.as_ref();
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            return Self::from_file(jinja, special).map(Some);
        }
        let config = dir.join("tokenizer_config.json");
        if !config.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&config).map_err(|e| ChatTemplateError::Read {
            path: config.clone(),
            message: e.to_string(),
        })?;
        let json: Json = serde_json::from_str(&text).map_err(|e| ChatTemplateError::Read {
            path: config.clone(),
            message: e.to_string(),
        })?;
        template_from_config(&json)
            .map(|source| Self::new(source, special))
            .transpose()
    }

    /// The template in a GGUF file's `tokenizer.chat_template`; `None` when absent.
    pub fn from_gguf(
        content: &gguf_file::Content,
        special: SpecialTokens,
    ) -> Result<Option<Self>, ChatTemplateError> {
        match content.metadata.get("tokenizer.chat_template") {
            None => Ok(None),
            Some(gguf_file::Value::String(source)) => Self::new(source.clone(), special).map(Some),
            Some(_) => Err(ChatTemplateError::Syntax(
                "tokenizer.chat_template is not a string".into(),
            )),
        }
    }

    /// Renders `messages` (any `Serialize` values: structs, maps or `serde_json` values
    /// with `role`, `content` and optional fields). Errors say why: the template's own
    /// `raise_exception` message, or where rendering failed.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        options: &RenderOptions,
    ) -> Result<String, ChatTemplateError> {
        let context = self.context(messages, options)?;
        let template = self
            .inner
            .env
            .get_template(TEMPLATE_NAME)
            .expect("the chat template was compiled when ChatTemplate was built");
        template
            .render(context)
            .map_err(|e| match raised_message(&e) {
                Some(message) => ChatTemplateError::Raised(message),
                None => ChatTemplateError::Render(describe(&e)),
            })
    }

    /// The Jinja source as loaded.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The special-token texts the template sees.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.inner.special
    }

    /// The variables of one render, in the order `transformers` passes them: special
    /// tokens, then messages, tools, documents and the generation prompt flag, then
    /// the caller's extra variables.
    fn context<M: Serialize>(
        &self,
        messages: &[M],
        options: &RenderOptions,
    ) -> Result<Value, ChatTemplateError> {
        let to_value = |json: Option<&Vec<Json>>| {
            json.map_or(Value::from(()), |json| Value::from(Serde(json)))
        };
        let special = &self.inner.special;
        let mut vars: Vec<(String, Value)> = [
            ("bos_token", &special.bos),
            ("eos_token", &special.eos),
            ("unk_token", &special.unk),
            ("pad_token", &special.pad),
        ]
        .into_iter()
        .filter_map(|(name, token)| Some((name.to_owned(), Value::from(token.clone()?))))
        .collect();

        // Serialising straight into template values keeps each message's field order.
        let messages = Value::from(Serde(messages));
        if let Some(invalid) = invalid_value_error(&messages) {
            return Err(ChatTemplateError::Input(invalid));
        }
        vars.push(("messages".into(), messages));
        vars.push(("tools".into(), to_value(options.tools.as_ref())));
        vars.push(("documents".into(), to_value(options.documents.as_ref())));
        vars.push((
            "add_generation_prompt".into(),
            Value::from(options.add_generation_prompt),
        ));
        for (name, value) in &options.extra_context {
            vars.retain(|(existing, _)| existing != name);
            vars.push((name.clone(), Value::from(Serde(value))));
        }
        Ok(Value::from(
            vars.into_iter()
                .collect::<std::collections::BTreeMap<String, Value>>(),
        ))
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("n_source_bytes", &self.inner.source.len())
            .field("special", &self.inner.special)
            .finish()
    }
}

/// The environment `transformers` renders chat templates in, rebuilt on minijinja.
fn hf_environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson::tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env
}

/// Marks an error as raised by the template itself, so that render errors can tell it
/// from a failure of the template.
#[derive(Debug)]
struct TemplateRaised(String);

impl std::fmt::Display for TemplateRaised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateRaised {}

/// `raise_exception(message)`: aborts the render with the template's message.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(TemplateRaised(message)))
}

/// `strftime_now(format)`: the local time in a C `strftime` format, as Python's
/// `datetime.now().strftime(format)`.
fn strftime_now(format: String) -> Result<Value, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("invalid strftime format {format:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// The message of a `raise_exception` anywhere in an error's source chain.
fn raised_message(error: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(raised) = current.downcast_ref::<TemplateRaised>() {
            return Some(raised.0.clone());
        }
        source = current.source();
    }
    None
}

/// An error with its template location and the failing line, for logs and users.
fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        write!(text, ": {inner}").expect("writing to a String cannot fail");
        source = inner.source();
    }
    text
}

/// The error of a value that failed to serialise, if it did.
fn invalid_value_error(value: &Value) -> Option<String> {
    (value.kind() == minijinja::value::ValueKind::Invalid).then(|| value.to_string())
}

/// The template of a `tokenizer_config.json`: a string, or a list of named templates
/// from which the one named `default` is taken.
fn template_from_config(config: &Json) -> Option<String> {
    // Limitation: with a list of named templates, only `default` is used; transformers
    // switches to `tool_use` when tools are given. No model this engine serves ships
    // named templates.
    match config.get("chat_template")? {
        Json::String(source) => Some(source.clone()),
        Json::Array(named) => named
            .iter()
            .find(|entry| entry.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|entry| entry.get("template")?.as_str().map(str::to_owned)),
        _ => None,
    }
}

/// Turns the `{% generation %}` ... `{% endgeneration %}` block of transformers'
/// assistant-mask extension into `{% if true %}` ... `{% endif %}`: it renders its body
/// unchanged, and keeping a block tag keeps the whitespace control of the original.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let (before, tag) = rest.split_at(start);
        out.push_str(before);
        let body = &tag[2..];
        let marker = body.chars().next().filter(|c| *c == '-' || *c == '+');
        let after_marker = &body[marker.map_or(0, char::len_utf8)..];
        let word_start = after_marker.trim_start();
        let word_len = word_start
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(word_start.len());
        let replacement = match &word_start[..word_len] {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(replacement) => {
                out.push_str("{%");
                out.push_str(&body[..body.len() - word_start.len()]);
                out.push_str(replacement);
                rest = &word_start[word_len..];
            }
            None => {
                out.push_str("{%");
                rest = body;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String, ChatTemplateError> {
        let template = ChatTemplate::new(source, SpecialTokens::default())?;
        template.render(messages, &RenderOptions::default())
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        let rewritten =
            rewrite_generation_tags("a{%- generation %}b{% endgeneration -%}c{% if x %}");
        assert_eq!(rewritten, "a{%- if true %}b{% endif -%}c{% if x %}");
    }

    #[test]
    fn raise_exception_surfaces_the_templates_message() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}";
        let err = render(source, &[ChatMessage::new("assistant", "hi")]).unwrap_err();
        assert!(
            matches!(err, ChatTemplateError::Raised(ref m) if m == "first must be user"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_is_reported_at_compile_time() {
        let err =
            ChatTemplate::new("{% for m in messages %}", SpecialTokens::default()).unwrap_err();
        assert!(matches!(err, ChatTemplateError::Syntax(_)), "{err}");
    }

    #[test]
    fn strftime_now_formats_the_current_year() {
        let text = render("{{ strftime_now('%Y') }}", &[]).unwrap();
        assert_eq!(text.len(), 4);
        assert!(text.starts_with("20"), "{text}");
        assert!(render("{{ strftime_now('%Q') }}", &[]).is_err());
    }

    #[test]
    fn python_string_methods_are_available() {
        let text = render(
            "{{ messages[0].content.strip().split(',')[-1] }}",
            &[ChatMessage::new("user", " a,b ")],
        );
        assert_eq!(text.unwrap(), "b");
    }

    #[test]
    fn extra_context_overrides_a_variable() {
        let template = ChatTemplate::new(
            "{{ add_generation_prompt }}-{{ enable_thinking }}",
            SpecialTokens::default(),
        )
        .unwrap();
        let mut options = RenderOptions::default();
        options
            .extra_context
            .insert("enable_thinking".into(), Json::Bool(false));
        options
            .extra_context
            .insert("add_generation_prompt".into(), Json::Bool(true));
        // Python's Jinja (what transformers runs) prints booleans as `True`/`False`.
        assert_eq!(
            template.render::<ChatMessage>(&[], &options).unwrap(),
            "True-False"
        );
    }
}
