//! The model's own generation defaults: which token ids end a sequence, and the sampling
//! values its authors recommend.
//!
//! Read from a Hugging Face `generation_config.json` (falling back to `config.json` and
//! the tokenizer, as `transformers` does when the file is missing) or from GGUF metadata.
//! The engine stops a sequence on any id in [`GenerationConfig::eos_token_ids`]; request
//! parameters override the sampling values.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use serde_json::Value as Json;

use crate::tokenizer::Tokenizer;
use crate::tokenizer::gguf::Meta;

/// Why a generation config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GenerationConfigError {
    /// A file exists but could not be read or is not JSON.
    #[error("could not read {}: {message}", .path.display())]
    Read { path: PathBuf, message: String },
    /// A field holds a value of the wrong type.
    #[error("`{field}` in the generation config is invalid: {message}")]
    InvalidField { field: String, message: String },
    /// GGUF metadata holds a value of the wrong type.
    #[error("{0}")]
    Metadata(String),
}

/// Stop ids and sampling defaults of one model. Every field is optional except the stop
/// ids, which may still be empty for a model that defines none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// Ids that end a sequence, in the order the config lists them, without repeats.
    pub eos_token_ids: Vec<u32>,
    /// Padding id.
    pub pad_token_id: Option<u32>,
    /// Whether the authors sample (`true`) or decode greedily (`false`) by default.
    pub do_sample: Option<bool>,
    /// Recommended temperature (DeepSeek-R1-Distill: 0.6).
    pub temperature: Option<f32>,
    /// Recommended nucleus mass (DeepSeek-R1-Distill: 0.95).
    pub top_p: Option<f32>,
    /// Recommended top-k cut, in tokens.
    pub top_k: Option<u32>,
    /// Recommended min-p cut.
    pub min_p: Option<f32>,
    /// Recommended repetition penalty (1.0 means none).
    pub repetition_penalty: Option<f32>,
    /// Default limit on generated tokens.
    pub max_new_tokens: Option<u32>,
}

impl GenerationConfig {
    /// Parses the fields of a `generation_config.json` (or the id fields of a
    /// `config.json`). `eos_token_id` may be one id, a list of ids, or `null`.
    pub fn from_json(json: &Json) -> Result<Self, GenerationConfigError> {
        Ok(Self {
            bos_token_id: opt_id(json, "bos_token_id")?,
            eos_token_ids: ids(json, "eos_token_id")?,
            pad_token_id: opt_id(json, "pad_token_id")?,
            do_sample: opt_field(json, "do_sample", Json::as_bool)?,
            temperature: opt_field(json, "temperature", as_f32)?,
            top_p: opt_field(json, "top_p", as_f32)?,
            top_k: opt_field(json, "top_k", as_u32)?,
            min_p: opt_field(json, "min_p", as_f32)?,
            repetition_penalty: opt_field(json, "repetition_penalty", as_f32)?,
            max_new_tokens: opt_field(json, "max_new_tokens", as_u32)?,
        })
    }

    /// Reads a Hugging Face model directory: `generation_config.json` if present, with
    /// missing ids taken from `config.json`, then from the tokenizer's special tokens.
    /// The tokenizer's EOS id is always a stop id as well.
    pub fn from_hf_dir(
        dir: &Path,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Self, GenerationConfigError> {
        let generation = read_optional_json(&dir.join("generation_config.json"))?;
        let model = read_optional_json(&dir.join("config.json"))?;
        let mut config = match &generation {
            Some(json) => Self::from_json(json)?,
            None => Self::default(),
        };

        if let Some(model) = &model {
            let fallback = Self::from_json(model)?;
            if config.eos_token_ids.is_empty() {
                config.eos_token_ids = fallback.eos_token_ids;
            }
            config.bos_token_id = config.bos_token_id.or(fallback.bos_token_id);
            config.pad_token_id = config.pad_token_id.or(fallback.pad_token_id);
        }
        if let Some(tokenizer) = tokenizer {
            config.add_tokenizer_ids(tokenizer);
        }
        Ok(config)
    }

    /// Reads GGUF metadata: stop ids from `tokenizer.ggml.eos_token_id` plus the
    /// end-of-turn (`eot`) and end-of-message (`eom`) ids where present, and sampling
    /// values from `general.sampling.*`.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, GenerationConfigError> {
        Self::from_gguf_metadata(&content.metadata)
    }

    /// As [`GenerationConfig::from_gguf`], from the metadata map alone.
    pub fn from_gguf_metadata(
        metadata: &HashMap<String, gguf_file::Value>,
    ) -> Result<Self, GenerationConfigError> {
        let meta = Meta(metadata);
        let err =
            |e: crate::tokenizer::TokenizerError| GenerationConfigError::Metadata(e.to_string());
        let id = |key: &str| meta.opt_token_id(key, u32::MAX as usize).map_err(err);
        let float = |key: &str| {
            Ok::<_, GenerationConfigError>(meta.opt_float(key).map_err(err)?.map(|x| x as f32))
        };
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = id(key)?
                && !eos_token_ids.contains(&id)
            {
                eos_token_ids.push(id);
            }
        }
        let top_k = meta.opt_int("general.sampling.top_k").map_err(err)?;
        Ok(Self {
            bos_token_id: id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids,
            pad_token_id: id("tokenizer.ggml.padding_token_id")?,
            do_sample: None,
            temperature: float("general.sampling.temp")?,
            top_p: float("general.sampling.top_p")?,
            top_k: top_k.and_then(|k| u32::try_from(k).ok()),
            min_p: float("general.sampling.min_p")?,
            repetition_penalty: float("general.sampling.penalty_repeat")?,
            max_new_tokens: None,
        })
    }

    /// Whether `id` ends a sequence.
    pub fn is_stop_token(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// Fills the BOS and padding ids from the tokenizer where the config has none, and
    /// adds the tokenizer's EOS to the stop ids.
    pub fn add_tokenizer_ids(&mut self, tokenizer: &Tokenizer) {
        if let Some(eos) = tokenizer.eos_token_id()
            && !self.eos_token_ids.contains(&eos)
        {
            self.eos_token_ids.push(eos);
        }
        self.bos_token_id = self.bos_token_id.or(tokenizer.bos_token_id());
        self.pad_token_id = self.pad_token_id.or(tokenizer.pad_token_id());
    }
}

fn read_optional_json(path: &Path) -> Result<Option<Json>, GenerationConfigError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(GenerationConfigError::Read {
                path: path.into(),
                message: e.to_string(),
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| GenerationConfigError::Read {
            path: path.into(),
            message: e.to_string(),
        })
}

fn invalid(field: &str, message: impl Into<String>) -> GenerationConfigError {
    GenerationConfigError::InvalidField {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A field converted by `convert`; absent and `null` both give `None`.
fn opt_field<T>(
    json: &Json,
    field: &str,
    convert: impl Fn(&Json) -> Option<T>,
) -> Result<Option<T>, GenerationConfigError> {
    match json.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(value) => convert(value)
            .map(Some)
            .ok_or_else(|| invalid(field, format!("unexpected value {value}"))),
    }
}

fn opt_id(json: &Json, field: &str) -> Result<Option<u32>, GenerationConfigError> {
    opt_field(json, field, as_u32)
}

/// One id or a list of ids, deduplicated in order.
fn ids(json: &Json, field: &str) -> Result<Vec<u32>, GenerationConfigError> {
    let list = match json.get(field) {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| {
                as_u32(item).ok_or_else(|| invalid(field, format!("{item} is not a token id")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(value) => vec![
            as_u32(value).ok_or_else(|| invalid(field, format!("{value} is not a token id")))?,
        ],
    };
    let mut unique = Vec::with_capacity(list.len());
    for id in list {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    Ok(unique)
}

fn as_u32(value: &Json) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}

fn as_f32(value: &Json) -> Option<f32> {
    value.as_f64().map(|v| v as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_eos_id_becomes_a_one_element_list() {
        let config = GenerationConfig::from_json(&json!({"eos_token_id": 151643})).unwrap();
        assert_eq!(config.eos_token_ids, vec![151643]);
        assert!(config.is_stop_token(151643));
        assert!(!config.is_stop_token(151644));
    }

    #[test]
    fn eos_id_list_keeps_order_and_drops_repeats() {
        let json = json!({"eos_token_id": [128001, 128008, 128009, 128001]});
        let config = GenerationConfig::from_json(&json).unwrap();
        assert_eq!(config.eos_token_ids, vec![128001, 128008, 128009]);
    }

    #[test]
    fn sampling_defaults_are_read_and_null_means_absent() {
        let json = json!({
            "bos_token_id": 151646, "eos_token_id": 151643, "do_sample": true,
            "temperature": 0.6, "top_p": 0.95, "top_k": null, "pad_token_id": null,
        });
        let config = GenerationConfig::from_json(&json).unwrap();
        assert_eq!(config.bos_token_id, Some(151646));
        assert_eq!(config.do_sample, Some(true));
        assert_eq!(config.temperature, Some(0.6));
        assert_eq!(config.top_p, Some(0.95));
        assert_eq!(config.top_k, None);
        assert_eq!(config.pad_token_id, None);
    }

    #[test]
    fn negative_or_textual_ids_are_rejected_naming_the_field() {
        for bad in [json!({"eos_token_id": -1}), json!({"eos_token_id": ["2"]})] {
            let err = GenerationConfig::from_json(&bad).unwrap_err();
            assert!(err.to_string().contains("eos_token_id"), "{err}");
        }
        let err = GenerationConfig::from_json(&json!({"temperature": "hot"})).unwrap_err();
        assert!(err.to_string().contains("temperature"), "{err}");
    }

    #[test]
    fn hf_dir_reads_the_tiny_fixtures_generation_config() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen2");
        let config = GenerationConfig::from_hf_dir(&dir, None).unwrap();
        assert_eq!(config.eos_token_ids, vec![2]);
        assert_eq!(config.bos_token_id, Some(1));
        assert_eq!(config.temperature, None);
    }

    #[test]
    fn hf_dir_without_generation_config_falls_back_to_config_json() {
        let dir = std::env::temp_dir().join(format!("arbor-gen-fallback-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("config.json"),
            r#"{"eos_token_id": [7, 8], "bos_token_id": 1}"#,
        )
        .unwrap();
        let config = GenerationConfig::from_hf_dir(&dir, None).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(config.eos_token_ids, vec![7, 8]);
        assert_eq!(config.bos_token_id, Some(1));
    }

    #[test]
    fn gguf_stop_ids_include_end_of_turn() {
        use gguf_file::Value;
        let metadata: HashMap<String, Value> = [
            ("tokenizer.ggml.eos_token_id", Value::U32(128001)),
            ("tokenizer.ggml.eot_token_id", Value::U32(128009)),
            ("tokenizer.ggml.bos_token_id", Value::U32(128000)),
            ("general.sampling.temp", Value::F32(0.6)),
            ("general.sampling.top_k", Value::I32(40)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let config = GenerationConfig::from_gguf_metadata(&metadata).unwrap();
        assert_eq!(config.eos_token_ids, vec![128001, 128009]);
        assert_eq!(config.bos_token_id, Some(128000));
        assert_eq!(config.temperature, Some(0.6));
        assert_eq!(config.top_k, Some(40));
        assert_eq!(config.top_p, None);
    }
}
