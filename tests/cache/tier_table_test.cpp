// TierTable, the bookkeeping of a two-tier cache, on the host: the first placement (sinks
// and window first, within the slots), appends taking free slots and then victims, the
// write-back rule, batch appends all or nothing, promotions (free slots first, then the
// coldest demotable block; pinned, unwritten and recently selected blocks never demoted; up
// to a limit), the moving state (not resident until complete, or at once for a copy ordered
// before every read), refusals that change nothing, and a long random run of appends,
// selections, promotions and completions with the table checked (TierTable::check) and the
// residents' count matched against a model after every step.

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "ekv/cache/tier_table.hpp"
#include "test_seed.hpp"

namespace {

using ekv::BlockRef;
using ekv::TierMove;
using ekv::TierPolicy;
using ekv::TierTable;

TierPolicy policy(int sinks, int window, int moves, int idle) {
  TierPolicy p;
  p.sink_blocks = sinks;
  p.window_blocks = window;
  p.max_moves_per_step = moves;
  p.min_idle_steps = idle;
  return p;
}

int residents(const TierTable& t, int seq) {
  int n = 0;
  for (int i = 0; i < t.blocks(seq); ++i) n += t.gpu_slot(seq, i) >= 0;
  return n;
}

}  // namespace

TEST_CASE("TierTable places sinks and windows first, and every slot once") {
  const std::vector<std::int32_t> lengths = {640, 100, 0};  // 10, 2 and 0 blocks of 64
  TierTable t(3, 16, 6, policy(1, 2, 4, 2));
  const std::vector<ekv::TierSlot> placed = t.place(lengths, 64);
  CHECK(placed.size() == 6);
  t.check();
  // window (newest 2) and sink of sequence 0, both blocks of sequence 1
  CHECK(t.gpu_slot(0, 9) >= 0);
  CHECK(t.gpu_slot(0, 8) >= 0);
  CHECK(t.gpu_slot(0, 0) >= 0);
  CHECK(t.gpu_slot(1, 0) >= 0);
  CHECK(t.gpu_slot(1, 1) >= 0);
  CHECK(residents(t, 0) == 4);  // one more, newest first: block 7
  CHECK(t.gpu_slot(0, 7) >= 0);
  CHECK(t.free_slots() == 0);
  std::set<int> slots;
  for (const ekv::TierSlot& s : placed) slots.insert(s.slot);
  CHECK(slots.size() == 6);
  for (int i = 0; i < 10; ++i) CHECK(t.host_valid(0, i));
  CHECK(t.host_block(1, 1) == 17);
  CHECK_THROWS_WITH_AS(t.place(lengths, 64), "TierTable::place: the table is placed already", ekv::Error);
}

TEST_CASE("TierTable refuses a budget below the windows, bad shapes and bad lengths") {
  CHECK_THROWS_AS(TierTable(1, 4, 2, policy(0, 0, 1, 1)), ekv::Error);
  CHECK_THROWS_AS(TierTable(-1, 4, 2, policy(0, 1, 1, 1)), ekv::Error);
  CHECK_THROWS_AS(TierTable(1, 0, 2, policy(0, 1, 1, 1)), ekv::Error);
  {
    TierTable t(2, 4, 1, policy(0, 1, 1, 1));  // two sequences need two windows
    const std::vector<std::int32_t> lengths = {64, 64};
    CHECK_THROWS_WITH_AS(t.place(lengths, 64),
                         doctest::Contains("the GPU budget of 1 blocks is below the sinks and windows"), ekv::Error);
  }
  TierTable t(1, 4, 2, policy(0, 1, 1, 1));
  const std::vector<std::int32_t> too_long = {257};
  CHECK_THROWS_WITH_AS(t.place(too_long, 64), doctest::Contains("outside 0 .. 256"), ekv::Error);
  CHECK_THROWS_WITH_AS(t.gpu_slot(1, 0), doctest::Contains("sequence 1 outside 0 .. 0"), ekv::Error);
}

TEST_CASE("TierTable appends: free slots, then victims; filled blocks wait for their write-back") {
  TierTable t(1, 8, 3, policy(1, 1, 4, 2));
  const std::vector<std::int32_t> lengths = {64};  // one full block: sink and window
  t.place(lengths, 64);
  CHECK(t.free_slots() == 2);
  std::vector<BlockRef> filled;
  // 64 tokens into block 1 (new, free slot), filling it
  CHECK(t.append(0, 64, 10, &filled).size() == 1);
  CHECK(filled.size() == 1);
  CHECK(filled[0].block == 1);
  CHECK_FALSE(t.host_valid(0, 1));
  // block 2 takes the last free slot
  filled.clear();
  CHECK(t.append(0, 1, 11, &filled).size() == 1);
  CHECK(filled.empty());
  CHECK(t.free_slots() == 0);
  // block 3 needs a victim: block 1 is neither sink nor window, but unwritten
  CHECK_THROWS_WITH_AS(t.append(0, 64, 12), doctest::Contains("no GPU slot for sequence 0's block 3"), ekv::Error);
  CHECK(t.length(0) == 129);  // nothing changed
  t.check();
  t.mark_written({0, 1});
  // written, but selected at step 10 < 2 steps before 12: still too recent
  CHECK_THROWS_AS(t.append(0, 64, 11), ekv::Error);
  const std::vector<ekv::TierSlot> got = t.append(0, 64, 12, &filled);
  REQUIRE(got.size() == 1);
  CHECK(got[0].block.block == 3);
  CHECK(t.gpu_slot(0, 1) == -1);  // demoted, its host copy holds it
  CHECK(t.state(0, 1) == TierTable::State::kHostOnly);
  CHECK(t.length(0) == 193);
  // block 2 was the partial block when filled: it is filled by this append, block 3 not
  REQUIRE(filled.size() == 1);
  CHECK(filled[0].block == 2);
  t.check();
}

TEST_CASE("TierTable appends a batch all or nothing") {
  TierTable t(3, 8, 5, policy(0, 1, 4, 1));
  const std::vector<std::int32_t> lengths = {64, 64, 64};  // one full block each: the windows
  t.place(lengths, 64);
  CHECK(t.free_slots() == 2);
  for (int b = 0; b < 3; ++b) t.note_selected({b, 0}, 5);
  std::vector<BlockRef> filled;
  // at step 5 every sequence starts a block: three new blocks, two free slots, and no victim
  // (the blocks 0 leave their windows but were selected at this step): refused, nothing changed
  const std::vector<int> one = {1, 1, 1};
  CHECK_THROWS_WITH_AS(t.append(one, 5, &filled), doctest::Contains("no GPU slot for sequence 0's block 1"),
                       ekv::Error);
  for (int b = 0; b < 3; ++b) CHECK(t.length(b) == 64);
  CHECK(t.free_slots() == 2);
  CHECK(filled.empty());
  t.check();
  // two of them fit
  const std::vector<int> two = {1, 0, 1};
  const std::vector<ekv::TierSlot> got = t.append(two, 5, &filled);
  REQUIRE(got.size() == 2);
  CHECK(got[0].block.seq == 0);
  CHECK(got[1].block.seq == 2);
  CHECK(t.length(0) == 65);
  CHECK(t.length(1) == 64);
  CHECK(t.free_slots() == 0);
  t.check();
  // at step 9 sequence 1's block 1 needs a victim, judged at the grown lengths: the blocks 0
  // (placed, so their host copies are valid) are all out of their windows and idle; the
  // coldest, ties by slot, is sequence 0's
  const std::vector<int> last = {0, 1, 0};
  REQUIRE(t.append(last, 9, &filled).size() == 1);
  CHECK(t.gpu_slot(0, 0) == -1);
  CHECK(t.gpu_slot(1, 1) >= 0);
  t.check();
  const std::vector<int> wrong = {1, 1};
  CHECK_THROWS_WITH_AS(t.append(wrong, 10), doctest::Contains("needs 3 token counts, got 2"), ekv::Error);
  const std::vector<int> too_many = {0, 0, 64 * 8};
  CHECK_THROWS_WITH_AS(t.append(too_many, 10), doctest::Contains("sequence 2 of 65 tokens cannot take 512 more"),
                       ekv::Error);
  CHECK(t.length(2) == 65);
}

TEST_CASE("TierTable promotions stop at a limit, and a promotion may complete at once") {
  TierTable t(1, 32, 5, policy(0, 1, 8, 1));
  const std::vector<std::int32_t> lengths = {64 * 20};
  t.place(lengths, 64);  // window 19, then 18, 17, 16, 15
  for (int b : {15, 16, 17, 18, 19}) t.note_selected({0, b}, 1);
  const std::vector<BlockRef> wanted = {{0, 3}, {0, 4}, {0, 5}};
  // the step selected 3, 4, 5 and 18 (noted first, so 18 is no victim)
  for (const BlockRef& b : wanted) t.note_selected(b, 2);
  t.note_selected({0, 18}, 2);
  const std::vector<TierMove> moves = t.plan_promotions(wanted, 2, 2);
  REQUIRE(moves.size() == 2);  // the limit: 15, 16 and 17 could go, and the policy allows 8
  for (const TierMove& m : moves) {
    CHECK((m.victim.block == 15 || m.victim.block == 16));  // coldest, then by slot
    t.complete(m);  // the copy ordered before every read: resident at once
  }
  CHECK(t.gpu_slot(0, 3) >= 0);
  CHECK(t.gpu_slot(0, 4) >= 0);
  CHECK(t.gpu_slot(0, 17) >= 0);
  CHECK(t.gpu_slot(0, 18) >= 0);
  CHECK(t.gpu_slot(0, 5) == -1);
  t.check();
}

TEST_CASE("TierTable promotions take free slots, then the coldest demotable blocks") {
  TierTable t(1, 32, 6, policy(1, 2, 3, 2));
  const std::vector<std::int32_t> lengths = {64 * 20};
  t.place(lengths, 64);  // sink 0, window 18 and 19, then 17, 16, 15
  CHECK(t.free_slots() == 0);
  for (int b : {15, 16}) t.note_selected({0, b}, 9);  // recent
  t.note_selected({0, 17}, 2);                      // cold
  const std::vector<BlockRef> wanted = {{0, 3}, {0, 4}, {0, 5}, {0, 6}, {0, 18}};
  // at step 10: victims need last selection <= 8: block 17 (step 2) only
  std::vector<TierMove> moves = t.plan_promotions(wanted, 10);
  REQUIRE(moves.size() == 1);
  CHECK(moves[0].block.block == 3);
  CHECK(moves[0].victim.block == 17);
  CHECK(t.gpu_slot(0, 17) == -1);
  CHECK(t.gpu_slot(0, 3) == -1);  // moving: not resident yet
  CHECK(t.state(0, 3) == TierTable::State::kMoving);
  t.check();
  CHECK(t.resident_blocks() == 5);
  t.complete(moves[0]);
  CHECK(t.gpu_slot(0, 3) == moves[0].slot);
  CHECK_THROWS_WITH_AS(t.complete(moves[0]), doctest::Contains("is not moving into slot"), ekv::Error);
  // much later, 15 and 16 are cold too, 3 (never selected since its move) as well; at most 3 moves
  moves = t.plan_promotions(wanted, 100);
  CHECK(moves.size() == 3);
  for (const TierMove& m : moves) {
    CHECK(m.victim.block != 0);  // the sink
    CHECK(m.victim.block < 18);  // the window
    t.complete(m);
  }
  t.check();
  CHECK(t.gpu_slot(0, 0) >= 0);
  CHECK(t.gpu_slot(0, 18) >= 0);
  CHECK(t.gpu_slot(0, 19) >= 0);
}

TEST_CASE("TierTable under a random run stays consistent") {
  std::mt19937 rng(ekv::test::seed());
  const int batch = 3, max_blocks = 64, slots = 40;
  TierTable t(batch, max_blocks, slots, policy(1, 3, 5, 3));
  const std::vector<std::int32_t> lengths = {64 * 10 + 5, 64 * 3, 64 * 20};
  t.place(lengths, 64);
  t.check();
  std::vector<TierMove> in_flight;
  std::vector<BlockRef> unwritten;
  int promoted = 0, demoted = 0;
  for (std::int64_t step = 0; step < 600; ++step) {
    if (step % 3 == 0 && !in_flight.empty()) {  // copies finish some steps later
      for (const TierMove& m : in_flight) t.complete(m);
      in_flight.clear();
    }
    if (step % 5 == 0) {
      for (const BlockRef& b : unwritten) t.mark_written(b);
      unwritten.clear();
    }
    for (int b = 0; b < batch; ++b) {
      const int tokens = std::min(1 + static_cast<int>(rng() % 9), max_blocks * 64 - t.length(b));
      if (tokens > 0) t.append(b, tokens, step, &unwritten);
    }
    std::vector<BlockRef> wanted;
    for (int b = 0; b < batch; ++b) {
      for (int k = 0; k < 4; ++k) {
        const BlockRef r{b, static_cast<int>(rng() % t.blocks(b))};
        CHECK(t.note_selected(r, step) == t.gpu_slot(r.seq, r.block));  // its slot where resident
        if (t.state(r.seq, r.block) == TierTable::State::kHostOnly && t.host_valid(r.seq, r.block)) {
          wanted.push_back(r);
        }
      }
    }
    std::sort(wanted.begin(), wanted.end(), [](BlockRef x, BlockRef y) {
      return x.seq != y.seq ? x.seq < y.seq : x.block < y.block;
    });
    wanted.erase(std::unique(wanted.begin(), wanted.end(),
                             [](BlockRef x, BlockRef y) { return x.seq == y.seq && x.block == y.block; }),
                 wanted.end());
    if (in_flight.empty()) {
      in_flight = t.plan_promotions(wanted, step);
      promoted += static_cast<int>(in_flight.size());
      for (const TierMove& m : in_flight) demoted += m.victim.seq >= 0;
      CHECK(static_cast<int>(in_flight.size()) <= 5);
    }
    t.check();
    int resident = 0;
    for (int b = 0; b < batch; ++b) {
      resident += residents(t, b);
      CHECK(t.gpu_slot(b, t.blocks(b) - 1) >= 0);  // the block appends write
      CHECK(t.gpu_slot(b, 0) >= 0);                 // the sink
    }
    CHECK(resident + static_cast<int>(in_flight.size()) + t.free_slots() == slots);
  }
  CHECK(promoted > 20);
  CHECK(demoted > 20);
}
