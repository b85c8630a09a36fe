#pragma once
// place_blocks: which blocks of an offloaded cache live in GPU memory, given a GPU byte
// budget; the rest live in pinned host memory, where the CPU attends to them. Host code.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/span.hpp"

namespace ekv {

enum class BlockLocation : std::uint8_t { kGpu, kHost };

// What the GPU holds first: each sequence's newest blocks (the window: the partial last
// block, which appends write, and the blocks decode attends to most) and its first
// blocks (attention sinks), then the blocks with the highest scores.
struct PlacementPolicy {
  int sink_blocks = 1;
  int window_blocks = 8;
};

struct Placement {
  // [batch][max_blocks_per_seq]; entries past a sequence's last block are kHost and unused
  std::vector<BlockLocation> locations;
  int gpu_blocks = 0;   // blocks placed on the GPU
  int host_blocks = 0;  // blocks placed on the host
};

// Places every block of a batch (lengths: int32 [batch] tokens, clamped to
// block_len x max_blocks_per_seq) so that at most gpu_budget_bytes / block_bytes blocks
// are on the GPU (block_bytes: one block's K and V, all kv heads and the layers that
// share the placement). The GPU takes blocks in this order until the budget is spent:
//   1. window and sinks, by rank within their sequence: each sequence's newest block,
//      then its first, then its second newest, its second... (window before sink at
//      equal rank, then lower sequence first), so a tight budget is shared fairly;
//   2. the other blocks by score, highest first (scores: float [batch][max_blocks_per_seq],
//      e.g. how often elastic selection picked a block or its summed importance; NaN
//      counts as -inf), then newest first, then lower sequence first. Without scores,
//      newest first.
// Throws ekv::Error for a negative length or policy count, block_len or
// max_blocks_per_seq < 1, or block_bytes 0.
inline Placement place_blocks(const PlacementPolicy& policy, Span<const std::int32_t> lengths, int block_len,
                              int max_blocks_per_seq, std::size_t block_bytes, std::size_t gpu_budget_bytes,
                              const float* scores = nullptr) {
  if (policy.sink_blocks < 0 || policy.window_blocks < 0) {
    throw Error("place_blocks: sink_blocks=" + std::to_string(policy.sink_blocks) +
                " and window_blocks=" + std::to_string(policy.window_blocks) + " must be >= 0");
  }
  if (block_len < 1 || max_blocks_per_seq < 1 || block_bytes == 0) {
    throw Error("place_blocks: block_len and max_blocks_per_seq must be >= 1 and block_bytes > 0, got block_len=" +
                std::to_string(block_len) + ", max_blocks_per_seq=" + std::to_string(max_blocks_per_seq) +
                ", block_bytes=" + std::to_string(block_bytes));
  }
  const int batch = static_cast<int>(lengths.size());
  Placement placement;
  placement.locations.assign(static_cast<std::size_t>(batch) * max_blocks_per_seq, BlockLocation::kHost);

  // Sorted ascending, so the GPU takes candidates from the front. tier 0: window and
  // sinks (rank, window before sink); tier 1: the others (-score, age).
  struct Candidate {
    int tier;
    float key;
    int rank;
    int seq;
    int block;
  };
  std::vector<Candidate> candidates;
  const std::int64_t capacity = std::int64_t{block_len} * max_blocks_per_seq;
  for (int b = 0; b < batch; ++b) {
    if (lengths[b] < 0) {
      throw Error("place_blocks: sequence " + std::to_string(b) + " has length " + std::to_string(lengths[b]) +
                  "; lengths must be >= 0");
    }
    const int blocks = sequence_blocks(static_cast<int>(std::min<std::int64_t>(lengths[b], capacity)), block_len);
    for (int i = 0; i < blocks; ++i) {
      const int age = blocks - 1 - i;
      const std::int64_t at = std::int64_t{b} * max_blocks_per_seq + i;
      if (age < policy.window_blocks) {
        candidates.push_back({0, 0.0f, 2 * age, b, i});
      } else if (i < policy.sink_blocks) {
        candidates.push_back({0, 0.0f, 2 * i + 1, b, i});
      } else {
        const float score = scores != nullptr && !std::isnan(scores[at]) ? scores[at] : -INFINITY;
        candidates.push_back({1, scores != nullptr ? -score : 0.0f, age, b, i});
      }
    }
  }
  const std::size_t gpu = std::min<std::size_t>(gpu_budget_bytes / block_bytes, candidates.size());
  std::partial_sort(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(gpu), candidates.end(),
                    [](const Candidate& x, const Candidate& y) {
                      return std::tie(x.tier, x.key, x.rank, x.seq) < std::tie(y.tier, y.key, y.rank, y.seq);
                    });
  for (std::size_t c = 0; c < gpu; ++c) {
    placement.locations[static_cast<std::size_t>(candidates[c].seq) * max_blocks_per_seq + candidates[c].block] =
        BlockLocation::kGpu;
  }
  placement.gpu_blocks = static_cast<int>(gpu);
  placement.host_blocks = static_cast<int>(candidates.size() - gpu);
  return placement;
}

}  // namespace ekv
