#pragma once
// The block table of an offloaded cache: one table for a sequence's blocks, each entry
// saying where its block lives, split on the host into one compacted paged view per
// side (GPU pool, pinned host pool), which exact decode and cpu_decode run on unchanged.
//
// Encoding: int32 [batch][max_blocks_per_seq], one entry per logical block. An entry
// e >= 0 is block e of the GPU pool; e < 0 is block -1 - e (= ~e) of the host pool. Both
// pools have the paged layout, K and V each [num_blocks][kv_heads][block_len][head_dim];
// a block's kv heads live together, so a location is per block, never per head.

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/cache/placement.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/span.hpp"

namespace ekv {

// The entry of host pool block `host_block`.
constexpr std::int32_t host_block_entry(std::int32_t host_block) { return -1 - host_block; }
constexpr bool is_host_entry(std::int32_t entry) { return entry < 0; }
// The host pool block of a host entry.
constexpr std::int32_t host_block_of(std::int32_t entry) { return -1 - entry; }

// An offloaded paged cache: the two pools and the one table (host memory, read on the
// host). gpu_k and gpu_v are device pointers, host_k and host_v host pointers (pinned, so
// blocks can move between the pools asynchronously); a pool of 0 blocks may be null.
template <typename T>
struct HybridKV {
  T* gpu_k = nullptr;
  T* gpu_v = nullptr;
  T* host_k = nullptr;
  T* host_v = nullptr;
  const std::int32_t* block_table = nullptr;  // int32 [batch][max_blocks_per_seq], encoded
  const std::int32_t* lengths = nullptr;      // int32 [batch]
  int gpu_blocks = 0;                         // pool sizes: entries are checked against them
  int host_blocks = 0;
  int batch = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int block_len = 0;
  int max_blocks_per_seq = 1;
};

// One side's compacted rows, host memory: table int32 [batch][max_blocks_per_seq] (pool
// block ids, the first ceil(length / block_len) of a row used) and lengths int32 [batch].
struct SideRows {
  std::int32_t* table = nullptr;
  std::int32_t* lengths = nullptr;
};

// Tokens (per kv head) on each side: the whole batch's, and the longest sequence's.
struct HybridSplit {
  std::int64_t gpu_tokens = 0;
  std::int64_t host_tokens = 0;
  int gpu_max_len = 0;
  int host_max_len = 0;
};

// Writes each side's compacted rows: a row lists the sequence's blocks on that side in
// logical order, so only the partial last block (on whichever side holds it) can come
// last, and the side's tokens are contiguous from 0 in its compacted view; its length is
// block_len per full block plus the last block's valid tokens where that side holds it.
// Attention over a set of blocks does not depend on their order, so the two sides' states
// merge to the whole sequence's. Lengths are clamped to block_len x max_blocks_per_seq,
// as decode does; entries past a sequence's blocks are not read, and rows are left as
// they were past their blocks. Throws ekv::Error for a negative length or an entry
// outside its pool.
template <typename T>
HybridSplit split_hybrid_table(const HybridKV<T>& kv, SideRows gpu, SideRows host) {
  if (kv.batch < 0 || kv.block_len < 1 || kv.max_blocks_per_seq < 1) {
    throw Error("split_hybrid_table: needs batch >= 0, block_len >= 1 and max_blocks_per_seq >= 1, got batch=" +
                std::to_string(kv.batch) + ", block_len=" + std::to_string(kv.block_len) +
                ", max_blocks_per_seq=" + std::to_string(kv.max_blocks_per_seq));
  }
  if (kv.batch == 0) return {};
  if (kv.block_table == nullptr || kv.lengths == nullptr || gpu.table == nullptr || gpu.lengths == nullptr ||
      host.table == nullptr || host.lengths == nullptr) {
    throw Error("split_hybrid_table: null block table, lengths or output rows");
  }
  const std::int64_t capacity = std::int64_t{kv.block_len} * kv.max_blocks_per_seq;
  HybridSplit split;
  for (int b = 0; b < kv.batch; ++b) {
    if (kv.lengths[b] < 0) {
      throw Error("split_hybrid_table: sequence " + std::to_string(b) + " has length " + std::to_string(kv.lengths[b]) +
                  "; lengths must be >= 0");
    }
    const int len = static_cast<int>(std::min<std::int64_t>(kv.lengths[b], capacity));
    const int blocks = sequence_blocks(len, kv.block_len);
    const std::int64_t row = std::int64_t{b} * kv.max_blocks_per_seq;
    int on_gpu = 0, on_host = 0, gpu_len = 0, host_len = 0;
    for (int i = 0; i < blocks; ++i) {
      const std::int32_t entry = kv.block_table[row + i];
      const bool on_host_side = is_host_entry(entry);
      const std::int32_t id = on_host_side ? host_block_of(entry) : entry;
      const int pool_blocks = on_host_side ? kv.host_blocks : kv.gpu_blocks;
      if (id >= pool_blocks) {
        const std::string pool = on_host_side ? "host" : "GPU";
        throw Error("split_hybrid_table: sequence " + std::to_string(b) + ", block " + std::to_string(i) + " is " +
                    pool + " block " + std::to_string(id) + ", outside the " + pool + " pool of " +
                    std::to_string(pool_blocks) + " blocks");
      }
      const int tokens = block_valid_tokens(len, kv.block_len, i);
      if (on_host_side) {
        host.table[row + on_host++] = id;
        host_len += tokens;
      } else {
        gpu.table[row + on_gpu++] = id;
        gpu_len += tokens;
      }
    }
    gpu.lengths[b] = gpu_len;
    host.lengths[b] = host_len;
    split.gpu_tokens += gpu_len;
    split.host_tokens += host_len;
    split.gpu_max_len = std::max(split.gpu_max_len, gpu_len);
    split.host_max_len = std::max(split.host_max_len, host_len);
  }
  return split;
}

// The paged views of the two sides over rows that split_hybrid_table wrote: first the
// GPU pool's (with gpu's rows, which the GPU must read: device copies of them), then the
// host pool's. A row per sequence serves all its kv heads.
template <typename T>
std::pair<KVView<T>, KVView<T>> hybrid_side_views(const HybridKV<T>& kv, SideRows gpu, SideRows host) {
  return {paged_kv<T>(kv.gpu_k, kv.gpu_v, gpu.table, gpu.lengths, kv.batch, kv.kv_heads, kv.head_dim, kv.block_len,
                      kv.max_blocks_per_seq),
          paged_kv<T>(kv.host_k, kv.host_v, host.table, host.lengths, kv.batch, kv.kv_heads, kv.head_dim,
                      kv.block_len, kv.max_blocks_per_seq)};
}

// A table for fresh pools holding a placement's blocks: GPU blocks numbered 0, 1, ... and
// host blocks 0, 1, ... in (sequence, logical block) order, encoded as above; entries
// past a sequence's blocks are 0 and unused. The pools need placement.gpu_blocks and
// placement.host_blocks blocks. lengths as for place_blocks, which made the placement.
inline std::vector<std::int32_t> number_hybrid_blocks(const Placement& placement, Span<const std::int32_t> lengths,
                                                      int block_len, int max_blocks_per_seq) {
  const std::size_t entries = lengths.size() * static_cast<std::size_t>(std::max(0, max_blocks_per_seq));
  if (block_len < 1 || max_blocks_per_seq < 1 || placement.locations.size() != entries) {
    throw Error("number_hybrid_blocks: the placement holds " + std::to_string(placement.locations.size()) +
                " entries, the lengths and max_blocks_per_seq=" + std::to_string(max_blocks_per_seq) + " make " +
                std::to_string(entries) + " (block_len=" + std::to_string(block_len) + ")");
  }
  std::vector<std::int32_t> table(entries, 0);
  const std::int64_t capacity = std::int64_t{block_len} * max_blocks_per_seq;
  std::int32_t gpu = 0, host = 0;
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    const int len = static_cast<int>(std::clamp<std::int64_t>(lengths[b], 0, capacity));
    for (int i = 0; i < sequence_blocks(len, block_len); ++i) {
      const std::size_t at = b * max_blocks_per_seq + i;
      table[at] = placement.locations[at] == BlockLocation::kGpu ? gpu++ : host_block_entry(host++);
    }
  }
  return table;
}

}  // namespace ekv
