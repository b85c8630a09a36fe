// CpuElasticDecode over quantized storage (FP8, Q8_0, Q4_0) against the same decode over a
// float cache holding the values those codes decode to, in a decode loop with token_step
// 2: each step appends a token to both (the quantized cache quantizes it, the float one
// takes its dequantized values), updates the anchors and runs. The anchors, computed from
// the dequantized keys, must be equal bit for bit, and so must the blocks attended; O and
// LSE then differ only by float accumulation (tolerance: float's, relative L2 of the worst
// row 1e-5; LSE absolute 1e-4). The selection must skip blocks, so that it is tested.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "decode_check.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "ekv/cpu/cpu_elastic.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/reference_anchors.hpp"
#include "harness/random.hpp"
#include "quant_pools.hpp"
#include "test_seed.hpp"

TEST_CASE("CPU elastic decode over quantized storage selects and attends as over its dequantized values") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::CPUInfer pool(2);
  int i = 0;
  for (ekv::KVStorage s : {ekv::KVStorage::kFp8E4M3, ekv::KVStorage::kQ8_0, ekv::KVStorage::kQ4_0}) {
    for (ekv::AnchorKind anchor : {ekv::AnchorKind::kQuest, ekv::AnchorKind::kBlockMean}) {
      INFO("storage=" << std::string(ekv::to_string(s)) << " anchor=" << std::string(ekv::to_string(anchor)));
      const ekv::test::CacheShape shape{2, 4, 64, 16, {203 + 8, 90 + 8}, ekv::test::Layout::kPaged};
      ekv::test::HostCache<float> cache(shape, seed + i++);
      cache.lengths = {203, 90};
      std::vector<std::int32_t> quant_lengths = cache.lengths;
      ekv::test::QuantPools pools(s, cache);
      const ekv::QuantKVView qv = ekv::test::quant_view(s, pools, cache, quant_lengths.data());
      const ekv::KVView<float> dv =
          cache.view(pools.k_values.data(), pools.v_values.data(), cache.table.data(), cache.lengths.data());
      ekv::ElasticConfig config;
      config.anchor = anchor;
      config.token_step = 2;
      const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::ratio(3.0));
      ekv::CpuElasticDecode<float> dense(dv, shape.q_heads(), policy);
      ekv::CpuElasticDecode<float, ekv::QuantKVView> quant(qv, shape.q_heads(), policy);
      dense.build_anchors(pool, dv);
      quant.build_anchors(pool, qv);
      const int d = shape.head_dim, rows = shape.batch() * shape.kv_heads;
      std::vector<float> o_dense(cache.q.size()), o_quant(cache.q.size());
      std::vector<float> lse_dense(static_cast<std::size_t>(shape.batch()) * shape.q_heads()), lse_quant(lse_dense);
      for (int step = 0; step < 5; ++step) {
        INFO("step " << step);
        const auto k_new = ekv::bench::random_uniform<float>(static_cast<std::size_t>(rows) * d, -1.0f, 1.0f,
                                                              seed + 100 * i + 2 * step);
        const auto v_new = ekv::bench::random_uniform<float>(k_new.size(), -1.0f, 1.0f, seed + 100 * i + 2 * step + 1);
        std::vector<float> k_values(k_new.size()), v_values(v_new.size());
        std::vector<std::uint8_t> codes(ekv::kv_code_bytes(s, d));
        std::vector<__half> scales(std::max<std::size_t>(1, ekv::kv_scale_bytes(s, d) / sizeof(__half)));
        for (int r = 0; r < rows; ++r) {
          ekv::quantize_row(s, k_new.data() + r * d, d, codes.data(), scales.data());
          ekv::dequantize_row(s, codes.data(), scales.data(), d, k_values.data() + r * d);
          ekv::quantize_row(s, v_new.data() + r * d, d, codes.data(), scales.data());
          ekv::dequantize_row(s, codes.data(), scales.data(), d, v_values.data() + r * d);
        }
        const std::vector<int> before(cache.lengths.begin(), cache.lengths.end());
        REQUIRE(ekv::cpu_append_kv(qv, k_new.data(), v_new.data(), 1));
        REQUIRE(ekv::cpu_append_kv<float>(dv, k_values.data(), v_values.data(), 1));
        REQUIRE(quant_lengths == cache.lengths);
        dense.update_anchors(pool, dv, before);
        quant.update_anchors(pool, qv, before);
        dense.run(pool, dv, cache.q.data(), o_dense.data(), lse_dense.data(), step);
        quant.run(pool, qv, cache.q.data(), o_quant.data(), lse_quant.data(), step);
        for (int b = 0; b < shape.batch(); ++b) {
          const int n = ekv::sequence_blocks(cache.lengths[b], cache.block_len);
          for (int h = 0; h < shape.kv_heads; ++h) {
            for (int block = 0; block < n; ++block) {
              REQUIRE(ekv::reference_block_anchors(qv, b, h, block, anchor, config.anchor_num) ==
                      ekv::reference_block_anchors(dv, b, h, block, anchor, config.anchor_num));
            }
            CHECK(quant.attended(b, h) == dense.attended(b, h));
          }
        }
        CHECK(static_cast<int>(quant.attended(0, 0).size()) < ekv::sequence_blocks(cache.lengths[0], cache.block_len));
        CHECK(ekv::relative_l2_error(o_quant.data(), o_dense.data(), static_cast<int>(lse_dense.size()), d).worst <=
              1e-5);
        for (std::size_t r = 0; r < lse_dense.size(); ++r) CHECK(std::abs(lse_quant[r] - lse_dense[r]) <= 1e-4);
      }
    }
  }
}
