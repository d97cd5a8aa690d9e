//! One server under test: the HTTP client, the request body for each backend and
//! API, and [`Target::send`], which streams one request and times every chunk.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::BenchError;
use crate::config::{Api, Backend, OutputLenFix, TargetSpec};
use crate::metrics::RequestOutcome;
use crate::sse::{SseLines, StreamState, clip};
use crate::tokenizer::TokenCounter;
use crate::workload::Prompt;

/// A connected target: base URL, API, and the model name requests carry.
#[derive(Debug, Clone)]
pub struct Target {
    client: reqwest::Client,
    /// Base URL without a trailing `/` or `/v1`.
    pub base_url: String,
    pub backend: Backend,
    pub api: Api,
    /// Model name sent in requests.
    pub model: String,
    api_key: Option<String>,
    disable_ignore_eos: bool,
    extra_request_body: Map<String, Value>,
}

impl Target {
    /// Builds the HTTP client and settles the model name: the given one, else the
    /// first id of `GET /v1/models`. Fails when neither is available.
    pub async fn connect(spec: &TargetSpec) -> Result<Target, BenchError> {
        let base_url = normalize_base_url(&spec.base_url)?;
        let client = reqwest::Client::builder()
            .timeout(spec.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| BenchError::Http {
                url: base_url.clone(),
                source,
            })?;
        let mut target = Target {
            client,
            base_url,
            backend: spec.backend,
            api: spec.api(),
            model: String::new(),
            api_key: spec.api_key.clone(),
            disable_ignore_eos: spec.disable_ignore_eos,
            extra_request_body: spec.extra_request_body.clone(),
        };
        target.model = match &spec.model {
            Some(model) => model.clone(),
            None => target.first_served_model().await?,
        };
        Ok(target)
    }

    /// Empties the server's prefix cache. Returns `false` without a request when the
    /// backend has no such endpoint; fails when the server refuses.
    pub async fn reset_prefix_cache(&self) -> Result<bool, BenchError> {
        let Some(path) = self.backend.cache_reset_path() else {
            return Ok(false);
        };
        let url = format!("{}{path}", self.base_url);
        let response = self
            .authorized(self.client.post(&url))
            .send()
            .await
            .map_err(|source| BenchError::Http {
                url: url.clone(),
                source,
            })?;
        check_status(&url, response).await?;
        Ok(true)
    }

    /// Sends one streaming request and measures it. Never fails: a transport error,
    /// an HTTP error or a broken stream gives an unsuccessful outcome with the reason.
    /// `prompt_len` (tokens) is recorded as given; the output is counted with
    /// `tokenizer` when the server reports no usage.
    pub async fn send(
        &self,
        prompt: &Prompt,
        prompt_len: usize,
        output_len: usize,
        tokenizer: &dyn TokenCounter,
    ) -> RequestOutcome {
        let body = match self.body(prompt, output_len) {
            Ok(body) => body,
            Err(e) => return RequestOutcome::failed(prompt_len, e.to_string()),
        };
        let url = format!("{}{}", self.base_url, self.api.path());
        let sent_at = Instant::now();
        let stream = match self.stream(&url, &body, sent_at).await {
            Ok(stream) => stream,
            Err(reason) => return RequestOutcome::failed(prompt_len, reason),
        };
        let forced_len = (!self.disable_ignore_eos).then_some(output_len);
        outcome(stream, prompt_len, forced_len, tokenizer)
    }

    /// The JSON body of one request: temperature 0, streaming, usage requested, the
    /// output length forced unless `disable_ignore_eos`, then the extra body merged.
    pub fn body(&self, prompt: &Prompt, output_len: usize) -> Result<Value, BenchError> {
        let fix = (!self.disable_ignore_eos).then(|| self.backend.output_len_fix());
        let mut body = match self.api {
            Api::Generate => generate_body(prompt, output_len, fix)?,
            Api::Completions | Api::Chat => {
                openai_body(self.api, &self.model, prompt, output_len, fix)?
            }
        };
        let object = body
            .as_object_mut()
            .expect("request bodies are JSON objects");
        for (key, value) in &self.extra_request_body {
            object.insert(key.clone(), value.clone());
        }
        Ok(body)
    }

    async fn stream(
        &self,
        url: &str,
        body: &Value,
        sent_at: Instant,
    ) -> Result<StreamState, String> {
        let response = self
            .authorized(self.client.post(url))
            .json(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("HTTP {}: {}", status.as_u16(), clip(&text)));
        }

        let mut lines = SseLines::default();
        let mut state = StreamState::default();
        let mut bytes = response.bytes_stream();
        while let Some(read) = bytes.next().await {
            let read = read.map_err(|e| format!("stream broke: {}", error_chain(&e)))?;
            let at = sent_at.elapsed();
            for payload in lines.push(&read) {
                state.on_payload(self.api, &payload, at)?;
            }
        }
        if let Some(payload) = lines.finish() {
            state.on_payload(self.api, &payload, sent_at.elapsed())?;
        }
        Ok(state)
    }

    async fn first_served_model(&self) -> Result<String, BenchError> {
        let url = format!("{}/v1/models", self.base_url);
        let response = self
            .authorized(self.client.get(&url))
            .send()
            .await
            .map_err(|source| BenchError::Http {
                url: url.clone(),
                source,
            })?;
        let response = check_status(&url, response).await?;
        let models: Value = response.json().await.map_err(|source| BenchError::Http {
            url: url.clone(),
            source,
        })?;
        models["data"][0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                BenchError::InvalidResponse(format!(
                    "{url} lists no model; pass --served-model-name"
                ))
            })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

/// Drops a trailing `/` and `/v1`, so `http://h:8000/v1/` and `http://h:8000` agree.
fn normalize_base_url(url: &str) -> Result<String, BenchError> {
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
        return Err(BenchError::InvalidSpec(format!(
            "base URL {url:?} must start with http:// or https://"
        )));
    }
    Ok(trimmed.to_string())
}

async fn check_status(
    url: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, BenchError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(BenchError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        body: clip(&body),
    })
}

fn openai_body(
    api: Api,
    model: &str,
    prompt: &Prompt,
    output_len: usize,
    fix: Option<OutputLenFix>,
) -> Result<Value, BenchError> {
    let mut body = json!({
        "model": model,
        "max_tokens": output_len,
        "temperature": 0.0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let (key, value) = match (api, prompt) {
        (Api::Chat, Prompt::Chat(messages)) => ("messages", json!(messages)),
        (Api::Chat, Prompt::Text(text)) => ("messages", json!([{"role": "user", "content": text}])),
        (Api::Completions, Prompt::Text(text)) => ("prompt", json!(text)),
        (Api::Completions, Prompt::TokenIds(ids)) => ("prompt", json!(ids)),
        _ => return Err(prompt_mismatch(api)),
    };
    body[key] = value;
    if matches!(fix, Some(OutputLenFix::IgnoreEos | OutputLenFix::Both)) {
        body["ignore_eos"] = json!(true);
    }
    if matches!(fix, Some(OutputLenFix::MinTokens | OutputLenFix::Both)) {
        body["min_tokens"] = json!(output_len);
    }
    Ok(body)
}

fn generate_body(
    prompt: &Prompt,
    output_len: usize,
    fix: Option<OutputLenFix>,
) -> Result<Value, BenchError> {
    let mut sampling = json!({"temperature": 0.0, "max_new_tokens": output_len});
    if matches!(fix, Some(OutputLenFix::IgnoreEos | OutputLenFix::Both)) {
        sampling["ignore_eos"] = json!(true);
    }
    if matches!(fix, Some(OutputLenFix::MinTokens | OutputLenFix::Both)) {
        sampling["min_new_tokens"] = json!(output_len);
    }
    let mut body = json!({"sampling_params": sampling, "stream": true});
    match prompt {
        Prompt::Text(text) => body["text"] = json!(text),
        Prompt::TokenIds(ids) => body["input_ids"] = json!(ids),
        Prompt::Chat(_) => return Err(prompt_mismatch(Api::Generate)),
    }
    Ok(body)
}

fn prompt_mismatch(api: Api) -> BenchError {
    let hint = match api {
        Api::Chat => "the chat API takes text prompts; use --random-prompt text",
        Api::Completions | Api::Generate => "chat messages need --api chat",
    };
    BenchError::InvalidSpec(format!("prompt does not fit the {api} API: {hint}"))
}

/// The measured request. `forced_len` is the output length the request forced, if
/// it did.
fn outcome(
    stream: StreamState,
    prompt_len: usize,
    forced_len: Option<usize>,
    tokenizer: &dyn TokenCounter,
) -> RequestOutcome {
    let Some(ttft) = stream.ttft else {
        return RequestOutcome::failed(prompt_len, "stream ended without any generated text");
    };
    let retokenized = match tokenizer.count(&stream.text) {
        Ok(n) => n,
        Err(e) => return RequestOutcome::failed(prompt_len, e.to_string()),
    };
    let latency = stream.last_event.unwrap_or(ttft);
    let output_len = stream.completion_tokens.unwrap_or(retokenized);
    let short_output = forced_len
        .is_some_and(|wanted| falls_short(output_len, wanted, stream.completion_tokens.is_some()));
    RequestOutcome {
        success: true,
        error: None,
        prompt_len,
        output_len,
        output_len_retokenized: retokenized,
        ttft_s: ttft.as_secs_f64(),
        latency_s: latency.as_secs_f64(),
        itl_s: stream.itl_s,
        generated_text: stream.text,
        server_prompt_tokens: stream.prompt_tokens,
        cached_tokens: stream.cached_tokens,
        short_output,
    }
}

/// Whether an output of `n_tokens` stopped short of the forced length `wanted`. The
/// server's own count must reach it exactly; a re-tokenized count (servers that
/// report no usage while streaming) may fall a little below, since text does not
/// always split back into the ids that made it.
// Limitation: a re-tokenized count within an eighth of `wanted` (at least 2 tokens)
// passes, so a server without usage that stops a token or two early goes unnoticed.
fn falls_short(n_tokens: usize, wanted: usize, counted_by_server: bool) -> bool {
    let slack = if counted_by_server {
        0
    } else {
        (wanted / 8).max(2)
    };
    n_tokens + slack < wanted
}

/// The error and its sources, one after the other ("connection refused" hides there).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::ChatMessage;

    fn target(backend: Backend, api: Api) -> Target {
        Target {
            client: reqwest::Client::new(),
            base_url: "http://127.0.0.1:1".to_string(),
            backend,
            api,
            model: "m".to_string(),
            api_key: None,
            disable_ignore_eos: false,
            extra_request_body: Map::new(),
        }
    }

    #[test]
    fn base_urls_lose_trailing_slash_and_v1() {
        assert_eq!(
            normalize_base_url("http://h:8000/v1/").unwrap(),
            "http://h:8000"
        );
        assert_eq!(
            normalize_base_url("http://h:8000").unwrap(),
            "http://h:8000"
        );
        assert!(normalize_base_url("h:8000").is_err());
    }

    #[test]
    fn each_backend_forces_output_length_its_own_way() {
        let prompt = Prompt::Text("hi".into());
        let vllm = target(Backend::Vllm, Api::Completions)
            .body(&prompt, 9)
            .unwrap();
        assert_eq!(vllm["ignore_eos"], true);
        assert_eq!(vllm["max_tokens"], 9);
        assert_eq!(vllm["stream_options"]["include_usage"], true);
        let openai = target(Backend::Openai, Api::Completions)
            .body(&prompt, 9)
            .unwrap();
        assert_eq!(openai["min_tokens"], 9);
        assert_eq!(openai["ignore_eos"], true);
        let sglang = target(Backend::Sglang, Api::Generate)
            .body(&prompt, 9)
            .unwrap();
        assert_eq!(sglang["sampling_params"]["max_new_tokens"], 9);
        assert_eq!(sglang["sampling_params"]["ignore_eos"], true);
        assert_eq!(sglang["text"], "hi");

        let mut free = target(Backend::Vllm, Api::Completions);
        free.disable_ignore_eos = true;
        assert!(free.body(&prompt, 9).unwrap().get("ignore_eos").is_none());
    }

    #[test]
    fn short_outputs_are_exact_by_usage_and_lenient_when_retokenized() {
        assert!(!falls_short(32, 32, true));
        assert!(falls_short(31, 32, true));
        // Re-tokenized text may lose a few tokens: 4 of 32 is tolerated, 5 is not.
        assert!(!falls_short(28, 32, false));
        assert!(falls_short(27, 32, false));
        assert!(!falls_short(1, 3, false));
        assert!(falls_short(5, 32, false));
    }

    #[test]
    fn prompts_map_to_the_api_and_extra_body_wins() {
        let mut chat = target(Backend::Arbor, Api::Chat);
        chat.extra_request_body
            .insert("temperature".into(), json!(0.6));
        let messages = vec![ChatMessage {
            role: "user",
            content: "x".into(),
        }];
        let body = chat.body(&Prompt::Chat(messages), 4).unwrap();
        assert_eq!(body["messages"][0]["content"], "x");
        assert_eq!(body["temperature"], 0.6);

        let ids = Prompt::TokenIds(vec![1, 2, 3]);
        let completions = target(Backend::Arbor, Api::Completions)
            .body(&ids, 4)
            .unwrap();
        assert_eq!(completions["prompt"], json!([1, 2, 3]));
        assert!(chat.body(&ids, 4).is_err());
    }
}
