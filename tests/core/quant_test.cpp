// Quantized KV storage formats on the host (quant.hpp): names and byte counts, GGML's
// group layouts on hand-computed vectors (codes, scales, nibble order), round-trip error
// bounds per format on fresh random data at several magnitudes, and values the formats
// cannot hold (NaN, +-inf). Bounds, with d the group's float scale and d16 its float16
// rounding: Q8_0 |x - x'| <= d16 / 2 + 128 |d16 - d|; Q4_0 |x - x'| <= |d16| + 9 |d16 - d|
// (the value of largest magnitude's opposite side clamps at code 15, one step short);
// FP8 relative 2^-4 in E4M3's normal range, absolute 2^-10 s below it, 448 s above it.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ekv/core/quant.hpp"
#include "test_seed.hpp"

namespace {

using ekv::KVStorage;

// A stored row: codes and scales, sized for the format.
struct Row {
  std::vector<unsigned char> codes;
  std::vector<__half> scales;
  Row(KVStorage s, int head_dim)
      : codes(ekv::kv_code_bytes(s, head_dim)), scales(ekv::kv_scale_bytes(s, head_dim) / sizeof(__half)) {}
};

Row quantize(KVStorage s, const std::vector<float>& x, float scale = 1.0f) {
  Row r(s, static_cast<int>(x.size()));
  ekv::quantize_row(s, x.data(), static_cast<int>(x.size()), r.codes.data(), r.scales.data(), scale);
  return r;
}

float value(KVStorage s, const Row& r, int i, float scale = 1.0f) {
  return ekv::dequantize_value(s, r.codes.data(), r.scales.data(), i, scale);
}

}  // namespace

TEST_CASE("kv storage names, parsing and byte counts") {
  for (KVStorage s : ekv::kAllKVStorages) CHECK(ekv::parse_kv_storage(ekv::to_string(s)) == s);
  CHECK_THROWS_WITH_AS(ekv::parse_kv_storage("int4"),
                       "kv storage 'int4' not supported; supported: fp16, bf16, fp32, fp8, q8_0, q4_0", ekv::Error);
  // head_dim 128: fp16 256 bytes a row; Q8_0 128 codes + 4 float16 scales; Q4_0 64 + 8
  CHECK(ekv::kv_row_bytes(KVStorage::kFloat16, 128) == 256);
  CHECK(ekv::kv_row_bytes(KVStorage::kBFloat16, 128) == 256);
  CHECK(ekv::kv_row_bytes(KVStorage::kFloat32, 128) == 512);
  CHECK(ekv::kv_row_bytes(KVStorage::kFp8E4M3, 128) == 128);
  CHECK(ekv::kv_row_bytes(KVStorage::kQ8_0, 128) == 136);
  CHECK(ekv::kv_row_bytes(KVStorage::kQ4_0, 128) == 72);
  CHECK(ekv::kv_scale_bytes(KVStorage::kQ4_0, 64) == 4);
  CHECK(ekv::is_quantized(KVStorage::kQ4_0));
  CHECK_FALSE(ekv::is_quantized(KVStorage::kBFloat16));
  CHECK(ekv::kv_storage_supports(KVStorage::kQ8_0, 96));
  CHECK(ekv::kv_storage_supports(KVStorage::kFp8E4M3, 100));
  const ekv::Support s = ekv::kv_storage_supports(KVStorage::kQ4_0, 100);
  CHECK_FALSE(s);
  CHECK(s.why == "head_dim=100 not supported by kv storage q4_0; it must be a multiple of 32");
}

TEST_CASE("Q8_0 on a hand-computed group: d = max|x| / 127, codes roundf(x / d)") {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = 0.5f * static_cast<float>(j - 16);  // -8 .. 7.5
  const Row r = quantize(KVStorage::kQ8_0, x);
  REQUIRE(r.scales.size() == 1);
  CHECK(__half2float(r.scales[0]) == __half2float(__float2half_rn(8.0f / 127.0f)));
  for (int j = 0; j < 32; ++j) {
    // x / d = (j - 16) * 0.5 * 127 / 8 = (j - 16) * 7.9375: never a tie, so exact math rounds alike
    const auto expected = static_cast<std::int8_t>(std::lround((j - 16) * 7.9375));
    CHECK(static_cast<std::int8_t>(r.codes[j]) == expected);
  }
  CHECK(static_cast<std::int8_t>(r.codes[0]) == -127);
}

TEST_CASE("Q4_0 on a hand-computed group: d = m / -8, GGML's nibble order") {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16);  // -16 .. 15: m = -16, d = 2
  const Row r = quantize(KVStorage::kQ4_0, x);
  REQUIRE(r.codes.size() == 16);
  CHECK(__half2float(r.scales[0]) == 2.0f);
  auto code = [](int v) { return std::min(15, static_cast<int>(v * 0.5 + 8.5)); };  // exact in double
  for (int j = 0; j < 16; ++j) {
    CHECK((r.codes[j] & 0x0F) == code(j - 16));  // value j in the low nibble
    CHECK((r.codes[j] >> 4) == code(j));         // value j + 16 in the high nibble
  }
  CHECK(value(KVStorage::kQ4_0, r, 0) == -16.0f);  // m itself is exact: code 0, (0 - 8) * 2
  CHECK(value(KVStorage::kQ4_0, r, 31) == 14.0f);  // 15 clamps at code 15: 7 * 2
  CHECK(value(KVStorage::kQ4_0, r, 16) == 0.0f);
}

TEST_CASE("round trips stay within each format's bound on fresh random data") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  std::mt19937_64 rng(seed);
  const int head_dim = 128;
  for (float magnitude : {1e-3f, 1.0f, 37.0f, 3e3f}) {
    INFO("magnitude=" << magnitude);
    std::vector<float> x(head_dim);
    // mostly uniform, with an outlier group (one large value) as real keys have
    std::uniform_real_distribution<float> u(-magnitude, magnitude);
    for (float& v : x) v = u(rng);
    x[40] = 9.0f * magnitude;
    for (KVStorage s : {KVStorage::kQ8_0, KVStorage::kQ4_0}) {
      const Row r = quantize(s, x);
      for (int g = 0; g < head_dim / 32; ++g) {
        double amax = 0, m = 0;
        for (int j = 0; j < 32; ++j) {
          if (std::fabs(x[g * 32 + j]) > amax) {
            amax = std::fabs(x[g * 32 + j]);
            m = x[g * 32 + j];
          }
        }
        const double d = s == KVStorage::kQ8_0 ? amax / 127 : m / -8;
        const double d16 = __half2float(r.scales[g]);
        const double bound = s == KVStorage::kQ8_0 ? 0.5 * d16 + 128 * std::fabs(d16 - d)
                                                   : std::fabs(d16) + 9 * std::fabs(d16 - d);
        for (int j = 0; j < 32; ++j) {
          const int i = g * 32 + j;
          INFO(ekv::to_string(s) << " value " << i << " x=" << x[i]);
          CHECK(std::fabs(value(s, r, i) - x[i]) <= bound * (1 + 1e-6));
        }
      }
    }
    for (float scale : {1.0f, magnitude / 100.0f}) {
      const Row r = quantize(KVStorage::kFp8E4M3, x, scale);
      for (int i = 0; i < head_dim; ++i) {
        const double y = x[i] / static_cast<double>(scale), got = value(KVStorage::kFp8E4M3, r, i, scale);
        INFO("fp8 scale=" << scale << " x=" << x[i]);
        if (std::fabs(y) > 448) {
          CHECK(got == doctest::Approx(std::copysign(448.0 * scale, y)).epsilon(1e-6));
        } else if (std::fabs(y) >= 1.0 / 64) {  // E4M3's normal range: 3 mantissa bits
          CHECK(std::fabs(got - x[i]) <= std::fabs(x[i]) * 0.0625 * (1 + 1e-6));
        } else {
          CHECK(std::fabs(got - x[i]) <= std::ldexp(1.0, -10) * scale * (1 + 1e-6));
        }
      }
    }
    for (KVStorage s : {KVStorage::kFloat16, KVStorage::kBFloat16, KVStorage::kFloat32}) {
      const Row r = quantize(s, x);
      for (int i = 0; i < head_dim; ++i) {
        const float expected = s == KVStorage::kFloat32   ? x[i]
                               : s == KVStorage::kFloat16 ? __half2float(__float2half_rn(x[i]))
                                                          : __bfloat162float(__float2bfloat16_rn(x[i]));
        CHECK(value(s, r, i) == expected);
      }
    }
  }
}

TEST_CASE("NaN and infinities never reach a group's scale") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<float> x(32, 0.25f);
  x[3] = nan;
  x[4] = inf;
  x[5] = -inf;
  x[6] = -1.0f;  // the finite value of largest magnitude
  const Row q8 = quantize(KVStorage::kQ8_0, x);
  CHECK(__half2float(q8.scales[0]) == __half2float(__float2half_rn(1.0f / 127.0f)));
  CHECK(static_cast<std::int8_t>(q8.codes[3]) == 0);
  CHECK(static_cast<std::int8_t>(q8.codes[4]) == 127);
  CHECK(static_cast<std::int8_t>(q8.codes[5]) == -127);
  CHECK(static_cast<std::int8_t>(q8.codes[6]) == -127);
  CHECK(value(KVStorage::kQ8_0, q8, 0) == doctest::Approx(0.25).epsilon(0.01));

  const Row q4 = quantize(KVStorage::kQ4_0, x);  // m = -1, d = 1/8
  CHECK(__half2float(q4.scales[0]) == 0.125f);
  CHECK(value(KVStorage::kQ4_0, q4, 3) == 0.0f);      // NaN: the value 0
  CHECK(value(KVStorage::kQ4_0, q4, 4) == 0.875f);    // +inf: the largest code, 7 d
  CHECK(value(KVStorage::kQ4_0, q4, 5) == -1.0f);     // -inf: the smallest, -8 d
  CHECK(value(KVStorage::kQ4_0, q4, 0) == 0.25f);

  const Row f8 = quantize(KVStorage::kFp8E4M3, x);
  CHECK(std::isnan(value(KVStorage::kFp8E4M3, f8, 3)));
  CHECK(value(KVStorage::kFp8E4M3, f8, 4) == 448.0f);
  CHECK(value(KVStorage::kFp8E4M3, f8, 5) == -448.0f);

  // a group of zeros with a NaN: scale 0, every value 0, no NaN
  std::vector<float> zeros(32, 0.0f);
  zeros[7] = nan;
  zeros[8] = inf;
  for (KVStorage s : {KVStorage::kQ8_0, KVStorage::kQ4_0}) {
    const Row r = quantize(s, zeros);
    CHECK(__half2float(r.scales[0]) == 0.0f);
    for (int i = 0; i < 32; ++i) CHECK(value(s, r, i) == 0.0f);
  }
}

TEST_CASE("dequantize_row gives dequantize_value's values, every FP8 code included") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  std::vector<float> x(256);
  for (float& v : x) v = u(rng);
  for (KVStorage s : ekv::kAllKVStorages) {
    INFO("storage=" << ekv::to_string(s));
    const Row r = quantize(s, x, 0.02f);
    std::vector<float> row(x.size());
    ekv::dequantize_row(s, r.codes.data(), r.scales.data(), static_cast<int>(x.size()), row.data(), 0.02f);
    for (int i = 0; i < static_cast<int>(x.size()); ++i) CHECK(row[i] == value(s, r, i, 0.02f));
  }
  std::vector<std::uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[c] = static_cast<std::uint8_t>(c);
  std::vector<float> all(256);
  ekv::dequantize_row(KVStorage::kFp8E4M3, codes.data(), nullptr, 256, all.data(), 0.5f);
  for (int c = 0; c < 256; ++c) {
    __nv_fp8_e4m3 code;
    std::memcpy(static_cast<void*>(&code), &codes[c], 1);
    const float expected = ekv::dequantize_fp8(code, 0.5f);
    INFO("code=" << c);
    if (std::isnan(expected)) {
      CHECK(std::isnan(all[c]));
    } else {
      CHECK(all[c] == expected);
    }
  }
}
