//! Builds a byte-level BPE tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file,
//! the way llama.cpp's converter wrote it from the model's Hugging Face tokenizer.
//!
//! The GGUF stores the vocabulary (`tokens`, in id order), the BPE `merges`, each
//! token's `token_type` (1 normal, 3 control, 4 user-defined, 5 unused), the special ids,
//! and `pre`, the name of the pre-tokenizer (the regex that splits text into words
//! before BPE). Control tokens become added *special* tokens and user-defined tokens
//! (such as `<think>`) added ordinary ones, as in the original `tokenizer.json`.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{Template, TemplateProcessing};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{SpecialTokens, TokenizerError};

/// GGUF token type of a control token (`<|im_end|>`): an added special token.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of a user-defined token (`<think>`): an added ordinary token.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's split regex: letters with an optional leading mark, digits in runs of up
/// to three, punctuation runs, newlines, and whitespace.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: as Llama 3's, but every digit is its own word.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What [`build`] produces: the tokenizer and the special tokens it knows.
pub(crate) struct GgufTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    pub special: SpecialTokens,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub add_bos_token: bool,
}

/// The pre-tokenizer families that `tokenizer.ggml.pre` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizerKind {
    /// GPT-2's byte-level regex.
    Gpt2,
    /// SmolLM: every digit split off, then GPT-2's regex.
    SmolLm,
    /// Llama 3 (also DeepSeek-R1-Distill-Llama): [`LLAMA3_PATTERN`], and whole words
    /// found in the vocabulary skip the merges.
    Llama3,
    /// Qwen2 (also DeepSeek-R1-Distill-Qwen): NFC, then [`QWEN2_PATTERN`].
    Qwen2,
}

/// The names `tokenizer.ggml.pre` may hold, and what each means.
const PRE_TOKENIZER_NAMES: &[(&str, PreTokenizerKind)] = &[
    ("gpt2", PreTokenizerKind::Gpt2),
    ("gpt-2", PreTokenizerKind::Gpt2),
    ("smollm", PreTokenizerKind::SmolLm),
    ("llama3", PreTokenizerKind::Llama3),
    ("llama-v3", PreTokenizerKind::Llama3),
    ("llama-bpe", PreTokenizerKind::Llama3),
    ("qwen2", PreTokenizerKind::Qwen2),
    ("deepseek-r1-qwen", PreTokenizerKind::Qwen2),
];

impl PreTokenizerKind {
    /// The family `tokenizer.ggml.pre` names, or an error listing the known names.
    pub(crate) fn from_name(name: &str) -> Result<Self, TokenizerError> {
        PRE_TOKENIZER_NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|&(_, kind)| kind)
            .ok_or_else(|| TokenizerError::UnknownPreTokenizer {
                name: name.to_owned(),
                known: PRE_TOKENIZER_NAMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper, TokenizerError> {
        let byte_level = |use_regex| ByteLevel::new(false, true, use_regex).into();
        let split_then_bytes = |pattern: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
            let split = Split::new(
                SplitPattern::Regex(pattern.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
            Ok(Sequence::new(vec![split.into(), byte_level(false)]).into())
        };
        match self {
            Self::Gpt2 => Ok(byte_level(true)),
            Self::SmolLm => {
                Ok(Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into())
            }
            Self::Llama3 => split_then_bytes(LLAMA3_PATTERN),
            Self::Qwen2 => split_then_bytes(QWEN2_PATTERN),
        }
    }
}

/// Builds the tokenizer a GGUF header describes.
pub(crate) fn build(metadata: &HashMap<String, Value>) -> Result<GgufTokenizer, TokenizerError> {
    let meta = Meta(metadata);
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel(model.to_owned()));
    }
    let kind = match meta.opt_string("tokenizer.ggml.pre")? {
        Some(name) => PreTokenizerKind::from_name(name)?,
        None => {
            tracing::warn!("GGUF has no tokenizer.ggml.pre; using GPT-2's pre-tokenizer");
            PreTokenizerKind::Gpt2
        }
    };

    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = parse_merges(&meta.strings("tokenizer.ggml.merges")?)?;
    let ids = SpecialIds::read(&meta, tokens.len())?;
    let token_types = meta.opt_ints("tokenizer.ggml.token_type")?;
    if let Some(types) = &token_types
        && types.len() != tokens.len()
    {
        return Err(TokenizerError::InvalidMetadata {
            key: "tokenizer.ggml.token_type".into(),
            message: format!("{} entries for {} tokens", types.len(), tokens.len()),
        });
    }

    let mut tokenizer = bpe_tokenizer(&tokens, merges, kind)?;
    add_special_and_user_tokens(&mut tokenizer, &tokens, token_types.as_deref(), &ids)?;
    let add_bos_token = meta
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    let add_eos_token = meta
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    set_post_processor(&mut tokenizer, &tokens, &ids, add_bos_token, add_eos_token)?;

    let text_of = |id: Option<u32>| id.map(|id| tokens[id as usize].clone());
    Ok(GgufTokenizer {
        tokenizer,
        special: SpecialTokens {
            bos: text_of(ids.bos),
            eos: text_of(ids.eos),
            unk: text_of(ids.unk),
            pad: text_of(ids.pad),
        },
        bos_token_id: ids.bos,
        eos_token_id: ids.eos,
        pad_token_id: ids.pad,
        add_bos_token: add_bos_token && ids.bos.is_some(),
    })
}

/// The special token ids of the header, each checked to lie inside the vocabulary.
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
}

impl SpecialIds {
    fn read(meta: &Meta<'_>, n_tokens: usize) -> Result<Self, TokenizerError> {
        let id = |key: &str| meta.opt_token_id(key, n_tokens);
        Ok(Self {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
        })
    }

    fn all(&self) -> impl Iterator<Item = u32> {
        [self.bos, self.eos, self.unk, self.pad]
            .into_iter()
            .flatten()
    }
}

/// Splits each `"left right"` merge at its single space (byte-level tokens never hold
/// a literal space: it is written `Ġ`).
fn parse_merges(merges: &[String]) -> Result<Vec<(String, String)>, TokenizerError> {
    merges
        .iter()
        .enumerate()
        .map(|(idx, merge)| match merge.split_once(' ') {
            Some((left, right)) if !left.is_empty() && !right.is_empty() => {
                Ok((left.to_owned(), right.to_owned()))
            }
            _ => Err(TokenizerError::InvalidMetadata {
                key: "tokenizer.ggml.merges".into(),
                message: format!("merge {idx} ({merge:?}) is not two tokens separated by a space"),
            }),
        })
        .collect()
}

/// The BPE model with its normalizer, pre-tokenizer and byte-level decoder.
fn bpe_tokenizer(
    tokens: &[String],
    merges: Vec<(String, String)>,
    kind: PreTokenizerKind,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    // A token text listed twice keeps its last id, as Python's dict and llama.cpp's map do.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(kind == PreTokenizerKind::Llama3)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    if kind == PreTokenizerKind::Qwen2 {
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
    }
    tokenizer.with_pre_tokenizer(Some(kind.pre_tokenizer()?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// Registers control tokens (and the named special ids) as special added tokens, and
/// user-defined tokens as ordinary added tokens, so that both are matched whole in text.
fn add_special_and_user_tokens(
    tokenizer: &mut tokenizers::Tokenizer,
    tokens: &[String],
    token_types: Option<&[i64]>,
    ids: &SpecialIds,
) -> Result<(), TokenizerError> {
    let mut special_ids: Vec<u32> = ids.all().collect();
    let mut user_ids = Vec::new();
    for (id, &token_type) in token_types.unwrap_or_default().iter().enumerate() {
        match token_type {
            TOKEN_TYPE_CONTROL => special_ids.push(id as u32),
            TOKEN_TYPE_USER_DEFINED => user_ids.push(id as u32),
            _ => {}
        }
    }
    special_ids.sort_unstable();
    special_ids.dedup();
    user_ids.retain(|id| special_ids.binary_search(id).is_err());

    let added = |ids: &[u32], special: bool| -> Vec<AddedToken> {
        ids.iter()
            .map(|&id| AddedToken::from(tokens[id as usize].clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(&special_ids, true))
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    tokenizer
        .add_tokens(added(&user_ids, false))
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    Ok(())
}

/// Adds the BOS before (and the EOS after) each encoded text, when the header asks.
fn set_post_processor(
    tokenizer: &mut tokenizers::Tokenizer,
    tokens: &[String],
    ids: &SpecialIds,
    add_bos: bool,
    add_eos: bool,
) -> Result<(), TokenizerError> {
    let bos = ids
        .bos
        .filter(|_| add_bos)
        .map(|id| (tokens[id as usize].clone(), id));
    let eos = ids
        .eos
        .filter(|_| add_eos)
        .map(|id| (tokens[id as usize].clone(), id));
    if bos.is_none() && eos.is_none() {
        return Ok(());
    }
    let piece = |name: &str| name.to_owned();
    let mut single = Vec::new();
    let mut pair = Vec::new();
    if let Some((text, _)) = &bos {
        single.push(piece(text));
        pair.push(piece(text));
    }
    single.push(piece("$A"));
    pair.push(piece("$A"));
    if let Some((text, _)) = &eos {
        single.push(piece(text));
        pair.push(piece(text));
    }
    if let Some((text, _)) = &bos {
        pair.push(format!("{text}:1"));
    }
    pair.push(piece("$B:1"));
    if let Some((text, _)) = &eos {
        pair.push(format!("{text}:1"));
    }

    let build = |pieces: Vec<String>| {
        Template::try_from(pieces)
            .map_err(|e| TokenizerError::Build(format!("post-processor: {e}")))
    };
    let special_tokens: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
    let processor = TemplateProcessing::builder()
        .single(build(single)?)
        .pair(build(pair)?)
        .special_tokens(special_tokens)
        .build()
        .map_err(|e| TokenizerError::Build(format!("post-processor: {e}")))?;
    tokenizer.with_post_processor(Some(processor));
    Ok(())
}

/// Typed reads of GGUF metadata that name the key in every error.
pub(crate) struct Meta<'a>(pub &'a HashMap<String, Value>);

impl<'a> Meta<'a> {
    fn invalid(key: &str, message: impl Into<String>) -> TokenizerError {
        TokenizerError::InvalidMetadata {
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn required(&self, key: &str) -> Result<&'a Value, TokenizerError> {
        self.0
            .get(key)
            .ok_or_else(|| TokenizerError::MissingMetadata {
                key: key.to_owned(),
            })
    }

    /// A required string.
    pub fn string(&self, key: &str) -> Result<&'a str, TokenizerError> {
        as_string(key, self.required(key)?)
    }

    /// An optional string.
    pub fn opt_string(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        self.0.get(key).map(|v| as_string(key, v)).transpose()
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        self.0
            .get(key)
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                other => Err(Self::invalid(
                    key,
                    format!("expected a bool, found {other:?}"),
                )),
            })
            .transpose()
    }

    /// An optional integer of any width.
    pub fn opt_int(&self, key: &str) -> Result<Option<i64>, TokenizerError> {
        self.0.get(key).map(|v| as_int(key, v)).transpose()
    }

    /// An optional floating-point number (integers are accepted too).
    pub fn opt_float(&self, key: &str) -> Result<Option<f64>, TokenizerError> {
        self.0
            .get(key)
            .map(|v| match v {
                Value::F32(x) => Ok(f64::from(*x)),
                Value::F64(x) => Ok(*x),
                other => as_int(key, other).map(|i| i as f64),
            })
            .transpose()
    }

    /// An optional token id, checked to lie below `n_tokens`.
    pub fn opt_token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>, TokenizerError> {
        let Some(id) = self.opt_int(key)? else {
            return Ok(None);
        };
        match u32::try_from(id) {
            Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
            _ => Err(Self::invalid(
                key,
                format!("id {id} is outside the vocabulary of {n_tokens} tokens"),
            )),
        }
    }

    /// A required array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<String>, TokenizerError> {
        let Value::Array(values) = self.required(key)? else {
            return Err(Self::invalid(key, "expected an array of strings"));
        };
        values
            .iter()
            .map(|v| as_string(key, v).map(str::to_owned))
            .collect()
    }

    /// An optional array of integers.
    pub fn opt_ints(&self, key: &str) -> Result<Option<Vec<i64>>, TokenizerError> {
        let Some(value) = self.0.get(key) else {
            return Ok(None);
        };
        let Value::Array(values) = value else {
            return Err(Self::invalid(key, "expected an array of integers"));
        };
        values
            .iter()
            .map(|v| as_int(key, v))
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

fn as_string<'v>(key: &str, value: &'v Value) -> Result<&'v str, TokenizerError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(Meta::invalid(
            key,
            format!("expected a string, found {:?}", other.value_type()),
        )),
    }
}

fn as_int(key: &str, value: &Value) -> Result<i64, TokenizerError> {
    let int = match *value {
        Value::U8(v) => i64::from(v),
        Value::I8(v) => i64::from(v),
        Value::U16(v) => i64::from(v),
        Value::I16(v) => i64::from(v),
        Value::U32(v) => i64::from(v),
        Value::I32(v) => i64::from(v),
        Value::I64(v) => v,
        Value::U64(v) => i64::try_from(v).map_err(|_| Meta::invalid(key, "integer too large"))?,
        ref other => {
            return Err(Meta::invalid(
                key,
                format!("expected an integer, found {:?}", other.value_type()),
            ));
        }
    };
    Ok(int)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(entries: Vec<(&str, Value)>) -> HashMap<String, Value> {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    fn strings(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::String((*s).to_owned()))
                .collect(),
        )
    }

    /// A byte-level vocabulary of a few tokens: `h`, `i`, `hi`, `Ġ`, `Ġhi`, and a
    /// control token `<|end|>`.
    fn tiny_metadata(pre: &str) -> Vec<(&'static str, Value)> {
        vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            (
                "tokenizer.ggml.tokens",
                strings(&["<|end|>", "h", "i", "hi", "Ġ", "Ġhi", "1", "11"]),
            ),
            ("tokenizer.ggml.merges", strings(&["h i", "Ġ hi", "1 1"])),
            (
                "tokenizer.ggml.token_type",
                Value::Array([3, 1, 1, 1, 1, 1, 1, 1].map(Value::I32).to_vec()),
            ),
            ("tokenizer.ggml.eos_token_id", Value::U32(0)),
        ]
    }

    #[test]
    fn tiny_vocabulary_merges_and_matches_control_tokens() {
        let built = build(&metadata(tiny_metadata("gpt2"))).unwrap();
        let ids = built
            .tokenizer
            .encode_fast("hi hi<|end|>", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, vec![3, 5, 0]);
        assert_eq!(built.eos_token_id, Some(0));
        assert_eq!(built.special.eos.as_deref(), Some("<|end|>"));
        assert!(!built.add_bos_token);
        let text = built.tokenizer.decode(&ids, true).unwrap();
        assert_eq!(text, "hi hi");
    }

    #[test]
    fn smollm_pre_tokenizer_splits_every_digit() {
        let gpt2 = build(&metadata(tiny_metadata("gpt2"))).unwrap();
        let smollm = build(&metadata(tiny_metadata("smollm"))).unwrap();
        let ids = |b: &GgufTokenizer| {
            b.tokenizer
                .encode_fast("11", false)
                .unwrap()
                .get_ids()
                .to_vec()
        };
        assert_eq!(ids(&gpt2), vec![7]);
        assert_eq!(ids(&smollm), vec![6, 6]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error_listing_known_names() {
        let err = build(&metadata(tiny_metadata("mystery-bpe")))
            .err()
            .unwrap();
        let message = err.to_string();
        assert!(
            message.contains("mystery-bpe") && message.contains("llama-bpe"),
            "{message}"
        );
    }

    #[test]
    fn sentencepiece_gguf_is_reported_as_unsupported() {
        let mut entries = tiny_metadata("gpt2");
        entries[0].1 = Value::String("llama".into());
        let err = build(&metadata(entries)).err().unwrap();
        assert!(
            matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "llama"),
            "{err}"
        );
    }

    #[test]
    fn special_id_outside_the_vocabulary_is_rejected() {
        let mut entries = tiny_metadata("gpt2");
        entries.push(("tokenizer.ggml.bos_token_id", Value::U32(99)));
        let err = build(&metadata(entries)).err().unwrap();
        assert!(
            err.to_string().contains("tokenizer.ggml.bos_token_id"),
            "{err}"
        );
    }

    #[test]
    fn add_bos_token_prepends_the_bos() {
        let mut entries = tiny_metadata("gpt2");
        entries.push(("tokenizer.ggml.bos_token_id", Value::U32(0)));
        entries.push(("tokenizer.ggml.add_bos_token", Value::Bool(true)));
        let built = build(&metadata(entries)).unwrap();
        let ids = built
            .tokenizer
            .encode_fast("hi", true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, vec![0, 3]);
        assert!(built.add_bos_token);
    }

    #[test]
    fn malformed_merge_is_rejected_with_its_index() {
        let mut entries = tiny_metadata("gpt2");
        entries[3].1 = strings(&["h i", "nospace"]);
        let err = build(&metadata(entries)).err().unwrap();
        assert!(err.to_string().contains("merge 1"), "{err}");
    }
}
