// Causal attention of a flattened batch of new tokens over each sequence's paged context:
// the CUDA body of `PagedAttention` (kernels/src/paged_attention.rs), with the same
// contract and the same index math.
//
//   q:            [n_tokens, n_heads, head_dim]                    (type Q)
//   k/v cache:    [n_pages, page_size, n_kv_heads, head_dim]       (type C)
//   page_tables:  [n_seqs, max_pages] u32
//   context_lens: [n_seqs] u32, context length after this pass
//   query_starts: [n_seqs + 1] u32, first new token of each sequence in the batch
//   out:          [n_tokens, n_heads, head_dim]                    (type Q)
//
// Query token `t` of sequence `s` sits at position `context_lens[s] - n_new + (t -
// query_starts[s])` and sees keys `0..=` that position. Decode (one new token per
// sequence) and prefill chunks over a cached prefix are the same computation with
// different `n_new`, so one kernel serves both.
//
// Work split: one block per (token, KV head), as one CPU work item, so every K/V row is
// read once for all `group = n_heads / n_kv_heads` query heads that share it (GQA). The
// block's warps take keys round-robin (warp w: keys w, w + n_warps, ...); within a warp,
// lane l holds dimensions l, l + 32, ... of the row. Each warp keeps an online softmax per
// query head (running max, running sum, f32 accumulator of V), and the warps' partial
// results are merged in warp order at the end, so the result does not depend on timing.
//
// Keys on a page id at or past `n_pages` are skipped (Model::forward checks page tables
// on the host first); a query that sees no valid key gets NaN, not stale memory.
#include <math.h>

#include "common.cuh"

namespace {

// Most query heads per KV head the kernel supports (Llama-70B has 8; Qwen-7B 7).
constexpr int MAX_GROUP = 8;

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// The sequence that batch token `token` belongs to: the last `s` with
// `query_starts[s] <= token` (binary search over `n_seqs + 1` offsets).
__device__ __forceinline__ uint32_t sequence_of(const uint32_t* __restrict__ query_starts,
                                                uint32_t n_seqs, uint32_t token) {
  uint32_t lo = 0, hi = n_seqs + 1;  // first index with query_starts[i] > token is in [lo, hi]
  while (lo < hi) {
    const uint32_t mid = (lo + hi) / 2;
    if (query_starts[mid] <= token) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo - 1;
}

struct Geometry {
  uint32_t n_seqs, max_pages, n_pages, page_size, n_heads, n_kv_heads, head_dim;
};

// DPL: dimensions per lane, head_dim <= 32 * DPL.
template <typename Q, typename C, int DPL>
__device__ __forceinline__ void paged_attention(
    Q* __restrict__ out, const Q* __restrict__ q, const C* __restrict__ k_cache,
    const C* __restrict__ v_cache, const uint32_t* __restrict__ page_tables,
    const uint32_t* __restrict__ context_lens, const uint32_t* __restrict__ query_starts,
    const Geometry g, float scale) {
  extern __shared__ float smem[];
  const uint32_t token = blockIdx.x;
  const uint32_t kv_head = blockIdx.y;
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t warp = threadIdx.x / 32;
  const uint32_t n_warps = blockDim.x / 32;
  const uint32_t group = g.n_heads / g.n_kv_heads;
  const uint32_t head_dim = g.head_dim;

  // Shared memory: scaled queries and merged accumulators [group, head_dim], each warp's
  // running maxima [n_warps, group], merged sums [group].
  float* q_s = smem;
  float* acc_s = q_s + group * head_dim;
  float* max_s = acc_s + group * head_dim;
  float* sum_s = max_s + n_warps * group;

  const uint32_t seq = sequence_of(query_starts, g.n_seqs, token);
  const uint32_t q_start = query_starts[seq];
  const uint32_t n_new = query_starts[seq + 1] - q_start;
  const uint32_t n_keys = context_lens[seq] - n_new + (token - q_start) + 1;
  const uint32_t* table = page_tables + (uint64_t)seq * g.max_pages;

  const uint64_t q_offset = ((uint64_t)token * g.n_heads + (uint64_t)kv_head * group) * head_dim;
  for (uint32_t i = threadIdx.x; i < group * head_dim; i += blockDim.x) {
    q_s[i] = arbor::to_f32(q[q_offset + i]) * scale;
    acc_s[i] = 0.0f;
  }
  for (uint32_t i = threadIdx.x; i < group; i += blockDim.x) {
    sum_s[i] = 0.0f;
  }
  __syncthreads();

  // Loads dims lane + 32 j of key `key`'s K and V rows (zeros past head_dim); false if
  // the key's page is outside the pool.
  auto load = [&](uint32_t key, float (&k_row)[DPL], float (&v_row)[DPL]) -> bool {
    const uint32_t page = table[key / g.page_size];
    if (page >= g.n_pages) {
      return false;
    }
    const uint64_t slot = (uint64_t)page * g.page_size + key % g.page_size;
    const uint64_t start = (slot * g.n_kv_heads + kv_head) * head_dim;
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
      const uint32_t d = lane + 32 * j;
      const bool in = d < head_dim;
      k_row[j] = in ? arbor::to_f32(k_cache[start + d]) : 0.0f;
      v_row[j] = in ? arbor::to_f32(v_cache[start + d]) : 0.0f;
    }
    return true;
  };

  float run_max[MAX_GROUP], run_sum[MAX_GROUP], acc[MAX_GROUP][DPL];
#pragma unroll
  for (int h = 0; h < MAX_GROUP; ++h) {
    run_max[h] = -INFINITY;
    run_sum[h] = 0.0f;
#pragma unroll
    for (int j = 0; j < DPL; ++j) acc[h][j] = 0.0f;
  }

  // Rows of the current key and, loaded one iteration ahead, of the next one.
  float k_row[DPL], v_row[DPL], k_next[DPL], v_next[DPL];
  bool valid = warp < n_keys && load(warp, k_row, v_row);
  for (uint32_t key = warp; key < n_keys; key += n_warps) {
    const uint32_t next = key + n_warps;
    const bool next_valid = next < n_keys && load(next, k_next, v_next);
    if (valid) {
#pragma unroll
      for (int h = 0; h < MAX_GROUP; ++h) {
        if (h < (int)group) {
          float partial = 0.0f;
#pragma unroll
          for (int j = 0; j < DPL; ++j) {
            const uint32_t d = lane + 32 * j;
            if (d < head_dim) partial += q_s[h * head_dim + d] * k_row[j];
          }
          const float score = warp_sum(partial);
          const float new_max = fmaxf(run_max[h], score);
          const float rescale = expf(run_max[h] - new_max);  // 0 while run_max is -inf
          const float weight = expf(score - new_max);
          run_sum[h] = run_sum[h] * rescale + weight;
#pragma unroll
          for (int j = 0; j < DPL; ++j) acc[h][j] = acc[h][j] * rescale + weight * v_row[j];
          run_max[h] = new_max;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
      k_row[j] = k_next[j];
      v_row[j] = v_next[j];
    }
    valid = next_valid;
  }

  // Merge the warps: rescale each warp's partial sums to the block-wide maximum, then add
  // them into shared memory one warp at a time.
  if (lane == 0) {
    for (uint32_t h = 0; h < group; ++h) max_s[warp * group + h] = run_max[h];
  }
  __syncthreads();
  float factor[MAX_GROUP];
#pragma unroll
  for (int h = 0; h < MAX_GROUP; ++h) {
    factor[h] = 0.0f;
    if (h < (int)group) {
      float block_max = -INFINITY;
      for (uint32_t w = 0; w < n_warps; ++w) block_max = fmaxf(block_max, max_s[w * group + h]);
      factor[h] = run_max[h] == -INFINITY ? 0.0f : expf(run_max[h] - block_max);
    }
  }
  for (uint32_t w = 0; w < n_warps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int h = 0; h < MAX_GROUP; ++h) {
        if (h < (int)group) {
#pragma unroll
          for (int j = 0; j < DPL; ++j) {
            const uint32_t d = lane + 32 * j;
            if (d < head_dim) acc_s[h * head_dim + d] += acc[h][j] * factor[h];
          }
          if (lane == 0) sum_s[h] += run_sum[h] * factor[h];
        }
      }
    }
    __syncthreads();
  }

  for (uint32_t i = threadIdx.x; i < group * head_dim; i += blockDim.x) {
    out[q_offset + i] = arbor::from_f32<Q>(acc_s[i] / sum_s[i / head_dim]);
  }
}

}  // namespace

// Entry points `arbor_paged_attention_<q type>_<cache type>_d<DPL>`, DPL in {1, 2, 4, 8}
// (head_dim up to 32, 64, 128, 256). Launch: grid (n_tokens, n_kv_heads), a multiple of
// 32 threads, dynamic shared memory
// `4 * (2 * group * head_dim + n_warps * group + group)` bytes.
#define ARBOR_PAGED_ATTENTION_DPL(suffix, Q, C, DPL)                                         \
  extern "C" __global__ void arbor_paged_attention_##suffix##_d##DPL(                        \
      Q* out, const Q* q, const C* k_cache, const C* v_cache, const uint32_t* page_tables,  \
      const uint32_t* context_lens, const uint32_t* query_starts, uint32_t n_seqs,          \
      uint32_t max_pages, uint32_t n_pages, uint32_t page_size, uint32_t n_heads,           \
      uint32_t n_kv_heads, uint32_t head_dim, float scale) {                                \
    const Geometry g{n_seqs, max_pages, n_pages, page_size, n_heads, n_kv_heads, head_dim}; \
    paged_attention<Q, C, DPL>(out, q, k_cache, v_cache, page_tables, context_lens,         \
                               query_starts, g, scale);                                     \
  }

#define ARBOR_PAGED_ATTENTION(suffix, Q, C)     \
  ARBOR_PAGED_ATTENTION_DPL(suffix, Q, C, 1)    \
  ARBOR_PAGED_ATTENTION_DPL(suffix, Q, C, 2)    \
  ARBOR_PAGED_ATTENTION_DPL(suffix, Q, C, 4)    \
  ARBOR_PAGED_ATTENTION_DPL(suffix, Q, C, 8)

ARBOR_FOR_EACH_TYPE_PAIR(ARBOR_PAGED_ATTENTION)
