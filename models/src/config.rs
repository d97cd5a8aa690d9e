//! The shape and numerics of a Qwen2 or Llama decoder, read from a Hugging Face
//! `config.json` (classic fields or the `transformers` 5 layout) or, by
//! [`crate::weights::gguf`], from GGUF metadata. The engine reads it for memory planning;
//! the decoder and the rope tables read it to build themselves.

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde::Deserialize;
use serde_json::Value;

use crate::error::LoadError;

/// Which decoder family a checkpoint belongs to; they differ only in biases and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `Qwen2ForCausalLM`: biases on the q/k/v projections.
    Qwen2,
    /// `LlamaForCausalLM`: no biases unless `attention_bias`/`mlp_bias` say so.
    Llama,
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: linear`: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// `rope_type: llama3` (Llama 3.1): low frequencies divided by `factor`, high ones
    /// kept, a smooth blend between, as `transformers` computes it.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors, as llama.cpp stores Llama 3.1 scaling in the GGUF tensor
    /// `rope_freqs.weight` (one entry per rotated pair).
    Factors(Vec<f32>),
}

/// Everything about a checkpoint's architecture the decoder and the memory planner need.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Decoder family.
    pub architecture: Architecture,
    /// Rows of the embedding and of the LM head, in tokens.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's inner layer.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// Key/value heads per layer (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Longest context the checkpoint was trained for, in tokens.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// Long-context rescaling of the rotary frequencies, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have biases (always for Qwen2).
    pub qkv_bias: bool,
    /// Whether the attention output projection has a bias (Llama `attention_bias`).
    pub o_bias: bool,
    /// Whether the MLP projections have biases (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// The dtype the checkpoint was saved in, if the config says.
    pub checkpoint_dtype: Option<DType>,
}

impl ModelConfig {
    /// Reads and parses a `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses `config.json` text; `path` only names the file in errors.
    pub fn from_json_str(json: &str, path: &Path) -> Result<Self, LoadError> {
        let raw: RawConfig = serde_json::from_str(json)
            .map_err(|e| LoadError::config(path, format!("not a valid config.json: {e}")))?;
        raw.into_config(path)
    }

    /// Query heads sharing one KV head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Checks the invariants the decoder relies on.
    pub(crate) fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(LoadError::config(path, format!("{name} must be positive")));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(LoadError::config(
                path,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(LoadError::config(path, "head_dim must be even for rotary"));
        }
        Ok(())
    }
}

/// The subset of `config.json` both layouts share, with the rope fields left raw.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    #[serde(default)]
    use_sliding_window: bool,
}

impl RawConfig {
    fn into_config(self, path: &Path) -> Result<ModelConfig, LoadError> {
        let architecture = self.architecture(path)?;
        if let Some(act) = self.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(unsupported(path, format!("hidden_act `{act}` (only silu)")));
        }
        if self.use_sliding_window {
            return Err(unsupported(path, "use_sliding_window: true"));
        }
        let (rope_theta, rope_scaling) = self.rope(path)?;
        let attention_bias = self.attention_bias.unwrap_or(false);
        let dtype_name = self.dtype.as_deref().or(self.torch_dtype.as_deref());
        let config = ModelConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: architecture == Architecture::Qwen2 || attention_bias,
            o_bias: architecture == Architecture::Llama && attention_bias,
            mlp_bias: architecture == Architecture::Llama && self.mlp_bias.unwrap_or(false),
            checkpoint_dtype: dtype_name.and_then(parse_dtype),
        };
        config.validate(path)?;
        Ok(config)
    }

    fn architecture(&self, path: &Path) -> Result<Architecture, LoadError> {
        let name = self
            .architectures
            .first()
            .cloned()
            .or_else(|| self.model_type.clone())
            .unwrap_or_default();
        match name.as_str() {
            "Qwen2ForCausalLM" | "qwen2" => Ok(Architecture::Qwen2),
            "LlamaForCausalLM" | "llama" => Ok(Architecture::Llama),
            _ => Err(LoadError::UnsupportedArchitecture {
                path: path.to_owned(),
                architecture: if name.is_empty() {
                    "<none>".into()
                } else {
                    name
                },
            }),
        }
    }

    /// Rope theta and scaling from either `rope_theta` + `rope_scaling` (classic) or
    /// `rope_parameters` (`transformers` 5), whichever is present.
    fn rope(&self, path: &Path) -> Result<(f64, Option<RopeScaling>), LoadError> {
        let params = self.rope_parameters.as_ref().filter(|v| !v.is_null());
        let theta = self
            .rope_theta
            .or_else(|| {
                params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let scaling = match self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            Some(scaling) => parse_rope_scaling(scaling, path)?,
            None => match params {
                Some(params) => parse_rope_scaling(params, path)?,
                None => None,
            },
        };
        Ok((theta, scaling))
    }
}

/// Reads a `rope_scaling` / `rope_parameters` object; `default` means no scaling.
fn parse_rope_scaling(value: &Value, path: &Path) -> Result<Option<RopeScaling>, LoadError> {
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let field = |name: &str| -> Result<f64, LoadError> {
        value.get(name).and_then(Value::as_f64).ok_or_else(|| {
            LoadError::config(
                path,
                format!("rope scaling `{kind}` lacks numeric `{name}`"),
            )
        })
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: field("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: field("factor")?,
            low_freq_factor: field("low_freq_factor")?,
            high_freq_factor: field("high_freq_factor")?,
            original_max_position_embeddings: field("original_max_position_embeddings")?,
        })),
        other => Err(unsupported(path, format!("rope scaling type `{other}`"))),
    }
}

/// The Candle dtype of a `torch_dtype`/`dtype` string, if it is one we know.
fn parse_dtype(name: &str) -> Option<DType> {
    match name {
        "float32" => Some(DType::F32),
        "bfloat16" => Some(DType::BF16),
        "float16" => Some(DType::F16),
        _ => None,
    }
}

fn unsupported(path: &Path, feature: impl Into<String>) -> LoadError {
    LoadError::UnsupportedFeature {
        path: PathBuf::from(path),
        feature: feature.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
            .join("config.json")
    }

    #[test]
    fn classic_qwen2_config_reads_theta_dtype_and_biases() {
        let config = ModelConfig::from_json_file(&fixture("tiny-qwen2")).unwrap();
        assert_eq!(config.architecture, Architecture::Qwen2);
        assert_eq!(
            (config.n_heads, config.n_kv_heads, config.head_dim),
            (4, 2, 32)
        );
        assert_eq!(config.rope_theta, 10_000.0);
        assert_eq!(config.rope_scaling, None);
        assert_eq!(config.checkpoint_dtype, Some(DType::BF16));
        assert!(config.qkv_bias && !config.o_bias && !config.tie_word_embeddings);
    }

    #[test]
    fn transformers5_layout_reads_rope_parameters_and_dtype() {
        let config = ModelConfig::from_json_file(&fixture("tiny-qwen2-tied")).unwrap();
        assert_eq!(config.rope_theta, 1_000_000.0);
        assert_eq!(config.rope_scaling, None);
        assert_eq!(config.checkpoint_dtype, Some(DType::F32));
        assert_eq!((config.n_layers, config.n_kv_heads), (3, 1));
        assert!(config.tie_word_embeddings);
    }

    #[test]
    fn llama31_rope_scaling_is_parsed_from_either_layout() {
        let classic = ModelConfig::from_json_file(&fixture("tiny-llama3")).unwrap();
        let expected = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        });
        assert_eq!(classic.rope_scaling, expected);
        assert!(!classic.qkv_bias);

        let new_layout = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 8,
            "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "rope_parameters": {"rope_theta": 500000.0,
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#;
        let parsed = ModelConfig::from_json_str(new_layout, Path::new("c.json")).unwrap();
        assert_eq!(parsed.rope_theta, 500_000.0);
        assert_eq!(parsed.rope_scaling, expected);
    }

    #[test]
    fn unsupported_architecture_error_names_the_file() {
        let json = r#"{"architectures": ["MistralForCausalLM"], "vocab_size": 8,
            "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2}"#;
        let err = ModelConfig::from_json_str(json, Path::new("/m/config.json")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/m/config.json"), "{message}");
        assert!(message.contains("MistralForCausalLM"), "{message}");
    }

    #[test]
    fn heads_that_do_not_group_evenly_are_rejected() {
        let json = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 8,
            "hidden_size": 12, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 3, "num_key_value_heads": 2}"#;
        let err = ModelConfig::from_json_str(json, Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("not a multiple"), "{err}");
    }
}
