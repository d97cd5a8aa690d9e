// A tiny host emulation of the CUDA features Arbor's kernels use, so that the kernel
// sources in kernels/cuda/ can be compiled by a C++20 compiler and run on the CPU by
// kernels/tests/cuda_kernels_emulated.rs. It checks the kernels' index math, masking and
// softmax merging on machines without a GPU; it says nothing about performance, memory
// coalescing or the real intrinsics.
//
// Every CUDA thread of a block is an OS thread; blocks run one after another, so one
// shared-memory array serves them all. `__syncthreads` is a barrier over the block, and
// `__shfl_xor_sync` exchanges values through a per-warp buffer between two barriers, so
// (as on a GPU with a full mask) all 32 lanes must reach it.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __restrict__ __restrict

struct dim3 {
  uint32_t x = 1, y = 1, z = 1;
};

struct EmuWarp {
  std::barrier<> barrier{32};
  float lanes[32];
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline thread_local std::barrier<>* emu_block_barrier = nullptr;
inline thread_local EmuWarp* emu_warp = nullptr;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  const uint32_t lane = threadIdx.x % 32;
  emu_warp->lanes[lane] = value;
  emu_warp->barrier.arrive_and_wait();
  const float other = emu_warp->lanes[lane ^ static_cast<uint32_t>(lane_mask)];
  emu_warp->barrier.arrive_and_wait();
  return other;
}

// bf16 as its bit pattern; conversions as cuda_bf16.h defines them (round to nearest even).
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}

// f16 through the compiler's _Float16 (IEEE binary16, round to nearest even).
struct __half {
  _Float16 value;
};
inline float __half2float(__half x) { return static_cast<float>(x.value); }
inline __half __float2half_rn(float f) { return {static_cast<_Float16>(f)}; }

// Runs `kernel()` for every thread of `grid` x `block` (block.x a multiple of 32).
template <typename Kernel>
void emu_launch(dim3 grid, dim3 block, Kernel kernel) {
  const uint32_t n_threads = block.x * block.y * block.z;
  for (uint32_t bz = 0; bz < grid.z; ++bz)
    for (uint32_t by = 0; by < grid.y; ++by)
      for (uint32_t bx = 0; bx < grid.x; ++bx) {
        std::barrier<> block_barrier(n_threads);
        std::vector<std::unique_ptr<EmuWarp>> warps;
        for (uint32_t w = 0; w < n_threads / 32; ++w) warps.push_back(std::make_unique<EmuWarp>());
        std::vector<std::thread> threads;
        for (uint32_t t = 0; t < n_threads; ++t) {
          threads.emplace_back([&, t] {
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            blockIdx = {bx, by, bz};
            blockDim = block;
            gridDim = grid;
            emu_block_barrier = &block_barrier;
            emu_warp = warps[t / 32].get();
            kernel();
          });
        }
        for (auto& thread : threads) thread.join();
      }
}
