// Shared helpers of Arbor's CUDA kernels: conversions between the storage types the KV
// cache and activations use (f32, bf16, f16) and f32, in which all arithmetic happens.
//
// Conversions round to nearest even, as the `half` crate does on the CPU path, so a K/V
// row written by either path holds the same bits.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace arbor {

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}

}  // namespace arbor

// Instantiates `MACRO(name_suffix, type_a, type_b)` for every pair of storage types, with
// suffixes `f32_bf16` and so on (first type, then second), matching the names the Rust side
// builds in `kernels/src/cuda.rs`.
#define ARBOR_FOR_EACH_TYPE_PAIR(MACRO)          \
  MACRO(f32_f32, float, float)                   \
  MACRO(f32_bf16, float, __nv_bfloat16)          \
  MACRO(f32_f16, float, __half)                  \
  MACRO(bf16_f32, __nv_bfloat16, float)          \
  MACRO(bf16_bf16, __nv_bfloat16, __nv_bfloat16) \
  MACRO(bf16_f16, __nv_bfloat16, __half)         \
  MACRO(f16_f32, __half, float)                  \
  MACRO(f16_bf16, __half, __nv_bfloat16)         \
  MACRO(f16_f16, __half, __half)
