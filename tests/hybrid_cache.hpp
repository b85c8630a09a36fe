#pragma once
// A paged HostCache (decode_check.hpp) offloaded: its blocks copied into a GPU pool and a
// host pool (both host vectors here; GPU tests copy the first to the device) by a
// placement, with each pool's block ids shuffled so that the split's use of them matters.

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "decode_check.hpp"
#include "ekv/cache/hybrid_table.hpp"
#include "ekv/cache/placement.hpp"

namespace ekv::test {

template <typename T>
struct OffloadedCache {
  std::vector<T> gpu_k, gpu_v, host_k, host_v;
  std::vector<std::int32_t> table;  // encoded
  int gpu_blocks = 0, host_blocks = 0;

  // The cache over pools wherever they live; table and lengths on the host.
  HybridKV<T> view(const HostCache<T>& cache, T* gk, T* gv, T* hk, T* hv) const {
    HybridKV<T> kv;
    kv.gpu_k = gk;
    kv.gpu_v = gv;
    kv.host_k = hk;
    kv.host_v = hv;
    kv.block_table = table.data();
    kv.lengths = cache.lengths.data();
    kv.gpu_blocks = gpu_blocks;
    kv.host_blocks = host_blocks;
    kv.batch = cache.shape.batch();
    kv.kv_heads = cache.shape.kv_heads;
    kv.head_dim = cache.shape.head_dim;
    kv.block_len = cache.block_len;
    kv.max_blocks_per_seq = cache.blocks_per_seq;
    return kv;
  }
};

// Each existing block on the host with probability host_fraction.
inline std::vector<BlockLocation> random_locations(const std::vector<std::int32_t>& lengths, int block_len,
                                                   int blocks_per_seq, double host_fraction, std::uint64_t seed) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::vector<BlockLocation> out(lengths.size() * blocks_per_seq, BlockLocation::kHost);
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    for (int i = 0; i < sequence_blocks(lengths[b], block_len); ++i) {
      out[b * blocks_per_seq + i] =
          std::bernoulli_distribution(host_fraction)(rng) ? BlockLocation::kHost : BlockLocation::kGpu;
    }
  }
  return out;
}

template <typename T>
OffloadedCache<T> offload(const HostCache<T>& cache, const std::vector<BlockLocation>& locations, std::uint64_t seed) {
  REQUIRE(cache.shape.layout == Layout::kPaged);
  const int bps = cache.blocks_per_seq;
  Placement placement{locations, 0, 0};
  for (std::size_t b = 0; b < cache.lengths.size(); ++b) {
    for (int i = 0; i < sequence_blocks(cache.lengths[b], cache.block_len); ++i) {
      ++(locations[b * bps + i] == BlockLocation::kGpu ? placement.gpu_blocks : placement.host_blocks);
    }
  }
  OffloadedCache<T> off;
  off.gpu_blocks = placement.gpu_blocks;
  off.host_blocks = placement.host_blocks;
  off.table = number_hybrid_blocks(placement, cache.lengths, cache.block_len, bps);
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::vector<std::int32_t> gpu_ids(off.gpu_blocks), host_ids(off.host_blocks);
  std::iota(gpu_ids.begin(), gpu_ids.end(), 0);
  std::iota(host_ids.begin(), host_ids.end(), 0);
  std::shuffle(gpu_ids.begin(), gpu_ids.end(), rng);
  std::shuffle(host_ids.begin(), host_ids.end(), rng);

  const std::size_t block = static_cast<std::size_t>(cache.shape.kv_heads) * cache.block_len * cache.shape.head_dim;
  // an empty pool still gets one block of storage: cpu_decode rejects null K and V even
  // where it reads nothing
  off.gpu_k.resize(block * std::max(1, off.gpu_blocks));
  off.gpu_v.resize(off.gpu_k.size());
  off.host_k.resize(block * std::max(1, off.host_blocks));
  off.host_v.resize(off.host_k.size());
  for (std::size_t b = 0; b < cache.lengths.size(); ++b) {
    for (int i = 0; i < sequence_blocks(cache.lengths[b], cache.block_len); ++i) {
      const std::size_t at = b * bps + i;
      std::int32_t& entry = off.table[at];
      const bool host = is_host_entry(entry);
      const std::int32_t id = host ? host_ids[host_block_of(entry)] : gpu_ids[entry];
      entry = host ? host_block_entry(id) : id;
      const std::size_t src = static_cast<std::size_t>(cache.table[at]) * block;
      const std::size_t dst = static_cast<std::size_t>(id) * block;
      std::copy_n(cache.k.begin() + src, block, (host ? off.host_k : off.gpu_k).begin() + dst);
      std::copy_n(cache.v.begin() + src, block, (host ? off.host_v : off.gpu_v).begin() + dst);
    }
  }
  return off;
}

}  // namespace ekv::test
