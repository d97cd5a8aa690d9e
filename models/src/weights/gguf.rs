//! llama.cpp GGUF files of the `llama` and `qwen2` architectures: the config comes from
//! the file's metadata, the tensors from its data section.
//!
//! Matrices stay quantized by default ([`WeightMode::Quantized`], multiplied with
//! Candle's `QMatMul` on f32 activations) or are dequantized once at load
//! ([`WeightMode::Dequantized`]). llama.cpp's converter permutes the q/k rows of Llama
//! checkpoints for its adjacent-pair rope, so Llama GGUF models rotate with
//! [`RopeStyle::Interleaved`]; Qwen2 files keep the Hugging Face row order and rotate
//! with [`RopeStyle::Half`]. The q·k products, and so the logits, are the same either way.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::{WeightSource, plain_error, tensor_error};
use crate::config::{Architecture, ModelConfig, RopeScaling};
use crate::error::LoadError;
use crate::linear::{Embedding, Linear};
use crate::rope::RopeStyle;

/// How GGUF weights are held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMode {
    /// Quantized matrices stay quantized (compute in f32); the smallest and, on CPU,
    /// fastest choice. Logits drift slightly from the dequantized model.
    Quantized,
    /// Every tensor is dequantized to this dtype (f32, bf16 or f16) at load.
    Dequantized(DType),
}

/// An opened GGUF file: its config, rope layout and tensors.
pub(crate) struct GgufWeights {
    path: PathBuf,
    tensors: HashMap<String, Arc<QTensor>>,
    mode: WeightMode,
    device: Device,
}

/// Reads `path`: config from metadata, all tensors into memory on `device`.
pub(crate) fn open(
    path: &Path,
    mode: WeightMode,
    device: &Device,
) -> Result<(ModelConfig, RopeStyle, GgufWeights), LoadError> {
    let io_error = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let content = Content::read(&mut file).map_err(|e| LoadError::Format {
        path: path.to_owned(),
        message: format!("not a readable GGUF file: {}", plain_error(e)),
    })?;
    let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let tensor = content
            .tensor(&mut file, name, device)
            .map_err(tensor_error(path, name))?;
        tensors.insert(name.clone(), Arc::new(tensor));
    }
    let weights = GgufWeights {
        path: path.to_owned(),
        tensors,
        mode,
        device: device.clone(),
    };
    let (config, style) = weights.config(&content.metadata)?;
    Ok((config, style, weights))
}

impl GgufWeights {
    /// The model config from `{arch}.*` metadata and the tensors present.
    fn config(&self, meta: &HashMap<String, Value>) -> Result<(ModelConfig, RopeStyle), LoadError> {
        let arch = match meta.get("general.architecture") {
            Some(Value::String(arch)) => arch.as_str(),
            _ => "<none>",
        };
        let (architecture, style) = match arch {
            "llama" => (Architecture::Llama, RopeStyle::Interleaved),
            "qwen2" => (Architecture::Qwen2, RopeStyle::Half),
            other => {
                return Err(LoadError::UnsupportedArchitecture {
                    path: self.path.clone(),
                    architecture: other.to_owned(),
                });
            }
        };
        let number = |key: &str| meta.get(&format!("{arch}.{key}")).and_then(as_f64);
        let required = |key: &str| {
            number(key).ok_or_else(|| {
                LoadError::config(&self.path, format!("metadata `{arch}.{key}` is missing"))
            })
        };

        let hidden_size = required("embedding_length")? as usize;
        let n_heads = required("attention.head_count")? as usize;
        let embed = self.get("token_embd.weight")?;
        let head_dim = number("attention.key_length")
            .map(|v| v as usize)
            .unwrap_or(hidden_size / n_heads.max(1));
        let config = ModelConfig {
            architecture,
            vocab_size: embed.shape().dims()[0],
            hidden_size,
            intermediate_size: required("feed_forward_length")? as usize,
            n_layers: required("block_count")? as usize,
            n_heads,
            n_kv_heads: number("attention.head_count_kv").unwrap_or(n_heads as f64) as usize,
            head_dim,
            max_position_embeddings: number("context_length").unwrap_or(4096.0) as usize,
            rms_norm_eps: required("attention.layer_norm_rms_epsilon")?,
            rope_theta: number("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: self.rope_scaling(meta, arch)?,
            tie_word_embeddings: !self.tensors.contains_key("output.weight"),
            qkv_bias: self.tensors.contains_key("blk.0.attn_q.bias"),
            o_bias: self.tensors.contains_key("blk.0.attn_output.bias"),
            mlp_bias: false,
            checkpoint_dtype: None,
        };
        config.validate(&self.path)?;
        Ok((config, style))
    }

    /// Llama 3.1 scaling as the `rope_freqs.weight` divisors, or linear scaling from
    /// metadata.
    fn rope_scaling(
        &self,
        meta: &HashMap<String, Value>,
        arch: &str,
    ) -> Result<Option<RopeScaling>, LoadError> {
        if let Some(freqs) = self.tensors.get("rope_freqs.weight") {
            let factors = freqs
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(tensor_error(&self.path, "rope_freqs.weight"))?;
            return Ok(Some(RopeScaling::Factors(factors)));
        }
        let kind = match meta.get(&format!("{arch}.rope.scaling.type")) {
            Some(Value::String(kind)) => kind.as_str(),
            _ => "none",
        };
        match kind {
            "none" => Ok(None),
            "linear" => {
                let factor = meta
                    .get(&format!("{arch}.rope.scaling.factor"))
                    .and_then(as_f64)
                    .unwrap_or(1.0);
                Ok(Some(RopeScaling::Linear { factor }))
            }
            other => Err(LoadError::UnsupportedFeature {
                path: self.path.clone(),
                feature: format!("GGUF rope scaling type `{other}`"),
            }),
        }
    }

    /// The tensor with GGUF name `name`.
    fn get(&self, name: &str) -> Result<&Arc<QTensor>, LoadError> {
        self.tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })
    }

    /// The tensor for Hugging Face name `hf_name`, checked against `shape`.
    fn checked(
        &self,
        hf_name: &str,
        shape: &[usize],
    ) -> Result<(String, &Arc<QTensor>), LoadError> {
        let name = gguf_name(hf_name);
        let tensor = self.get(&name)?;
        if tensor.shape().dims() != shape {
            return Err(LoadError::ShapeMismatch {
                path: self.path.clone(),
                name,
                expected: shape.to_vec(),
                found: tensor.shape().dims().to_vec(),
            });
        }
        Ok((name, tensor))
    }

    /// Dtype of dense tensors: f32 beside quantized matrices, else the requested one.
    fn dense_dtype(&self) -> DType {
        match self.mode {
            WeightMode::Quantized => DType::F32,
            WeightMode::Dequantized(dtype) => dtype,
        }
    }

    fn dequantize(&self, name: &str, tensor: &QTensor) -> Result<Tensor, LoadError> {
        tensor
            .dequantize(&self.device)
            .and_then(|t| t.to_dtype(self.dense_dtype()))
            .map_err(tensor_error(&self.path, name))
    }
}

impl WeightSource for GgufWeights {
    fn path(&self) -> &Path {
        &self.path
    }

    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let (name, tensor) = self.checked(name, shape)?;
        self.dequantize(&name, tensor)
    }

    fn linear(
        &mut self,
        prefix: &str,
        n_out: usize,
        n_in: usize,
        bias: bool,
    ) -> Result<Linear, LoadError> {
        let bias = match bias {
            true => Some(self.tensor(&format!("{prefix}.bias"), &[n_out])?),
            false => None,
        };
        let (name, weight) = self.checked(&format!("{prefix}.weight"), &[n_out, n_in])?;
        match self.mode {
            WeightMode::Quantized => {
                Linear::quantized(weight.clone(), bias).map_err(tensor_error(&self.path, &name))
            }
            WeightMode::Dequantized(_) => Ok(Linear::dense(self.dequantize(&name, weight)?, bias)),
        }
    }

    fn embedding(
        &mut self,
        prefix: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Embedding, LoadError> {
        let (name, table) = self.checked(&format!("{prefix}.weight"), &[vocab, hidden])?;
        let block_quantized = !matches!(
            table.dtype(),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        );
        match (self.mode, block_quantized) {
            (WeightMode::Quantized, true) => Ok(Embedding::Quantized(table.clone())),
            _ => Ok(Embedding::Dense(self.dequantize(&name, table)?)),
        }
    }
}

/// The GGUF name of a Hugging Face tensor name (unknown names pass through).
fn gguf_name(hf_name: &str) -> String {
    const TOP_LEVEL: [(&str, &str); 3] = [
        ("model.embed_tokens.", "token_embd."),
        ("model.norm.", "output_norm."),
        ("lm_head.", "output."),
    ];
    const IN_LAYER: [(&str, &str); 9] = [
        ("input_layernorm.", "attn_norm."),
        ("self_attn.q_proj.", "attn_q."),
        ("self_attn.k_proj.", "attn_k."),
        ("self_attn.v_proj.", "attn_v."),
        ("self_attn.o_proj.", "attn_output."),
        ("post_attention_layernorm.", "ffn_norm."),
        ("mlp.gate_proj.", "ffn_gate."),
        ("mlp.up_proj.", "ffn_up."),
        ("mlp.down_proj.", "ffn_down."),
    ];
    for (hf, gguf) in TOP_LEVEL {
        if let Some(rest) = hf_name.strip_prefix(hf) {
            return format!("{gguf}{rest}");
        }
    }
    if let Some(rest) = hf_name.strip_prefix("model.layers.")
        && let Some((layer, part)) = rest.split_once('.')
    {
        for (hf, gguf) in IN_LAYER {
            if let Some(suffix) = part.strip_prefix(hf) {
                return format!("blk.{layer}.{gguf}{suffix}");
            }
        }
    }
    hf_name.to_owned()
}

/// A numeric metadata value as f64.
fn as_f64(value: &Value) -> Option<f64> {
    Some(match value {
        Value::U8(v) => *v as f64,
        Value::I8(v) => *v as f64,
        Value::U16(v) => *v as f64,
        Value::I16(v) => *v as f64,
        Value::U32(v) => *v as f64,
        Value::I32(v) => *v as f64,
        Value::U64(v) => *v as f64,
        Value::I64(v) => *v as f64,
        Value::F32(v) => *v as f64,
        Value::F64(v) => *v,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_names_map_to_llama_cpp_names() {
        assert_eq!(gguf_name("model.embed_tokens.weight"), "token_embd.weight");
        assert_eq!(
            gguf_name("model.layers.12.self_attn.k_proj.bias"),
            "blk.12.attn_k.bias"
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight"),
            "blk.0.ffn_down.weight"
        );
        assert_eq!(gguf_name("lm_head.weight"), "output.weight");
        assert_eq!(gguf_name("model.norm.weight"), "output_norm.weight");
    }

    #[test]
    fn a_file_that_is_not_gguf_is_a_format_error_naming_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = open(&path, WeightMode::Quantized, &Device::Cpu)
            .err()
            .unwrap();
        assert!(matches!(err, LoadError::Format { .. }), "{err}");
        assert!(err.to_string().contains("Cargo.toml"), "{err}");
    }
}
