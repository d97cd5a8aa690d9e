//! The Candle model behind the `ModelRunner` seam, and `Engine::load`, which turns a
//! model path into a running engine: weights (safetensors directory or GGUF file),
//! tokenizer, chat template and end-of-sequence ids from `arbor-models`, and the paged
//! KV cache sized from the engine's budget.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arbor_models::chat_template::ChatTemplate;
use arbor_models::device::DeviceSpec;
use arbor_models::generation::GenerationConfig;
use arbor_models::tokenizer::Tokenizer;
use arbor_models::{KvCache, Model, ModelSource, WeightMode};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};

use crate::api::{EngineConfig, KvBudget, LoadOptions, ModelDType, ModelDevice, ModelInfo};
use crate::core::StartOptions;
use crate::device_plan::plan_for_device;
use crate::engine::{Engine, TextAssets};
use crate::footprint::kv_cache_dtype;
use crate::runner::{ForwardBatch, Logits, ModelRunner, RunnerError, TokenDecoder};

/// An `arbor_models::Model` and its paged KV cache, run by the engine thread.
pub struct CandleRunner {
    model: Model,
    kv: Option<KvCache>,
    kv_dtype: DType,
    name: String,
    eos_token_ids: Vec<u32>,
    decoder: Option<Arc<dyn TokenDecoder>>,
}

impl CandleRunner {
    /// Wraps a loaded model, whose KV cache is stored in the model's dtype (see
    /// [`CandleRunner::with_kv_dtype`]). `tokenizer` (if any) decodes output text;
    /// `eos_token_ids` end sequences unless a request ignores them.
    pub fn new(
        model: Model,
        name: String,
        eos_token_ids: Vec<u32>,
        tokenizer: Option<Tokenizer>,
    ) -> Self {
        let decoder = tokenizer.map(|t| Arc::new(TokenizerDecoder(t)) as Arc<dyn TokenDecoder>);
        Self {
            kv_dtype: model.dtype(),
            model,
            kv: None,
            name,
            eos_token_ids,
            decoder,
        }
    }

    /// Stores the KV cache in `dtype` (f32, f16 or bf16) instead of the model's dtype;
    /// attention converts as it reads.
    pub fn with_kv_dtype(mut self, dtype: DType) -> Self {
        self.kv_dtype = dtype;
        self
    }
}

impl ModelRunner for CandleRunner {
    fn info(&self) -> ModelInfo {
        let config = self.model.config();
        ModelInfo {
            name: self.name.clone(),
            max_context_tokens: config.max_position_embeddings,
            vocab_size: config.vocab_size,
            eos_token_ids: self.eos_token_ids.clone(),
        }
    }

    fn kv_bytes_per_token(&self) -> usize {
        KvCache::bytes_per_page(self.model.config(), 1, self.kv_dtype)
    }

    fn free_memory_bytes(&self) -> Option<u64> {
        match self.model.device() {
            Device::Cpu => available_memory_bytes(),
            device => crate::footprint::device_memory(device).map(|(free, _)| free),
        }
    }

    fn allocate_kv(&mut self, n_pages: usize, page_size: usize) -> Result<(), RunnerError> {
        let kv = self
            .model
            .new_kv_cache(n_pages, page_size, self.kv_dtype)
            .map_err(|e| RunnerError(e.to_string()))?;
        self.kv = Some(kv);
        Ok(())
    }

    fn forward(&mut self, batch: &ForwardBatch) -> Result<Logits, RunnerError> {
        let kv = self
            .kv
            .as_mut()
            .ok_or_else(|| RunnerError("kv cache was never allocated".into()))?;
        let logits = self
            .model
            .forward(batch, kv)
            .map_err(|e| RunnerError(e.to_string()))?;
        let vocab_size = self.model.config().vocab_size;
        let data = logits
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| RunnerError(e.to_string()))?;
        Ok(Logits { vocab_size, data })
    }

    fn decoder(&self) -> Option<Arc<dyn TokenDecoder>> {
        self.decoder.clone()
    }
}

/// `arbor_models`' tokenizer as the engine's decoder.
struct TokenizerDecoder(Tokenizer);

impl TokenDecoder for TokenizerDecoder {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        // Decoding known ids does not fail in practice; an error shows as no text
        // rather than taking the engine thread down.
        self.0.decode(ids, skip_special_tokens).unwrap_or_default()
    }
}

/// What `load_model` found at a path.
struct Loaded {
    runner: CandleRunner,
    tokenizer: Option<Tokenizer>,
    chat_template: Option<ChatTemplate>,
}

impl Engine {
    /// Loads a model and starts an engine over it.
    ///
    /// `model` is what `arbor --model` takes (see `arbor_models::ModelSpec`): a Hugging
    /// Face model directory (`config.json`, safetensors weights, optionally
    /// `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`), a `.gguf`
    /// file (llama or qwen2 architecture; tokenizer and chat template come from its
    /// metadata), a Hugging Face repo id (downloaded into the hub cache), or `smollm2`,
    /// the demo GGUF. `ModelDType::Auto` keeps GGUF weights quantized and loads
    /// safetensors in f32; the KV cache's dtype follows `load.kv_cache_dtype`.
    ///
    /// On a GPU the memory is planned first (`arbor_engine::plan`): a model that does
    /// not fit beside its KV budget is refused before any weight is read, and the pool
    /// gets exactly the planned pages. Errors name the path and what is wrong.
    pub fn load(
        model: &str,
        load: &LoadOptions,
        mut config: EngineConfig,
    ) -> anyhow::Result<Engine> {
        let source =
            ModelSource::resolve(model).with_context(|| format!("cannot find model {model}"))?;
        let device = open_device(load.device)?;
        if let Some(plan) = plan_for_device(source.path(), load, &config, &device)? {
            config.kv_cache = KvBudget::Pages(plan.n_pages);
        }
        let quantized = matches!(source, ModelSource::Gguf(_)) && load.dtype == ModelDType::Auto;
        let kv_dtype = kv_cache_dtype(load.dtype, load.kv_cache_dtype, quantized, !device.is_cpu());
        let mut loaded = match &source {
            ModelSource::HfDir(dir) => load_dir(dir, load.dtype, &device)?,
            ModelSource::Gguf(file) => load_gguf_file(file, load.dtype, &device)?,
        };
        loaded.runner = loaded.runner.with_kv_dtype(kv_dtype);
        tracing::debug!(?kv_dtype, "kv cache dtype");
        let assets = TextAssets {
            tokenizer: loaded.tokenizer.map(Arc::new),
            chat_template: loaded.chat_template,
        };
        let engine = Engine::spawn(
            Box::new(loaded.runner),
            config,
            StartOptions::default(),
            assets,
        )
        .with_context(|| format!("cannot start the engine for {model}"))?;
        Ok(engine)
    }
}

/// Opens the device a model runs on. A CUDA device in a build without the `cuda`
/// feature, or on a machine without a usable GPU and driver, is a start-up error that
/// says which (cudarc's errors and panics are caught in `arbor_models::device`).
pub fn open_device(device: ModelDevice) -> anyhow::Result<Device> {
    let spec = match device {
        ModelDevice::Cpu => DeviceSpec::Cpu,
        ModelDevice::Cuda(ordinal) => DeviceSpec::Cuda(ordinal),
    };
    Ok(spec.open()?)
}

fn load_dir(dir: &Path, dtype: ModelDType, device: &Device) -> anyhow::Result<Loaded> {
    let dtype = match dtype {
        ModelDType::Auto | ModelDType::F32 => DType::F32,
        ModelDType::F16 => DType::F16,
        ModelDType::Bf16 => DType::BF16,
    };
    let model = Model::load_safetensors_dir(dir, dtype, device)
        .with_context(|| format!("cannot load the model in {}", dir.display()))?;
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(
            Tokenizer::from_hf_dir(dir)
                .with_context(|| format!("tokenizer of {}", dir.display()))?,
        )
    } else {
        None
    };
    let special = tokenizer
        .as_ref()
        .map(|t| t.special_tokens().clone())
        .unwrap_or_default();
    let chat_template = ChatTemplate::from_hf_dir(dir, special)
        .with_context(|| format!("chat template of {}", dir.display()))?;
    let generation = GenerationConfig::from_hf_dir(dir, tokenizer.as_ref())
        .with_context(|| format!("generation config of {}", dir.display()))?;
    let name = display_name(dir);
    let runner = CandleRunner::new(model, name, generation.eos_token_ids, tokenizer.clone());
    Ok(Loaded {
        runner,
        tokenizer,
        chat_template,
    })
}

fn load_gguf_file(path: &Path, dtype: ModelDType, device: &Device) -> anyhow::Result<Loaded> {
    let mode = match dtype {
        ModelDType::Auto => WeightMode::Quantized,
        ModelDType::F32 => WeightMode::Dequantized(DType::F32),
        ModelDType::F16 => WeightMode::Dequantized(DType::F16),
        ModelDType::Bf16 => WeightMode::Dequantized(DType::BF16),
    };
    let model = Model::load_gguf(path, mode, device)
        .with_context(|| format!("cannot load the model in {}", path.display()))?;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = gguf_file::Content::read(&mut BufReader::new(file))
        .with_context(|| format!("cannot read the GGUF header of {}", path.display()))?;
    let tokenizer = Tokenizer::from_gguf(&content)
        .with_context(|| format!("tokenizer of {}", path.display()))?;
    let chat_template = ChatTemplate::from_gguf(&content, tokenizer.special_tokens().clone())
        .with_context(|| format!("chat template of {}", path.display()))?;
    let mut generation = GenerationConfig::from_gguf(&content)
        .with_context(|| format!("generation config of {}", path.display()))?;
    generation.add_tokenizer_ids(&tokenizer);
    let name = display_name(path);
    let runner = CandleRunner::new(
        model,
        name,
        generation.eos_token_ids,
        Some(tokenizer.clone()),
    );
    Ok(Loaded {
        runner,
        tokenizer: Some(tokenizer),
        chat_template,
    })
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
