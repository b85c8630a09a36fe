// BlockAllocator: blocks handed out as sequences grow, all or nothing when the pool is
// full (nothing allocated, the error says how many were needed and free), free_sequence
// returns blocks for reuse, and restore() takes back only a consistent state.

#include <doctest/doctest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "ekv/cache/block_allocator.hpp"

TEST_CASE("sequences grow block by block from one pool; a full pool changes nothing") {
  ekv::BlockAllocator a(10, 3, 6, 16);
  a.grow(std::vector<std::int32_t>{17, 1});  // 2 blocks and 1
  CHECK(a.used_blocks() == 3);
  CHECK(a.blocks_of(0) == 2);
  CHECK(a.blocks_of(1) == 1);
  CHECK(a.blocks_of(2) == 0);
  a.grow(std::vector<std::int32_t>{32, 16, 48});  // no new block for 0 and 1; 3 for 2
  CHECK(a.used_blocks() == 6);
  std::set<std::int32_t> ids;
  for (int s = 0; s < 3; ++s) {
    for (int b = 0; b < a.blocks_of(s); ++b) ids.insert(a.block_id(s, b));
  }
  CHECK(ids.size() == 6);  // distinct pool blocks
  CHECK(*ids.rbegin() < 10);

  const auto tables = a.tables();
  const auto lengths = a.lengths();
  try {
    a.grow(std::vector<std::int32_t>{96, 16, 64});  // 4 + 0 + 1 = 5 more, 4 free
    FAIL("grew past the pool");
  } catch (const ekv::Error& e) {
    const std::string m = e.what();
    CHECK_MESSAGE(m.find("the pool is full: the batch needs 5 more blocks, 4 of 10 are free") != std::string::npos, m);
  }
  CHECK(a.tables() == tables);  // nothing allocated
  CHECK(a.lengths() == lengths);
  CHECK(a.free_blocks() == 4);
  CHECK_THROWS_WITH_AS(a.grow(std::vector<std::int32_t>{97}), doctest::Contains("supported: 0 to 96 tokens"),
                       ekv::Error);
  CHECK_THROWS_WITH_AS(a.grow(std::vector<std::int32_t>{1, 1, 1, 1}), doctest::Contains("the cache holds 3"),
                       ekv::Error);
  CHECK_THROWS_AS(a.block_id(1, 1), ekv::Error);
}

TEST_CASE("free_sequence returns a sequence's blocks, which the next sequence reuses") {
  ekv::BlockAllocator a(4, 2, 4, 8);
  a.grow(std::vector<std::int32_t>{32});
  CHECK(a.free_blocks() == 0);
  std::vector<std::int32_t> held;
  for (int b = 0; b < 4; ++b) held.push_back(a.block_id(0, b));
  a.free_sequence(0);
  CHECK(a.free_blocks() == 4);
  CHECK(a.lengths()[0] == 0);
  a.grow(std::vector<std::int32_t>{0, 30});
  std::vector<std::int32_t> again;
  for (int b = 0; b < 4; ++b) again.push_back(a.block_id(1, b));
  std::sort(held.begin(), held.end());
  std::sort(again.begin(), again.end());
  CHECK(held == again);
  CHECK_THROWS_WITH_AS(a.free_sequence(2), doctest::Contains("supported: 0 to 1"), ekv::Error);
}

TEST_CASE("restore takes a consistent state and refuses any other, unchanged") {
  ekv::BlockAllocator a(6, 2, 3, 4);
  a.grow(std::vector<std::int32_t>{9, 2});
  ekv::BlockAllocator b(6, 2, 3, 4);
  b.restore(a.tables(), a.lengths(), a.free_list());
  CHECK(b.tables() == a.tables());
  CHECK(b.free_list() == a.free_list());

  auto twice = a.free_list();
  twice.push_back(a.block_id(0, 0));  // a block both held and free
  CHECK_THROWS_WITH_AS(b.restore(a.tables(), a.lengths(), twice), doctest::Contains("held twice"), ekv::Error);
  auto missing = a.free_list();
  missing.pop_back();
  CHECK_THROWS_WITH_AS(b.restore(a.tables(), a.lengths(), missing), doctest::Contains("neither held nor free"),
                       ekv::Error);
  auto long_lengths = a.lengths();
  long_lengths[1] = 13;
  CHECK_THROWS_AS(b.restore(a.tables(), long_lengths, a.free_list()), ekv::Error);
  CHECK(b.tables() == a.tables());  // unchanged by the refused calls
  CHECK(b.lengths() == a.lengths());
}
