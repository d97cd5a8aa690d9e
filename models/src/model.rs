//! [`Model`]: a loaded Qwen2 or Llama decoder and its forward pass over a paged KV
//! cache, the one entry point the engine calls each step.

use std::path::Path;

use arbor_kernels::PagedAttentionMeta;
use candle_core::{DType, Device, Result, Tensor};
use tracing::info;

use crate::batch::ForwardBatch;
use crate::config::ModelConfig;
use crate::decoder::{DecoderLayer, PassContext};
use crate::error::LoadError;
use crate::kv_cache::KvCache;
use crate::linear::{Embedding, Linear, RmsNorm};
use crate::rope::{Rope, RopeStyle};
use crate::step_inputs::{StepInputs, spans};
use crate::weights::gguf::{self, WeightMode};
use crate::weights::safetensors::SafetensorsWeights;
use crate::weights::{WeightSource, tensor_error};

/// A decoder ready to run: weights, rope, and the dtype activations are computed in.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    rope: Rope,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    dtype: DType,
    device: Device,
}

impl Model {
    /// Loads a Hugging Face checkpoint directory (`config.json` plus `model.safetensors`
    /// or a sharded index), converting every weight to `dtype` (f32, bf16 or f16).
    ///
    /// Fails with a [`LoadError`] naming the file (and tensor) on an unsupported
    /// architecture, a missing tensor, a shape mismatch or an unsupported tensor dtype.
    pub fn load_safetensors_dir(
        dir: &Path,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, LoadError> {
        check_dtype(dtype)?;
        let config = ModelConfig::from_json_file(&dir.join("config.json"))?;
        let mut source = SafetensorsWeights::open_dir(dir, dtype, device)?;
        let model = Self::build(config, RopeStyle::Half, &mut source, dtype, device)?;
        info!(path = %dir.display(), ?dtype, n_layers = model.config.n_layers, "model loaded");
        Ok(model)
    }

    /// Loads a GGUF file of the `llama` or `qwen2` architecture; `mode` keeps matrices
    /// quantized (activations in f32) or dequantizes everything to one dtype.
    pub fn load_gguf(
        path: &Path,
        mode: WeightMode,
        device: &Device,
    ) -> std::result::Result<Self, LoadError> {
        let dtype = match mode {
            WeightMode::Quantized => DType::F32,
            WeightMode::Dequantized(dtype) => dtype,
        };
        check_dtype(dtype)?;
        let (config, style, mut source) = gguf::open(path, mode, device)?;
        let model = Self::build(config, style, &mut source, dtype, device)?;
        info!(path = %path.display(), ?mode, n_layers = model.config.n_layers, "model loaded");
        Ok(model)
    }

    /// Runs one forward pass over `batch`: writes every new token's K/V into `kv` at the
    /// slots its sequence's page table gives, attends causally over each sequence's
    /// whole context, and returns f32 logits `[batch.n_logit_rows(), vocab_size]`, rows
    /// in sequence order (per [`crate::LogitsWanted`]).
    ///
    /// Fails, before touching `kv`, if the batch is inconsistent (token count, page
    /// tables too short or outside the pool, token ids outside the vocabulary) or `kv`
    /// was built for another model shape.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvCache) -> Result<Tensor> {
        kv.check_matches(&self.config)?;
        let inputs = StepInputs::new(batch, &self.config, kv)?;
        if batch.token_ids.is_empty() {
            return Tensor::zeros((0, self.config.vocab_size), DType::F32, &self.device);
        }

        let meta = PagedAttentionMeta::new(&spans(batch), kv.page_size(), &self.device)?;
        let (cos, sin) = self
            .rope
            .cos_sin(&inputs.positions, self.dtype, &self.device)?;
        let ctx = PassContext {
            rope: &self.rope,
            cos,
            sin,
            meta,
            scale: 1.0 / (self.config.head_dim as f32).sqrt(),
        };
        let ids = Tensor::new(batch.token_ids.as_slice(), &self.device)?;
        let mut x = self.embed.forward(&ids, self.dtype)?;
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let (k_cache, v_cache) = kv.layer(layer_idx);
            x = layer.forward(&x, &ctx, k_cache, v_cache)?;
        }

        // Norm and LM head are per row, so only the rows that are sampled pay for them.
        let x = match &inputs.logit_rows {
            Some(rows) if rows.is_empty() => {
                return Tensor::zeros((0, self.config.vocab_size), DType::F32, &self.device);
            }
            Some(rows) => x.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?,
            None => x,
        };
        let x = self.norm.forward(&x)?;
        self.lm_head.forward(&x)?.to_dtype(DType::F32)
    }

    /// Allocates a KV cache for this model on its device (see [`KvCache::new`]).
    pub fn new_kv_cache(&self, n_pages: usize, page_size: usize, dtype: DType) -> Result<KvCache> {
        KvCache::new(&self.config, n_pages, page_size, dtype, &self.device)
    }

    /// The architecture and sizes of the model.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype activations are computed in (f32 for quantized GGUF weights).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The model's rotary embedding.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    fn build(
        config: ModelConfig,
        style: RopeStyle,
        source: &mut dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, LoadError> {
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embed = source.embedding("model.embed_tokens", vocab, hidden)?;
        let layers = (0..config.n_layers)
            .map(|layer_idx| DecoderLayer::load(source, &config, layer_idx))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let norm = RmsNorm::new(
            source.tensor("model.norm.weight", &[hidden])?,
            config.rms_norm_eps,
        );
        let lm_head = match config.tie_word_embeddings {
            true => tied_head(&embed, source.path())?,
            false => source.linear("lm_head", vocab, hidden, false)?,
        };
        Ok(Self {
            rope: Rope::new(&config, style),
            config,
            embed,
            layers,
            norm,
            lm_head,
            dtype,
            device: device.clone(),
        })
    }
}

/// The LM head that shares the embedding matrix.
fn tied_head(embed: &Embedding, path: &Path) -> std::result::Result<Linear, LoadError> {
    match embed {
        Embedding::Dense(table) => Ok(Linear::dense(table.clone(), None)),
        Embedding::Quantized(table) => Linear::quantized(table.clone(), None)
            .map_err(tensor_error(path, "model.embed_tokens.weight")),
    }
}

fn check_dtype(dtype: DType) -> std::result::Result<(), LoadError> {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => Ok(()),
        other => Err(LoadError::UnsupportedDtype(other)),
    }
}
