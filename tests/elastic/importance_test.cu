// Token importance recorded after an exact step, and DYNAMIC anchors chosen from it, on
// the GPU against reference_update_importance and reference_block_anchors.

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "device_cache.cuh"
#include "ekv/attention/append.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/importance.cuh"
#include "ekv/elastic/reference.hpp"
#include "test_seed.hpp"

namespace {

using T = __half;

// DYNAMIC anchors of every valid block against the reference fed the GPU's own
// importance (so ties break the same way): the chosen keys, exactly.
void check_dynamic_anchors(ekv::test::HostCache<T>& host, const std::vector<float>& importance,
                           const std::vector<T>& anchors, int anchor_num) {
  const auto& s = host.shape;
  const ekv::KVView<T> view = host.host_view();
  for (int b = 0; b < s.batch(); ++b) {
    for (int h = 0; h < s.kv_heads; ++h) {
      for (int block = 0; block < ekv::sequence_blocks(host.lengths[b], host.block_len); ++block) {
        const std::size_t physical = host.table[static_cast<std::size_t>(b) * host.blocks_per_seq + block];
        const float* w = importance.data() + (physical * s.kv_heads + h) * host.block_len;
        const std::vector<double> weights(w, w + host.block_len);
        const auto want = ekv::reference_block_anchors(view, b, h, block, ekv::AnchorKind::kDynamic, anchor_num,
                                                       weights.data());
        const T* got = anchors.data() + (physical * s.kv_heads + h) * anchor_num * s.head_dim;
        for (std::size_t i = 0; i < want.size(); ++i) REQUIRE(__half2float(got[i]) == want[i]);
      }
    }
  }
}

}  // namespace

TEST_CASE("importance after an exact step, and DYNAMIC anchors from it, match the references") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::test::CacheShape shape{2, 4, 128, 16, {200, 77, 0}, ekv::test::Layout::kPaged};
  ekv::test::CacheShape planned = shape;
  planned.lengths = {210, 77, 0};
  ekv::test::HostCache<T> cache(planned, seed);
  cache.lengths.assign(shape.lengths.begin(), shape.lengths.end());
  ekv::test::DeviceCache<T> dev(cache);
  ekv::Stream stream;
  const ekv::KVView<T> view = dev.view(cache);

  const ekv::DecodePlan plan =
      ekv::plan_decode(ekv::test::decode_problem(planned, ekv::DType::kFloat16), ekv::DeviceInfo::current());
  auto workspace = ekv::make_decode_workspace(plan, stream);
  ekv::DeviceBuffer<T> o(cache.q.size());
  ekv::DeviceBuffer<float> lse(static_cast<std::size_t>(shape.batch()) * shape.q_heads());
  ekv::run_decode<T>(plan, view, dev.q.data(), o.data(), lse.data(), workspace.data(), stream);
  const std::size_t slots = cache.table.size() * shape.kv_heads * cache.block_len;
  ekv::DeviceBuffer<float> importance(slots);
  importance.fill_bytes(0, stream);
  // the softmax scale both sides use, computed here: a wrong default in plan_decode shows
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  ekv::record_importance<T>(view, dev.q.data(), lse.data(), shape.q_heads(), scale, importance.data(), stream);

  ekv::ElasticConfig config;
  config.anchor = ekv::AnchorKind::kDynamic;
  config.anchor_num = 3;
  const std::size_t anchor_values = cache.table.size() * shape.kv_heads * config.anchor_num * shape.head_dim;
  ekv::DeviceBuffer<T> anchors(anchor_values);
  anchors.fill_bytes(0xFF, stream);  // poisoned: NaN where build_anchors writes nothing (the pool's free blocks)
  ekv::build_anchors<T>(view, anchors.data(), config, stream, importance.data());
  stream.synchronize();
  std::vector<float> got_importance(slots);
  std::vector<T> got_anchors(anchor_values);
  importance.copy_to(got_importance);
  anchors.copy_to(got_anchors);

  const ekv::KVView<T> host = cache.host_view();
  for (int b = 0; b < shape.batch(); ++b) {
    std::vector<std::vector<double>> want;
    ekv::reference_update_importance(host, cache.q.data() + static_cast<std::size_t>(b) * shape.q_heads() * shape.head_dim,
                                     shape.q_heads(), b, scale, want);
    for (int h = 0; h < shape.kv_heads; ++h) {
      for (int t = 0; t < shape.lengths[b]; ++t) {
        const std::size_t physical = cache.table[static_cast<std::size_t>(b) * cache.blocks_per_seq + t / cache.block_len];
        const float got = got_importance[(physical * shape.kv_heads + h) * cache.block_len + t % cache.block_len];
        REQUIRE(std::abs(got - want[h][t]) <= 1e-3 * want[h][t] + 1e-7);
      }
    }
  }
  check_dynamic_anchors(cache, got_importance, got_anchors, config.anchor_num);

  // five more tokens: their importance starts at zero, the touched blocks' anchors follow
  const int new_tokens = 5;
  ekv::DeviceBuffer<T> k_new(static_cast<std::size_t>(shape.batch()) * shape.kv_heads * new_tokens * shape.head_dim);
  ekv::DeviceBuffer<T> v_new(k_new.size());
  k_new.copy_from(ekv::bench::random_uniform<T>(k_new.size(), -1.0f, 1.0f, seed + 5));
  v_new.copy_from(ekv::bench::random_uniform<T>(v_new.size(), -1.0f, 1.0f, seed + 6));
  ekv::DeviceBuffer<std::int32_t> before(cache.lengths.size());
  before.copy_from(cache.lengths);
  ekv::append_kv<T>(view, k_new.data(), v_new.data(), new_tokens, stream);
  ekv::update_anchors<T>(view, anchors.data(), config, before.data(), new_tokens, stream, importance.data());
  stream.synchronize();
  dev.k.copy_to(cache.k);
  dev.lengths.copy_to(cache.lengths);
  importance.copy_to(got_importance);
  anchors.copy_to(got_anchors);
  for (int b = 0; b < shape.batch(); ++b) {
    for (int h = 0; h < shape.kv_heads; ++h) {
      for (int t = shape.lengths[b]; t < cache.lengths[b]; ++t) {
        const std::size_t physical = cache.table[static_cast<std::size_t>(b) * cache.blocks_per_seq + t / cache.block_len];
        CHECK(got_importance[(physical * shape.kv_heads + h) * cache.block_len + t % cache.block_len] == 0.0f);
      }
    }
  }
  check_dynamic_anchors(cache, got_importance, got_anchors, config.anchor_num);
}
