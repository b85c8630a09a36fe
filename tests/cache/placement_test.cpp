// place_blocks: the GPU budget in blocks, the order in which the GPU takes them (window
// and sinks by rank, shared across sequences; then by score; then newest), and its
// rejections.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "ekv/cache/placement.hpp"

namespace {

constexpr int kBlockLen = 16;
constexpr std::size_t kBlockBytes = 1000;

// The (sequence, block) pairs placed on the GPU.
std::set<std::pair<int, int>> on_gpu(const ekv::Placement& p, int max_blocks_per_seq) {
  std::set<std::pair<int, int>> out;
  for (std::size_t i = 0; i < p.locations.size(); ++i) {
    if (p.locations[i] == ekv::BlockLocation::kGpu) {
      out.insert({static_cast<int>(i / max_blocks_per_seq), static_cast<int>(i % max_blocks_per_seq)});
    }
  }
  return out;
}

ekv::Placement place(const ekv::PlacementPolicy& policy, const std::vector<std::int32_t>& lengths, int max_blocks,
                     int gpu_blocks, const float* scores = nullptr) {
  return ekv::place_blocks(policy, lengths, kBlockLen, max_blocks, kBlockBytes, gpu_blocks * kBlockBytes, scores);
}

}  // namespace

TEST_CASE("place_blocks: the budget counts whole blocks; blocks past a sequence stay unused on the host") {
  const std::vector<std::int32_t> lengths = {153, 0, 16, 17};  // 10, 0, 1 and 2 blocks
  const ekv::PlacementPolicy policy{1, 2};
  for (int budget : {0, 1, 5, 13, 14, 100}) {
    INFO("budget=" << budget);
    const ekv::Placement p = place(policy, lengths, 12, budget);
    REQUIRE(p.locations.size() == 4u * 12);
    CHECK(p.gpu_blocks == std::min(budget, 13));
    CHECK(p.host_blocks == 13 - p.gpu_blocks);
    CHECK(static_cast<int>(on_gpu(p, 12).size()) == p.gpu_blocks);
    for (const auto& [seq, block] : on_gpu(p, 12)) CHECK(block * kBlockLen < lengths[seq]);
  }
  // a budget between whole blocks rounds down
  CHECK(ekv::place_blocks(policy, lengths, kBlockLen, 12, kBlockBytes, 3 * kBlockBytes - 1).gpu_blocks == 2);
  // a length past the capacity counts the capacity's blocks
  CHECK(ekv::place_blocks(policy, std::vector<std::int32_t>{1000}, kBlockLen, 4, kBlockBytes, 100 * kBlockBytes)
            .gpu_blocks == 4);
}

TEST_CASE("place_blocks: newest block, first block, then alternating window and sinks, then newest") {
  const std::vector<std::int32_t> one = {153};  // blocks 0..9, block 9 partial
  const ekv::PlacementPolicy policy{2, 3};
  using Blocks = std::set<std::pair<int, int>>;
  CHECK(on_gpu(place(policy, one, 10, 1), 10) == Blocks{{0, 9}});
  CHECK(on_gpu(place(policy, one, 10, 2), 10) == Blocks{{0, 9}, {0, 0}});
  CHECK(on_gpu(place(policy, one, 10, 3), 10) == Blocks{{0, 9}, {0, 0}, {0, 8}});
  CHECK(on_gpu(place(policy, one, 10, 5), 10) == Blocks{{0, 9}, {0, 0}, {0, 8}, {0, 1}, {0, 7}});
  // then the newest of the others
  CHECK(on_gpu(place(policy, one, 10, 7), 10) == Blocks{{0, 9}, {0, 0}, {0, 8}, {0, 1}, {0, 7}, {0, 6}, {0, 5}});
  // window and sinks overlapping in a short sequence: each block once
  CHECK(on_gpu(place(policy, std::vector<std::int32_t>{40}, 3, 3), 3) == Blocks{{0, 0}, {0, 1}, {0, 2}});
}

TEST_CASE("place_blocks: a tight budget gives every sequence its newest blocks first") {
  const std::vector<std::int32_t> lengths = {100, 300, 20, 0};
  const ekv::PlacementPolicy policy{1, 4};
  using Blocks = std::set<std::pair<int, int>>;
  CHECK(on_gpu(place(policy, lengths, 19, 3), 19) == Blocks{{0, 6}, {1, 18}, {2, 1}});
  // then the sinks (sequence 2's first block is in its window, at rank 2)...
  CHECK(on_gpu(place(policy, lengths, 19, 5), 19) == Blocks{{0, 6}, {1, 18}, {2, 1}, {0, 0}, {1, 0}});
  // ...then every second newest block
  CHECK(on_gpu(place(policy, lengths, 19, 8), 19) ==
        Blocks{{0, 6}, {1, 18}, {2, 1}, {0, 0}, {1, 0}, {0, 5}, {1, 17}, {2, 0}});
}

TEST_CASE("place_blocks: scores order the blocks outside window and sinks; NaN counts as -inf") {
  const std::vector<std::int32_t> lengths = {160, 160};  // 10 full blocks each
  const int max_blocks = 10;
  std::vector<float> scores(2 * max_blocks, 0.0f);
  scores[3] = 5.0f;                                      // sequence 0, block 3
  scores[max_blocks + 2] = 7.0f;                         // sequence 1, block 2
  scores[max_blocks + 5] = std::nanf("");                // below every number
  scores[4] = -INFINITY;                                 // ties with NaN; newer wins
  scores[max_blocks + 9] = -100.0f;                      // window: the score does not matter
  const ekv::PlacementPolicy policy{1, 1};
  using Blocks = std::set<std::pair<int, int>>;
  const Blocks protected_blocks = {{0, 9}, {1, 9}, {0, 0}, {1, 0}};
  Blocks expect = protected_blocks;
  expect.insert({{1, 2}, {0, 3}});
  CHECK(on_gpu(place(policy, lengths, max_blocks, 6, scores.data()), max_blocks) == expect);
  // then the zeros, newest first and sequence 0 before 1: blocks 8 of each
  expect.insert({{0, 8}, {1, 8}});
  CHECK(on_gpu(place(policy, lengths, max_blocks, 8, scores.data()), max_blocks) == expect);
  // with 18 of the 20 on the GPU, the NaN and the -inf stay on the host
  const ekv::Placement p = place(policy, lengths, max_blocks, 18, scores.data());
  CHECK(p.locations[4] == ekv::BlockLocation::kHost);
  CHECK(p.locations[max_blocks + 5] == ekv::BlockLocation::kHost);
  // with 19, the newer of the two comes first: sequence 1's block 5 is newer than 0's block 4
  const ekv::Placement q = place(policy, lengths, max_blocks, 19, scores.data());
  CHECK(q.locations[4] == ekv::BlockLocation::kHost);
  CHECK(q.locations[max_blocks + 5] == ekv::BlockLocation::kGpu);
}

TEST_CASE("place_blocks rejects what it cannot place") {
  const std::vector<std::int32_t> lengths = {10};
  CHECK_THROWS_WITH_AS(ekv::place_blocks({-1, 2}, lengths, kBlockLen, 4, kBlockBytes, 0),
                       "place_blocks: sink_blocks=-1 and window_blocks=2 must be >= 0", ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::place_blocks({}, lengths, kBlockLen, 4, 0, 0),
                       "place_blocks: block_len and max_blocks_per_seq must be >= 1 and block_bytes > 0, got "
                       "block_len=16, max_blocks_per_seq=4, block_bytes=0",
                       ekv::Error);
  CHECK_THROWS_AS(ekv::place_blocks({}, lengths, 0, 4, kBlockBytes, 0), ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::place_blocks({}, std::vector<std::int32_t>{5, -1}, kBlockLen, 4, kBlockBytes, 0),
                       "place_blocks: sequence 1 has length -1; lengths must be >= 0", ekv::Error);
}
