//! What the memory planner needs to know about a model on disk and a device, read
//! without loading any weights: the model's shape and weight storage from `config.json`
//! or a GGUF header, the KV cache's dtype, and a CUDA device's memory.
//!
//! The storage follows `Engine::load`: a safetensors directory loads in f32 for
//! `--dtype auto`, a GGUF file keeps its quantized matrices (f32 activations) unless a
//! float dtype is asked for; the KV cache follows [`kv_cache_dtype`].

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use candle_core::{DType, Device};

use crate::api::ModelDType;
use crate::plan::{ModelShape, WeightFormat};

/// A model's shape and how its weights and KV cache will be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFootprint {
    /// The decoder's sizes.
    pub shape: ModelShape,
    /// Weight storage.
    pub weights: WeightFormat,
    /// Storage type of the KV cache.
    pub kv_dtype: DType,
}

impl ModelFootprint {
    /// Reads a Hugging Face model directory's `config.json`, or a `.gguf` file's header,
    /// for a model loaded with weights in `dtype` and its KV cache in `kv_dtype`
    /// (resolved by [`kv_cache_dtype`] for a GPU when `on_gpu`). Errors name the file.
    pub fn from_path(
        path: &Path,
        dtype: ModelDType,
        kv_dtype: ModelDType,
        on_gpu: bool,
    ) -> anyhow::Result<Self> {
        let (shape, weights) = match path.is_dir() {
            true => from_hf_dir(path, dtype)?,
            false => from_gguf_file(path, dtype)?,
        };
        let quantized = !matches!(weights, WeightFormat::Dense { .. });
        Ok(ModelFootprint {
            shape,
            weights,
            kv_dtype: kv_cache_dtype(dtype, kv_dtype, quantized, on_gpu),
        })
    }

    /// Bytes per KV element.
    pub fn kv_dtype_bytes(&self) -> u64 {
        self.kv_dtype.size_in_bytes() as u64
    }
}

/// The KV cache's storage dtype for weights loaded in `weights` (`quantized` when GGUF
/// matrices stay quantized) and a `--kv-cache-dtype` of `kv`.
///
/// An explicit `kv` wins. `Auto` follows the activations (the weights' float dtype; f32
/// for safetensors in `auto` and for quantized matrices), except for quantized weights
/// on a GPU, which get bf16: their f32 activations would double the KV's bytes for
/// precision the quantized weights do not have, and on a 12 GB card the KV is what
/// bounds the batch. On the CPU, memory is rarely the limit and f32 skips a conversion.
pub fn kv_cache_dtype(weights: ModelDType, kv: ModelDType, quantized: bool, on_gpu: bool) -> DType {
    match (kv, weights) {
        (ModelDType::F32, _) => DType::F32,
        (ModelDType::F16, _) => DType::F16,
        (ModelDType::Bf16, _) => DType::BF16,
        (ModelDType::Auto, ModelDType::F16) => DType::F16,
        (ModelDType::Auto, ModelDType::Bf16) => DType::BF16,
        (ModelDType::Auto, _) if quantized && on_gpu => DType::BF16,
        (ModelDType::Auto, _) => DType::F32,
    }
}

/// Free and total bytes of a CUDA device; `None` on the CPU (or if the driver does not
/// say).
pub fn device_memory(device: &Device) -> Option<(u64, u64)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
            Some((free as u64, total as u64))
        }
        _ => None,
    }
}

fn from_hf_dir(dir: &Path, dtype: ModelDType) -> anyhow::Result<(ModelShape, WeightFormat)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let shape = ModelShape::from_hf_config(&config).with_context(|| path.display().to_string())?;
    let bytes_per_param = float_bytes(dtype).unwrap_or(4);
    Ok((shape, WeightFormat::Dense { bytes_per_param }))
}

fn from_gguf_file(path: &Path, dtype: ModelDType) -> anyhow::Result<(ModelShape, WeightFormat)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = Content::read(&mut BufReader::new(file))
        .with_context(|| format!("cannot read the GGUF header of {}", path.display()))?;
    let shape = gguf_shape(&content).with_context(|| path.display().to_string())?;
    let weights = match float_bytes(dtype) {
        Some(bytes_per_param) => WeightFormat::Dense { bytes_per_param },
        None => WeightFormat::GgufFile {
            bytes: gguf_tensor_bytes(&content),
        },
    };
    Ok((shape, weights))
}

/// Bytes per element of a float dtype; `None` for `Auto`.
fn float_bytes(dtype: ModelDType) -> Option<u64> {
    match dtype {
        ModelDType::Auto => None,
        ModelDType::F32 => Some(4),
        ModelDType::F16 | ModelDType::Bf16 => Some(2),
    }
}

/// The shape from `{arch}.*` metadata and the tensors present, as the GGUF loader of
/// `arbor-models` reads it.
fn gguf_shape(content: &Content) -> anyhow::Result<ModelShape> {
    let arch = match content.metadata.get("general.architecture") {
        Some(GgufValue::String(arch)) => arch.clone(),
        _ => bail!("metadata `general.architecture` is missing"),
    };
    let number = |key: &str| -> Option<usize> {
        let value = content.metadata.get(&format!("{arch}.{key}"))?;
        let signed = || value.to_i32().ok().and_then(|v| u64::try_from(v).ok());
        value.to_u64().ok().or_else(signed).map(|v| v as usize)
    };
    let required =
        |key: &str| number(key).with_context(|| format!("metadata `{arch}.{key}` is missing"));
    let embed = content
        .tensor_infos
        .get("token_embd.weight")
        .context("tensor `token_embd.weight` is missing")?;

    let hidden_size = required("embedding_length")?;
    let n_heads = required("attention.head_count")?;
    Ok(ModelShape {
        n_layers: required("block_count")?,
        hidden_size,
        intermediate_size: required("feed_forward_length")?,
        n_heads,
        n_kv_heads: number("attention.head_count_kv").unwrap_or(n_heads),
        head_dim: number("attention.key_length").unwrap_or(hidden_size / n_heads.max(1)),
        vocab_size: embed.shape.dims()[0],
        tied_embeddings: !content.tensor_infos.contains_key("output.weight"),
        qkv_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
    })
}

/// Sum of the sizes of a GGUF file's tensors, as stored.
fn gguf_tensor_bytes(content: &Content) -> u64 {
    content
        .tensor_infos
        .values()
        .map(|info| {
            let dtype = info.ggml_dtype;
            (info.shape.elem_count() / dtype.block_size() * dtype.type_size()) as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name)
    }

    #[test]
    fn a_safetensors_directory_loads_in_f32_unless_a_dtype_is_given() {
        let dir = fixture("tiny-qwen2");
        let auto = ModelFootprint::from_path(&dir, ModelDType::Auto, ModelDType::Auto, true);
        let auto = auto.unwrap();
        assert_eq!(auto.weights, WeightFormat::Dense { bytes_per_param: 4 });
        assert_eq!(auto.kv_dtype_bytes(), 4);
        assert!(auto.shape.qkv_bias);
        let bf16 = ModelFootprint::from_path(&dir, ModelDType::Bf16, ModelDType::Auto, true);
        assert_eq!(bf16.unwrap().kv_dtype_bytes(), 2);
        let f16_kv = ModelFootprint::from_path(&dir, ModelDType::Auto, ModelDType::F16, false);
        assert_eq!(f16_kv.unwrap().kv_dtype, DType::F16);
    }

    #[test]
    fn kv_cache_dtype_follows_activations_except_quantized_weights_on_a_gpu() {
        use ModelDType::*;
        // An explicit KV dtype wins everywhere.
        for (kv, want) in [(F32, DType::F32), (F16, DType::F16), (Bf16, DType::BF16)] {
            for weights in [Auto, F32, F16, Bf16] {
                for quantized in [false, true] {
                    for on_gpu in [false, true] {
                        assert_eq!(kv_cache_dtype(weights, kv, quantized, on_gpu), want);
                    }
                }
            }
        }
        // Auto: the weights' float dtype, f32 for safetensors in auto...
        assert_eq!(kv_cache_dtype(Bf16, Auto, false, true), DType::BF16);
        assert_eq!(kv_cache_dtype(F16, Auto, false, false), DType::F16);
        assert_eq!(kv_cache_dtype(Auto, Auto, false, true), DType::F32);
        // ...and for quantized matrices: f32 on the CPU, bf16 on a GPU.
        assert_eq!(kv_cache_dtype(Auto, Auto, true, false), DType::F32);
        assert_eq!(kv_cache_dtype(Auto, Auto, true, true), DType::BF16);
    }

    #[test]
    fn a_gguf_header_gives_the_shape_and_the_stored_tensor_bytes() {
        let Ok(path) = std::env::var("ARBOR_SMOLLM2_GGUF") else {
            println!(
                "skipped: set ARBOR_SMOLLM2_GGUF to the SmolLM2 GGUF (scripts/fetch-smollm2.sh)"
            );
            return;
        };
        let footprint =
            ModelFootprint::from_path(Path::new(&path), ModelDType::Auto, ModelDType::Auto, false)
                .unwrap();
        assert_eq!(footprint.kv_dtype, DType::F32);
        let on_gpu =
            ModelFootprint::from_path(Path::new(&path), ModelDType::Auto, ModelDType::Auto, true)
                .unwrap();
        assert_eq!(on_gpu.kv_dtype, DType::BF16);
        // SmolLM2-135M: 30 layers, hidden 576, 9 heads of 64, 3 KV heads, tied embeddings.
        let shape = &footprint.shape;
        assert_eq!(
            (shape.n_layers, shape.hidden_size, shape.n_heads),
            (30, 576, 9)
        );
        assert_eq!(
            (shape.n_kv_heads, shape.head_dim, shape.vocab_size),
            (3, 64, 49152)
        );
        assert!(shape.tied_embeddings);
        let WeightFormat::GgufFile { bytes } = footprint.weights else {
            panic!("quantized GGUF expected, got {:?}", footprint.weights);
        };
        // The tensors are nearly all of the file (the rest is the header and tokenizer).
        let file_bytes = std::fs::metadata(&path).unwrap().len();
        assert!(
            bytes <= file_bytes && bytes as f64 > 0.9 * file_bytes as f64,
            "{bytes} of {file_bytes}"
        );
    }
}
