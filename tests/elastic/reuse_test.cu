// A decode loop with token_step = 4: each step appends a token, updates the anchors and
// runs ElasticDecode; refreshing steps must attend to reference_select's blocks, the
// others to the last selection plus the blocks appended since
// (reference_reuse_selection), and O and LSE must match the float64 reference over those
// blocks, step by step; per kv head, per layer and per query head.

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "device_cache.cuh"
#include "elastic/attended_check.cuh"
#include "ekv/attention/append.cuh"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "ekv/elastic/reference.hpp"
#include "test_seed.hpp"

namespace {

template <typename T>
void check_reuse(ekv::RetrievalType retrieval, ekv::test::Inputs inputs, std::uint64_t seed) {
  INFO("retrieval=" << ekv::to_string(retrieval) << " inputs=" << ekv::test::name(inputs) << " seed=" << seed);
  // room for the steps' tokens: the cache is planned for 40 more than the longest
  const ekv::test::CacheShape shape{2, 2, 128, 16, {297, 100}, ekv::test::Layout::kPaged};
  ekv::test::CacheShape planned = shape;
  planned.lengths = {297 + 40, 100};
  ekv::test::HostCache<T> cache(planned, seed, inputs);
  cache.lengths.assign(shape.lengths.begin(), shape.lengths.end());
  ekv::test::DeviceCache<T> dev(cache);
  ekv::Stream stream;
  const ekv::KVView<T> view = dev.view(cache);

  ekv::ElasticConfig config;
  config.token_step = 4;
  config.retrieval = retrieval;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::blocks(5));
  ekv::ElasticDecode<T> step(ekv::test::decode_problem(planned, ekv::kDTypeOf<T>), cache.block_len, policy,
                             ekv::DeviceInfo::current(), stream, 1, ekv::ExactFallback::kNever);
  ekv::DeviceBuffer<T> anchors(step.anchor_elems(cache.table.size()));
  ekv::build_anchors<T>(view, anchors.data(), config, stream);
  const int kv_rows = shape.batch() * shape.kv_heads;
  // ElasticDecode's rows: a query head's blocks under QHEAD, else a kv head's
  const int rows_per_seq = retrieval == ekv::RetrievalType::kQHead ? shape.q_heads() : shape.kv_heads;
  ekv::DeviceBuffer<T> o(cache.q.size()), k_new(static_cast<std::size_t>(kv_rows) * shape.head_dim);
  ekv::DeviceBuffer<T> v_new(k_new.size());
  ekv::DeviceBuffer<float> lse(static_cast<std::size_t>(shape.batch()) * shape.q_heads());
  ekv::DeviceBuffer<std::int32_t> before(shape.batch());
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));

  std::vector<std::vector<std::vector<int>>> selection;  // [seq][kv head] at the last refresh
  std::vector<int> blocks_then(shape.batch());
  for (int s = 0; s < 10; ++s) {
    INFO("step " << s);
    cache.q = ekv::bench::random_uniform<T>(cache.q.size(), -2.0f, 2.0f, seed + 10 * s);
    dev.q.copy_from(cache.q);
    k_new.copy_from(ekv::bench::random_uniform<T>(k_new.size(), -1.0f, 1.0f, seed + 10 * s + 1));
    v_new.copy_from(ekv::bench::random_uniform<T>(v_new.size(), -1.0f, 1.0f, seed + 10 * s + 2));
    before.copy_from(cache.lengths);
    ekv::append_kv<T>(view, k_new.data(), v_new.data(), 1, stream);
    ekv::update_anchors<T>(view, anchors.data(), config, before.data(), 1, stream);
    o.fill_bytes(0xFF, stream);
    lse.fill_bytes(0xFF, stream);
    step.run(view, dev.q.data(), anchors.data(), o.data(), lse.data(), stream, s);
    stream.synchronize();
    dev.k.copy_to(cache.k);
    dev.v.copy_to(cache.v);
    dev.lengths.copy_to(cache.lengths);

    const ekv::KVView<T> host = cache.host_view();
    std::vector<std::vector<std::vector<int>>> expected(shape.batch());
    for (int b = 0; b < shape.batch(); ++b) {
      const int n = ekv::sequence_blocks(cache.lengths[b], cache.block_len);
      if (config.refreshes_selection(s)) {
        selection.resize(shape.batch());
        selection[b] = ekv::reference_select(host, cache.q.data() + static_cast<std::size_t>(b) * shape.q_heads() * shape.head_dim,
                                             shape.q_heads(), b, config, policy.counts(n));
        blocks_then[b] = n;
      }
      for (const auto& chosen : selection[b]) expected[b].push_back(ekv::reference_reuse_selection(chosen, blocks_then[b], n));
    }
    ekv::test::check_attended(step, expected, shape.batch(), rows_per_seq, retrieval);
  std::vector<T> got_o(o.size());
    std::vector<float> got_lse(lse.size());
    o.copy_to(got_o);
    lse.copy_to(got_lse);
    const auto ref = ekv::reference_elastic_decode(host, cache.q.data(), shape.q_heads(), expected, retrieval, scale);
    ekv::test::check_against_reference<T>(ref, got_o, got_lse, shape.head_dim, inputs);
  }
}

}  // namespace

// Each dtype held to its own decode tolerance (decode_check.hpp): float 1e-5 (1e-4 on
// peaked inputs), half 2e-3, bfloat16 1e-2; the selections must equal the reference's.
TEST_CASE_TEMPLATE("selection reuse between refreshes, checked step by step", T, __half, __nv_bfloat16, float) {
  const auto seed = ekv::test::seed();
  for (ekv::test::Inputs inputs : {ekv::test::Inputs::kUniform, ekv::test::Inputs::kPeaked}) {
    for (ekv::RetrievalType retrieval :
         {ekv::RetrievalType::kKvHead, ekv::RetrievalType::kLayer, ekv::RetrievalType::kQHead}) {
      check_reuse<T>(retrieval, inputs, seed);
    }
  }
}
