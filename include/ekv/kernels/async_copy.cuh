#pragma once
// cp.async (sm_80+): 16-byte global-to-shared copies that bypass registers and L1, so a
// CTA can keep several tiles in flight while it computes on an earlier one.

#include <cstdint>

#include "ekv/kernels/arch_check.cuh"

namespace ekv {

__device__ __forceinline__ void async_copy_16(void* smem, const void* gmem) {
  const auto dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem) : "memory");
}

// Copies `bytes` (0 to 16) and zero-fills the rest of the 16: 0 writes zeros without
// reading, for tokens past a sequence's end.
__device__ __forceinline__ void async_copy_16_zfill(void* smem, const void* gmem, int bytes) {
  const auto dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(bytes) : "memory");
}

// 4 bytes (through L1: cp.async.cg moves 16 only), zero-filled where `bytes` is 0; both
// addresses 4-byte aligned. For rows narrower than 16 bytes, such as a row's scales.
__device__ __forceinline__ void async_copy_4_zfill(void* smem, const void* gmem, int bytes) {
  const auto dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(gmem), "r"(bytes) : "memory");
}

// Closes the group of copies issued since the last commit.
__device__ __forceinline__ void async_copy_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most Pending committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void async_copy_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(Pending) : "memory");
}

}  // namespace ekv
