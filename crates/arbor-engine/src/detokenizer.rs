//! Incremental detokenization (the emit phase of a step): turns a sequence's growing
//! list of output ids into text increments that never split a UTF-8 character and that,
//! concatenated, equal a full decode of the output ids.
//!
//! It decodes a short window instead of the whole output: the text of
//! `ids[prefix..read]` (already emitted) is compared with the text of `ids[prefix..]`,
//! and the difference is the new text. Decoding the window with a little left context
//! keeps decoders that treat the first token specially (leading spaces) consistent.

use crate::runner::TokenDecoder;

/// Per-sequence decoding state. Output ids live in the sequence; this keeps offsets.
#[derive(Clone, Debug, Default)]
pub struct Detokenizer {
    /// Start of the decode window (ids before it are settled).
    prefix_offset: usize,
    /// Ids before this offset have had their text emitted.
    read_offset: usize,
    skip_special_tokens: bool,
}

impl Detokenizer {
    /// A detokenizer for an empty output.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            prefix_offset: 0,
            read_offset: 0,
            skip_special_tokens,
        }
    }

    /// Text newly decodable after the last id of `output_ids` was appended. Empty while
    /// the last ids end in an incomplete UTF-8 character.
    pub fn next_text(&mut self, decoder: &dyn TokenDecoder, output_ids: &[u32]) -> String {
        let (prefix_text, new_text) = self.decode_window(decoder, output_ids);
        if new_text.ends_with('\u{FFFD}') {
            return String::new();
        }
        self.release(prefix_text, new_text, output_ids.len())
    }

    /// All text not yet emitted, incomplete characters included (as U+FFFD, as a full
    /// decode shows them). Call once when the sequence finishes.
    pub fn flush(&mut self, decoder: &dyn TokenDecoder, output_ids: &[u32]) -> String {
        if self.read_offset >= output_ids.len() {
            return String::new();
        }
        let (prefix_text, new_text) = self.decode_window(decoder, output_ids);
        self.release(prefix_text, new_text, output_ids.len())
    }

    fn decode_window(&self, decoder: &dyn TokenDecoder, ids: &[u32]) -> (String, String) {
        let skip = self.skip_special_tokens;
        let prefix_text = decoder.decode(&ids[self.prefix_offset..self.read_offset], skip);
        let new_text = decoder.decode(&ids[self.prefix_offset..], skip);
        (prefix_text, new_text)
    }

    fn release(&mut self, prefix_text: String, new_text: String, n_ids: usize) -> String {
        let delta = match new_text.strip_prefix(prefix_text.as_str()) {
            Some(delta) => delta.to_string(),
            // A decoder that rewrites earlier text (cleanup of spaces) can break the
            // prefix relation; emit from the first differing character on.
            None => {
                let common = common_prefix_len(&prefix_text, &new_text);
                new_text[common..].to_string()
            }
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = n_ids;
        delta
    }
}

/// Byte length of the longest common prefix of `a` and `b` on a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map(|((idx, _), _)| idx)
        .unwrap_or_else(|| a.len().min(b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each token is one byte; decoding is lossy UTF-8, like a byte-level BPE.
    struct Bytes;

    impl TokenDecoder for Bytes {
        fn decode(&self, ids: &[u32], _skip: bool) -> String {
            let bytes: Vec<u8> = ids.iter().map(|&id| id as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    fn run(text: &str) -> Vec<String> {
        let ids: Vec<u32> = text.bytes().map(u32::from).collect();
        let mut detok = Detokenizer::new(true);
        let mut pieces: Vec<String> = (1..=ids.len())
            .map(|n| detok.next_text(&Bytes, &ids[..n]))
            .collect();
        pieces.push(detok.flush(&Bytes, &ids));
        pieces
    }

    #[test]
    fn multibyte_characters_are_held_until_complete() {
        let pieces = run("aé€");
        assert_eq!(pieces, vec!["a", "", "é", "", "", "€", ""]);
    }

    #[test]
    fn concatenated_pieces_equal_a_full_decode() {
        let text = "hello wörld, ünïcode 😀 and more";
        assert_eq!(run(text).concat(), text);
    }

    #[test]
    fn flush_emits_an_incomplete_tail_as_replacement_characters() {
        let ids = vec![b'a' as u32, 0xE2];
        let mut detok = Detokenizer::new(true);
        assert_eq!(detok.next_text(&Bytes, &ids[..1]), "a");
        assert_eq!(detok.next_text(&Bytes, &ids), "");
        assert_eq!(detok.flush(&Bytes, &ids), "\u{FFFD}");
        assert_eq!(Bytes.decode(&ids, true), "a\u{FFFD}");
    }
}
