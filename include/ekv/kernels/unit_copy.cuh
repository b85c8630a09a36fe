#pragma once
// copy_units: copies a list of equal-sized units (a block's kv head, or a whole block) of K
// and V between any two pools the device can address: device memory, or pinned host memory
// through unified addressing, so one launch moves many scattered blocks in from the host
// (TieredKVCache's copy-in and promotions) where a cudaMemcpyAsync per block would cost a
// few microseconds of host time each. The list itself may live in pinned host memory.

#include <cstddef>
#include <cstdint>
#include <string>

#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/vec.cuh"

namespace ekv {

// One copy: unit `src` of the source pools to unit `dst` of the destination pools.
struct UnitCopy {
  std::int64_t src = 0;
  std::int64_t dst = 0;
};

namespace detail {

inline constexpr int kUnitCopyThreads = 256;
inline constexpr int kUnitCopyUnroll = 4;

// CTA (copy, K or V): 16-byte vectors, kUnitCopyUnroll loads in flight per thread, which
// keeps enough requests outstanding to cover a host read's latency across the grid.
__global__ void __launch_bounds__(kUnitCopyThreads)
    copy_units_kernel(const uint4* __restrict__ src_k, const uint4* __restrict__ src_v, uint4* __restrict__ dst_k,
                      uint4* __restrict__ dst_v, const UnitCopy* __restrict__ copies, std::int64_t unit_vecs) {
  const UnitCopy c = copies[blockIdx.x];
  const uint4* src = (blockIdx.y == 0 ? src_k : src_v) + c.src * unit_vecs;
  uint4* dst = (blockIdx.y == 0 ? dst_k : dst_v) + c.dst * unit_vecs;
  constexpr std::int64_t kStep = std::int64_t{kUnitCopyThreads} * kUnitCopyUnroll;
  for (std::int64_t base = threadIdx.x; base < unit_vecs; base += kStep) {
    uint4 r[kUnitCopyUnroll];
#pragma unroll
    for (int u = 0; u < kUnitCopyUnroll; ++u) {
      const std::int64_t i = base + std::int64_t{u} * kUnitCopyThreads;
      if (i < unit_vecs) r[u] = src[i];
    }
#pragma unroll
    for (int u = 0; u < kUnitCopyUnroll; ++u) {
      const std::int64_t i = base + std::int64_t{u} * kUnitCopyThreads;
      if (i < unit_vecs) dst[i] = r[u];
    }
  }
}

}  // namespace detail

// Copies count units of unit_bytes bytes each, K and V alike: unit c.src of src_k / src_v
// to unit c.dst of dst_k / dst_v for each of copies[0 .. count). Every pointer the device
// can address (device memory, or pinned host memory); copies must stay unchanged until the
// copy has run on `stream`. Throws ekv::Error for null pools, unit_bytes not a multiple of
// 16 or pools not 16-byte aligned; count 0 does nothing.
inline void copy_units(const void* src_k, const void* src_v, void* dst_k, void* dst_v, const UnitCopy* copies,
                       int count, std::size_t unit_bytes, const Stream& stream) {
  if (count == 0) return;
  if (count < 0 || count > 2147483647 || copies == nullptr || src_k == nullptr || src_v == nullptr ||
      dst_k == nullptr || dst_v == nullptr) {
    throw Error("copy_units: needs the four pools, the copies and count >= 0, got count=" + std::to_string(count));
  }
  if (unit_bytes == 0 || unit_bytes % 16 != 0 || !is_aligned<16>(src_k) || !is_aligned<16>(src_v) ||
      !is_aligned<16>(dst_k) || !is_aligned<16>(dst_v)) {
    throw Error("copy_units: unit_bytes=" + std::to_string(unit_bytes) +
                " must be a positive multiple of 16 and the pools 16-byte aligned");
  }
  detail::copy_units_kernel<<<dim3(static_cast<unsigned>(count), 2), detail::kUnitCopyThreads, 0, stream.get()>>>(
      static_cast<const uint4*>(src_k), static_cast<const uint4*>(src_v), static_cast<uint4*>(dst_k),
      static_cast<uint4*>(dst_v), copies, static_cast<std::int64_t>(unit_bytes / 16));
  check_launch("copy_units", stream.get());
}

}  // namespace ekv
