#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "ekv/core/device_buffer.hpp"
#include "ekv/kernels/fill.cuh"
#include "harness/bandwidth.cuh"
#include "harness/fma_throughput.cuh"
#include "harness/read_ceiling.cuh"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

template <typename T>
std::vector<T> read_back(const ekv::DeviceBuffer<T>& b) {
  std::vector<T> out(b.size());
  b.copy_to(out);
  return out;
}

template <typename T>
double host_sum(const std::vector<T>& v, std::size_t begin, std::size_t end) {
  double s = 0;
  for (std::size_t i = begin; i < end; ++i) s += ekv::DTypeTraits<T>::to_float(v[i]);
  return s;
}

// Sizes that are not multiples of anything, a one-element copy, and a large one.
constexpr std::size_t kSizes[] = {1, 7, 1001, 65537, 3000017};

}  // namespace

TEST_CASE_TEMPLATE("copy reproduces the source bit for bit, aligned or not", T, float, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  for (std::size_t n : kSizes) {
    for (std::size_t offset : {0, 1, 3}) {  // offsets break 16-byte alignment
      INFO("n=" << n << " offset=" << offset);
      const std::vector<T> host = ekv::bench::random_uniform<T>(n + offset, -3.0f, 3.0f, seed + n);
      ekv::DeviceBuffer<T> src(n + offset), dst(n + offset + 5);
      src.copy_from(host);
      dst.fill_bytes(0xFF, stream);
      ekv::bench::copy<T>(src.span().subspan(offset, n), dst.span().subspan(offset, n + 5), device, stream);
      stream.synchronize();
      const std::vector<T> out = read_back(dst);
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < n; ++i) {
        wrong += std::memcmp(&out[offset + i], &host[offset + i], sizeof(T)) != 0;
      }
      CHECK(wrong == 0);
      for (std::size_t i = offset + n; i < out.size(); ++i) {  // nothing past the end written
        CHECK(std::isnan(ekv::DTypeTraits<T>::to_float(out[i])));
      }
    }
  }
}

TEST_CASE("copy rejects a destination that is too small") {
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  ekv::DeviceBuffer<float> a(10), b(9);
  CHECK_THROWS_WITH_AS(ekv::bench::copy<float>(a.span(), b.span(), device, stream),
                       "copy: destination holds 9 elements, source 10", ekv::Error);
}

TEST_CASE_TEMPLATE("read_reduce sums every element exactly once", T, float, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  for (std::size_t n : kSizes) {
    for (std::size_t offset : {0, 1}) {
      INFO("n=" << n << " offset=" << offset);
      // integers 1 to 4, exact in every dtype, and every partial sum below 2^24 (at most
      // 4 x 3000017), so float accumulation is exact: one element dropped or read twice shows
      std::mt19937 rng(static_cast<unsigned>(seed ^ n));
      std::vector<T> host(n + offset);
      for (T& x : host) x = ekv::DTypeTraits<T>::from_float(static_cast<float>(std::uniform_int_distribution<int>(1, 4)(rng)));
      ekv::DeviceBuffer<T> src(host.size());
      src.copy_from(host);
      const int ctas = ekv::bench::read_reduce_ctas<T>(device, n);
      ekv::DeviceBuffer<float> partials(ctas);
      partials.fill_bytes(0xFF, stream);
      ekv::bench::read_reduce<T>(src.span().subspan(offset, n), partials.span(), stream);
      stream.synchronize();
      const std::vector<float> p = read_back(partials);
      double got = 0;
      for (float x : p) {
        REQUIRE(std::isfinite(x));  // every CTA wrote its partial
        got += x;
      }
      const double want = host_sum(host, offset, offset + n);
      CHECK(got == want);
    }
  }
}

template <int CtaThreads, int Unroll>
void check_read_prefetch(const std::vector<float>& host, const ekv::DeviceBuffer<float>& src, std::size_t n,
                         const ekv::Stream& stream) {
  INFO("cta_threads=" << CtaThreads << " unroll=" << Unroll << " n=" << n);
  ekv::DeviceBuffer<float> partials(ekv::bench::read_prefetch_ctas<CtaThreads, Unroll>(n));
  partials.fill_bytes(0xFF, stream);
  ekv::bench::read_prefetch_reduce<CtaThreads, Unroll>(src.span().subspan(0, n), partials.span(), stream);
  stream.synchronize();
  double got = 0;
  for (float x : read_back(partials)) {
    REQUIRE(std::isfinite(x));  // every CTA wrote its partial
    got += x;
  }
  CHECK(got == host_sum(host, 0, n));
}

TEST_CASE("read_prefetch_reduce sums every element exactly once, its tail included") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::Stream stream;
  for (std::size_t n : kSizes) {
    // integers 1 to 4: float sums exact (see read_reduce's case)
    std::mt19937 rng(static_cast<unsigned>(seed ^ n));
    std::vector<float> host(n);
    for (float& x : host) x = static_cast<float>(std::uniform_int_distribution<int>(1, 4)(rng));
    ekv::DeviceBuffer<float> src(n + 1);
    src.copy_from(ekv::Span<const float>(host.data(), n));
    check_read_prefetch<256, 16>(host, src, n, stream);
    check_read_prefetch<1024, 4>(host, src, n, stream);
  }
  ekv::DeviceBuffer<float> src(64);
  ekv::DeviceBuffer<float> partials(4);
  // a source off 16-byte alignment, and too few partials, are refused before any launch
  CHECK_THROWS_AS((ekv::bench::read_prefetch_reduce<256, 16>(src.span().subspan(1, 60), partials.span(), stream)),
                  ekv::Error);
  CHECK_THROWS_AS((ekv::bench::read_prefetch_reduce<256, 16>(src.span(), ekv::Span<float>(), stream)), ekv::Error);
}

TEST_CASE("bulk_read_reduce sums every whole chunk exactly once, through Hopper's bulk copies") {
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  if (device.cc_major < 9) {
    MESSAGE("bulk copies need sm_90; " << device.name << " is " << device.compute_capability());
    return;
  }
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::Stream stream;
  // 37 chunks of 16 KiB and a tail the kernel must not read; grids with fewer CTAs than
  // chunks (several per CTA, stages reused), as many, and more
  constexpr int kChunk = 16 * 1024;
  const std::size_t n = 37 * kChunk / sizeof(float) + 100;
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::vector<float> host(n);
  for (float& x : host) x = static_cast<float>(std::uniform_int_distribution<int>(1, 4)(rng));
  ekv::DeviceBuffer<float> src(n);
  src.copy_from(host);
  for (int ctas : {1, 5, 37, 50}) {
    INFO("ctas=" << ctas);
    ekv::DeviceBuffer<float> partials(ctas);
    partials.fill_bytes(0xFF, stream);
    const std::size_t bytes = ekv::bench::bulk_read_reduce<kChunk>(src.span(), partials.span(), stream);
    stream.synchronize();
    CHECK(bytes == 37u * kChunk);
    double got = 0;
    for (float x : read_back(partials)) {
      REQUIRE(std::isfinite(x));
      got += x;
    }
    CHECK(got == host_sum(host, 0, 37 * kChunk / sizeof(float)));
  }
  CHECK(ekv::bench::bulk_read_reduce_ctas<kChunk>(device) >= device.sm_count);
}

TEST_CASE("read_reduce_chunks covers the input in many launches") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::Stream stream;
  const std::size_t n = 1000003;
  const std::vector<float> host = ekv::bench::random_uniform<float>(n, 0.5f, 1.5f, seed);
  ekv::DeviceBuffer<float> src(n);
  src.copy_from(host);
  for (std::size_t chunks : {1, 5, 64}) {
    INFO("chunks=" << chunks);
    ekv::DeviceBuffer<float> partials(chunks * 3);
    partials.fill_bytes(0xFF, stream);
    ekv::bench::read_reduce_chunks<float>(src.span(), chunks, partials.span(), stream);
    stream.synchronize();
    double got = 0;
    for (float x : read_back(partials)) got += x;
    const double want = host_sum(host, 0, n);
    CHECK(std::abs(got - want) <= 1e-5 * want);
  }
  ekv::DeviceBuffer<float> too_few(3);
  CHECK_THROWS_AS(ekv::bench::read_reduce_chunks<float>(src.span(), 4, too_few.span(), stream), ekv::Error);
  CHECK_THROWS_AS(ekv::bench::read_reduce<float>(src.span(), ekv::Span<float>(), stream), ekv::Error);
}

TEST_CASE("fill writes the value everywhere and nowhere else") {
  ekv::Stream stream;
  ekv::DeviceBuffer<__half> a(100003);
  a.fill_bytes(0xFF, stream);
  ekv::fill<__half>(a.span().subspan(0, 100000), __float2half(-1.5f), stream);
  stream.synchronize();
  const std::vector<__half> out = read_back(a);
  for (std::size_t i = 0; i < 100000; ++i) REQUIRE(__half2float(out[i]) == -1.5f);
  for (std::size_t i = 100000; i < out.size(); ++i) CHECK(std::isnan(__half2float(out[i])));
}

TEST_CASE("float FMA chains match the host bit for bit") {
  ekv::Stream stream;
  const int iterations = 1000;
  const float start = 1e-3f, a = 0.999f, b = 1e-3f;
  ekv::DeviceBuffer<float> out(2 * ekv::bench::kFmaCtaThreads);
  out.fill_bytes(0xFF, stream);
  ekv::bench::fma_chains<float>(out.span(), iterations, start, a, b, stream);
  stream.synchronize();
  float x[ekv::bench::kFmaChains];
  for (int c = 0; c < ekv::bench::kFmaChains; ++c) x[c] = start * static_cast<float>(c + 1);
  for (int it = 0; it < iterations; ++it)
    for (float& v : x) v = std::fma(v, a, b);
  float want = x[0];
  for (int c = 1; c < ekv::bench::kFmaChains; ++c) want = want + x[c];
  for (float got : read_back(out)) REQUIRE(got == want);
  CHECK(ekv::bench::fma_chain_flops<float>(512, iterations) == 2.0 * ekv::bench::kFmaChains * 512 * iterations);
  CHECK_THROWS_AS(ekv::bench::fma_chains<float>(out.span().subspan(0, 100), 1, start, a, b, stream), ekv::Error);
}

TEST_CASE("half2 FMA chains converge like the float chains") {
  ekv::Stream stream;
  ekv::DeviceBuffer<__half2> out(ekv::bench::kFmaCtaThreads);
  ekv::bench::fma_chains<__half2>(out.span(), 2000, __float2half2_rn(1e-3f), __float2half2_rn(0.99f),
                           __float2half2_rn(1e-2f), stream);
  stream.synchronize();
  // each chain converges to b / (1 - a) = 1, so the sum of 8 chains is about 8
  for (const __half2& v : read_back(out)) {
    REQUIRE(std::abs(__low2float(v) - 8.0f) < 0.1f);
    REQUIRE(std::abs(__high2float(v) - 8.0f) < 0.1f);
  }
  CHECK(ekv::bench::fma_chain_flops<__half2>(1, 1) == 2.0 * 2 * ekv::bench::kFmaChains);
}
