//! `ServerConfig` (what the operator chose) and `AppState` (what every handler shares:
//! the engine handle, the config, the metrics), with the prompt-side helpers the
//! handlers need: model-name checks, tokenizing, chat-template rendering and the
//! context limits a prompt must fit.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arbor_engine::{Engine, RequestId};
use arbor_models::chat_template::{ChatTemplate, ChatTemplateError, RenderOptions};
use arbor_models::tokenizer::Tokenizer;
use serde_json::Value as Json;

use crate::error::ApiError;
use crate::metrics::ServerMetrics;
use crate::openai::PromptLimits;
use crate::openai::render::render_messages;
use crate::reasoning::ReasoningParserKind;
use crate::tools::ToolParserKind;

/// Default request-body limit: 32 MiB, room for long prompts in JSON.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 << 20;

/// How the server presents the engine over HTTP.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Names clients may put in `model`; the first is reported in responses and
    /// `/v1/models`. Empty: the engine's model name.
    pub served_model_names: Vec<String>,
    /// When set, every route but `/health` and `/metrics` needs
    /// `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Splits chat output into `reasoning_content` and `content`; `None` leaves the
    /// output whole.
    pub reasoning_parser: Option<ReasoningParserKind>,
    /// Reads tool calls out of chat answers when a request offers tools; `None` leaves
    /// them in `content`.
    pub tool_parser: Option<ToolParserKind>,
    /// Largest request body accepted, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Overrides the model's own chat template.
    pub chat_template: Option<ChatTemplate>,
    /// Overrides the model's own tokenizer (for engines whose runner has none, such as
    /// fake models in tests).
    pub tokenizer: Option<Tokenizer>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            served_model_names: Vec::new(),
            api_key: None,
            reasoning_parser: None,
            tool_parser: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            chat_template: None,
            tokenizer: None,
        }
    }
}

/// Everything the handlers share. Cheap to reach through `Arc<AppState>`.
pub struct AppState {
    /// The engine handle.
    pub engine: Engine,
    /// The server's configuration.
    pub config: ServerConfig,
    /// Latency histograms and finish counters.
    pub metrics: ServerMetrics,
    /// Distinguishes response ids of this server run from those of earlier runs.
    id_salt: String,
}

impl AppState {
    /// Shares `engine` under `config`.
    pub fn new(engine: Engine, config: ServerConfig) -> Arc<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Arc::new(Self {
            engine,
            config,
            metrics: ServerMetrics::default(),
            id_salt: format!("{:08x}", nanos ^ std::process::id().rotate_left(16)),
        })
    }

    /// The model name responses report.
    pub fn model_name(&self) -> &str {
        self.config
            .served_model_names
            .first()
            .map_or(self.engine.model_info().name.as_str(), String::as_str)
    }

    /// Accepts a missing model name or one of the served names; anything else is
    /// `ApiError::ModelNotFound` (a 404).
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        let Some(requested) = requested else {
            return Ok(());
        };
        let served = &self.config.served_model_names;
        let known = if served.is_empty() {
            requested == self.engine.model_info().name
        } else {
            served.iter().any(|name| name == requested)
        };
        if known {
            return Ok(());
        }
        Err(ApiError::ModelNotFound {
            requested: requested.to_string(),
            served: self.model_name().to_string(),
        })
    }

    /// A response id such as `chatcmpl-1a2b3c4d-7`.
    pub fn response_id(&self, prefix: &str, id: RequestId) -> String {
        format!("{prefix}-{}-{id}", self.id_salt)
    }

    /// The tokenizer, or a 400 saying text prompts need one.
    pub fn tokenizer(&self) -> Result<&Tokenizer, ApiError> {
        self.config
            .tokenizer
            .as_ref()
            .or_else(|| self.engine.tokenizer())
            .ok_or_else(|| {
                let message = "this model has no tokenizer; send the prompt as token ids";
                ApiError::bad_request(message, Some("prompt"), "no_tokenizer")
            })
    }

    /// Token ids of `text`; `add_special_tokens` adds what the tokenizer's
    /// post-processor adds (usually BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ApiError> {
        self.tokenizer()?
            .encode(text, add_special_tokens)
            .map_err(|err| {
                tracing::warn!(error = %err, "tokenizer failed to encode");
                ApiError::bad_request(err.to_string(), Some("prompt"), "invalid_value")
            })
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, ApiError> {
        self.tokenizer()?
            .decode(ids, skip_special_tokens)
            .map_err(|err| ApiError::bad_request(err.to_string(), Some("tokens"), "invalid_value"))
    }

    /// Renders chat messages (already in template form) to prompt text.
    pub fn render_chat(
        &self,
        messages: &[Json],
        options: &RenderOptions,
    ) -> Result<String, ApiError> {
        let template = self
            .config
            .chat_template
            .as_ref()
            .or_else(|| self.engine.chat_template())
            .ok_or_else(|| {
                let message = "this model has no chat template; use /v1/completions or start \
                               the server with --chat-template";
                ApiError::bad_request(message, Some("messages"), "no_chat_template")
            })?;
        render_messages(template, messages, options).map_err(|err| match err {
            ChatTemplateError::Raised(_) | ChatTemplateError::Input(_) => {
                ApiError::bad_request(err.to_string(), Some("messages"), "invalid_value")
            }
            other => {
                tracing::warn!(error = %other, "chat template failed");
                ApiError::bad_request(other.to_string(), Some("messages"), "template_error")
            }
        })
    }

    /// Tokens one sequence may hold: the model's context, or less when the KV pool is
    /// smaller than that.
    pub fn max_context_tokens(&self) -> usize {
        let n_context = self.engine.model_info().max_context_tokens;
        let kv_capacity = self.engine.stats().kv_capacity_tokens;
        if kv_capacity > 0 {
            n_context.min(kv_capacity)
        } else {
            n_context
        }
    }

    /// The limits `build_params` checks a prompt of `n_prompt_tokens` against.
    pub fn prompt_limits(
        &self,
        n_prompt_tokens: usize,
        default_max_tokens: Option<usize>,
        prompt_param: &'static str,
    ) -> PromptLimits {
        PromptLimits {
            n_prompt_tokens,
            max_context_tokens: self.max_context_tokens(),
            vocab_size: self.engine.model_info().vocab_size,
            default_max_tokens,
            prompt_param,
        }
    }
}

/// Unix seconds now, for `created` fields.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
