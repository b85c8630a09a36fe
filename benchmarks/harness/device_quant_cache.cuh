#pragma once
// DeviceQuantCache: a DeviceBenchCache's K and V quantized on the device (FP8 E4M3 at scale
// 1, Q8_0, Q4_0) into a paged QuantKVView pool over the same block table, with lengths of
// its own.

#include <cuda_fp16.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ekv/attention/append.cuh"
#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/core/stream.hpp"
#include "harness/bench_inputs.hpp"
#include "harness/device_bench_cache.cuh"

namespace ekv::bench {
namespace detail {

// CTAs of the pool-wide kernels below: grid-stride loops over at most this many, untuned
// (they run once, before any timing).
inline constexpr int kPoolCtaThreads = 256;
inline constexpr std::size_t kPoolMaxCtas = 8192;

inline int pool_grid(std::size_t items) {
  return static_cast<int>(std::min(kPoolMaxCtas, std::max<std::size_t>(1, (items + kPoolCtaThreads - 1) /
                                                                           kPoolCtaThreads)));
}

// One thread per row of K or V: rows [num_blocks][kv_heads][block_len] in the dense pool's
// order and in the codes' alike (paged_kv, paged_quant_kv), so row r of one is row r of
// the other. quantize_row_from is what append_kv and the CPU backend run: the same bytes.
template <typename T>
__global__ void quantize_pool_kernel(KVStorage storage, const T* __restrict__ k, const T* __restrict__ v,
                                     std::int64_t rows, int head_dim, int code_bytes, int groups, QuantKVPool pool) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < 2 * rows;
       r += stride) {
    const bool is_v = r >= rows;
    const std::int64_t row = is_v ? r - rows : r;
    __half* scales = is_v ? pool.v_scales : pool.k_scales;
    quantize_row_from<T>(storage, (is_v ? v : k) + row * head_dim, head_dim,
                         (is_v ? pool.v_codes : pool.k_codes) + row * code_bytes,
                         groups > 0 ? scales + row * groups : nullptr);
  }
}

}  // namespace detail

template <typename T>
struct DeviceQuantCache {
  KVStorage storage;
  BenchShape shape;
  int code_bytes, groups;  // per row: kv_code_bytes, and kv_scale_bytes / 2 (0 for FP8)
  DeviceBuffer<std::uint8_t> k_codes, v_codes;  // [num_blocks][kv_heads][block_len][code_bytes]
  DeviceBuffer<__half> k_scales, v_scales;      // [num_blocks][kv_heads][block_len][groups]; 1 unused without
  DeviceBuffer<std::int32_t> lengths;
  const std::int32_t* table;  // the dense cache's, which must outlive this one

  // The dense cache's whole pool quantized (needles included), every sequence at `length`
  // tokens. FP8 keeps no head scales (scale 1, as the CPU run stores it):
  // the needles' keys reach 12, which E4M3 holds at scale 1 and a scale of 1/448 would
  // saturate. Waits for the work. Throws ekv::Error where allocation fails or `s` is not
  // FP8, Q8_0 or Q4_0 for this head_dim.
  DeviceQuantCache(const DeviceBenchCache<T>& dense, KVStorage s, int length, const Stream& stream)
      : storage(s), shape(dense.shape), table(dense.table.data()) {
    if (!is_quantized(s)) {
      throw Error(std::string("DeviceQuantCache: kv storage ") + to_string(s) + " is not quantized; supported: fp8, "
                  "q8_0, q4_0");
    }
    if (Support ok = kv_storage_supports(s, shape.head_dim); !ok) throw Error("DeviceQuantCache: " + ok.why);
    const std::size_t rows = shape.pool_elems() / shape.head_dim;
    code_bytes = static_cast<int>(kv_code_bytes(s, shape.head_dim));
    groups = static_cast<int>(kv_scale_bytes(s, shape.head_dim) / sizeof(__half));
    k_codes = DeviceBuffer<std::uint8_t>(rows * code_bytes);
    v_codes = DeviceBuffer<std::uint8_t>(k_codes.size());
    k_scales = DeviceBuffer<__half>(std::max<std::size_t>(1, rows * groups));
    v_scales = DeviceBuffer<__half>(k_scales.size());
    lengths = DeviceBuffer<std::int32_t>(shape.batch);
    detail::quantize_pool_kernel<T><<<detail::pool_grid(2 * rows), detail::kPoolCtaThreads, 0, stream.get()>>>(
        s, dense.k.data(), dense.v.data(), static_cast<std::int64_t>(rows), shape.head_dim, code_bytes, groups,
        pool());
    check_launch("DeviceQuantCache: quantize", stream.get());
    set_lengths(length);
    stream.synchronize();
  }

  // Every sequence at `length` tokens (synchronous).
  void set_lengths(int length) { lengths.copy_from(std::vector<std::int32_t>(shape.batch, length)); }

  QuantKVPool pool() const { return {k_codes.data(), v_codes.data(), k_scales.data(), v_scales.data()}; }
  QuantKVView view() const {
    return paged_quant_kv(storage, pool(), table, lengths.data(), shape.batch, shape.kv_heads, shape.head_dim,
                          shape.block_len, shape.blocks_per_seq);
  }
};

}  // namespace ekv::bench
