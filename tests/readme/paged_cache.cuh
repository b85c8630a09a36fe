#pragma once
// The cache the README's GPU snippets run on: a batch of sequences of uneven lengths in a
// paged pool of random K and V (blocks handed out shuffled), random queries, outputs
// poisoned with NaN, and the same cache in host memory for the float64 references.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include <ekv/ekv.cuh>

#include "harness/random.hpp"

namespace ekv::readme {

template <typename T>
struct PagedCache {
  static constexpr int kBatch = 3, kQHeads = 16, kKvHeads = 4, kHeadDim = 128, kBlockLen = 16, kMaxBlocks = 40;
  static constexpr int kPoolBlocks = kBatch * kMaxBlocks, kRows = kBatch * kQHeads;
  static constexpr std::size_t kPoolElems = std::size_t{kPoolBlocks} * kKvHeads * kBlockLen * kHeadDim;

  explicit PagedCache(std::uint64_t seed)
      : k_host(bench::random_uniform<T>(kPoolElems, -1.0f, 1.0f, seed)),
        v_host(bench::random_uniform<T>(kPoolElems, -1.0f, 1.0f, seed + 1)),
        q_host(bench::random_uniform<T>(kRows * kHeadDim, -1.0f, 1.0f, seed + 2)),
        table_host(kPoolBlocks),
        lengths_host{kMaxBlocks * kBlockLen, 1, 333},
        k(kPoolElems), v(kPoolElems), q(kRows * kHeadDim), o(kRows * kHeadDim), lse(kRows),
        table(kPoolBlocks), lengths(kBatch) {
    std::iota(table_host.begin(), table_host.end(), 0);
    std::shuffle(table_host.begin(), table_host.end(), std::mt19937_64(seed + 3));
    k.copy_from(k_host);
    v.copy_from(v_host);
    q.copy_from(q_host);
    table.copy_from(table_host);
    lengths.copy_from(lengths_host);
    poison_outputs();
  }

  void poison_outputs() {
    o.copy_from(std::vector<T>(o.size(), DTypeTraits<T>::from_float(std::numeric_limits<float>::quiet_NaN())));
    lse.copy_from(std::vector<float>(lse.size(), std::numeric_limits<float>::quiet_NaN()));
  }

  KVView<T> host_view() {
    return paged_kv<T>(k_host.data(), v_host.data(), table_host.data(), lengths_host.data(), kBatch, kKvHeads,
                       kHeadDim, kBlockLen, kMaxBlocks);
  }

  std::vector<T> output(const Stream& stream) const {
    std::vector<T> got(o.size());
    o.copy_to(got, stream);
    stream.synchronize();
    return got;
  }

  std::vector<T> k_host, v_host, q_host;
  std::vector<std::int32_t> table_host, lengths_host;
  DeviceBuffer<T> k, v, q, o;
  DeviceBuffer<float> lse;
  DeviceBuffer<std::int32_t> table, lengths;
};

}  // namespace ekv::readme
