// Writing new K or V rows into the paged KV pool: the CUDA body of `KvWrite`
// (kernels/src/kv_write.rs), with the same contract.
//
//   cache: [n_pages * page_size, row_len] in the cache's type (row_len = n_kv_heads * head_dim)
//   rows:  [n_tokens, row_len] in the new rows' type
//   slots: [n_tokens] u32, the destination row of each new row
//
// One thread per element, grid-stride, so reads and writes of a row are coalesced. A slot
// at or past `n_slots` is skipped (the CPU body refuses the whole call instead; the Rust
// side cannot check device-resident slots without a copy, and `Model::forward` checks the
// page tables the slots come from on the host before any kernel runs).
#include "common.cuh"

template <typename C, typename S>
__device__ __forceinline__ void kv_write(C* __restrict__ cache, const S* __restrict__ rows,
                                         const uint32_t* __restrict__ slots, uint32_t n_tokens,
                                         uint32_t row_len, uint64_t n_slots) {
  const uint64_t n_elems = (uint64_t)n_tokens * row_len;
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_elems;
       i += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t token = i / row_len;
    const uint64_t col = i % row_len;
    const uint64_t slot = slots[token];
    if (slot < n_slots) {
      cache[slot * row_len + col] = arbor::from_f32<C>(arbor::to_f32(rows[i]));
    }
  }
}

// Entry points `arbor_kv_write_<cache type>_<rows type>`.
#define ARBOR_KV_WRITE(suffix, C, S)                                                        \
  extern "C" __global__ void arbor_kv_write_##suffix(                                       \
      C* cache, const S* rows, const uint32_t* slots, uint32_t n_tokens, uint32_t row_len,  \
      uint64_t n_slots) {                                                                   \
    kv_write<C, S>(cache, rows, slots, n_tokens, row_len, n_slots);                         \
  }

ARBOR_FOR_EACH_TYPE_PAIR(ARBOR_KV_WRITE)
