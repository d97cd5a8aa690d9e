//! Rotary position embeddings: the inverse frequencies (with Llama 3.1 and linear
//! scaling, computed the way `transformers` does), the per-token cos/sin rows of a
//! forward pass, and their application to q and k through `candle_nn`'s rope kernels.
//!
//! Positions of a batch are arbitrary (every sequence has its own offset), so each token
//! is treated as its own rope "batch" of length one: q `[n_tokens, n_heads, head_dim]`
//! is viewed as `[n_tokens, n_heads, 1, head_dim]` and cos/sin as
//! `[n_tokens, 1, head_dim / 2]`. No table is precomputed: a pass needs
//! `n_tokens * head_dim / 2` cosines, which is cheap next to one matmul.

use std::f64::consts::PI;

use candle_core::{DType, Device, Result, Tensor};

use crate::config::{ModelConfig, RopeScaling};

/// Which dimensions rotate together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face `rotate_half`: dimension `i` pairs with `i + head_dim / 2`.
    Half,
    /// Adjacent pairs `(2i, 2i + 1)`: llama.cpp's layout, whose GGUF conversion permutes
    /// the q/k rows of Llama checkpoints so that this matches `Half` on the originals.
    Interleaved,
}

/// The rotary embedding of one model.
#[derive(Clone, Debug)]
pub struct Rope {
    /// `head_dim / 2` inverse frequencies, in radians per position.
    inv_freq: Vec<f32>,
    style: RopeStyle,
}

impl Rope {
    /// The rope of `config`, rotating in `style`.
    pub fn new(config: &ModelConfig, style: RopeStyle) -> Self {
        let inv_freq =
            inverse_frequencies(config.head_dim, config.rope_theta, &config.rope_scaling);
        Self { inv_freq, style }
    }

    /// Inverse frequencies, one per rotated pair.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Cos and sin rows for `positions`, each `[n_tokens, 1, head_dim / 2]` in `dtype`.
    /// Angles are `position * inv_freq` rounded to f32, as `transformers` computes them.
    pub fn cos_sin(
        &self,
        positions: &[u32],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &pos in positions {
            for &f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), 1, half);
        let cos = Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Rotates `x` (`[n_tokens, n_heads, head_dim]`) by the rows of [`Rope::cos_sin`].
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (n_tokens, n_heads, head_dim) = x.dims3()?;
        let x = x.contiguous()?.reshape((n_tokens, n_heads, 1, head_dim))?;
        let rotated = match self.style {
            RopeStyle::Half => candle_nn::rotary_emb::rope(&x, cos, sin)?,
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
        };
        rotated.reshape((n_tokens, n_heads, head_dim))
    }
}

/// `1 / theta^(2i / head_dim)`, then the configured scaling.
fn inverse_frequencies(head_dim: usize, theta: f64, scaling: &Option<RopeScaling>) -> Vec<f32> {
    // transformers builds the exponent and the power in float32; do the same so that the
    // frequencies, and hence the angles, round identically.
    let base = theta as f32;
    let inv_freq = (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32));
    match scaling {
        None => inv_freq.collect(),
        Some(RopeScaling::Linear { factor }) => inv_freq.map(|f| f / *factor as f32).collect(),
        Some(RopeScaling::Factors(factors)) => {
            inv_freq.zip(factors.iter()).map(|(f, d)| f / d).collect()
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_len,
        }) => inv_freq
            .map(|f| llama3_frequency(f, *factor, *low_freq_factor, *high_freq_factor, *old_len))
            .collect(),
    }
}

/// Llama 3.1 scaling of one frequency: wavelengths longer than
/// `old_len / low_freq_factor` are slowed by `factor`, those shorter than
/// `old_len / high_freq_factor` kept, and those between blended linearly in
/// `old_len / wavelength`.
fn llama3_frequency(inv_freq: f32, factor: f64, low: f64, high: f64, old_len: f64) -> f32 {
    let f = inv_freq as f64;
    let wavelen = 2.0 * PI / f;
    let low_freq_wavelen = old_len / low;
    let high_freq_wavelen = old_len / high;
    if wavelen > low_freq_wavelen {
        return (f / factor) as f32;
    }
    if wavelen < high_freq_wavelen {
        return inv_freq;
    }
    let smooth = (old_len / wavelen - low) / (high - low);
    ((1.0 - smooth) * f / factor + smooth * f) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscaled_frequencies_fall_from_one_to_nearly_one_over_theta() {
        let f = inverse_frequencies(8, 10_000.0, &None);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.1).abs() < 1e-7, "{}", f[1]);
        assert!((f[3] - 1e-3).abs() < 1e-9, "{}", f[3]);
    }

    #[test]
    fn llama3_scaling_keeps_high_slows_low_and_blends_the_middle() {
        let scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        });
        let plain = inverse_frequencies(128, 500_000.0, &None);
        let scaled = inverse_frequencies(128, 500_000.0, &scaling);
        // Wavelength 2*pi < 2048: unchanged. Longest wavelengths (> 8192): divided by 8.
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() <= plain[63] * 1e-6);
        // Some pair sits strictly between the two regimes.
        let blended = plain
            .iter()
            .zip(&scaled)
            .any(|(p, s)| *s < *p && *s > *p / 8.0 * 1.0001);
        assert!(blended);
    }

    #[test]
    fn interleaved_style_rotates_adjacent_pairs() {
        let config_rope = Rope {
            inv_freq: vec![1.0, 0.0],
            style: RopeStyle::Interleaved,
        };
        let x = Tensor::new(&[[[1f32, 0.0, 1.0, 0.0]]], &Device::Cpu).unwrap();
        let (cos, sin) = config_rope.cos_sin(&[1], DType::F32, &Device::Cpu).unwrap();
        let y = config_rope.apply(&x, &cos, &sin).unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        let expected = [c, s, 1.0, 0.0];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }
}
