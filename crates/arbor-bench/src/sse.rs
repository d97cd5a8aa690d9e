//! Reading a streamed answer: server-sent-event framing ([`SseLines`]) and what each
//! `data:` payload means for the API in use ([`StreamState`]). Pure functions of the
//! bytes and their arrival times, so they are tested without a network.

use std::time::Duration;

use serde_json::Value;

use crate::config::Api;

/// Splits a byte stream into the payloads of its `data:` lines. Comments (`:`),
/// `event:`/`id:` lines and blank lines are skipped; lines may end in `\n` or `\r\n`
/// and may be cut anywhere between two reads.
#[derive(Debug, Default)]
pub(crate) struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    /// Feeds bytes; returns the payloads of the lines they complete.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut payloads = Vec::new();
        while let Some(newline) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            payloads.extend(data_payload(&line));
        }
        payloads
    }

    /// The payload of a last line that had no newline, if any.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.pending);
        data_payload(&line)
    }
}

fn data_payload(line: &[u8]) -> Option<String> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let payload = line.strip_prefix("data:")?;
    Some(payload.trim_start().to_string())
}

/// What one request's stream has shown so far. Times are offsets from sending.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// Arrival of the first text-carrying chunk.
    pub ttft: Option<Duration>,
    /// Arrival of the last chunk of any kind.
    pub last_event: Option<Duration>,
    last_text_at: Option<Duration>,
    /// Gaps between text-carrying chunks, seconds.
    pub itl_s: Vec<f64>,
    pub text: String,
    /// Server-reported output length (usage or `/generate` meta info).
    pub completion_tokens: Option<usize>,
    pub prompt_tokens: Option<usize>,
    pub cached_tokens: Option<usize>,
    /// `[DONE]` was seen.
    pub done: bool,
}

impl StreamState {
    /// Takes one `data:` payload that arrived at `at`. Returns an error message when
    /// the payload is not JSON or is an error object.
    pub(crate) fn on_payload(
        &mut self,
        api: Api,
        payload: &str,
        at: Duration,
    ) -> Result<(), String> {
        self.last_event = Some(at);
        if payload == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let data: Value = serde_json::from_str(payload)
            .map_err(|e| format!("unreadable stream chunk ({e}): {}", clip(payload)))?;
        if let Some(message) = error_message(&data) {
            return Err(message);
        }

        let completion_before = self.completion_tokens;
        self.read_usage(api, &data);
        let delta = match api {
            Api::Completions => completions_text(&data),
            Api::Chat => chat_text(&data),
            Api::Generate => self.generate_delta(&data),
        };
        if delta.is_empty() {
            return Ok(());
        }
        self.text.push_str(&delta);

        match self.last_text_at {
            None => self.ttft = Some(at),
            Some(previous) => {
                let gap = (at - previous).as_secs_f64();
                // `/generate` may carry several tokens per chunk and says how many;
                // as SGLang does, the gap is spread evenly over them.
                let n_new = match (api, completion_before, self.completion_tokens) {
                    (Api::Generate, Some(before), Some(now)) if now > before => now - before,
                    _ => 1,
                };
                self.itl_s
                    .extend(std::iter::repeat_n(gap / n_new as f64, n_new));
            }
        }
        self.last_text_at = Some(at);
        Ok(())
    }

    fn read_usage(&mut self, api: Api, data: &Value) {
        let usage = match api {
            Api::Generate => &data["meta_info"],
            Api::Completions | Api::Chat => &data["usage"],
        };
        if let Some(n) = usage["completion_tokens"].as_u64() {
            self.completion_tokens = Some(n as usize);
        }
        if let Some(n) = usage["prompt_tokens"].as_u64() {
            self.prompt_tokens = Some(n as usize);
        }
        let cached = usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .or_else(|| usage["cached_tokens"].as_u64());
        if let Some(n) = cached {
            self.cached_tokens = Some(n as usize);
        }
    }

    /// `/generate` streams the whole text so far; the new part is what follows the
    /// text already seen.
    fn generate_delta(&mut self, data: &Value) -> String {
        let Some(full) = data["text"].as_str() else {
            return String::new();
        };
        match full.strip_prefix(self.text.as_str()) {
            Some(rest) => rest.to_string(),
            // Limitation: a server that streams only increments on `/generate` is read
            // as such when the new text does not extend the old; a cumulative stream
            // that rewrites earlier text would be double counted.
            None => full.to_string(),
        }
    }
}

fn completions_text(data: &Value) -> String {
    data["choices"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Answer text of a chat chunk: `content` plus the `reasoning_content` that
/// reasoning models stream separately on SGLang and vLLM.
fn chat_text(data: &Value) -> String {
    let delta = &data["choices"][0]["delta"];
    let mut text = String::new();
    for key in ["reasoning_content", "reasoning", "content"] {
        if let Some(part) = delta[key].as_str() {
            text.push_str(part);
        }
    }
    text
}

fn error_message(data: &Value) -> Option<String> {
    let error = &data["error"];
    if let Some(message) = error["message"].as_str() {
        return Some(message.to_string());
    }
    if let Some(message) = error.as_str() {
        return Some(message.to_string());
    }
    if data["object"] == "error" {
        return Some(
            data["message"]
                .as_str()
                .unwrap_or("error object")
                .to_string(),
        );
    }
    None
}

/// At most 200 characters of `text`, for error messages.
pub(crate) fn clip(text: &str) -> String {
    const LIMIT: usize = 200;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lines_split_across_reads_and_non_data_lines_are_skipped() {
        let mut lines = SseLines::default();
        assert!(lines.push(b": keep-alive\n\nda").is_empty());
        assert_eq!(
            lines.push(b"ta: {\"a\":1}\r\nevent: x\ndata:[DONE]\n"),
            vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]
        );
        lines.push(b"data: tail");
        assert_eq!(lines.finish(), Some("tail".to_string()));
    }

    #[test]
    fn completions_stream_gives_ttft_itl_and_usage() {
        let mut s = StreamState::default();
        let chunks = [
            (r#"{"choices":[{"text":"Hel"}]}"#, 100),
            (r#"{"choices":[{"text":""}]}"#, 120),
            (r#"{"choices":[{"text":"lo"}]}"#, 150),
            (r#"{"choices":[{"text":"!"}]}"#, 230),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,
                   "prompt_tokens_details":{"cached_tokens":4}}}"#,
                240,
            ),
            ("[DONE]", 250),
        ];
        for (payload, at) in chunks {
            s.on_payload(Api::Completions, payload, ms(at)).unwrap();
        }
        assert_eq!(s.text, "Hello!");
        assert_eq!(s.ttft, Some(ms(100)));
        assert_eq!(s.last_event, Some(ms(250)));
        assert_eq!(s.itl_s.len(), 2);
        assert!((s.itl_s[0] - 0.05).abs() < 1e-9 && (s.itl_s[1] - 0.08).abs() < 1e-9);
        assert_eq!(
            (s.prompt_tokens, s.completion_tokens, s.cached_tokens),
            (Some(7), Some(3), Some(4))
        );
        assert!(s.done);
    }

    #[test]
    fn chat_stream_counts_reasoning_and_content_but_not_role_chunks() {
        let mut s = StreamState::default();
        s.on_payload(
            Api::Chat,
            r#"{"choices":[{"delta":{"role":"assistant"}}]}"#,
            ms(10),
        )
        .unwrap();
        s.on_payload(
            Api::Chat,
            r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#,
            ms(30),
        )
        .unwrap();
        s.on_payload(
            Api::Chat,
            r#"{"choices":[{"delta":{"content":"ok"}}]}"#,
            ms(50),
        )
        .unwrap();
        assert_eq!(s.ttft, Some(ms(30)));
        assert_eq!(s.text, "hmok");
        assert_eq!(s.itl_s.len(), 1);
    }

    #[test]
    fn generate_stream_is_cumulative_and_spreads_gaps_over_new_tokens() {
        let mut s = StreamState::default();
        let chunk = |text: &str, n: usize| {
            format!(
                r#"{{"text":"{text}","meta_info":{{"completion_tokens":{n},"prompt_tokens":5,"cached_tokens":2}}}}"#
            )
        };
        s.on_payload(Api::Generate, &chunk("a", 1), ms(100))
            .unwrap();
        s.on_payload(Api::Generate, &chunk("abc", 3), ms(160))
            .unwrap();
        assert_eq!(s.text, "abc");
        assert_eq!(s.itl_s.len(), 2);
        assert!(s.itl_s.iter().all(|gap| (gap - 0.03).abs() < 1e-9));
        assert_eq!((s.completion_tokens, s.cached_tokens), (Some(3), Some(2)));
    }

    #[test]
    fn error_objects_and_garbage_are_reported() {
        let mut s = StreamState::default();
        let err = s
            .on_payload(
                Api::Completions,
                r#"{"error":{"message":"context too long"}}"#,
                ms(1),
            )
            .unwrap_err();
        assert_eq!(err, "context too long");
        assert!(s.on_payload(Api::Chat, "not json", ms(2)).is_err());
        let vllm = r#"{"object":"error","message":"bad model"}"#;
        assert_eq!(
            s.on_payload(Api::Chat, vllm, ms(3)).unwrap_err(),
            "bad model"
        );
    }

    #[test]
    fn clip_shortens_long_text_on_a_char_boundary() {
        let long = "é".repeat(300);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), 203);
        assert_eq!(clip("short"), "short");
    }
}
