#pragma once
// Hopper's bulk copies (sm_90+): cp.async.bulk, the copy engine's 1-D form, moves one
// contiguous run of bytes from global to shared memory on a single instruction and
// reports its bytes to an mbarrier, so a warp waits for a whole tile on one barrier
// instead of issuing and tracking a 16-byte cp.async per lane and row.
//
// A barrier guards one shared-memory slot: the thread that fills it announces the bytes
// (mbarrier_arrive_expect_tx) before the copies that deliver them, and readers wait for
// the slot's phase (mbarrier_wait_parity: the n-th fill of a slot completes phase n, of
// parity n & 1). Below sm_90 these compile to nothing: hosts read a kernel's
// binaryVersion before choosing one that uses them (resolve_decode_copy).

#include <cstdint>

#include "ekv/kernels/arch_check.cuh"

namespace ekv {

__device__ __forceinline__ std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// One arrival per phase (the filling thread's); then fence_barrier_init and a CTA
// barrier before any copy names it.
__device__ __forceinline__ void mbarrier_init(std::uint64_t* bar, int arrivals) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(shared_address(bar)), "r"(arrivals) : "memory");
#endif
}

// Makes initialised barriers (and shared memory written by ordinary stores) visible to
// the copy engine, which accesses shared memory through the async proxy.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// This thread's arrival, announcing `bytes` that copies will complete on `bar`.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(std::uint64_t* bar, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)), "r"(bytes)
               : "memory");
#endif
}

// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from global `src` to
// shared `dst`, completing them on `bar`.
__device__ __forceinline__ void bulk_copy_to_shared(void* dst, const void* src, int bytes, std::uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   shared_address(dst)),
               "l"(src), "r"(bytes), "r"(shared_address(bar))
               : "memory");
#endif
}

// Waits until the phase of parity `parity` of `bar` has completed.
__device__ __forceinline__ void mbarrier_wait_parity(std::uint64_t* bar, std::uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(shared_address(bar)),
      "r"(parity)
      : "memory");
#endif
}

}  // namespace ekv
