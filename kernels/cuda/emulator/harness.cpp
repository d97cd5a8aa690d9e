// Runs Arbor's CUDA kernel sources on the CPU through cuda_emulation.h and compares them
// with a naive double-precision reference written here, independently of the kernels.
// Built and run by kernels/tests/cuda_kernels_emulated.rs; exits non-zero on a mismatch.
//
// The KV pool is filled with NaN everywhere a query must not look (pages no sequence
// owns, slots past a sequence's context), so reading one poisons the result.
#include "cuda_emulation.h"

// The kernels' `extern __shared__ float smem[]` (declared in an anonymous namespace).
namespace {
alignas(16) float smem[16384];
}

#include "kv_write.cu"
#include "paged_attention.cu"

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>

namespace {

template <typename Q, typename C>
using AttentionFn = void (*)(Q*, const Q*, const C*, const C*, const uint32_t*, const uint32_t*,
                             const uint32_t*, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t,
                             uint32_t, uint32_t, float);
template <typename C, typename S>
using KvWriteFn = void (*)(C*, const S*, const uint32_t*, uint32_t, uint32_t, uint64_t);

template <typename Q, typename C>
AttentionFn<Q, C> attention_fn(uint32_t dims_per_lane);
template <typename C, typename S>
KvWriteFn<C, S> kv_write_fn();

#define ARBOR_EMU_LOOKUP(suffix, A, B)                                       \
  template <>                                                               \
  AttentionFn<A, B> attention_fn<A, B>(uint32_t dims_per_lane) {            \
    switch (dims_per_lane) {                                                \
      case 1: return arbor_paged_attention_##suffix##_d1;                   \
      case 2: return arbor_paged_attention_##suffix##_d2;                   \
      case 4: return arbor_paged_attention_##suffix##_d4;                   \
      case 8: return arbor_paged_attention_##suffix##_d8;                   \
      default: return nullptr;                                              \
    }                                                                       \
  }                                                                         \
  template <>                                                               \
  KvWriteFn<A, B> kv_write_fn<A, B>() {                                     \
    return arbor_kv_write_##suffix;                                         \
  }
ARBOR_FOR_EACH_TYPE_PAIR(ARBOR_EMU_LOOKUP)

template <typename T> const char* type_name();
template <> const char* type_name<float>() { return "f32"; }
template <> const char* type_name<__nv_bfloat16>() { return "bf16"; }
template <> const char* type_name<__half>() { return "f16"; }

// Absolute tolerance of outputs in [-1, 1] stored as T (a few units of T's last place,
// plus f32 accumulation error).
template <typename T> double tolerance();
template <> double tolerance<float>() { return 2e-5; }
template <> double tolerance<__nv_bfloat16>() { return 1.2e-2; }
template <> double tolerance<__half>() { return 2e-3; }

// The same choice as `dims_per_lane` in kernels/src/cuda.rs.
uint32_t dims_per_lane(uint32_t head_dim) {
  uint32_t d = (head_dim + 31) / 32, p = 1;
  while (p < d) p *= 2;
  return p;
}

struct Seq {
  uint32_t n_context;  // tokens cached before this pass
  uint32_t n_new;      // tokens of this pass
};

struct AttentionCase {
  std::string name;
  uint32_t head_dim, n_kv_heads, group, page_size, n_warps;
  std::vector<Seq> seqs;
  // Give the last sequence page ids outside the pool: its outputs must be NaN.
  bool last_seq_bad_pages = false;
};

int failures = 0;

void report(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

template <typename Q, typename C>
void run_attention(const AttentionCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const float nan = std::nanf("");
  const uint32_t n_heads = c.n_kv_heads * c.group, hd = c.head_dim, ps = c.page_size;
  const uint32_t n_seqs = c.seqs.size();

  // Page tables: pages handed out from a shuffled pool with two spare pages.
  uint32_t total_pages = 0, max_pages = 0, n_tokens = 0;
  for (const Seq& s : c.seqs) {
    const uint32_t need = (s.n_context + s.n_new + ps - 1) / ps;
    total_pages += need;
    max_pages = std::max(max_pages, need);
    n_tokens += s.n_new;
  }
  const uint32_t n_pages = total_pages + 2;
  std::vector<uint32_t> pool(n_pages);
  for (uint32_t i = 0; i < n_pages; ++i) pool[i] = i;
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<uint32_t> tables(n_seqs * max_pages, 0), lens(n_seqs), starts(n_seqs + 1, 0);
  uint32_t next_page = 0;
  for (uint32_t s = 0; s < n_seqs; ++s) {
    const uint32_t len = c.seqs[s].n_context + c.seqs[s].n_new;
    const bool bad = c.last_seq_bad_pages && s + 1 == n_seqs;
    for (uint32_t p = 0; p < (len + ps - 1) / ps; ++p) {
      tables[s * max_pages + p] = bad ? n_pages + 5 + p : pool[next_page++];
    }
    lens[s] = len;
    starts[s + 1] = starts[s] + c.seqs[s].n_new;
  }

  // K/V pool: NaN, then real values in every slot a sequence owns up to its length.
  const size_t row = size_t(c.n_kv_heads) * hd;
  std::vector<C> k(size_t(n_pages) * ps * row, arbor::from_f32<C>(nan));
  std::vector<C> v = k;
  for (uint32_t s = 0; s < n_seqs; ++s) {
    if (c.last_seq_bad_pages && s + 1 == n_seqs) continue;
    for (uint32_t pos = 0; pos < lens[s]; ++pos) {
      const size_t slot = size_t(tables[s * max_pages + pos / ps]) * ps + pos % ps;
      for (size_t i = 0; i < row; ++i) {
        k[slot * row + i] = arbor::from_f32<C>(uniform(rng));
        v[slot * row + i] = arbor::from_f32<C>(uniform(rng));
      }
    }
  }
  std::vector<Q> q(size_t(n_tokens) * n_heads * hd);
  for (Q& x : q) x = arbor::from_f32<Q>(uniform(rng));
  std::vector<Q> out(q.size(), arbor::from_f32<Q>(nan));
  const float scale = 1.0f / std::sqrt(float(hd));

  const uint32_t smem_bytes = 4 * (2 * c.group * hd + c.n_warps * c.group + c.group);
  if (smem_bytes > sizeof(smem)) {
    report(false, c.name + ": shared memory of the case exceeds the emulator's");
    return;
  }
  auto fn = attention_fn<Q, C>(dims_per_lane(hd));
  emu_launch(dim3{n_tokens, c.n_kv_heads, 1}, dim3{32 * c.n_warps, 1, 1}, [&] {
    fn(out.data(), q.data(), k.data(), v.data(), tables.data(), lens.data(), starts.data(), n_seqs,
       max_pages, n_pages, ps, n_heads, c.n_kv_heads, hd, scale);
  });

  // Reference: every token of sequence s at index i sits at n_context + i and sees keys
  // 0..=that position; softmax and weighted sum in double.
  double worst = 0.0;
  bool ok = true;
  uint32_t token = 0;
  for (uint32_t s = 0; s < n_seqs; ++s) {
    const bool bad = c.last_seq_bad_pages && s + 1 == n_seqs;
    for (uint32_t i = 0; i < c.seqs[s].n_new; ++i, ++token) {
      const uint32_t n_keys = c.seqs[s].n_context + i + 1;
      for (uint32_t h = 0; h < n_heads; ++h) {
        const uint32_t kvh = h / c.group;
        const Q* qrow = &q[(size_t(token) * n_heads + h) * hd];
        const Q* orow = &out[(size_t(token) * n_heads + h) * hd];
        if (bad) {
          for (uint32_t d = 0; d < hd; ++d) ok &= std::isnan(arbor::to_f32(orow[d]));
          continue;
        }
        std::vector<double> scores(n_keys);
        double max = -INFINITY, sum = 0.0;
        for (uint32_t key = 0; key < n_keys; ++key) {
          const size_t slot = size_t(tables[s * max_pages + key / ps]) * ps + key % ps;
          double dot = 0.0;
          for (uint32_t d = 0; d < hd; ++d)
            dot += double(arbor::to_f32(qrow[d])) * arbor::to_f32(k[(slot * c.n_kv_heads + kvh) * hd + d]);
          scores[key] = dot * scale;
          max = std::max(max, scores[key]);
        }
        for (double& x : scores) sum += (x = std::exp(x - max));
        for (uint32_t d = 0; d < hd; ++d) {
          double expected = 0.0;
          for (uint32_t key = 0; key < n_keys; ++key) {
            const size_t slot = size_t(tables[s * max_pages + key / ps]) * ps + key % ps;
            expected += scores[key] / sum * arbor::to_f32(v[(slot * c.n_kv_heads + kvh) * hd + d]);
          }
          const double got = arbor::to_f32(orow[d]);
          const double err = std::fabs(got - expected);
          if (!(err <= tolerance<Q>())) ok = false;
          if (err > worst || std::isnan(err)) worst = std::isnan(err) ? INFINITY : err;
        }
      }
    }
  }
  char line[256];
  std::snprintf(line, sizeof line, "paged attention %s q=%s cache=%s: max |error| %.2e", c.name.c_str(),
                type_name<Q>(), type_name<C>(), worst);
  report(ok, line);
}

template <typename C, typename S>
void run_kv_write(uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const uint32_t n_slots = 12, row_len = 40;  // more than one 32-thread row, not a multiple
  const std::vector<uint32_t> slots = {3, 11, 0, n_slots, 7};  // n_slots is out of range
  const float sentinel = 7.0f;
  std::vector<C> cache(size_t(n_slots) * row_len, arbor::from_f32<C>(sentinel));
  std::vector<S> rows(slots.size() * row_len);
  for (S& x : rows) x = arbor::from_f32<S>(uniform(rng));
  // Few threads so that the grid-stride loop wraps several times.
  emu_launch(dim3{2, 1, 1}, dim3{32, 1, 1}, [&] {
    kv_write_fn<C, S>()(cache.data(), rows.data(), slots.data(), slots.size(), row_len, n_slots);
  });
  bool ok = true;
  std::vector<bool> written(n_slots, false);
  for (size_t t = 0; t < slots.size(); ++t) {
    if (slots[t] >= n_slots) continue;
    written[slots[t]] = true;
    for (uint32_t j = 0; j < row_len; ++j) {
      const float want = arbor::to_f32(arbor::from_f32<C>(arbor::to_f32(rows[t * row_len + j])));
      ok &= arbor::to_f32(cache[slots[t] * row_len + j]) == want;
    }
  }
  for (uint32_t s = 0; s < n_slots; ++s)
    if (!written[s])
      for (uint32_t j = 0; j < row_len; ++j) ok &= arbor::to_f32(cache[s * row_len + j]) == sentinel;
  report(ok, std::string("kv write cache=") + type_name<C>() + " rows=" + type_name<S>());
}

}  // namespace

int main() {
  // Rounding of the conversion the kernels use, against known bf16/f16 values of 1/3.
  report(arbor::to_f32(arbor::from_f32<__nv_bfloat16>(1.0f / 3.0f)) == 0.333984375f &&
             arbor::to_f32(arbor::from_f32<__half>(1.0f / 3.0f)) == 0.333251953125f,
         "1/3 rounds to nearest even in bf16 and f16");

  run_kv_write<float, float>(1);
  run_kv_write<__nv_bfloat16, float>(2);
  run_kv_write<__nv_bfloat16, __nv_bfloat16>(3);
  run_kv_write<__half, __nv_bfloat16>(4);

  // A mixed batch: a long decode, a prefill chunk after a cached prefix, a fresh prefill,
  // and a decode whose one key leaves most warps idle.
  const std::vector<Seq> mixed = {{36, 1}, {10, 7}, {0, 5}, {0, 1}};
  const std::vector<AttentionCase> cases = {
      {"hd32 gqa2 page4 warps4", 32, 2, 2, 4, 4, mixed},
      {"hd64 mha page1 warps8", 64, 2, 1, 1, 8, mixed},
      {"hd128 gqa7 page16 warps4", 128, 1, 7, 16, 4, mixed},
      {"hd80 (masked lanes) gqa4 page3 warps16", 80, 2, 4, 3, 16, mixed},
      {"hd256 gqa8 page8 warps4", 256, 1, 8, 8, 4, {{20, 1}, {3, 4}}},
      {"decode batch of 6, page 16", 128, 2, 4, 16, 8, {{70, 1}, {1, 1}, {15, 1}, {16, 1}, {31, 1}, {5, 1}}},
      {"prefill of 40 in one chunk", 32, 1, 2, 16, 4, {{0, 40}}},
  };
  uint32_t seed = 100;
  for (const AttentionCase& c : cases) run_attention<float, float>(c, seed++);
  run_attention<__nv_bfloat16, __nv_bfloat16>(cases[0], seed++);
  run_attention<__nv_bfloat16, __nv_bfloat16>(cases[2], seed++);
  run_attention<__half, __half>(cases[3], seed++);
  run_attention<float, __nv_bfloat16>(cases[1], seed++);
  run_attention<__nv_bfloat16, float>(cases[5], seed++);
  // The 12 GB mode: Llama-8B's heads (32 of 128 dims over 8 KV heads) with quantized
  // weights, so f32 activations over a bf16 KV cache.
  run_attention<float, __nv_bfloat16>(
      {"llama-8b heads, page 16, mixed batch", 128, 2, 4, 16, 8, mixed}, seed++);

  AttentionCase bad = cases[0];
  bad.name = "pages outside the pool give NaN, others unaffected";
  bad.last_seq_bad_pages = true;
  run_attention<float, float>(bad, seed++);

  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
