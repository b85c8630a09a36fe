// Decode over quantized storage on the GPU (plan_quant_decode, run_decode over a
// QuantKVView) against the float64 reference run on the dequantized values (quant.hpp):
// FP8 (per-head scales), Q8_0 and Q4_0 x half and bfloat16 queries x head_dim 64, 128, 256
// x paged and contiguous HND x ragged lengths (0, 1, partial tiles, several splits) x
// forced splits, outputs poisoned. The kernel rounds no value: codes are exact in T, and
// the scales are applied in float (FP8's head scales, Q8_0's and Q4_0's group scales of K
// to the scores), except V's group scales, which multiply P rounded to T, one rounding more
// than dense decode's P takes. The tolerances are dense decode's (the worst row's relative
// L2 error of O: 2e-3 half, 1e-2 bfloat16; LSE 1e-4 x max(1, |lse|)). What the storage
// costs against full precision is the CPU backend's test (cpu_quant_attention_test) and
// the benchmark's.
// Also a plan for dense storage refused by the quantized view, and the reverse.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "decode_check.hpp"
#include "device_cache.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/attention/decode_quant.cuh"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/attention/reference.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/quant.hpp"
#include "test_seed.hpp"

namespace {

using ekv::KVStorage;
using ekv::test::CacheShape;
using ekv::test::HostCache;
using ekv::test::Layout;

template <typename T>
void check_quant_decode(KVStorage s, const CacheShape& shape, std::uint64_t seed, int splits) {
  HostCache<float> cache(shape, seed);
  const int d = shape.head_dim;
  // the queries as the GPU sees them, rounded to T, for both sides
  std::vector<T> q(cache.q.size());
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = ekv::DTypeTraits<T>::from_float(cache.q[i]);
    cache.q[i] = ekv::DTypeTraits<T>::to_float(q[i]);
  }
  std::vector<float> head_scales(shape.kv_heads);
  for (int h = 0; h < shape.kv_heads; ++h) head_scales[h] = s == KVStorage::kFp8E4M3 ? 0.004f * (h + 1) : 1.0f;
  // the pools: each float row quantized, and the values those decode to
  const std::size_t rows = cache.k.size() / d;
  const std::size_t code_bytes = ekv::kv_code_bytes(s, d), groups = ekv::kv_scale_bytes(s, d) / 2;
  std::vector<std::uint8_t> k_codes(rows * code_bytes), v_codes(k_codes.size());
  std::vector<__half> k_scales(std::max<std::size_t>(1, rows * groups)), v_scales(k_scales.size());
  std::vector<float> k_values(cache.k.size()), v_values(cache.v.size());
  const int rows_per_head = static_cast<int>(cache.block_len);  // HND: a head's rows are block_len apart
  for (std::size_t r = 0; r < rows; ++r) {
    const int head = static_cast<int>(r / rows_per_head % shape.kv_heads);
    ekv::quantize_row(s, cache.k.data() + r * d, d, k_codes.data() + r * code_bytes, k_scales.data() + r * groups,
                      head_scales[head]);
    ekv::quantize_row(s, cache.v.data() + r * d, d, v_codes.data() + r * code_bytes, v_scales.data() + r * groups,
                      head_scales[head]);
    ekv::dequantize_row(s, k_codes.data() + r * code_bytes, k_scales.data() + r * groups, d, k_values.data() + r * d,
                        head_scales[head]);
    ekv::dequantize_row(s, v_codes.data() + r * code_bytes, v_scales.data() + r * groups, d, v_values.data() + r * d,
                        head_scales[head]);
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const auto ref = ekv::reference_decode<float>(
      cache.view(k_values.data(), v_values.data(), cache.table.data(), cache.lengths.data()), cache.q.data(),
      shape.q_heads(), scale);

  ekv::DeviceBuffer<std::uint8_t> dk(k_codes.size()), dv(v_codes.size());
  ekv::DeviceBuffer<__half> dks(k_scales.size()), dvs(v_scales.size());
  ekv::DeviceBuffer<float> dhead_scales(head_scales.size());
  ekv::DeviceBuffer<std::int32_t> dtable(cache.table.size()), dlengths(cache.lengths.size());
  ekv::DeviceBuffer<T> dq(q.size()), dout(q.size());
  ekv::DeviceBuffer<float> dlse(static_cast<std::size_t>(shape.batch()) * shape.q_heads());
  dk.copy_from(k_codes);
  dv.copy_from(v_codes);
  dks.copy_from(k_scales);
  dvs.copy_from(v_scales);
  dhead_scales.copy_from(head_scales);
  dtable.copy_from(cache.table);
  dlengths.copy_from(cache.lengths);
  dq.copy_from(q);
  const ekv::QuantKVPool pool{dk.data(), dv.data(), dks.data(), dvs.data()};
  ekv::QuantKVView view =
      shape.layout == Layout::kPaged
          ? ekv::paged_quant_kv(s, pool, dtable.data(), dlengths.data(), shape.batch(), shape.kv_heads, d,
                                cache.block_len, cache.blocks_per_seq)
          : ekv::contiguous_hnd_quant_kv(s, pool, dlengths.data(), shape.batch(), shape.kv_heads, d, cache.block_len);
  view.k_head_scales = dhead_scales.data();
  view.v_head_scales = dhead_scales.data();

  const ekv::DecodePlan plan = ekv::plan_quant_decode(ekv::test::decode_problem(shape, ekv::kDTypeOf<T>), s,
                                                      ekv::DeviceInfo::current(), splits);
  INFO("splits=" << plan.num_splits << " split_tokens=" << plan.split_tokens);
  ekv::Stream stream;
  ekv::DeviceBuffer<unsigned char> workspace = ekv::make_decode_workspace(plan, stream);
  dout.fill_bytes(0xFF, stream);
  dlse.fill_bytes(0xFF, stream);
  ekv::run_decode<T>(plan, view, dq.data(), dout.data(), dlse.data(), workspace.data(), stream);
  stream.synchronize();
  std::vector<T> out(dout.size());
  std::vector<float> lse(dlse.size());
  dout.copy_to(out);
  dlse.copy_to(lse);
  ekv::test::check_against_reference<T>(ref, out, lse, d);
}

}  // namespace

TEST_CASE_TEMPLATE("quantized decode matches the reference on the dequantized values", T, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  int i = 0;
  for (KVStorage s : ekv::kQuantDecodeStorages) {
    for (int head_dim : ekv::kDecodeHeadDims) {
      for (Layout layout : {Layout::kPaged, Layout::kContiguousHnd}) {
        const CacheShape shape{2, 4, head_dim, 16, {0, 1, 17, 130, i % 2 == 0 ? 2049 : 700}, layout};
        for (int splits : {1, 5, 0}) {
          INFO(ekv::test::describe(shape) << " storage=" << std::string(ekv::to_string(s))
                                          << " forced splits=" << splits);
          check_quant_decode<T>(s, shape, seed + i++, splits);
        }
      }
    }
  }
}

TEST_CASE("plans and views of different storage refuse each other") {
  const ekv::DecodeProblem p{ekv::DType::kFloat16, 1, 8, 2, 128, 64};
  CHECK_THROWS_WITH_AS(ekv::plan_quant_decode(p, KVStorage::kFloat16, ekv::DeviceInfo::current()),
                       doctest::Contains("kv storage=fp16 not supported by quantized decode"), ekv::Error);
  ekv::DecodeProblem f = p;
  f.dtype = ekv::DType::kFloat32;
  CHECK_THROWS_WITH_AS(ekv::plan_quant_decode(f, KVStorage::kQ8_0, ekv::DeviceInfo::current()),
                       "plan_quant_decode: dtype=float32 not supported; supported: float16, bfloat16 (the tensor-core "
                       "kernel)",
                       ekv::Error);
  const ekv::DecodePlan quant = ekv::plan_quant_decode(p, KVStorage::kQ8_0, ekv::DeviceInfo::current());
  const ekv::DecodePlan dense = ekv::plan_decode(p, ekv::DeviceInfo::current());
  ekv::DeviceBuffer<std::uint8_t> codes(2 * 64 * 128);
  ekv::DeviceBuffer<__half> scales(2 * 64 * 4), q(8 * 128), o(8 * 128), k(2 * 64 * 128);
  ekv::DeviceBuffer<float> lse(8);
  ekv::DeviceBuffer<std::int32_t> lengths(1);
  ekv::DeviceBuffer<unsigned char> workspace(std::max(quant.workspace_bytes(), dense.workspace_bytes()) + 16);
  const ekv::QuantKVView qv = ekv::contiguous_hnd_quant_kv(
      KVStorage::kQ8_0, {codes.data(), codes.data(), scales.data(), scales.data()}, lengths.data(), 1, 2, 128, 64);
  const ekv::KVView<__half> dv = ekv::contiguous_hnd_kv<__half>(k.data(), k.data(), lengths.data(), 1, 2, 128, 64);
  ekv::Stream stream;
  CHECK_THROWS_WITH_AS(ekv::run_decode<__half>(dense, qv, q.data(), o.data(), lse.data(), workspace.data(), stream),
                       "run_decode: the view stores q8_0, the plan is for dense storage (plan_quant_decode)",
                       ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::run_decode<__half>(quant, dv, q.data(), o.data(), lse.data(), workspace.data(), stream),
                       "run_decode: the plan is for q8_0 storage (plan_quant_decode), the view is dense", ekv::Error);
}
