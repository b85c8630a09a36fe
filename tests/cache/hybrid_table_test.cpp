// The hybrid block table on the host: its encoding, number_hybrid_blocks, and
// split_hybrid_table's rows and lengths (the partial last block on either side, empty
// sides, lengths past the capacity, bad entries); then, end to end on the CPU, the two
// sides' views attended with cpu_decode and merged through LSE against the float64
// reference of the whole cache. Tolerances (decode_check.hpp, relative L2 of each row of
// O): float 1e-5, half 2e-3, bfloat16 1e-2; LSE absolute 1e-4.

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "decode_check.hpp"
#include "ekv/cache/hybrid_table.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/merge_states.hpp"
#include "hybrid_cache.hpp"
#include "test_seed.hpp"

namespace {

using ekv::host_block_entry;

constexpr std::int32_t kUnused = 999;  // entries past a sequence's blocks: never read

struct Rows {
  std::vector<std::int32_t> table, lengths;
  Rows(int batch, int max_blocks) : table(static_cast<std::size_t>(batch) * max_blocks, -7), lengths(batch, -7) {}
  ekv::SideRows side() { return {table.data(), lengths.data()}; }
  std::vector<std::int32_t> row(int seq, int max_blocks, int count) const {
    return {table.begin() + seq * max_blocks, table.begin() + seq * max_blocks + count};
  }
};

ekv::HybridKV<float> table_only(const std::vector<std::int32_t>& table, const std::vector<std::int32_t>& lengths,
                                int block_len, int max_blocks, int gpu_blocks, int host_blocks) {
  ekv::HybridKV<float> kv;
  kv.block_table = table.data();
  kv.lengths = lengths.data();
  kv.gpu_blocks = gpu_blocks;
  kv.host_blocks = host_blocks;
  kv.batch = static_cast<int>(lengths.size());
  kv.kv_heads = 1;
  kv.head_dim = 8;
  kv.block_len = block_len;
  kv.max_blocks_per_seq = max_blocks;
  return kv;
}

}  // namespace

TEST_CASE("host entries encode as -1 - id") {
  CHECK(host_block_entry(0) == -1);
  CHECK(host_block_entry(41) == -42);
  CHECK(ekv::is_host_entry(-1));
  CHECK_FALSE(ekv::is_host_entry(0));
  CHECK(ekv::host_block_of(host_block_entry(12345)) == 12345);
}

TEST_CASE("split_hybrid_table: rows in logical order, lengths with the partial last block on either side") {
  constexpr int kLen = 4, kMax = 5;
  // clang-format off
  const std::vector<std::int32_t> table = {
      // 18 tokens: 5 blocks, the last (2 tokens) on the host
      3, host_block_entry(4), 0, host_block_entry(1), host_block_entry(6),
      // 13 tokens: 4 blocks, the last (1 token) on the GPU
      5, host_block_entry(0), host_block_entry(2), 1, kUnused,
      // empty
      kUnused, kUnused, kUnused, kUnused, kUnused,
      // 8 tokens, all on the host: the GPU side is empty
      host_block_entry(3), host_block_entry(5), kUnused, kUnused, kUnused,
      // 30 tokens, past the capacity of 20: all 5 blocks, all on the GPU
      2, 4, 6, 7, 8,
      // 3 tokens, one partial block on the GPU
      9, kUnused, kUnused, kUnused, kUnused,
  };
  // clang-format on
  const std::vector<std::int32_t> lengths = {18, 13, 0, 8, 30, 3};
  Rows gpu(6, kMax), host(6, kMax);
  const ekv::HybridSplit split =
      ekv::split_hybrid_table(table_only(table, lengths, kLen, kMax, 10, 7), gpu.side(), host.side());

  CHECK(gpu.lengths == std::vector<std::int32_t>{8, 5, 0, 0, 20, 3});
  CHECK(host.lengths == std::vector<std::int32_t>{10, 8, 0, 8, 0, 0});
  CHECK(gpu.row(0, kMax, 2) == std::vector<std::int32_t>{3, 0});
  CHECK(host.row(0, kMax, 3) == std::vector<std::int32_t>{4, 1, 6});  // the partial block last
  CHECK(gpu.row(1, kMax, 2) == std::vector<std::int32_t>{5, 1});      // the partial block last
  CHECK(host.row(1, kMax, 2) == std::vector<std::int32_t>{0, 2});
  CHECK(host.row(3, kMax, 2) == std::vector<std::int32_t>{3, 5});
  CHECK(gpu.row(4, kMax, 5) == std::vector<std::int32_t>{2, 4, 6, 7, 8});
  CHECK(gpu.row(5, kMax, 1) == std::vector<std::int32_t>{9});
  // rows are left as they were past their blocks
  CHECK(gpu.table[0 * kMax + 2] == -7);
  CHECK(host.table[4 * kMax + 0] == -7);

  CHECK(split.gpu_tokens == 8 + 5 + 20 + 3);
  CHECK(split.host_tokens == 10 + 8 + 8);
  CHECK(split.gpu_max_len == 20);
  CHECK(split.host_max_len == 10);
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    CHECK(gpu.lengths[b] + host.lengths[b] == std::min(lengths[b], kLen * kMax));
  }
}

TEST_CASE("split_hybrid_table rejects entries outside their pool and negative lengths") {
  const std::vector<std::int32_t> lengths = {5, 2};
  Rows gpu(2, 3), host(2, 3);
  const auto split = [&](const std::vector<std::int32_t>& table, const std::vector<std::int32_t>& lens) {
    return ekv::split_hybrid_table(table_only(table, lens, 4, 3, 2, 3), gpu.side(), host.side());
  };
  CHECK_NOTHROW(split({1, host_block_entry(2), kUnused, 0, kUnused, kUnused}, lengths));
  CHECK_THROWS_WITH_AS(split({1, 2, kUnused, 0, kUnused, kUnused}, lengths),
                       "split_hybrid_table: sequence 0, block 1 is GPU block 2, outside the GPU pool of 2 blocks",
                       ekv::Error);
  CHECK_THROWS_WITH_AS(split({1, 0, kUnused, host_block_entry(3), kUnused, kUnused}, lengths),
                       "split_hybrid_table: sequence 1, block 0 is host block 3, outside the host pool of 3 blocks",
                       ekv::Error);
  CHECK_THROWS_WITH_AS(split({1, 0, kUnused, 0, kUnused, kUnused}, {5, -2}),
                       "split_hybrid_table: sequence 1 has length -2; lengths must be >= 0", ekv::Error);
  // an empty batch writes nothing and needs no pointers
  CHECK(ekv::split_hybrid_table(table_only({}, {}, 4, 3, 0, 0), {}, {}).gpu_tokens == 0);
}

TEST_CASE("number_hybrid_blocks numbers each pool's blocks in order") {
  const std::vector<std::int32_t> lengths = {33, 0, 16};  // 3, 0 and 1 blocks of 16
  using L = ekv::BlockLocation;
  const ekv::Placement placement{{L::kGpu, L::kHost, L::kHost, L::kHost,  //
                                  L::kHost, L::kHost, L::kHost, L::kHost,  //
                                  L::kGpu, L::kHost, L::kHost, L::kHost},
                                 2,
                                 2};
  CHECK(ekv::number_hybrid_blocks(placement, lengths, 16, 4) ==
        std::vector<std::int32_t>{0, host_block_entry(0), host_block_entry(1), 0, 0, 0, 0, 0, 1, 0, 0, 0});
  CHECK_THROWS_WITH_AS(ekv::number_hybrid_blocks(placement, lengths, 16, 3),
                       "number_hybrid_blocks: the placement holds 12 entries, the lengths and max_blocks_per_seq=3 "
                       "make 9 (block_len=16)",
                       ekv::Error);
}

TEST_CASE_TEMPLATE("the two sides attended on the CPU and merged through LSE equal attention over the whole cache", T,
                   float, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::CPUInfer pool(3);
  using ekv::test::Layout;
  const ekv::test::CacheShape shapes[] = {{2, 4, 128, 16, {1000, 37, 2049, 0, 1, 300}, Layout::kPaged},
                                          {3, 1, 64, 7, {50, 7, 6, 1}, Layout::kPaged}};
  for (const auto& shape : shapes) {
    for (double host_fraction : {0.0, 0.5, 1.0}) {
      INFO(ekv::test::describe(shape) << " host_fraction=" << host_fraction);
      ekv::test::HostCache<T> cache(shape, seed);
      const auto locations =
          ekv::test::random_locations(cache.lengths, cache.block_len, cache.blocks_per_seq, host_fraction, seed + 1);
      ekv::test::OffloadedCache<T> off = ekv::test::offload(cache, locations, seed + 2);
      const ekv::HybridKV<T> kv =
          off.view(cache, off.gpu_k.data(), off.gpu_v.data(), off.host_k.data(), off.host_v.data());
      Rows gpu_rows(shape.batch(), cache.blocks_per_seq), host_rows(shape.batch(), cache.blocks_per_seq);
      const ekv::HybridSplit split = ekv::split_hybrid_table(kv, gpu_rows.side(), host_rows.side());
      CHECK(split.gpu_tokens + split.host_tokens == std::accumulate(shape.lengths.begin(), shape.lengths.end(), 0));
      const auto views = ekv::hybrid_side_views(kv, gpu_rows.side(), host_rows.side());

      // each side on the CPU, into float states [rows][2][head_dim], merged per row
      const int rows = shape.batch() * shape.q_heads(), d = shape.head_dim;
      std::vector<float> states(static_cast<std::size_t>(rows) * 2 * d), states_lse(static_cast<std::size_t>(rows) * 2);
      std::vector<T> o(static_cast<std::size_t>(rows) * d);
      std::vector<float> lse(rows);
      for (int side = 0; side < 2; ++side) {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::fill(o.begin(), o.end(), ekv::DTypeTraits<T>::from_float(nan));
        std::fill(lse.begin(), lse.end(), nan);
        ekv::cpu_decode<T>(pool, side == 0 ? views.first : views.second, cache.q.data(), shape.q_heads(), o.data(),
                           lse.data());
        for (int r = 0; r < rows; ++r) {
          for (int i = 0; i < d; ++i) {
            states[(static_cast<std::size_t>(r) * 2 + side) * d + i] =
                ekv::DTypeTraits<T>::to_float(o[static_cast<std::size_t>(r) * d + i]);
          }
          states_lse[static_cast<std::size_t>(r) * 2 + side] = lse[r];
        }
      }
      for (int r = 0; r < rows; ++r) {
        ekv::merge_row_host(states.data() + static_cast<std::size_t>(r) * 2 * d, states_lse.data() + r * 2, 2, d,
                            o.data() + static_cast<std::size_t>(r) * d, lse.data() + r);
      }
      const double scale = 1.0 / std::sqrt(static_cast<double>(d));
      ekv::test::check_against_reference(
          ekv::reference_decode<T>(cache.host_view(), cache.q.data(), shape.q_heads(), scale), o, lse, d);
    }
  }
}
