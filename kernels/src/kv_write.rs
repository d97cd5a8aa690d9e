//! Writing a forward pass's new K or V rows into the paged KV pool.
//!
//! Each layer of the model computes K and V for every new token of the batch, then calls
//! [`write_kv`] twice (once for K, once for V) before attending. A token's destination is
//! its *slot*, `page_id * page_size + offset_in_page`, which the model derives from the
//! sequence's page table; the kernel itself knows nothing about sequences.

use crate::cpu::{Elem, contiguous, contiguous_mut, is_float_storage, other_dtype, u32_slice};
use candle_core::{CpuStorage, DType, InplaceOp3, Layout, Result, Tensor, bail};

/// The KV-write op: copies row `i` of the new K (or V) tensor into slot `slots[i]` of a
/// cache tensor, converting to the cache's dtype.
///
/// Tensors, in [`InplaceOp3`] order:
/// - destination: the cache, `[n_pages, page_size, n_kv_heads, head_dim]`, contiguous;
/// - `new`: `[n_tokens, n_kv_heads, head_dim]`, contiguous, any float storage dtype;
/// - `slots`: `[n_tokens]` u32, each `< n_pages * page_size`.
///
/// The CPU body checks every slot before writing anything, so a bad slot leaves the
/// cache untouched. A CUDA body implements the same contract in `cuda_fwd`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvWrite;

impl InplaceOp3 for KvWrite {
    fn name(&self) -> &'static str {
        "arbor-kv-write"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cache_layout: &Layout,
        new: &CpuStorage,
        new_layout: &Layout,
        slots: &CpuStorage,
        slots_layout: &Layout,
    ) -> Result<()> {
        let (n_pages, page_size, n_kv_heads, head_dim) = cache_layout.shape().dims4()?;
        let row_len = n_kv_heads * head_dim;
        let n_slots = n_pages * page_size;
        let slots = u32_slice(slots, slots_layout, "kv-write slots")?;
        if let Some(&bad) = slots.iter().find(|&&s| s as usize >= n_slots) {
            bail!("kv-write slot {bad} is outside the cache ({n_slots} slots)");
        }

        macro_rules! run {
            ($cache:expr, $new:expr) => {{
                let cache = contiguous_mut($cache, cache_layout, "kv cache")?;
                let new = contiguous($new, new_layout, "new k/v")?;
                write_rows(cache, new, slots, row_len);
                Ok(())
            }};
        }
        use CpuStorage::{BF16, F16, F32};
        match (cache, new) {
            (F32(c), F32(n)) => run!(c, n),
            (F32(c), BF16(n)) => run!(c, n),
            (F32(c), F16(n)) => run!(c, n),
            (BF16(c), F32(n)) => run!(c, n),
            (BF16(c), BF16(n)) => run!(c, n),
            (BF16(c), F16(n)) => run!(c, n),
            (F16(c), F32(n)) => run!(c, n),
            (F16(c), BF16(n)) => run!(c, n),
            (F16(c), F16(n)) => run!(c, n),
            (c, n) => bail!(
                "kv-write supports f32/bf16/f16, got cache {:?} and new rows {:?}",
                other_dtype(c),
                other_dtype(n)
            ),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        cache_layout: &Layout,
        new: &candle_core::CudaStorage,
        new_layout: &Layout,
        slots: &candle_core::CudaStorage,
        slots_layout: &Layout,
    ) -> Result<()> {
        crate::cuda::kv_write(cache, cache_layout, new, new_layout, slots, slots_layout)
    }
}

/// Writes the rows of `new` (`[n_tokens, n_kv_heads, head_dim]`) into `cache`
/// (`[n_pages, page_size, n_kv_heads, head_dim]`) at the given slots (`[n_tokens]` u32).
///
/// Fails, leaving the cache unchanged, on mismatched shapes, a non-float dtype, a
/// non-u32 or out-of-range slot, or a cache that is not contiguous.
pub fn write_kv(cache: &Tensor, new: &Tensor, slots: &Tensor) -> Result<()> {
    let (_, _, n_kv_heads, head_dim) = cache.dims4()?;
    let (n_tokens, new_heads, new_dim) = new.dims3()?;
    if (new_heads, new_dim) != (n_kv_heads, head_dim) {
        bail!(
            "kv-write rows are [{n_tokens}, {new_heads}, {new_dim}] but the cache holds \
             [{n_kv_heads}, {head_dim}] per slot"
        );
    }
    if slots.dims() != [n_tokens] || slots.dtype() != DType::U32 {
        bail!(
            "kv-write slots must be [{n_tokens}] u32, got {:?} {:?}",
            slots.dims(),
            slots.dtype()
        );
    }
    if !is_float_storage(cache.dtype()) || !is_float_storage(new.dtype()) {
        bail!(
            "kv-write supports f32/bf16/f16, got cache {:?} and new rows {:?}",
            cache.dtype(),
            new.dtype()
        );
    }
    if n_tokens == 0 {
        return Ok(());
    }
    let new = new.contiguous()?;
    let slots = slots.contiguous()?;
    cache.inplace_op3(&new, &slots, &KvWrite)
}

/// Copies row `i` of `new` into row `slots[i]` of `cache`; slots are already checked.
fn write_rows<C: Elem, S: Elem>(cache: &mut [C], new: &[S], slots: &[u32], row_len: usize) {
    for (src, &slot) in new.chunks_exact(row_len).zip(slots) {
        let start = slot as usize * row_len;
        let dst = &mut cache[start..start + row_len];
        for (d, s) in dst.iter_mut().zip(src) {
            *d = C::from_f32(s.to_f32());
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use half::bf16;

    use super::*;

    fn cache(dtype: DType) -> Tensor {
        Tensor::zeros((3, 2, 2, 4), dtype, &Device::Cpu).unwrap()
    }

    #[test]
    fn rows_land_in_their_slots_and_nothing_else_changes() {
        let cache = cache(DType::F32);
        let new = Tensor::arange(0f32, 16.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 4))
            .unwrap();
        let slots = Tensor::new(&[5u32, 0], &Device::Cpu).unwrap();
        write_kv(&cache, &new, &slots).unwrap();

        let flat = cache.reshape((6, 8)).unwrap().to_vec2::<f32>().unwrap();
        let row0: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let row1: Vec<f32> = (8..16).map(|i| i as f32).collect();
        assert_eq!(flat[5], row0);
        assert_eq!(flat[0], row1);
        for untouched in [1, 2, 3, 4] {
            assert_eq!(flat[untouched], vec![0.0; 8]);
        }
    }

    #[test]
    fn f32_rows_are_rounded_into_a_bf16_cache() {
        let cache = cache(DType::BF16);
        let new = Tensor::full(1.0f32 / 3.0, (1, 2, 4), &Device::Cpu).unwrap();
        let slots = Tensor::new(&[2u32], &Device::Cpu).unwrap();
        write_kv(&cache, &new, &slots).unwrap();

        let flat = cache.reshape((6, 8)).unwrap().to_dtype(DType::F32).unwrap();
        let row = flat.get(2).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(row, vec![bf16::from_f32(1.0 / 3.0).to_f32(); 8]);
    }

    #[test]
    fn an_out_of_range_slot_is_an_error_and_writes_nothing() {
        let cache = cache(DType::F32);
        let new = Tensor::ones((2, 2, 4), DType::F32, &Device::Cpu).unwrap();
        let slots = Tensor::new(&[1u32, 6], &Device::Cpu).unwrap();
        let err = write_kv(&cache, &new, &slots).unwrap_err().to_string();
        assert!(err.contains("slot 6 is outside the cache"), "{err}");
        let sum = cache.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(sum, 0.0);
    }

    #[test]
    fn rows_of_the_wrong_width_are_rejected() {
        let cache = cache(DType::F32);
        let new = Tensor::ones((1, 1, 4), DType::F32, &Device::Cpu).unwrap();
        let slots = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        assert!(write_kv(&cache, &new, &slots).is_err());
    }
}
