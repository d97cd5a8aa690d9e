//! The `multi-turn` workload: conversations whose next turn extends the previous one,
//! as chat and agent clients do. Turn k+1's prompt is turn k's prompt, the answer the
//! server gave, and a new user message, so a server with a prefix cache only computes
//! the new tail.
//!
//! The user messages are generated up front (the first can be long, like an agent's
//! instructions and tool list); the answers are only known during the run, so the
//! runner completes each prompt with [`History`].

use rand::rngs::StdRng;
use serde::Serialize;

use super::{Conversation, Prompt, random_text};
use crate::BenchError;
use crate::tokenizer::TokenCounter;

/// Parameters of the `multi-turn` workload.
#[derive(Debug, Clone, Serialize)]
pub struct MultiTurnSpec {
    pub mt_num_conversations: usize,
    /// Turns per conversation; each turn is one request.
    pub mt_num_turns: usize,
    /// Length of the first user message, tokens.
    pub mt_first_turn_len: usize,
    /// Length of every later user message, tokens.
    pub mt_turn_len: usize,
    /// Output length of every turn, tokens.
    pub mt_output_len: usize,
}

/// Between messages when a conversation is flattened into one text prompt.
const SEPARATOR: &str = "\n\n";

pub(super) fn build(
    spec: &MultiTurnSpec,
    tokenizer: &dyn TokenCounter,
    rng: &mut StdRng,
) -> Result<Vec<Conversation>, BenchError> {
    validate(spec)?;
    (0..spec.mt_num_conversations)
        .map(|_| {
            let user_turns = (0..spec.mt_num_turns)
                .map(|turn_idx| {
                    let len = if turn_idx == 0 {
                        spec.mt_first_turn_len
                    } else {
                        spec.mt_turn_len
                    };
                    random_text(tokenizer, rng, len).map(|(text, _)| text)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Conversation {
                user_turns,
                output_len: spec.mt_output_len,
            })
        })
        .collect()
}

fn validate(spec: &MultiTurnSpec) -> Result<(), BenchError> {
    let sizes = [
        spec.mt_num_conversations,
        spec.mt_num_turns,
        spec.mt_first_turn_len,
        spec.mt_turn_len,
        spec.mt_output_len,
    ];
    if sizes.contains(&0) {
        return Err(BenchError::InvalidSpec(
            "every --mt-* size must be at least 1".to_string(),
        ));
    }
    Ok(())
}

/// One chat message as the chat API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

/// A conversation so far: the finished exchanges (user message, server's answer).
#[derive(Debug, Clone, Default)]
pub struct History {
    exchanges: Vec<(String, String)>,
}

impl History {
    /// Appends a finished exchange.
    pub fn push(&mut self, user: String, answer: String) {
        self.exchanges.push((user, answer));
    }

    /// The next prompt as chat messages: the history, then `next_user`.
    pub fn chat_prompt(&self, next_user: &str) -> Prompt {
        let mut messages = Vec::with_capacity(self.exchanges.len() * 2 + 1);
        for (user, answer) in &self.exchanges {
            messages.push(ChatMessage {
                role: "user",
                content: user.clone(),
            });
            messages.push(ChatMessage {
                role: "assistant",
                content: answer.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user",
            content: next_user.to_string(),
        });
        Prompt::Chat(messages)
    }

    /// The next prompt as one text: every message of the history and `next_user`,
    /// joined by a blank line. It starts with the previous turn's prompt and answer.
    pub fn text_prompt(&self, next_user: &str) -> Prompt {
        let mut text = String::new();
        for (user, answer) in &self.exchanges {
            text.push_str(user);
            text.push_str(SEPARATOR);
            text.push_str(answer);
            text.push_str(SEPARATOR);
        }
        text.push_str(next_user);
        Prompt::Text(text)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::tokenizer::CharTokenizer;

    fn spec() -> MultiTurnSpec {
        MultiTurnSpec {
            mt_num_conversations: 3,
            mt_num_turns: 4,
            mt_first_turn_len: 100,
            mt_turn_len: 20,
            mt_output_len: 16,
        }
    }

    #[test]
    fn conversations_have_a_long_first_turn_then_short_ones() {
        let conversations = build(&spec(), &CharTokenizer, &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(conversations.len(), 3);
        for c in &conversations {
            let lens: Vec<usize> = c.user_turns.iter().map(|t| t.chars().count()).collect();
            assert_eq!(lens, vec![100, 20, 20, 20]);
            assert_eq!(c.output_len, 16);
        }
        assert_ne!(conversations[0].user_turns, conversations[1].user_turns);
    }

    #[test]
    fn each_text_prompt_extends_the_previous_prompt_and_answer() {
        let mut history = History::default();
        let Prompt::Text(first) = history.text_prompt("hello") else {
            panic!("text prompt expected");
        };
        history.push("hello".into(), "hi there".into());
        let Prompt::Text(second) = history.text_prompt("how are you") else {
            panic!("text prompt expected");
        };
        assert!(second.starts_with(&format!("{first}{SEPARATOR}hi there")));
        assert_eq!(second, "hello\n\nhi there\n\nhow are you");
    }

    #[test]
    fn chat_prompt_alternates_roles_and_ends_with_the_new_message() {
        let mut history = History::default();
        history.push("a".into(), "b".into());
        let Prompt::Chat(messages) = history.chat_prompt("c") else {
            panic!("chat prompt expected");
        };
        let roles: Vec<&str> = messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec!["user", "assistant", "user"]);
        assert_eq!(messages[2].content, "c");
    }

    #[test]
    fn same_seed_gives_same_conversations() {
        let a = build(&spec(), &CharTokenizer, &mut StdRng::seed_from_u64(4)).unwrap();
        let b = build(&spec(), &CharTokenizer, &mut StdRng::seed_from_u64(4)).unwrap();
        assert_eq!(a[2].user_turns, b[2].user_turns);
    }
}
