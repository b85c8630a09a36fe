// Elastic decode over the layouts engines hold, without a copy: vLLM's paged blocks and
// FlashInfer's page index beside ekv's pool. Anchors are built over the view, one
// refreshing step selects and attends; the selection must be reference_select's and O and
// LSE the float64 reference's over those blocks, per kv head, per layer and per query
// head. Tolerances (decode_check.hpp): half 2e-3, bfloat16 1e-2 (peaked inputs).

#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "device_cache.cuh"
#include "elastic/attended_check.cuh"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "ekv/elastic/reference.hpp"
#include "test_seed.hpp"

namespace {

using ekv::test::Layout;

template <typename T>
void check_layout(Layout layout, ekv::RetrievalType retrieval, ekv::AnchorKind anchor, std::uint64_t seed) {
  INFO("layout=" << std::string(ekv::test::name(layout)) << " retrieval=" << std::string(ekv::to_string(retrieval))
                 << " anchor=" << std::string(ekv::to_string(anchor)) << " seed=" << seed);
  const ekv::test::CacheShape shape{2, 4, 128, 16, {1000, 203, 0, 37}, layout};
  ekv::test::HostCache<T> cache(shape, seed, ekv::test::Inputs::kPeaked);  // scores far apart: a wrong pick shows
  ekv::test::DeviceCache<T> dev(cache);
  ekv::Stream stream;
  const ekv::KVView<T> view = dev.view(cache);
  ekv::ElasticConfig config;
  config.retrieval = retrieval;
  config.anchor = anchor;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::blocks(6));
  ekv::ElasticDecode<T> step(ekv::test::decode_problem(shape, ekv::kDTypeOf<T>), cache.block_len, policy,
                             ekv::DeviceInfo::current(), stream, 1, ekv::ExactFallback::kNever);
  const std::size_t pool_blocks = cache.k.size() / (std::size_t{16} * shape.kv_heads * shape.head_dim);
  ekv::DeviceBuffer<T> anchors(step.anchor_elems(pool_blocks));
  ekv::build_anchors<T>(view, anchors.data(), config, stream);
  ekv::DeviceBuffer<T> o(cache.q.size());
  ekv::DeviceBuffer<float> lse(static_cast<std::size_t>(shape.batch()) * shape.q_heads());
  o.fill_bytes(0xFF, stream);
  lse.fill_bytes(0xFF, stream);
  step.run(view, dev.q.data(), anchors.data(), o.data(), lse.data(), stream, 0);
  stream.synchronize();

  const ekv::KVView<T> host = cache.host_view();
  std::vector<std::vector<std::vector<int>>> expected(shape.batch());
  for (int b = 0; b < shape.batch(); ++b) {
    const int n = ekv::sequence_blocks(cache.lengths[b], cache.block_len);
    const T* q = cache.q.data() + static_cast<std::size_t>(b) * shape.q_heads() * shape.head_dim;
    expected[b] = ekv::reference_select(host, q, shape.q_heads(), b, config, policy.counts(n));
  }
  const int rows_per_seq = retrieval == ekv::RetrievalType::kQHead ? shape.q_heads() : shape.kv_heads;
  ekv::test::check_attended(step, expected, shape.batch(), rows_per_seq, retrieval);
  std::vector<T> got_o(o.size());
  std::vector<float> got_lse(lse.size());
  o.copy_to(got_o);
  lse.copy_to(got_lse);
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const auto ref = ekv::reference_elastic_decode(host, cache.q.data(), shape.q_heads(), expected, retrieval, scale);
  ekv::test::check_against_reference<T>(ref, got_o, got_lse, shape.head_dim, ekv::test::Inputs::kPeaked);
}

}  // namespace

TEST_CASE_TEMPLATE("elastic decode over vLLM's blocks and FlashInfer's page index matches the reference", T, __half,
                   __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  int i = 0;
  for (Layout layout : {Layout::kPaged, Layout::kPagedNhd, Layout::kPageIndex}) {
    for (ekv::RetrievalType retrieval :
         {ekv::RetrievalType::kKvHead, ekv::RetrievalType::kLayer, ekv::RetrievalType::kQHead}) {
      // anchors the GPU stores exactly (a key's channels), so that the float64 selection is the
      // GPU's: a block mean rounded to bfloat16 may swap two blocks of near scores
      for (ekv::AnchorKind anchor : {ekv::AnchorKind::kQuest, ekv::AnchorKind::kBlockMax}) {
        check_layout<T>(layout, retrieval, anchor, seed + i++);
      }
    }
  }
}
