//! One pre-norm decoder layer, shared by Qwen2 and Llama: RMSNorm, q/k/v projections
//! (optionally biased), rope, KV write and paged attention, output projection, residual;
//! RMSNorm, SiLU-gated MLP, residual. Every op works on the whole flattened batch at
//! once: projections are one matmul over all sequences' new tokens.

use arbor_kernels::{PagedAttentionMeta, paged_attention, write_kv};
use candle_core::{Result, Tensor};

use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::linear::{Linear, RmsNorm};
use crate::rope::Rope;
use crate::weights::WeightSource;

/// What every layer shares within one forward pass.
pub(crate) struct PassContext<'a> {
    pub rope: &'a Rope,
    /// `[n_tokens, 1, head_dim / 2]` in the model's dtype.
    pub cos: Tensor,
    /// `[n_tokens, 1, head_dim / 2]` in the model's dtype.
    pub sin: Tensor,
    pub meta: PagedAttentionMeta,
    /// `1 / sqrt(head_dim)`.
    pub scale: f32,
}

/// The weights of one layer.
#[derive(Debug, Clone)]
pub(crate) struct DecoderLayer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl DecoderLayer {
    /// Reads layer `layer_idx` of `config` from `source`.
    pub fn load(
        source: &mut dyn WeightSource,
        config: &ModelConfig,
        layer_idx: usize,
    ) -> std::result::Result<Self, LoadError> {
        let p = format!("model.layers.{layer_idx}");
        let hidden = config.hidden_size;
        let q_width = config.n_heads * config.head_dim;
        let kv_width = config.n_kv_heads * config.head_dim;
        let inner = config.intermediate_size;
        let eps = config.rms_norm_eps;
        let qkv_bias = config.qkv_bias;
        let mlp_bias = config.mlp_bias;
        Ok(Self {
            attn_norm: RmsNorm::new(
                source.tensor(&format!("{p}.input_layernorm.weight"), &[hidden])?,
                eps,
            ),
            q: source.linear(&format!("{p}.self_attn.q_proj"), q_width, hidden, qkv_bias)?,
            k: source.linear(&format!("{p}.self_attn.k_proj"), kv_width, hidden, qkv_bias)?,
            v: source.linear(&format!("{p}.self_attn.v_proj"), kv_width, hidden, qkv_bias)?,
            o: source.linear(
                &format!("{p}.self_attn.o_proj"),
                hidden,
                q_width,
                config.o_bias,
            )?,
            mlp_norm: RmsNorm::new(
                source.tensor(&format!("{p}.post_attention_layernorm.weight"), &[hidden])?,
                eps,
            ),
            gate: source.linear(&format!("{p}.mlp.gate_proj"), inner, hidden, mlp_bias)?,
            up: source.linear(&format!("{p}.mlp.up_proj"), inner, hidden, mlp_bias)?,
            down: source.linear(&format!("{p}.mlp.down_proj"), hidden, inner, mlp_bias)?,
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
        })
    }

    /// Runs the layer on `x` (`[n_tokens, hidden]`), writing the new tokens' K/V into
    /// `k_cache`/`v_cache` at the slots of `ctx.meta`.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &PassContext<'_>,
        k_cache: &Tensor,
        v_cache: &Tensor,
    ) -> Result<Tensor> {
        let n_tokens = x.dim(0)?;
        let h = self.attn_norm.forward(x)?;
        let q = self
            .q
            .forward(&h)?
            .reshape((n_tokens, self.n_heads, self.head_dim))?;
        let k = self
            .k
            .forward(&h)?
            .reshape((n_tokens, self.n_kv_heads, self.head_dim))?;
        let v = self
            .v
            .forward(&h)?
            .reshape((n_tokens, self.n_kv_heads, self.head_dim))?;
        let q = ctx.rope.apply(&q, &ctx.cos, &ctx.sin)?;
        let k = ctx.rope.apply(&k, &ctx.cos, &ctx.sin)?;

        write_kv(k_cache, &k, ctx.meta.slots())?;
        write_kv(v_cache, &v, ctx.meta.slots())?;
        let attn = paged_attention(&q, k_cache, v_cache, &ctx.meta, ctx.scale)?;
        let attn = attn.reshape((n_tokens, self.n_heads * self.head_dim))?;
        let x = (x + self.o.forward(&attn)?)?;

        let h = self.mlp_norm.forward(&x)?;
        let gated = (self.gate.forward(&h)?.silu()? * self.up.forward(&h)?)?;
        x + self.down.forward(&gated)?
    }
}
