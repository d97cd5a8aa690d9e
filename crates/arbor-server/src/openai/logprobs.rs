//! Log-probabilities in the two shapes OpenAI uses: the chat shape
//! (`logprobs.content[]` with `token`, `logprob`, `bytes`, `top_logprobs[]`) and the
//! legacy completions shape (parallel `tokens`, `token_logprobs`, `top_logprobs` and
//! `text_offset` arrays). Both are built from the engine's `TokenLogprob`s.

use std::collections::BTreeMap;

use serde::Serialize;

use arbor_engine::TokenLogprob;

/// JSON has no infinities: a token with probability zero is reported with this logprob,
/// as vLLM does.
const LOGPROB_FLOOR: f32 = -9999.0;

fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        LOGPROB_FLOOR
    }
}

/// `choices[].logprobs` of a chat completion or chunk.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
}

/// One token of `ChatLogprobs::content`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
    /// The most likely alternatives, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative in `ChatTokenLogprob::top_logprobs`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    /// Converts engine logprobs, in output order.
    pub fn from_engine(logprobs: &[TokenLogprob]) -> Self {
        let content = logprobs
            .iter()
            .map(|lp| ChatTokenLogprob {
                token: lp.token.clone(),
                logprob: finite(lp.logprob),
                bytes: lp.token.as_bytes().to_vec(),
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|(_, token, logprob)| TopLogprob {
                        token: token.clone(),
                        logprob: finite(*logprob),
                        bytes: token.as_bytes().to_vec(),
                    })
                    .collect(),
            })
            .collect();
        ChatLogprobs { content }
    }
}

/// `choices[].logprobs` of a text completion or chunk.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    /// Text of each generated token.
    pub tokens: Vec<String>,
    /// Logprob of each generated token.
    pub token_logprobs: Vec<f32>,
    /// Per token, the alternatives by text. Alternatives whose texts coincide keep the
    /// most likely one.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Per token, its character offset in the choice's text.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Converts engine logprobs; offsets start at `start_offset` characters (the length
    /// of the text already sent for this choice).
    pub fn from_engine(logprobs: &[TokenLogprob], start_offset: usize) -> Self {
        let mut out = CompletionLogprobs::default();
        let mut offset = start_offset;
        for lp in logprobs {
            out.tokens.push(lp.token.clone());
            out.token_logprobs.push(finite(lp.logprob));
            let mut top = BTreeMap::new();
            for (_, token, logprob) in &lp.top {
                top.entry(token.clone()).or_insert(finite(*logprob));
            }
            out.top_logprobs.push(top);
            out.text_offset.push(offset);
            offset += lp.token.chars().count();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(token: &str, logprob: f32, top: &[(&str, f32)]) -> TokenLogprob {
        TokenLogprob {
            token_id: 0,
            token: token.to_string(),
            logprob,
            top: top.iter().map(|(t, l)| (0, t.to_string(), *l)).collect(),
        }
    }

    #[test]
    fn chat_logprobs_carry_bytes_and_alternatives() {
        let out = ChatLogprobs::from_engine(&[lp(" é", -0.5, &[(" é", -0.5), ("x", -2.0)])]);
        let first = &out.content[0];
        assert_eq!(first.bytes, vec![0x20, 0xC3, 0xA9]);
        assert_eq!(first.top_logprobs.len(), 2);
        assert_eq!(first.top_logprobs[1].token, "x");
    }

    #[test]
    fn infinite_logprobs_become_a_finite_floor() {
        let out = ChatLogprobs::from_engine(&[lp("a", f32::NEG_INFINITY, &[])]);
        assert_eq!(out.content[0].logprob, LOGPROB_FLOOR);
        let json = serde_json::to_string(&out).unwrap();
        assert!(!json.contains("null"), "{json}");
    }

    #[test]
    fn completion_logprobs_track_text_offsets() {
        let out = CompletionLogprobs::from_engine(
            &[lp("ab", -1.0, &[("ab", -1.0)]), lp("c", -2.0, &[])],
            3,
        );
        assert_eq!(out.tokens, vec!["ab", "c"]);
        assert_eq!(out.token_logprobs, vec![-1.0, -2.0]);
        assert_eq!(out.text_offset, vec![3, 5]);
        assert_eq!(out.top_logprobs[0]["ab"], -1.0);
    }
}
