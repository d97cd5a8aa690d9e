//! The weight-holding layers of the decoder: projections that are either dense Candle
//! tensors or GGUF-quantized matrices, the token embedding, and RMSNorm.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

/// A projection `y = x W^T + b` over rows of `x` (`[n_tokens, in]` to `[n_tokens, out]`).
#[derive(Debug, Clone)]
pub enum Linear {
    /// A dense weight `[out, in]` in the model's dtype.
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// A GGUF-quantized weight; activations are f32, the bias is f32.
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
}

impl Linear {
    /// A dense projection.
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::Dense { weight, bias }
    }

    /// A quantized projection (Candle dequantizes f32/f16 GGUF tensors itself).
    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self::Quantized {
            weight: QMatMul::from_arc(weight)?,
            bias,
        })
    }

    /// Applies the projection to `x` (`[n_tokens, in]`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, bias) = match self {
            Self::Dense { weight, bias } => (x.matmul(&weight.t()?)?, bias),
            Self::Quantized { weight, bias } => (quantized_forward(weight, x)?, bias),
        };
        match bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

/// `x W^T` with a quantized `W`: Arbor's CPU kernel for the formats where Candle's
/// per-row integer dot products make every sequence of a batch cost as much as the
/// first (see `arbor_kernels::quantized_matmul`), Candle's `QMatMul` otherwise.
fn quantized_forward(weight: &QMatMul, x: &Tensor) -> Result<Tensor> {
    if let QMatMul::QTensor(w) = weight
        && let Some(y) = arbor_kernels::quantized_matmul_t(x, w)?
    {
        return Ok(y);
    }
    weight.forward(x)
}

/// The token embedding: a dense `[vocab, hidden]` table, or a quantized one whose rows
/// are dequantized on lookup (GGUF files often store it as Q8_0 or Q6_K).
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Rows in the model's dtype.
    Dense(Tensor),
    /// Quantized rows, looked up as f32.
    Quantized(Arc<QTensor>),
}

impl Embedding {
    /// Rows for `ids` (`[n_tokens]` u32), `[n_tokens, hidden]` in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let rows = match self {
            Self::Dense(table) => table.index_select(ids, 0)?,
            Self::Quantized(table) => table.embedding(ids)?,
        };
        rows.to_dtype(dtype)
    }
}

/// Root-mean-square normalisation with a learned scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// A norm with scale `weight` (`[hidden]`, in the model's dtype).
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            eps: eps as f32,
        }
    }

    /// Normalises each row of `x` (`[n_tokens, hidden]`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}
