// ElasticDecode over quantized storage (FP8, Q8_0, Q4_0) on the GPU, half and bfloat16
// queries, KVHEAD and LAYER, head_dim 64 and 128, paged blocks of 16, ragged lengths.
// The anchors come from the dequantized keys (build_anchors over a dense T copy of them, as
// a quantized cache keeps its anchors), so:
// - the blocks attended must be reference_select's over that dense copy, and the same as
//   the dense step's over it (selection does not depend on the storage);
// - O and LSE must match the float64 reference over those blocks of the exactly
//   dequantized values, at decode's tolerances (decode_check.hpp: half 2e-3, bfloat16 1e-2
//   relative L2 per row, LSE 1e-4 x max(1, |lse|)), outputs poisoned first.
// Also: QHEAD over quantized storage refused by supports(), and a dense view given to a
// quantized step refused by name.

#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "device_cache.cuh"
#include "elastic/attended_check.cuh"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "ekv/elastic/reference.hpp"
#include "ekv/elastic/reference_select.hpp"
#include "quant_pools.hpp"
#include "test_seed.hpp"

namespace {

using ekv::KVStorage;
using ekv::test::CacheShape;
using ekv::test::HostCache;

template <typename T>
void check_quant_elastic(KVStorage s, ekv::RetrievalType retrieval, int head_dim, std::uint64_t seed) {
  INFO("storage=" << std::string(ekv::to_string(s)) << " retrieval=" << ekv::to_string(retrieval)
                  << " head_dim=" << head_dim << " seed=" << seed);
  const CacheShape shape{2, 4, head_dim, 16, {297, 100}, ekv::test::Layout::kPaged};
  HostCache<float> cache(shape, seed);
  ekv::test::QuantPools pools(s, cache);
  // the dense copy in T of what the codes decode to, and the queries rounded to T: both
  // sides see the same queries, and the anchors come from the dequantized keys
  HostCache<T> dense(shape, seed);
  dense.table = cache.table;
  dense.lengths = cache.lengths;
  for (std::size_t i = 0; i < dense.k.size(); ++i) {
    dense.k[i] = ekv::DTypeTraits<T>::from_float(pools.k_values[i]);
    dense.v[i] = ekv::DTypeTraits<T>::from_float(pools.v_values[i]);
  }
  for (std::size_t i = 0; i < dense.q.size(); ++i) {
    dense.q[i] = ekv::DTypeTraits<T>::from_float(cache.q[i]);
    cache.q[i] = ekv::DTypeTraits<T>::to_float(dense.q[i]);
  }
  ekv::test::DeviceCache<T> dev(dense);
  ekv::Stream stream;
  const ekv::KVView<T> dense_view = dev.view(dense);
  ekv::DeviceBuffer<std::uint8_t> k_codes(pools.k_codes.size()), v_codes(pools.v_codes.size());
  ekv::DeviceBuffer<__half> k_scales(pools.k_scales.size()), v_scales(pools.v_scales.size());
  k_codes.copy_from(pools.k_codes);
  v_codes.copy_from(pools.v_codes);
  k_scales.copy_from(pools.k_scales);
  v_scales.copy_from(pools.v_scales);
  const ekv::QuantKVView quant_view =
      ekv::paged_quant_kv(s, {k_codes.data(), v_codes.data(), k_scales.data(), v_scales.data()}, dev.table.data(),
                          dev.lengths.data(), shape.batch(), shape.kv_heads, head_dim, cache.block_len,
                          cache.blocks_per_seq);

  ekv::ElasticConfig config;
  config.retrieval = retrieval;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::blocks(5));
  const ekv::DecodeProblem problem = ekv::test::decode_problem(shape, ekv::kDTypeOf<T>);
  ekv::ElasticProblem quant_problem{problem, cache.block_len, policy, 1, ekv::ExactFallback::kNever};
  quant_problem.kv_storage = s;
  REQUIRE(ekv::supports(quant_problem));
  ekv::ElasticDecode<T> quant_step(quant_problem, ekv::DeviceInfo::current(), stream);
  ekv::ElasticDecode<T> dense_step(problem, cache.block_len, policy, ekv::DeviceInfo::current(), stream, 1,
                                   ekv::ExactFallback::kNever);
  ekv::DeviceBuffer<T> anchors(quant_step.anchor_elems(cache.table.size()));
  ekv::build_anchors<T>(dense_view, anchors.data(), config, stream);
  ekv::DeviceBuffer<T> o(dense.q.size()), dense_o(dense.q.size());
  ekv::DeviceBuffer<float> lse(static_cast<std::size_t>(shape.batch()) * shape.q_heads()), dense_lse(lse.size());
  o.fill_bytes(0xFF, stream);
  lse.fill_bytes(0xFF, stream);
  quant_step.run(quant_view, dev.q.data(), anchors.data(), o.data(), lse.data(), stream, 0);
  dense_step.run(dense_view, dev.q.data(), anchors.data(), dense_o.data(), dense_lse.data(), stream, 0);
  stream.synchronize();

  const ekv::KVView<T> host = dense.host_view();
  std::vector<std::vector<std::vector<int>>> expected(shape.batch());
  for (int b = 0; b < shape.batch(); ++b) {
    const int n = ekv::sequence_blocks(dense.lengths[b], dense.block_len);
    expected[b] = ekv::reference_select(host, dense.q.data() + static_cast<std::size_t>(b) * shape.q_heads() * head_dim,
                                        shape.q_heads(), b, config, policy.counts(n));
  }
  ekv::test::check_attended(quant_step, expected, shape.batch(), shape.kv_heads, retrieval);
  ekv::test::check_attended(dense_step, expected, shape.batch(), shape.kv_heads, retrieval);

  std::vector<T> got_o(o.size());
  std::vector<float> got_lse(lse.size());
  o.copy_to(got_o);
  lse.copy_to(got_lse);
  const ekv::KVView<float> exact_values =
      cache.view(pools.k_values.data(), pools.v_values.data(), cache.table.data(), cache.lengths.data());
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const auto ref = ekv::reference_elastic_decode(exact_values, cache.q.data(), shape.q_heads(), expected, retrieval,
                                                 scale);
  ekv::test::check_against_reference<T>(ref, got_o, got_lse, head_dim);
}

}  // namespace

TEST_CASE_TEMPLATE("elastic decode over quantized storage selects as over the dequantized values", T, __half,
                   __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  int i = 0;
  for (KVStorage s : ekv::kQuantDecodeStorages) {
    for (ekv::RetrievalType retrieval : {ekv::RetrievalType::kKvHead, ekv::RetrievalType::kLayer}) {
      for (int head_dim : {64, 128}) check_quant_elastic<T>(s, retrieval, head_dim, seed + i++);
    }
  }
}

TEST_CASE("elastic decode over quantized storage refuses QHEAD and dense views") {
  ekv::ElasticConfig config;
  config.retrieval = ekv::RetrievalType::kQHead;
  const ekv::DecodeProblem problem{ekv::DType::kFloat16, 1, 8, 2, 128, 4096};
  ekv::ElasticProblem p{problem, 64, ekv::ElasticPolicy(config, ekv::ElasticBudget::blocks(8)), 1,
                        ekv::ExactFallback::kNever};
  p.kv_storage = KVStorage::kQ8_0;
  const ekv::Support qhead = ekv::supports(p);
  CHECK_FALSE(qhead);
  CHECK(qhead.why.find("retrieval_type=QHEAD not supported with kv storage q8_0") != std::string::npos);
  p.kv_storage = KVStorage::kBFloat16;
  CHECK(ekv::supports(p).why.find("kv storage=bf16 not supported with dtype=float16") != std::string::npos);

  config.retrieval = ekv::RetrievalType::kKvHead;
  p.policy = ekv::ElasticPolicy(config, ekv::ElasticBudget::blocks(8));
  p.kv_storage = KVStorage::kQ4_0;
  ekv::Stream stream;
  ekv::ElasticDecode<__half> step(p, ekv::DeviceInfo::current(), stream);
  ekv::DeviceBuffer<__half> k(64 * 2 * 64 * 128), v(k.size()), q(8 * 128), o(q.size()), anchors(64 * 2 * 128);
  ekv::DeviceBuffer<std::int32_t> table(64), lengths(1);
  lengths.copy_from(std::vector<std::int32_t>{4096});
  const ekv::KVView<__half> dense = ekv::paged_kv<__half>(k.data(), v.data(), table.data(), lengths.data(), 1, 2,
                                                          128, 64, 64);
  ekv::DeviceBuffer<float> lse(8);
  CHECK_THROWS_WITH_AS(step.run(dense, q.data(), anchors.data(), o.data(), lse.data(), stream, 0),
                       doctest::Contains("planned for kv storage q4_0, and the view is dense"), ekv::Error);
}
