// CPU decode attention against the float64 reference: dtype x head_dim x group x layout x
// ragged lengths, outputs poisoned with NaN before every call, O and LSE checked, no
// NaN/Inf. Tolerances (decode_check.hpp, relative L2 of each row of O): float 1e-5,
// half 2e-3, bfloat16 1e-2; LSE absolute 1e-4.

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "decode_check.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "test_seed.hpp"

namespace {

using ekv::test::CacheShape;
using ekv::test::HostCache;
using ekv::test::Layout;

constexpr int kPoolThreads = 3;  // more workers than CI's two cores, and an odd count

struct Output {
  std::vector<float> o;  // as float, for comparisons between runs
  std::vector<float> lse;
};

// Runs cpu_decode on poisoned outputs, checks it against the reference, returns O and LSE.
template <typename T>
Output check_cpu_decode(ekv::CPUInfer& pool, HostCache<T>& cache, float scale = 0.0f, int chunk_tokens = 0) {
  const CacheShape& c = cache.shape;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<T> o(cache.q.size(), ekv::DTypeTraits<T>::from_float(nan));
  std::vector<float> lse(static_cast<std::size_t>(c.batch()) * c.q_heads(), nan);
  ekv::cpu_decode<T>(pool, cache.host_view(), cache.q.data(), c.q_heads(), o.data(), lse.data(), scale, chunk_tokens);
  const double ref_scale = scale > 0.0f ? scale : 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  ekv::test::check_against_reference(ekv::reference_decode<T>(cache.host_view(), cache.q.data(), c.q_heads(), ref_scale),
                                     o, lse, c.head_dim);
  Output out{std::vector<float>(o.size()), lse};
  for (std::size_t i = 0; i < o.size(); ++i) out.o[i] = ekv::DTypeTraits<T>::to_float(o[i]);
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("cpu_decode matches the reference over head_dim x group x layout x lengths", T, float, __half,
                   __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::CPUInfer pool(kPoolThreads);
  const int lengths[] = {0, 1, 7, 15, 16, 1000, 2500};
  int i = 0;
  for (int head_dim : {64, 128, 256}) {
    for (Layout layout : ekv::test::kAllLayouts) {
      for (int group : {1, 2, 4, 8, 16}) {
        // ragged batch of 3 that walks through every length
        HostCache<T> cache({2, group, head_dim, 16, {lengths[i % 7], lengths[(i + 3) % 7], lengths[(i + 5) % 7]},
                            layout},
                           seed + i);
        INFO(ekv::test::describe(cache.shape));
        const Output out = check_cpu_decode(pool, cache);
        for (int b = 0; b < cache.shape.batch(); ++b) {
          if (cache.shape.lengths[b] != 0) continue;
          for (int h = 0; h < cache.shape.q_heads(); ++h) {  // an empty sequence: exactly o = 0, lse = -inf
            const std::size_t row = static_cast<std::size_t>(b) * cache.shape.q_heads() + h;
            CHECK(out.lse[row] == -std::numeric_limits<float>::infinity());
            for (int d = 0; d < head_dim; ++d) CHECK(out.o[row * head_dim + d] == 0.0f);
          }
        }
        ++i;
      }
    }
  }
}

TEST_CASE_TEMPLATE("split chunks merged through LSE give the unsplit result", T, float, __half) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::CPUInfer pool(kPoolThreads);
  HostCache<T> cache({2, 4, 128, 16, {4099, 300, 1, 0}, Layout::kPaged}, seed);
  const Output whole = check_cpu_decode(pool, cache, 0.0f, 1 << 20);
  for (int chunk : {1, 31, 32, 100, 1000, 0}) {
    INFO("chunk_tokens=" << chunk);
    const Output split = check_cpu_decode(pool, cache, 0.0f, chunk);
    // the same float sums in another order (4099 one-token chunks at most) and one
    // rounding to T: half the tolerance against the reference
    const double tol = ekv::test::tolerance<T>() / 2;
    for (std::size_t r = 0; r < whole.lse.size(); ++r) {
      if (std::isinf(whole.lse[r])) {
        CHECK(split.lse[r] == whole.lse[r]);
      } else {
        CHECK(std::abs(split.lse[r] - whole.lse[r]) <= 1e-5);
      }
      double err2 = 0, ref2 = 0;
      for (int d = 0; d < 128; ++d) {
        const double a = split.o[r * 128 + d], b = whole.o[r * 128 + d];
        err2 += (a - b) * (a - b);
        ref2 += b * b;
      }
      CHECK(std::sqrt(err2) <= tol * std::sqrt(ref2));
    }
  }
}

TEST_CASE("cpu_decode: a given scale, odd head_dim and group, lengths past the capacity") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::CPUInfer pool(kPoolThreads);
  HostCache<__nv_bfloat16> odd({3, 3, 72, 16, {37, 300}, Layout::kContiguousNhd}, seed);
  check_cpu_decode(pool, odd, 0.3f);
  HostCache<__half> paged({1, 5, 40, 16, {64, 17}, Layout::kPaged}, seed + 1);
  const Output full = check_cpu_decode(pool, paged);
  // a length beyond the view's capacity (64 tokens) reads up to the capacity, as on the GPU
  paged.lengths[0] = 1000;
  std::vector<__half> o(paged.q.size());
  std::vector<float> lse(full.lse.size());
  ekv::cpu_decode<__half>(pool, paged.host_view(), paged.q.data(), 5, o.data(), lse.data());
  CHECK(lse == full.lse);
  for (std::size_t i = 0; i < o.size(); ++i) CHECK(__half2float(o[i]) == full.o[i]);
}

TEST_CASE("cpu_decode_supports names what is supported; cpu_decode throws its message") {
  ekv::DecodeProblem p;
  for (ekv::DType dtype : ekv::kCpuDecodeDTypes) {
    for (int d : {8, 64, 72, 128, 256, 512}) {
      p.dtype = dtype;
      p.head_dim = d;
      CHECK(ekv::cpu_decode_supports(p).ok);
    }
  }
  p.dtype = ekv::DType::kFloat8E4M3;
  CHECK(ekv::cpu_decode_supports(p).why ==
        "dtype=float8_e4m3 not supported by cpu decode; supported: [float32, float16, bfloat16]");
  p.dtype = ekv::DType::kFloat16;
  p.head_dim = 100;
  CHECK(ekv::cpu_decode_supports(p).why == "head_dim=100 not supported by cpu decode; supported: positive multiples of 8");
  p.head_dim = 128;
  p.q_heads = 12;
  p.kv_heads = 8;
  CHECK(ekv::cpu_decode_supports(p).why ==
        "q_heads=12, kv_heads=8 not supported by cpu decode; q_heads must be a positive multiple of kv_heads");
  p.q_heads = 16;
  p.scale = -1.0f;
  CHECK_FALSE(ekv::cpu_decode_supports(p).ok);
  p.scale = 0.0f;
  p.batch = -1;
  CHECK_FALSE(ekv::cpu_decode_supports(p).ok);

  ekv::CPUInfer pool(1);
  std::vector<__half> kv(2 * 8 * 100), q(4 * 100), o(q.size());
  std::vector<float> lse(4);
  std::int32_t len = 8;
  const auto view = ekv::contiguous_hnd_kv<__half>(kv.data(), kv.data(), &len, 1, 2, 100, 8);
  CHECK_THROWS_WITH_AS(ekv::cpu_decode<__half>(pool, view, q.data(), 4, o.data(), lse.data()),
                       "head_dim=100 not supported by cpu decode; supported: positive multiples of 8", ekv::Error);
  auto no_k = ekv::contiguous_hnd_kv<__half>(nullptr, kv.data(), &len, 1, 2, 96, 8);
  CHECK_THROWS_WITH_AS(ekv::cpu_decode<__half>(pool, no_k, q.data(), 4, o.data(), lse.data()),
                       "cpu_decode: null K, V, lengths, q, o or lse", ekv::Error);
  no_k.batch = 0;  // an empty step reads nothing
  CHECK_NOTHROW(ekv::cpu_decode<__half>(pool, no_k, nullptr, 4, nullptr, nullptr));
}
