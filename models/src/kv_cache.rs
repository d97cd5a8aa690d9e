//! The paged KV pool: per layer one K and one V tensor of shape
//! `[n_pages, page_size, n_kv_heads, head_dim]`, allocated once from the memory budget.
//!
//! Page ids come from `arbor-cache`'s `PagePool`; this type only holds the memory. A
//! token's slot is `page_id * page_size + offset_in_page`; the forward pass writes new
//! tokens' K/V into their slots and reads a sequence's context through its page table.

use candle_core::{DType, Device, Result, Tensor, bail};

use crate::config::ModelConfig;

/// K and V memory of every layer, shared by all sequences through page tables.
#[derive(Debug)]
pub struct KvCache {
    /// `(k, v)` per layer, each `[n_pages, page_size, n_kv_heads, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    n_pages: usize,
    page_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
}

impl KvCache {
    /// Allocates `n_pages` pages of `page_size` token slots for every layer of `config`,
    /// zero-filled, stored in `dtype` (f32, bf16 or f16).
    ///
    /// Fails on a zero page size, an unsupported dtype, or an allocation failure.
    pub fn new(
        config: &ModelConfig,
        n_pages: usize,
        page_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if page_size == 0 {
            bail!("page size must be at least 1 token");
        }
        if !arbor_kernels::is_float_storage(dtype) {
            bail!("kv cache dtype must be f32, bf16 or f16, got {dtype:?}");
        }
        let shape = (n_pages, page_size, config.n_kv_heads, config.head_dim);
        let layers = (0..config.n_layers)
            .map(|_| {
                let k = Tensor::zeros(shape, dtype, device)?;
                let v = Tensor::zeros(shape, dtype, device)?;
                Ok((k, v))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            n_pages,
            page_size,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            dtype,
        })
    }

    /// Bytes one page occupies across all layers, K and V together.
    pub fn bytes_per_page(config: &ModelConfig, page_size: usize, dtype: DType) -> usize {
        2 * config.n_layers
            * page_size
            * config.n_kv_heads
            * config.head_dim
            * dtype.size_in_bytes()
    }

    /// Pages that fit in `budget_bytes` (rounded down; 0 if not even one fits).
    pub fn pages_for_budget(
        config: &ModelConfig,
        page_size: usize,
        dtype: DType,
        budget_bytes: usize,
    ) -> usize {
        budget_bytes / Self::bytes_per_page(config, page_size, dtype).max(1)
    }

    /// Pages per layer.
    pub fn n_pages(&self) -> usize {
        self.n_pages
    }

    /// Token slots per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Storage dtype of K and V.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Layers held.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Total bytes of K and V memory.
    pub fn size_in_bytes(&self) -> usize {
        2 * self.layers.len()
            * self.n_pages
            * self.page_size
            * self.n_kv_heads
            * self.head_dim
            * self.dtype.size_in_bytes()
    }

    /// The K and V tensors of layer `layer_idx`.
    ///
    /// Panics if `layer_idx >= n_layers()`; the decoder checks the layer count once per
    /// forward pass with [`KvCache::check_matches`].
    pub fn layer(&self, layer_idx: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[layer_idx];
        (k, v)
    }

    /// Fails unless this cache was built for a model shaped like `config`.
    pub fn check_matches(&self, config: &ModelConfig) -> Result<()> {
        let ours = (self.layers.len(), self.n_kv_heads, self.head_dim);
        let theirs = (config.n_layers, config.n_kv_heads, config.head_dim);
        if ours != theirs {
            bail!(
                "kv cache has (layers, kv heads, head dim) = {ours:?}, the model needs {theirs:?}"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config() -> ModelConfig {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen2/config.json");
        ModelConfig::from_json_file(&path).unwrap()
    }

    #[test]
    fn page_bytes_count_both_tensors_of_every_layer() {
        let config = config();
        // 2 (K, V) * 2 layers * 16 slots * 2 KV heads * 32 dims * 2 bytes.
        assert_eq!(KvCache::bytes_per_page(&config, 16, DType::BF16), 8192);
        assert_eq!(
            KvCache::pages_for_budget(&config, 16, DType::BF16, 8192 * 10 + 5),
            10
        );
    }

    #[test]
    fn a_new_cache_has_the_planned_shape_and_size() {
        let config = config();
        let cache = KvCache::new(&config, 10, 16, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(cache.layer(1).0.dims(), &[10, 16, 2, 32]);
        let per_page = KvCache::bytes_per_page(&config, 16, DType::F32);
        assert_eq!(cache.size_in_bytes(), 10 * per_page);
        assert!(cache.check_matches(&config).is_ok());
    }

    #[test]
    fn integer_storage_is_refused() {
        let err = KvCache::new(&config(), 1, 16, DType::U32, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("f32, bf16 or f16"), "{err}");
    }
}
