// The float64 references and decode's support rules, on the CPU (they run in CI).

#include <doctest/doctest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "ekv/attention/decode_support.hpp"
#include "ekv/attention/reference.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

TEST_CASE("reference_attend on a case worked by hand") {
  // q = (1, 0); keys (1, 0) and (0, 0): scores 1 and 0 at scale 1
  std::vector<float> k = {1, 0, 0, 0}, v = {1, 0, 0, 1}, q = {1, 0};
  std::int32_t len = 2;
  const auto kv = ekv::contiguous_hnd_kv<float>(k.data(), v.data(), &len, 1, 1, 2, 2);
  const ekv::RefState st = ekv::reference_attend(kv, q.data(), 0, 0, 0, 2, 1.0);
  const double e = std::exp(1.0);
  CHECK(st.o[0] == doctest::Approx(e / (1 + e)));
  CHECK(st.o[1] == doctest::Approx(1 / (1 + e)));
  CHECK(st.lse == doctest::Approx(std::log(e + 1)));  // natural log
  const ekv::RefState empty = ekv::reference_attend(kv, q.data(), 0, 0, 1, 1, 1.0);
  CHECK(std::isinf(empty.lse));
  CHECK(empty.o == std::vector<double>(2, 0.0));
}

TEST_CASE("paged, HND and NHD views of the same tokens give the same attention") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int kv_heads = 2, d = 8, len = 37, block_len = 16, blocks = 3;
  // token t of head h has value f(h, t, i); lay it out three ways
  const auto values = ekv::bench::random_uniform<float>(static_cast<std::size_t>(kv_heads) * len * d * 2, -1.0f, 1.0f, seed);
  auto at = [&](int which, int h, int t, int i) { return values[((which * kv_heads + h) * len + t) * d + i]; };
  std::vector<float> hnd_k(kv_heads * len * d), hnd_v(hnd_k.size()), nhd_k(hnd_k.size()), nhd_v(hnd_k.size());
  std::vector<float> paged_k(static_cast<std::size_t>(blocks) * kv_heads * block_len * d), paged_v(paged_k.size());
  const std::vector<std::int32_t> table = {2, 0, 1};  // logical block b lives in physical block table[b]
  for (int h = 0; h < kv_heads; ++h) {
    for (int t = 0; t < len; ++t) {
      for (int i = 0; i < d; ++i) {
        hnd_k[(h * len + t) * d + i] = at(0, h, t, i);
        hnd_v[(h * len + t) * d + i] = at(1, h, t, i);
        nhd_k[(t * kv_heads + h) * d + i] = at(0, h, t, i);
        nhd_v[(t * kv_heads + h) * d + i] = at(1, h, t, i);
        const std::size_t p = ((table[t / block_len] * kv_heads + h) * block_len + t % block_len) * d + i;
        paged_k[p] = at(0, h, t, i);
        paged_v[p] = at(1, h, t, i);
      }
    }
  }
  std::int32_t length = len;
  const auto q = ekv::bench::random_uniform<float>(4 * d, -1.0f, 1.0f, seed + 1);  // 4 q heads: group 2
  const auto a = ekv::reference_decode(ekv::contiguous_hnd_kv<float>(hnd_k.data(), hnd_v.data(), &length, 1, kv_heads, d, len), q.data(), 4, 0.3);
  const auto b = ekv::reference_decode(ekv::contiguous_nhd_kv<float>(nhd_k.data(), nhd_v.data(), &length, 1, kv_heads, d, len), q.data(), 4, 0.3);
  const auto c = ekv::reference_decode(ekv::paged_kv<float>(paged_k.data(), paged_v.data(), table.data(), &length, 1, kv_heads, d, block_len, blocks), q.data(), 4, 0.3);
  REQUIRE(a.size() == 4);
  for (int h = 0; h < 4; ++h) {
    CHECK(a[h].lse == doctest::Approx(b[h].lse).epsilon(1e-12));
    CHECK(a[h].lse == doctest::Approx(c[h].lse).epsilon(1e-12));
    for (int i = 0; i < d; ++i) {
      CHECK(a[h].o[i] == doctest::Approx(b[h].o[i]).epsilon(1e-12));
      CHECK(a[h].o[i] == doctest::Approx(c[h].o[i]).epsilon(1e-12));
    }
  }
  CHECK_THROWS_AS(ekv::paged_kv<float>(paged_k.data(), paged_v.data(), nullptr, &length, 1, kv_heads, d, block_len, blocks), ekv::Error);
}

TEST_CASE("reference_merge of the parts equals the whole, empty parts included") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int d = 16, len = 100;
  auto k = ekv::bench::random_uniform<float>(len * d, -1.0f, 1.0f, seed);
  auto v = ekv::bench::random_uniform<float>(len * d, -1.0f, 1.0f, seed + 1);
  const auto q = ekv::bench::random_uniform<float>(d, -1.0f, 1.0f, seed + 2);
  std::int32_t length = len;
  const auto kv = ekv::contiguous_hnd_kv<float>(k.data(), v.data(), &length, 1, 1, d, len);
  const ekv::RefState whole = ekv::reference_attend(kv, q.data(), 0, 0, 0, len, 0.25);
  const ekv::RefState merged = ekv::reference_merge(
      {ekv::reference_attend(kv, q.data(), 0, 0, 0, 0, 0.25), ekv::reference_attend(kv, q.data(), 0, 0, 0, 37, 0.25),
       ekv::reference_attend(kv, q.data(), 0, 0, 37, 37, 0.25), ekv::reference_attend(kv, q.data(), 0, 0, 37, len, 0.25)},
      d);
  CHECK(merged.lse == doctest::Approx(whole.lse).epsilon(1e-12));
  for (int i = 0; i < d; ++i) CHECK(merged.o[i] == doctest::Approx(whole.o[i]).epsilon(1e-12));
}

TEST_CASE("decode supports() names what is supported, for every listed value") {
  ekv::DecodeProblem p;
  p.max_seq_len = 10;
  for (ekv::DType dtype : ekv::kDecodeDTypes) {
    for (int dim : ekv::kDecodeHeadDims) {
      for (int group = 1; group <= ekv::kDecodeMaxGroup; ++group) {
        p.dtype = dtype;
        p.head_dim = dim;
        p.kv_heads = 2;
        p.q_heads = 2 * group;
        CHECK(ekv::supports(p).ok);
        CHECK(ekv::decode_head_tile(group) >= std::min(group, 8));
      }
    }
  }
  p = ekv::DecodeProblem{};
  p.head_dim = 96;
  CHECK(ekv::supports(p).why == "head_dim=96 not supported by decode; supported: [64, 128, 256]");
  p.head_dim = 128;
  p.dtype = ekv::DType::kFloat8E4M3;
  CHECK(ekv::supports(p).why == "dtype=float8_e4m3 not supported by decode; supported: [float32, float16, bfloat16]");
  p.dtype = ekv::DType::kFloat16;
  p.q_heads = 12;
  p.kv_heads = 8;
  CHECK(ekv::supports(p).why ==
        "q_heads=12, kv_heads=8 not supported by decode; q_heads must be a positive multiple of kv_heads");
  p.q_heads = 17 * 8;
  CHECK(ekv::supports(p).why == "group size 17 not supported by decode; supported: 1 to 16");
  p.q_heads = 32;
  p.batch = 0;
  CHECK_FALSE(ekv::supports(p).ok);
}

TEST_CASE("reference_append writes at each sequence's length and stops at capacity") {
  const int kv_heads = 1, d = 8, block_len = 4, blocks = 2;  // capacity 8
  std::vector<float> k(2 * blocks * block_len * d, 0.5f), v(k.size(), 0.5f);
  const std::vector<std::int32_t> table = {3, 0, 1, 2};
  std::vector<std::int32_t> lengths = {3, 7};
  const auto kv = ekv::paged_kv<float>(k.data(), v.data(), table.data(), lengths.data(), 2, kv_heads, d, block_len,
                                       blocks);
  std::vector<float> k_new(2 * 2 * d), v_new(k_new.size());
  std::iota(k_new.begin(), k_new.end(), 1.0f);
  std::iota(v_new.begin(), v_new.end(), 100.0f);
  CHECK_FALSE(ekv::reference_append(kv, k_new.data(), v_new.data(), 2));  // sequence 1 overflows
  CHECK(lengths == std::vector<std::int32_t>{5, 8});
  // sequence 0, token 3 lives in logical block 0 (physical 3), token 4 in logical block 1 (physical 0)
  CHECK(k[kv.offset(0, 0, 3)] == 1.0f);
  CHECK(k[kv.offset(0, 0, 4)] == 1.0f + d);
  CHECK(v[kv.offset(0, 0, 4) + d - 1] == 100.0f + 2 * d - 1);
  CHECK(k[kv.offset(1, 0, 7)] == 1.0f + 2 * d);  // the one token of sequence 1 that fits
}
