//! Memory planning for a GPU: the bytes a model's weights, the activation workspace of
//! one forward pass and the paged KV cache take on a device, computed from the model's
//! configuration before anything is loaded, and the number of KV pages that fit.
//!
//! `arbor serve --device cuda` plans first and refuses to start when the model does not
//! fit, naming the sizes; the KV pool then gets exactly the planned pages. On the CPU the
//! engine keeps sizing the pool from `--kv-cache-memory` alone.
//!
//! A [`KvBudget::Fraction`] here means what vLLM's `--gpu-memory-utilization` means:
//! everything Arbor puts on the device (weights, workspace, KV) stays within that
//! fraction of the device's memory, and the KV cache gets what is left.
//! [`KvBudget::Bytes`] and [`KvBudget::Pages`] ask for a KV cache of that size, which must
//! fit beside the weights and workspace.

use serde_json::Value;
use thiserror::Error;

use crate::api::KvBudget;

/// Bytes the CUDA context, cuBLAS/cuBLASLt workspaces, Candle's loaded kernel modules
/// and allocator slack take besides tensors.
// Limitation: a fixed guess (a CUDA context alone is ~0.5 GiB on an H100), not measured;
// a profiling forward pass at start-up, as vLLM runs, would replace it.
pub const RUNTIME_RESERVE_BYTES: u64 = 1 << 30;

/// Bytes of one f32 element (GGUF activations, logits).
const F32_BYTES: u64 = 4;

/// The sizes of a decoder that memory depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelShape {
    /// Decoder layers.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's gate/up projections.
    pub intermediate_size: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Rows of the embedding and of the LM head.
    pub vocab_size: usize,
    /// Whether the LM head reuses the embedding matrix (no separate weights).
    pub tied_embeddings: bool,
    /// Whether q/k/v projections carry biases (Qwen2 always; Llama if
    /// `attention_bias`).
    pub qkv_bias: bool,
}

/// How the weights are stored on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightFormat {
    /// Every parameter in one float type (bf16/f16: 2, f32: 4); activations in the same.
    Dense {
        /// Bytes per parameter.
        bytes_per_param: u64,
    },
    /// llama.cpp Q8_0 (8.5 bits per weight) for every matrix, f32 vectors; f32
    /// activations, as Candle's quantized matmuls take.
    GgufQ8_0,
    /// llama.cpp's Q4_K_M recipe: Q4_K matrices, Q6_K for the LM head and for attn_v and
    /// ffn_down in about half of the layers; f32 vectors and activations.
    GgufQ4KM,
    /// A quantized GGUF file whose tensor bytes were read from its header; f32
    /// activations.
    GgufFile {
        /// Sum of the file's tensor sizes.
        bytes: u64,
    },
}

/// What to plan for: a model, its storage, a device and the engine's batch limits.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanRequest {
    /// The model's sizes.
    pub shape: ModelShape,
    /// How its weights are stored.
    pub weights: WeightFormat,
    /// Bytes per element of the K and V cache (bf16: 2, f32: 4).
    pub kv_dtype_bytes: u64,
    /// Memory of the device in bytes (its total; the CUDA context is in the reserve).
    pub device_memory_bytes: u64,
    /// How much of it the KV cache gets (see the module docs).
    pub kv_budget: KvBudget,
    /// Token slots per KV page.
    pub page_size: usize,
    /// Most new tokens in one forward pass (sizes the activation workspace).
    pub max_batched_tokens: usize,
    /// Most sequences in one batch (sizes the logits: one row per sequence).
    pub max_running_requests: usize,
}

/// Where the device's memory goes, in bytes; `kv_bytes` is whole pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Model weights.
    pub weights_bytes: u64,
    /// Activations of the largest forward pass, logits and [`RUNTIME_RESERVE_BYTES`].
    pub workspace_bytes: u64,
    /// The KV pool: `n_pages * page_size * kv_bytes_per_token`.
    pub kv_bytes: u64,
    /// Token slots in the KV pool (whole pages).
    pub kv_tokens: usize,
    /// Pages in the KV pool.
    pub n_pages: usize,
    /// K and V bytes of one token over all layers.
    pub kv_bytes_per_token: u64,
    /// `weights_bytes + workspace_bytes + kv_bytes`.
    pub total_bytes: u64,
    /// The device memory planned against.
    pub device_memory_bytes: u64,
}

/// Why a plan could not be made.
#[derive(Debug, Error, PartialEq)]
pub enum PlanError {
    /// A `config.json` field is missing or not a positive integer.
    #[error("model config field `{field}` is missing or not a positive integer")]
    ConfigField {
        /// The field's name.
        field: &'static str,
    },
    /// A request field is out of range.
    #[error("invalid memory plan request: {0}")]
    InvalidRequest(String),
    /// Weights and workspace alone exceed the usable memory.
    #[error(
        "model does not fit: weights need {weights}, the activation workspace {workspace}, \
         but only {usable} of the device's {device} may be used"
    )]
    WeightsDoNotFit {
        /// Weights.
        weights: Gib,
        /// Activation workspace and runtime reserve.
        workspace: Gib,
        /// The budget's share of the device.
        usable: Gib,
        /// The device's memory.
        device: Gib,
    },
    /// Weights, workspace and the requested KV cache exceed the device.
    #[error(
        "model and kv cache do not fit: weights {weights} + workspace {workspace} + kv cache \
         {kv} = {total}, more than the device's {device}"
    )]
    KvDoesNotFit {
        /// Weights.
        weights: Gib,
        /// Activation workspace and runtime reserve.
        workspace: Gib,
        /// The KV cache asked for.
        kv: Gib,
        /// Their sum.
        total: Gib,
        /// The device's memory.
        device: Gib,
    },
    /// What is left for the KV cache holds less than one page.
    #[error(
        "no room for the kv cache: weights {weights} + workspace {workspace} leave {left} of \
         the usable {usable}, less than one page of {page} ({page_size} tokens)"
    )]
    NoRoomForKv {
        /// Weights.
        weights: Gib,
        /// Activation workspace and runtime reserve.
        workspace: Gib,
        /// What is left.
        left: Gib,
        /// The budget's share of the device.
        usable: Gib,
        /// One page of K and V.
        page: Gib,
        /// Tokens per page.
        page_size: usize,
    },
}

/// A byte count shown in GiB with two decimals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gib(pub u64);

impl std::fmt::Display for Gib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} GiB", self.0 as f64 / (1u64 << 30) as f64)
    }
}

impl ModelShape {
    /// Reads a Hugging Face `config.json` (Qwen2 or Llama fields). `num_key_value_heads`
    /// defaults to `num_attention_heads`, `head_dim` to `hidden_size /
    /// num_attention_heads`, `tie_word_embeddings` to false; q/k/v biases are on for
    /// `model_type: qwen2` and otherwise follow `attention_bias`.
    pub fn from_hf_config(config: &Value) -> Result<Self, PlanError> {
        let field = |name: &'static str| -> Result<usize, PlanError> {
            config
                .get(name)
                .and_then(Value::as_u64)
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or(PlanError::ConfigField { field: name })
        };
        let optional = |name: &'static str| match config.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => field(name).map(Some),
        };
        let flag = |name: &str| config.get(name).and_then(Value::as_bool).unwrap_or(false);

        let hidden_size = field("hidden_size")?;
        let n_heads = field("num_attention_heads")?;
        let is_qwen2 = config.get("model_type").and_then(Value::as_str) == Some("qwen2");
        Ok(Self {
            n_layers: field("num_hidden_layers")?,
            hidden_size,
            intermediate_size: field("intermediate_size")?,
            n_heads,
            n_kv_heads: optional("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim: optional("head_dim")?.unwrap_or(hidden_size / n_heads),
            vocab_size: field("vocab_size")?,
            tied_embeddings: flag("tie_word_embeddings"),
            qkv_bias: is_qwen2 || flag("attention_bias"),
        })
    }

    /// Parameters of the model: matrices, biases and norm scales.
    pub fn n_params(&self) -> u64 {
        self.matrices().iter().map(|m| m.n_params()).sum::<u64>() + self.n_vector_params()
    }

    /// K and V bytes of one token over all layers.
    pub fn kv_bytes_per_token(&self, kv_dtype_bytes: u64) -> u64 {
        2 * (self.n_layers * self.n_kv_heads * self.head_dim) as u64 * kv_dtype_bytes
    }

    /// Bytes of the weights stored as `format`.
    pub fn weights_bytes(&self, format: WeightFormat) -> u64 {
        let vectors = self.n_vector_params();
        match format {
            WeightFormat::Dense { bytes_per_param } => self.n_params() * bytes_per_param,
            WeightFormat::GgufFile { bytes } => bytes,
            WeightFormat::GgufQ8_0 => {
                let matrices = self
                    .matrices()
                    .iter()
                    .map(|m| m.bytes(GgmlBlock::Q8_0))
                    .sum::<u64>();
                matrices + vectors * F32_BYTES
            }
            WeightFormat::GgufQ4KM => {
                let matrices = self
                    .matrices()
                    .iter()
                    .map(|m| m.q4_k_m_bytes(self.n_layers))
                    .sum::<u64>();
                matrices + vectors * F32_BYTES
            }
        }
    }

    /// The weight matrices, each with how many layers hold one.
    fn matrices(&self) -> Vec<Matrix> {
        let (h, q, kv) = (
            self.hidden_size,
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        );
        let i = self.intermediate_size;
        let per_layer = |kind, rows, cols| Matrix {
            kind,
            rows,
            cols,
            per_layer: true,
        };
        let mut matrices = vec![
            Matrix {
                kind: MatrixKind::Embedding,
                rows: self.vocab_size,
                cols: h,
                per_layer: false,
            },
            per_layer(MatrixKind::Other, q, h),
            per_layer(MatrixKind::Other, kv, h),
            per_layer(MatrixKind::AttnV, kv, h),
            per_layer(MatrixKind::Other, h, q),
            per_layer(MatrixKind::Other, i, h),
            per_layer(MatrixKind::Other, i, h),
            per_layer(MatrixKind::FfnDown, h, i),
        ];
        if !self.tied_embeddings {
            matrices.push(Matrix {
                kind: MatrixKind::LmHead,
                rows: self.vocab_size,
                cols: h,
                per_layer: false,
            });
        }
        for m in &mut matrices {
            m.rows *= if m.per_layer { self.n_layers } else { 1 };
        }
        matrices
    }

    /// Parameters outside matrices: two norms per layer, the final norm, q/k/v biases.
    fn n_vector_params(&self) -> u64 {
        let biases = match self.qkv_bias {
            true => (self.n_heads + 2 * self.n_kv_heads) * self.head_dim,
            false => 0,
        };
        (self.n_layers * (2 * self.hidden_size + biases) + self.hidden_size) as u64
    }
}

impl PlanRequest {
    /// Plans the device's memory: weights, workspace, then as many whole KV pages as the
    /// budget allows. Refuses, naming the sizes, when weights and workspace do not fit,
    /// when a byte or page budget does not fit beside them, or when not one page does.
    pub fn plan(&self) -> Result<MemoryPlan, PlanError> {
        self.validate()?;
        let weights = self.shape.weights_bytes(self.weights);
        let workspace = self.workspace_bytes();
        let per_token = self.shape.kv_bytes_per_token(self.kv_dtype_bytes);
        let page_bytes = per_token * self.page_size as u64;
        let device = self.device_memory_bytes;

        let n_pages = match self.kv_budget {
            KvBudget::Fraction(fraction) => {
                let usable = (device as f64 * fraction as f64) as u64;
                let Some(left) = usable.checked_sub(weights + workspace) else {
                    return Err(PlanError::WeightsDoNotFit {
                        weights: Gib(weights),
                        workspace: Gib(workspace),
                        usable: Gib(usable),
                        device: Gib(device),
                    });
                };
                if left < page_bytes {
                    return Err(PlanError::NoRoomForKv {
                        weights: Gib(weights),
                        workspace: Gib(workspace),
                        left: Gib(left),
                        usable: Gib(usable),
                        page: Gib(page_bytes),
                        page_size: self.page_size,
                    });
                }
                (left / page_bytes) as usize
            }
            KvBudget::Bytes(bytes) => self.fixed_pages(weights, workspace, bytes / page_bytes)?,
            KvBudget::Pages(n_pages) => self.fixed_pages(weights, workspace, n_pages as u64)?,
        };
        let kv_bytes = n_pages as u64 * page_bytes;
        Ok(MemoryPlan {
            weights_bytes: weights,
            workspace_bytes: workspace,
            kv_bytes,
            kv_tokens: n_pages * self.page_size,
            n_pages,
            kv_bytes_per_token: per_token,
            total_bytes: weights + workspace + kv_bytes,
            device_memory_bytes: device,
        })
    }

    /// Bytes of one forward pass's largest live tensors, its logits and the runtime
    /// reserve.
    ///
    /// Per batched token, at the peak of a layer: the residual, the normed input and the
    /// attention output (3 x hidden), the MLP's gate, up, activated gate and product (4 x
    /// intermediate), and q/k/v before and after rotary (2 x (heads + 2 kv heads) x
    /// head_dim), in the activation dtype; GGUF matmuls add a Q8_1 copy of their input.
    /// Logits: one row per running sequence, in the activation dtype and then f32.
    // Limitation: an estimate from the model code, not a measured peak; Candle has no
    // caching allocator, so fragmentation is covered only by the reserve.
    pub fn workspace_bytes(&self) -> u64 {
        let s = &self.shape;
        let act_bytes = match self.weights {
            WeightFormat::Dense { bytes_per_param } => bytes_per_param,
            _ => F32_BYTES,
        };
        let per_token_elems = 3 * s.hidden_size
            + 4 * s.intermediate_size
            + 2 * (s.n_heads + 2 * s.n_kv_heads) * s.head_dim;
        let q8_1_bytes = match self.weights {
            WeightFormat::Dense { .. } => 0,
            _ => (s.hidden_size.max(s.intermediate_size) as u64).div_ceil(32) * 36,
        };
        let per_token = per_token_elems as u64 * act_bytes + q8_1_bytes;
        let activations = self.max_batched_tokens as u64 * per_token;
        let logit_rows = self.max_running_requests.min(self.max_batched_tokens) as u64;
        let logits = logit_rows * s.vocab_size as u64 * (act_bytes + F32_BYTES);
        activations + logits + RUNTIME_RESERVE_BYTES
    }

    /// `n_pages` if they fit beside weights and workspace, else the refusal.
    fn fixed_pages(&self, weights: u64, workspace: u64, n_pages: u64) -> Result<usize, PlanError> {
        let page_bytes = self.shape.kv_bytes_per_token(self.kv_dtype_bytes) * self.page_size as u64;
        let kv = n_pages * page_bytes;
        let total = weights + workspace + kv;
        if n_pages == 0 {
            return Err(PlanError::InvalidRequest(format!(
                "the kv cache budget is smaller than one page ({})",
                Gib(page_bytes)
            )));
        }
        if total > self.device_memory_bytes {
            return Err(PlanError::KvDoesNotFit {
                weights: Gib(weights),
                workspace: Gib(workspace),
                kv: Gib(kv),
                total: Gib(total),
                device: Gib(self.device_memory_bytes),
            });
        }
        Ok(n_pages as usize)
    }

    fn validate(&self) -> Result<(), PlanError> {
        let positive = [
            ("page_size", self.page_size),
            ("max_batched_tokens", self.max_batched_tokens),
            ("max_running_requests", self.max_running_requests),
            ("kv_dtype_bytes", self.kv_dtype_bytes as usize),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(PlanError::InvalidRequest(format!(
                "{name} must be at least 1"
            )));
        }
        match self.kv_budget {
            KvBudget::Fraction(f) if !(f > 0.0 && f <= 1.0) => Err(PlanError::InvalidRequest(
                format!("the memory fraction must be in (0, 1], got {f}"),
            )),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weights {} + workspace {} + kv cache {} ({} tokens in {} pages) = {} of {}",
            Gib(self.weights_bytes),
            Gib(self.workspace_bytes),
            Gib(self.kv_bytes),
            self.kv_tokens,
            self.n_pages,
            Gib(self.total_bytes),
            Gib(self.device_memory_bytes)
        )
    }
}

/// Which llama.cpp quantization rules apply to a matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatrixKind {
    Embedding,
    LmHead,
    AttnV,
    FfnDown,
    Other,
}

/// A weight matrix; for per-layer matrices, `rows` covers every layer.
#[derive(Clone, Copy, Debug)]
struct Matrix {
    kind: MatrixKind,
    rows: usize,
    cols: usize,
    per_layer: bool,
}

/// A llama.cpp block format: elements per block and bytes per block.
#[derive(Clone, Copy, Debug)]
enum GgmlBlock {
    Q8_0,
    Q4K,
    Q6K,
}

impl GgmlBlock {
    fn bytes(self, n_elems: u64) -> u64 {
        let (block, bytes) = match self {
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        };
        n_elems.div_ceil(block) * bytes
    }
}

impl Matrix {
    fn n_params(&self) -> u64 {
        self.rows as u64 * self.cols as u64
    }

    fn bytes(&self, block: GgmlBlock) -> u64 {
        block.bytes(self.n_params())
    }

    /// Bytes under llama.cpp's Q4_K_M recipe: the LM head in Q6_K; attn_v and ffn_down
    /// in Q6_K in the first and last eighth of the layers and every third between;
    /// everything else Q4_K.
    fn q4_k_m_bytes(&self, n_layers: usize) -> u64 {
        match self.kind {
            MatrixKind::LmHead => self.bytes(GgmlBlock::Q6K),
            MatrixKind::Embedding | MatrixKind::Other => self.bytes(GgmlBlock::Q4K),
            MatrixKind::AttnV | MatrixKind::FfnDown => {
                let n_more = (0..n_layers)
                    .filter(|&i| uses_more_bits(i, n_layers))
                    .count() as u64;
                let per_layer = self.n_params() / n_layers as u64;
                GgmlBlock::Q6K.bytes(per_layer) * n_more
                    + GgmlBlock::Q4K.bytes(per_layer) * (n_layers as u64 - n_more)
            }
        }
    }
}

/// llama.cpp's choice of layers that get more bits in the `_M` mixes.
fn uses_more_bits(layer: usize, n_layers: usize) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
