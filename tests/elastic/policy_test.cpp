// ElasticBudget and ElasticPolicy: block counts for ratios and block budgets, and bytes read.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "ekv/elastic/policy.hpp"

namespace {

ekv::ElasticConfig config_with(int init, int local, int pick = 0) {
  ekv::ElasticConfig c;
  c.init_block_num = init;
  c.local_block_num = local;
  c.pick_block_num = pick;
  return c;
}

// The rule of policy.hpp restated: sinks first, then window, picks get the rest.
void check_counts(const ekv::BlockCounts& c, int init, int local, int budget) {
  CHECK(c.init == std::min(init, budget));
  CHECK(c.local == std::min(local, budget - c.init));
  CHECK(c.pick == budget - c.init - c.local);
  CHECK(c.pick >= 0);
}

}  // namespace

TEST_CASE("ratio budgets read ceil(num_blocks / C) blocks, sinks and window included") {
  for (int ratio : {1, 2, 4, 8, 16}) {
    for (int n : {0, 1, 2, 3, 5, 7, 15, 16, 17, 100, 1000, 2047}) {
      for (const auto& [init, local] : {std::pair{1, 1}, std::pair{4, 16}, std::pair{0, 0}, std::pair{3, 0}}) {
        INFO("ratio=" << ratio << " num_blocks=" << n << " init=" << init << " local=" << local);
        const ekv::ElasticPolicy policy(config_with(init, local), ekv::ElasticBudget::ratio(ratio));
        const int budget = (n + ratio - 1) / ratio;
        const ekv::BlockCounts c = policy.counts(n);
        CHECK(c.total() == budget);
        CHECK(c.total() <= n);
        check_counts(c, init, local, budget);
      }
    }
  }
  const ekv::ElasticPolicy policy(config_with(1, 2), ekv::ElasticBudget::ratio(8));
  const ekv::BlockCounts c = policy.counts(100);  // 13 blocks: 1 sink, 2 window, 10 picked
  CHECK((c.init == 1 && c.local == 2 && c.pick == 10));
  CHECK(ekv::ElasticBudget::ratio(1.5).budget_blocks(10) == 7);
  CHECK((policy.budget().is_ratio() && policy.budget().compression() == 8));
  CHECK((!ekv::ElasticBudget::blocks(3).is_ratio() && ekv::ElasticBudget::blocks(3).block_count() == 3));
  CHECK(policy.config().local_block_num == 2);
  // decimal ratios as written, though stored inexactly: in double, 21 / 1.4 is above 15 and
  // 12 is above 5 times 2.4
  CHECK(ekv::ElasticBudget::ratio(1.4).budget_blocks(21) == 15);
  CHECK(ekv::ElasticBudget::ratio(2.4).budget_blocks(12) == 5);
  CHECK(ekv::ElasticBudget::ratio(1.1).budget_blocks(33) == 30);
  CHECK(ekv::ElasticBudget::ratio(1.1).budget_blocks(34) == 31);
  CHECK(ekv::ElasticBudget::ratio(3).budget_blocks(1 << 30) == (1 << 30) / 3 + 1);
}

TEST_CASE("block budgets, short sequences and sinks plus window over budget") {
  for (int blocks : {1, 2, 5, 10, 64}) {
    for (int n : {0, 1, 4, 9, 10, 11, 300}) {
      INFO("blocks=" << blocks << " num_blocks=" << n);
      const ekv::ElasticPolicy policy(config_with(2, 3), ekv::ElasticBudget::blocks(blocks));
      const ekv::BlockCounts c = policy.counts(n);
      CHECK(c.total() == std::min(blocks, n));  // a short sequence is read whole
      check_counts(c, 2, 3, std::min(blocks, n));
    }
  }
  const ekv::ElasticPolicy over(config_with(4, 4), ekv::ElasticBudget::blocks(5));
  const ekv::BlockCounts c = over.counts(100);
  CHECK((c.init == 4 && c.local == 1 && c.pick == 0));
  const ekv::BlockCounts own = ekv::ElasticPolicy(config_with(1, 2, 5)).counts(100);  // the config's counts
  CHECK((own.init == 1 && own.local == 2 && own.pick == 5));
  CHECK(ekv::ElasticPolicy(config_with(1, 2, 5)).counts(6).total() == 6);
}

TEST_CASE("invalid budgets and configs throw") {
  CHECK_THROWS_WITH_AS(ekv::ElasticBudget::ratio(0.5), "ElasticBudget::ratio: compression=0.5 must be finite and at least 1",
                       ekv::Error);
  CHECK_THROWS_AS(ekv::ElasticBudget::ratio(std::nan("")), ekv::Error);
  CHECK_THROWS_AS(ekv::ElasticBudget::ratio(std::numeric_limits<double>::infinity()), ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::ElasticBudget::blocks(0), "ElasticBudget::blocks: count=0 must be at least 1", ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::ElasticPolicy(config_with(-1, 1), ekv::ElasticBudget::blocks(4)),
                       "ElasticConfig: init_block_num=-1 must not be negative", ekv::Error);
  CHECK_THROWS_AS(ekv::ElasticPolicy(config_with(0, 0, 0)), ekv::Error);  // a budget of no block
}

TEST_CASE("bytes read: attended K and V plus the anchors of the blocks scored") {
  ekv::ElasticConfig config = config_with(1, 1);
  const int kv_heads = 8, d = 128, block_len = 16, len = 1000;  // 63 blocks, the last holds 8 tokens
  const ekv::ElasticPolicy c8(config, ekv::ElasticBudget::ratio(8));  // 8 blocks: 1 + 1 + 6 picked
  const ekv::BytesRead r = c8.bytes_read(len, block_len, kv_heads, d, ekv::DType::kFloat16);
  CHECK(r.kv == 2u * (8 * 16 - 8) * kv_heads * d * 2);  // the window's last block is partial
  CHECK(r.anchors == 61u * kv_heads * (2 * d) * 2);     // QUEST: min and max in half, 61 blocks scored
  CHECK(r.total() == r.kv + r.anchors);
  const ekv::BytesRead all = ekv::ElasticPolicy(config, ekv::ElasticBudget::ratio(1))
                                 .bytes_read(len, block_len, kv_heads, d, ekv::DType::kBFloat16);
  CHECK(all.kv == 2u * len * kv_heads * d * 2);
  CHECK(all.anchors == 0);  // nothing left to pick: no scoring
  config.local_block_num = 0;
  config.anchor = ekv::AnchorKind::kFixed;
  config.anchor_num = 4;
  const ekv::BytesRead no_window =
      ekv::ElasticPolicy(config, ekv::ElasticBudget::blocks(8)).bytes_read(len, block_len, kv_heads, d, ekv::DType::kFloat32);
  CHECK(no_window.kv == 2u * 8 * 16 * kv_heads * d * 4);  // a picked last block counts whole
  CHECK(no_window.anchors == 62u * kv_heads * (4 * d) * 4);  // anchors in the cache's dtype, float here
}

TEST_CASE("bytes read over quantized storage count codes and scales, anchors in their own dtype") {
  const ekv::ElasticConfig config = config_with(1, 1);
  const int kv_heads = 8, d = 128, block_len = 16, len = 1000;
  const ekv::ElasticPolicy c8(config, ekv::ElasticBudget::ratio(8));
  const ekv::BytesRead fp16 = c8.bytes_read(len, block_len, kv_heads, d, ekv::DType::kFloat16);
  const ekv::BytesRead q8 = c8.bytes_read(len, block_len, kv_heads, d, ekv::KVStorage::kQ8_0, ekv::DType::kFloat16);
  const ekv::BytesRead q4 = c8.bytes_read(len, block_len, kv_heads, d, ekv::KVStorage::kQ4_0, ekv::DType::kFloat16);
  const ekv::BytesRead f8 = c8.bytes_read(len, block_len, kv_heads, d, ekv::KVStorage::kFp8E4M3, ekv::DType::kFloat16);
  CHECK(q8.kv == 2u * (8 * 16 - 8) * kv_heads * (128 + 8));  // 128 codes and 4 float16 scales a row
  CHECK(q4.kv == 2u * (8 * 16 - 8) * kv_heads * (64 + 8));
  CHECK(f8.kv == fp16.kv / 2);
  CHECK(q8.anchors == fp16.anchors);  // anchors stay float16
  CHECK(c8.bytes_read(len, block_len, kv_heads, d, ekv::KVStorage::kFloat16, ekv::DType::kFloat16).kv == fp16.kv);
  CHECK_THROWS_WITH_AS(ekv::dense_storage(ekv::DType::kFloat8E4M3),
                       "dense_storage: dtype=float8_e4m3 is not a dense kv storage; supported: float32, float16, "
                       "bfloat16",
                       ekv::Error);
}
