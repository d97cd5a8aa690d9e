//! The tokenizer seam: workloads count prompt lengths, and the metrics count output
//! tokens when the server reports no usage, with the target model's tokenizer.
//!
//! `arbor-bench` does not load tokenizers itself: the `arbor` binary wraps
//! `arbor_models::tokenizer::Tokenizer` (tokenizer.json or GGUF) in this trait, and
//! tests use [`CharTokenizer`].

use crate::BenchError;

/// A tokenizer as the benchmark needs it. Implementations must be cheap to call from
/// several tasks at once.
pub trait TokenCounter: Send + Sync {
    /// Token ids of `text`, without special tokens (no BOS), as the model's tokenizer
    /// splits it. Fails only when the tokenizer itself fails.
    fn encode(&self, text: &str) -> Result<Vec<u32>, BenchError>;

    /// Text of `ids`, with special tokens skipped. Ids outside the vocabulary fail.
    fn decode(&self, ids: &[u32]) -> Result<String, BenchError>;

    /// Number of token ids, special tokens included; ids are `0..vocab_size`.
    fn vocab_size(&self) -> usize;

    /// Number of tokens in `text` (see [`TokenCounter::encode`]).
    fn count(&self, text: &str) -> Result<usize, BenchError> {
        Ok(self.encode(text)?.len())
    }
}

/// A toy tokenizer with one token per character of printable ASCII plus `\n`, so
/// `decode(encode(s)) == s` and every id decodes to exactly one token. For tests and
/// for dry runs without a model; its counts mean nothing for a real model.
#[derive(Debug, Clone, Copy, Default)]
pub struct CharTokenizer;

impl CharTokenizer {
    /// The newline's id; ids `1..` are the printable ASCII characters from space (32).
    const NEWLINE_ID: u32 = 0;
    const N_PRINTABLE: u32 = 95;
}

impl TokenCounter for CharTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, BenchError> {
        text.chars()
            .map(|c| match c {
                '\n' => Ok(Self::NEWLINE_ID),
                ' '..='~' => Ok(c as u32 - 32 + 1),
                _ => Err(BenchError::Tokenizer(format!(
                    "character {c:?} is outside the toy vocabulary"
                ))),
            })
            .collect()
    }

    fn decode(&self, ids: &[u32]) -> Result<String, BenchError> {
        ids.iter()
            .map(|&id| match id {
                Self::NEWLINE_ID => Ok('\n'),
                1..=Self::N_PRINTABLE => Ok(char::from(b' ' + (id - 1) as u8)),
                _ => Err(BenchError::Tokenizer(format!(
                    "token id {id} is out of range"
                ))),
            })
            .collect()
    }

    fn vocab_size(&self) -> usize {
        Self::N_PRINTABLE as usize + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_tokenizer_round_trips_every_id() {
        let tok = CharTokenizer;
        let ids: Vec<u32> = (0..tok.vocab_size() as u32).collect();
        let text = tok.decode(&ids).unwrap();
        assert_eq!(tok.encode(&text).unwrap(), ids);
        assert_eq!(tok.count("a\nb c").unwrap(), 5);
    }

    #[test]
    fn char_tokenizer_rejects_unknown_characters_and_ids() {
        assert!(CharTokenizer.encode("é").is_err());
        assert!(CharTokenizer.decode(&[96]).is_err());
    }
}
