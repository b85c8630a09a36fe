// CPU decode over quantized KV storage (QuantKVView), paged and contiguous, ragged lengths:
// (1) against the float64 reference run on the dequantized values: both sides attend the
// same numbers, so only float accumulation differs (tolerance: float's, relative L2 of
// the worst row 1e-5; LSE 1e-4); (2) against full-precision attention over the original
// values, the accuracy cost of each format on uniform keys and values in [-1, 1], for the
// worst row, which includes a one-token sequence whose output is its V row as stored:
// FP8 (scale 1) <= 5e-2 (E4M3's 3 mantissa bits: 2.9-4.0e-2 measured here, where the
// issue's goal of 2e-2 is for long sequences, measured by the benchmark), Q8_0 <= 1e-2
// (5.5-6.4e-3 measured), Q4_0 <= 1.5e-1 (9.1e-2-1.04e-1), bf16 1e-2, fp16 2e-3, fp32 1e-5.
// Then cpu_append_kv into quantized storage: the bytes of each appended row, lengths, and
// a sequence that passes its capacity.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "decode_check.hpp"
#include "quant_pools.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/quant_rows.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

using ekv::KVStorage;
using ekv::test::CacheShape;
using ekv::test::HostCache;
using ekv::test::Layout;
using ekv::test::QuantPools;
using ekv::test::quant_view;

// The worst row's relative L2 error of o against ref.
double worst_error(const std::vector<ekv::RefState>& ref, const std::vector<float>& o, int d) {
  double worst = 0;
  for (std::size_t r = 0; r < ref.size(); ++r) {
    double e2 = 0, r2 = 0;
    for (int i = 0; i < d; ++i) {
      e2 += (o[r * d + i] - ref[r].o[i]) * (o[r * d + i] - ref[r].o[i]);
      r2 += ref[r].o[i] * ref[r].o[i];
    }
    worst = std::max(worst, r2 > 0 ? std::sqrt(e2 / r2) : std::sqrt(e2));
  }
  return worst;
}

double accuracy_bound(KVStorage s) {
  switch (s) {
    case KVStorage::kFp8E4M3: return 5e-2;
    case KVStorage::kQ8_0: return 1e-2;
    case KVStorage::kQ4_0: return 1.5e-1;
    case KVStorage::kBFloat16: return 1e-2;
    case KVStorage::kFloat16: return 2e-3;
    case KVStorage::kFloat32: break;
  }
  return 1e-5;
}

}  // namespace

TEST_CASE("cpu decode over quantized storage matches the reference on its values, at each format's cost") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::CPUInfer pool(3);
  int i = 0;
  for (Layout layout : {Layout::kPaged, Layout::kContiguousHnd}) {
    for (int head_dim : {64, 128}) {
      const CacheShape shape{2, 4, head_dim, 16, {1, 37, 700, 0}, layout};
      HostCache<float> cache(shape, seed + i++);
      const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
      const auto exact = ekv::reference_decode<float>(cache.host_view(), cache.q.data(), shape.q_heads(), scale);
      for (KVStorage s : ekv::kAllKVStorages) {
        INFO(ekv::test::describe(shape) << " storage=" << ekv::to_string(s));
        QuantPools p(s, cache);
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> o(cache.q.size(), nan), lse(static_cast<std::size_t>(shape.batch()) * shape.q_heads(), nan);
        ekv::cpu_decode<float>(pool, quant_view(s, p, cache), cache.q.data(), shape.q_heads(), o.data(), lse.data(),
                               0.0f, i % 2 == 0 ? 0 : 256);  // a forced split of the 700-token sequence too
        // (1) the same values in float64
        const ekv::KVView<float> dequantized =
            cache.view(p.k_values.data(), p.v_values.data(), cache.table.data(), cache.lengths.data());
        ekv::test::check_against_reference(
            ekv::reference_decode<float>(dequantized, cache.q.data(), shape.q_heads(), scale), o, lse, head_dim);
        // (2) the format's cost against the values before quantization
        const double cost = worst_error(exact, o, head_dim);
        MESSAGE(std::string(ekv::to_string(s)) << " head_dim " << head_dim
                                               << ": worst relative error against full precision " << cost);
        CHECK(cost <= accuracy_bound(s));
      }
    }
  }
}

TEST_CASE("cpu decode over quantized storage names what it rejects") {
  ekv::CPUInfer pool(1);
  std::vector<std::uint8_t> codes(64 * 16);
  std::vector<__half> scales(64);
  std::vector<std::int32_t> lengths{4};
  std::vector<float> q(4 * 96), o(q.size()), lse(4);
  // Q4_0 needs whole groups of 32: head_dim 40 is refused by the view
  CHECK_THROWS_WITH_AS(ekv::contiguous_hnd_quant_kv(KVStorage::kQ4_0, {codes.data(), codes.data(), scales.data(),
                                                                      scales.data()},
                                                    lengths.data(), 1, 1, 40, 4),
                       "contiguous_hnd_quant_kv: head_dim=40 not supported by kv storage q4_0; it must be a multiple "
                       "of 32",
                       ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::contiguous_hnd_quant_kv(KVStorage::kQ8_0, {codes.data(), codes.data(), nullptr, nullptr},
                                                    lengths.data(), 1, 1, 96, 4),
                       "contiguous_hnd_quant_kv: storage q8_0 needs K and V scales", ekv::Error);
  ekv::QuantKVView view = ekv::contiguous_hnd_quant_kv(
      KVStorage::kQ8_0, {codes.data(), codes.data(), scales.data(), scales.data()}, lengths.data(), 1, 1, 96, 4);
  CHECK_THROWS_WITH_AS(ekv::cpu_decode<float>(pool, view, q.data(), 4, o.data(), nullptr),
                       "cpu_decode: null K or V codes, scales, lengths, q, o or lse", ekv::Error);
  view.scales.k = nullptr;
  CHECK_THROWS_WITH_AS(ekv::cpu_decode<float>(pool, view, q.data(), 4, o.data(), lse.data()),
                       "cpu_decode: null K or V codes, scales, lengths, q, o or lse", ekv::Error);
}

TEST_CASE("cpu_append_kv into quantized storage writes each row's quantized bytes and grows the lengths") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int batch = 3, kv_heads = 2, head_dim = 64, block_len = 16, blocks = 3, tokens = 5;
  std::vector<std::int32_t> table(batch * blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<unsigned>(seed)));
  const std::vector<__half> k_new =
      ekv::bench::random_uniform<__half>(static_cast<std::size_t>(batch) * tokens * kv_heads * head_dim, -3, 3, seed);
  const std::vector<__half> v_new = ekv::bench::random_uniform<__half>(k_new.size(), -3, 3, seed + 1);
  for (KVStorage s : ekv::kAllKVStorages) {
    INFO("storage=" << ekv::to_string(s));
    const std::size_t rows = static_cast<std::size_t>(batch) * blocks * kv_heads * block_len;
    const std::size_t code_bytes = ekv::kv_code_bytes(s, head_dim), groups = ekv::kv_scale_bytes(s, head_dim) / 2;
    std::vector<std::uint8_t> k_codes(rows * code_bytes, 0xA5), v_codes(k_codes);
    std::vector<__half> k_scales(std::max<std::size_t>(1, rows * groups)), v_scales(k_scales);
    std::vector<std::int32_t> lengths{0, 20, 45};  // 45 + 5 passes the capacity of 48
    const ekv::QuantKVView kv =
        ekv::paged_quant_kv(s, {k_codes.data(), v_codes.data(), k_scales.data(), v_scales.data()}, table.data(),
                            lengths.data(), batch, kv_heads, head_dim, block_len, blocks);
    CHECK_FALSE(ekv::cpu_append_kv<__half>(kv, k_new.data(), v_new.data(), tokens));  // sequence 2 overflows
    CHECK(lengths == std::vector<std::int32_t>{5, 25, 48});
    int checked = 0;
    for (int b = 0; b < batch; ++b) {
      const int start = b == 0 ? 0 : b == 1 ? 20 : 45;
      for (int t = 0; t < lengths[b] - start; ++t) {
        for (int h = 0; h < kv_heads; ++h) {
          const std::size_t src = ((static_cast<std::size_t>(b) * tokens + t) * kv_heads + h) * head_dim;
          std::vector<float> x(head_dim);
          for (int i = 0; i < head_dim; ++i) x[i] = __half2float(k_new[src + i]);
          std::vector<std::uint8_t> codes(code_bytes);
          std::vector<__half> scales(std::max<std::size_t>(1, groups));
          ekv::quantize_row(s, x.data(), head_dim, codes.data(), scales.data());
          CHECK(std::memcmp(codes.data(), kv.row_codes(false, b, h, start + t), code_bytes) == 0);
          if (groups > 0) CHECK(std::memcmp(scales.data(), kv.row_scales(false, b, h, start + t), groups * 2) == 0);
          for (int i = 0; i < head_dim; ++i) {
            CHECK(kv.value(true, b, h, start + t, i) ==
                  ekv::dequantize_value(s, kv.row_codes(true, b, h, start + t), kv.row_scales(true, b, h, start + t),
                                        i));
          }
          ++checked;
        }
      }
    }
    CHECK(checked == (5 + 5 + 3) * kv_heads);
  }
  std::vector<std::uint8_t> codes(4 * 64);
  const ekv::QuantKVView bad = ekv::contiguous_hnd_quant_kv(KVStorage::kFp8E4M3,
                                                            {codes.data(), codes.data(), nullptr, nullptr}, nullptr, 1,
                                                            1, 64, 4);  // no lengths to grow
  CHECK_THROWS_WITH_AS(ekv::cpu_append_kv<__half>(bad, k_new.data(), v_new.data(), 1),
                       "cpu_append_kv: null K or V codes, scales, lengths or new tokens", ekv::Error);
}

// dequantize_kv_rows (the AVX2 widening where this CPU runs the AVX2 tiles) against
// quant.hpp's dequantize_row, bit for bit: random codes of every byte value (FP8's NaN
// and subnormal codes included; NaN compared as NaN), random scales, head_dim 64 and 128,
// K and V of one paged row each.
TEST_CASE("dequantize_kv_rows gives dequantize_row's values bit for bit") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed << " avx2=" << ekv::cpu_runs_avx2_tiles());
  std::mt19937 rng(static_cast<std::uint32_t>(seed));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  for (KVStorage s : {KVStorage::kFp8E4M3, KVStorage::kQ8_0, KVStorage::kQ4_0}) {
    for (int d : {64, 128}) {
      INFO("storage=" << std::string(ekv::to_string(s)) << " head_dim=" << d);
      const int code_bytes = static_cast<int>(ekv::kv_code_bytes(s, d));
      const int groups = static_cast<int>(ekv::kv_scale_bytes(s, d) / sizeof(__half));
      constexpr int kBlockLen = 4, kBlocks = 3;
      std::vector<std::uint8_t> k_codes(kBlocks * kBlockLen * code_bytes), v_codes(k_codes.size());
      for (auto* codes : {&k_codes, &v_codes}) {
        for (auto& c : *codes) c = static_cast<std::uint8_t>(byte(rng));
      }
      if (s == KVStorage::kFp8E4M3) {  // every code at least once
        for (int c = 0; c < 256 && c < static_cast<int>(k_codes.size()); ++c) k_codes[c] = static_cast<std::uint8_t>(c);
      }
      std::vector<__half> k_scales(std::max(1, kBlocks * kBlockLen * groups)), v_scales(k_scales.size());
      for (auto* scales : {&k_scales, &v_scales}) {
        for (auto& x : *scales) x = __float2half_rn(scale(rng));
      }
      std::vector<std::int32_t> table = {2, 0, 1}, lengths = {kBlocks * kBlockLen};
      std::vector<float> head_scales = {0.37f};
      ekv::QuantKVView view = ekv::paged_quant_kv(s, {k_codes.data(), v_codes.data(), k_scales.data(), v_scales.data()},
                                                  table.data(), lengths.data(), 1, 1, d, kBlockLen, kBlocks);
      view.k_head_scales = head_scales.data();
      view.v_head_scales = head_scales.data();
      std::vector<float> k(d), v(d), want_k(d), want_v(d);
      for (int pos = 0; pos < kBlocks * kBlockLen; ++pos) {
        ekv::dequantize_kv_rows(view, 0, 0, pos, k.data(), v.data());
        view.row(false, 0, 0, pos, want_k.data());
        view.row(true, 0, 0, pos, want_v.data());
        for (int i = 0; i < d; ++i) {
          for (const auto& [got, want] : {std::pair{k[i], want_k[i]}, std::pair{v[i], want_v[i]}}) {
            if (std::isnan(want)) {
              CHECK(std::isnan(got));
            } else {
              CHECK(std::memcmp(&got, &want, sizeof(float)) == 0);
            }
          }
        }
      }
    }
  }
}
