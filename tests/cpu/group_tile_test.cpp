// The tile kernels against sums in double: portable, and AVX2 where they are compiled
// (x86-64-v3 targets; g++ and clang on x86-64 without it, as cpu_group_tile_dispatch_test,
// where they run if the CPU has AVX2; not with -DEKV_CPU_PORTABLE_ONLY, as
// cpu_group_tile_portable_test), for
// float, half and bfloat16 rows, head counts that fill 1, 2, 3 and 4 of the AVX2 kernels'
// head blocks, head_dims that leave a single piece of 8 at the end, and row counts that
// are not multiples of the row blocks; AVX-512 where the CPU has it, for the head_dims
// that are multiples of 16. A NaN or infinity in K or V poisons the same
// outputs in both.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "ekv/cpu/group_tile.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

constexpr int kStride = ekv::kAttendTileTokens;
constexpr float kUnwritten = -12345.0f;  // scores past a tile's rows keep it

struct Tile {
  int group, n, d;
  std::vector<float> q;        // [group][d]
  std::vector<float> p;        // [group][kStride], weights in [0, 1]
  std::vector<float> rescale;  // [group]
  std::vector<float> acc;      // [group][d], the state before the tile
};

Tile make_tile(int group, int n, int d, std::uint64_t seed) {
  Tile t{group, n, d, ekv::bench::random_uniform<float>(static_cast<std::size_t>(group) * d, -1.0f, 1.0f, seed),
         ekv::bench::random_uniform<float>(static_cast<std::size_t>(group) * kStride, 0.0f, 1.0f, seed + 1),
         ekv::bench::random_uniform<float>(group, 0.0f, 1.0f, seed + 2),
         ekv::bench::random_uniform<float>(static_cast<std::size_t>(group) * d, -1.0f, 1.0f, seed + 3)};
  t.rescale[0] = 1.0f;  // the kernels' common case, where the portable one skips the multiply
  return t;
}

struct Result {
  std::vector<float> scores;  // [group][kStride]
  std::vector<float> acc;     // [group][d]
};

template <typename T>
using Kernels = Result (*)(const Tile&, const std::vector<const T*>&, const std::vector<const T*>&);

template <typename T>
Result run_portable(const Tile& t, const std::vector<const T*>& k, const std::vector<const T*>& v) {
  Result r{std::vector<float>(static_cast<std::size_t>(t.group) * kStride, kUnwritten), t.acc};
  std::vector<float> wide(static_cast<std::size_t>(t.n) * t.d);
  ekv::tile_scores_portable(t.q.data(), t.group, k.data(), t.n, t.d, r.scores.data(), kStride, wide.data());
  ekv::tile_accumulate_portable(r.acc.data(), t.rescale.data(), t.p.data(), kStride, t.group, v.data(), t.n, t.d,
                                wide.data());
  return r;
}

#if defined(EKV_CPU_GROUP_TILE_AVX2)
template <typename T>
Result run_avx2(const Tile& t, const std::vector<const T*>& k, const std::vector<const T*>& v) {
  Result r{std::vector<float>(static_cast<std::size_t>(t.group) * kStride, kUnwritten), t.acc};
  ekv::tile_scores_avx2(t.q.data(), t.group, k.data(), t.n, t.d, r.scores.data(), kStride);
  ekv::tile_accumulate_avx2(r.acc.data(), t.rescale.data(), t.p.data(), kStride, t.group, v.data(), t.n, t.d);
  return r;
}
#endif

#if defined(EKV_CPU_GROUP_TILE_AVX512)
template <typename T>
Result run_avx512(const Tile& t, const std::vector<const T*>& k, const std::vector<const T*>& v) {
  Result r{std::vector<float>(static_cast<std::size_t>(t.group) * kStride, kUnwritten), t.acc};
  ekv::tile_scores_avx512(t.q.data(), t.group, k.data(), t.n, t.d, r.scores.data(), kStride);
  ekv::tile_accumulate_avx512(r.acc.data(), t.rescale.data(), t.p.data(), kStride, t.group, v.data(), t.n, t.d);
  return r;
}
#endif

// the kernels this CPU runs for rows of d values
template <typename T>
std::vector<Kernels<T>> all_kernels(int d) {
  std::vector<Kernels<T>> kernels = {run_portable<T>};
#if defined(EKV_CPU_GROUP_TILE_AVX2)
  if (ekv::cpu_runs_avx2_tiles()) {
    kernels.push_back(run_avx2<T>);
  } else {
    MESSAGE("this CPU lacks AVX2, FMA or F16C: the AVX2 kernels are not checked");
  }
#endif
#if defined(EKV_CPU_GROUP_TILE_AVX512)
  if (ekv::cpu_runs_avx512_tiles() && ekv::avx512_tiles_take(d)) {
    kernels.push_back(run_avx512<T>);
  } else if (!ekv::cpu_runs_avx512_tiles()) {
    MESSAGE("this CPU lacks AVX512 F, BW, DQ or VL: the AVX-512 kernels are not checked");
  }
#endif
  (void)d;
  return kernels;
}

// n rows of d values in [-1, 1], each in its own allocation, as a block table scatters them
template <typename T>
std::vector<std::vector<T>> random_rows(int n, int d, std::uint64_t seed) {
  std::vector<std::vector<T>> rows;
  for (int r = 0; r < n; ++r) rows.push_back(ekv::bench::random_uniform<T>(d, -1.0f, 1.0f, seed + 1000 * r));
  return rows;
}

template <typename T>
std::vector<const T*> row_pointers(const std::vector<std::vector<T>>& rows) {
  std::vector<const T*> out;
  for (const auto& r : rows) out.push_back(r.data());
  return out;
}

template <typename T>
void check_against_double(std::uint64_t seed) {
  // 8, 24, 72 and 136 leave a piece of 8 (not AVX-512's); 64, 128 and 256 are the AVX-512
  // kernels' head_dims known at compile time, 48 and 144 not
  for (int d : {8, 24, 48, 64, 72, 128, 136, 144, 256}) {
    for (int group : {1, 2, 3, 4, 5, 7, 8}) {
      for (int n : {1, 3, 8, 13, kStride}) {
        INFO("d=" << d << " group=" << group << " n=" << n);
        const Tile t = make_tile(group, n, d, seed);
        const auto k_rows = random_rows<T>(n, d, seed + 10), v_rows = random_rows<T>(n, d, seed + 11);
        const auto k = row_pointers(k_rows), v = row_pointers(v_rows);
        for (auto kernels : all_kernels<T>(d)) {
          const Result r = kernels(t, k, v);
          for (int g = 0; g < group; ++g) {
            for (int s = 0; s < kStride; ++s) {
              const float got = r.scores[g * kStride + s];
              if (s >= n) {
                CHECK(got == kUnwritten);
                continue;
              }
              double want = 0, magnitude = 0;
              for (int i = 0; i < d; ++i) {
                const double x = double(t.q[g * d + i]) * ekv::DTypeTraits<T>::to_float(k_rows[s][i]);
                want += x;
                magnitude += std::abs(x);
              }
              CHECK(std::abs(got - want) <= 1e-5 * magnitude);
            }
            for (int i = 0; i < d; ++i) {
              double want = double(t.acc[g * d + i]) * t.rescale[g], magnitude = std::abs(want);
              for (int s = 0; s < n; ++s) {
                const double x = double(t.p[g * kStride + s]) * ekv::DTypeTraits<T>::to_float(v_rows[s][i]);
                want += x;
                magnitude += std::abs(x);
              }
              CHECK(std::abs(r.acc[g * d + i] - want) <= 1e-5 * magnitude);
            }
          }
        }
      }
    }
  }
}

}  // namespace

TEST_CASE_TEMPLATE("tile_scores and tile_accumulate equal their sums in double", T, float, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  check_against_double<T>(seed);
}

TEST_CASE_TEMPLATE("a NaN or infinity in K or V poisons the same outputs in every kernel", T, float, __half,
                   __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int group = 5, n = 13;
  for (int d : {72, 80}) {  // 80: the AVX-512 kernels' too
    INFO("d=" << d);
    const Tile t = make_tile(group, n, d, seed);
    auto k_rows = random_rows<T>(n, d, seed + 10), v_rows = random_rows<T>(n, d, seed + 11);
    const T nan = ekv::DTypeTraits<T>::from_float(std::numeric_limits<float>::quiet_NaN());
    const T inf = ekv::DTypeTraits<T>::from_float(std::numeric_limits<float>::infinity());
    k_rows[2][17] = nan;
    k_rows[9][64] = inf;
    v_rows[4][3] = nan;
    v_rows[11][70] = inf;
    const auto k = row_pointers(k_rows), v = row_pointers(v_rows);
    for (auto kernels : all_kernels<T>(d)) {
      const Result r = kernels(t, k, v);
      for (int g = 0; g < group; ++g) {
        for (int s = 0; s < n; ++s) {
          const float x = r.scores[g * kStride + s];
          CHECK(std::isnan(x) == (s == 2));
          CHECK(std::isinf(x) == (s == 9));  // q [g][64] is not 0
        }
        for (int i = 0; i < d; ++i) {
          const float x = r.acc[g * d + i];
          CHECK(std::isnan(x) == (i == 3));
          CHECK(std::isinf(x) == (i == 70));  // p [g][11] is not 0
        }
      }
    }
  }
}

TEST_CASE("g++ and clang on x86-64 compile the AVX2 kernels whatever the target's flags") {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(EKV_CPU_PORTABLE_ONLY)
#if !defined(EKV_CPU_GROUP_TILE_AVX2)
  FAIL("the AVX2 kernels are not compiled: a consumer's default flags would get the portable ones");
#endif
  CHECK(ekv::cpu_runs_avx2_tiles() == (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                       __builtin_cpu_supports("f16c")));
#else
  MESSAGE("not g++ or clang on x86-64, or the portable kernels alone by request: nothing to check");
#endif
}

TEST_CASE("cpu_tile_isa picks the widest kernels the CPU runs for d, within EKV_CPU_ISA") {
  const char* value = std::getenv("EKV_CPU_ISA");
  const std::string cap = value == nullptr ? "" : value;
  INFO("EKV_CPU_ISA=" << cap);
  if (!cap.empty() && cap != "portable" && cap != "avx2" && cap != "avx512") {  // as cpu_group_tile_bad_isa_test
    CHECK_THROWS_WITH_AS(ekv::cpu_tile_isa_cap(),
                         ("EKV_CPU_ISA=" + cap + " not supported; supported: [portable, avx2, avx512]").c_str(),
                         ekv::Error);
    return;
  }
  CHECK(ekv::cpu_tile_isa_cap() == (cap == "portable" ? ekv::CpuTileIsa::portable
                                    : cap == "avx2"   ? ekv::CpuTileIsa::avx2
                                                      : ekv::CpuTileIsa::avx512));
  for (int d : {8, 64, 72, 128, 256}) {
    INFO("d=" << d);
    ekv::CpuTileIsa want = ekv::CpuTileIsa::portable;
#if defined(EKV_CPU_GROUP_TILE_AVX2)
    if (ekv::cpu_runs_avx2_tiles() && cap != "portable") want = ekv::CpuTileIsa::avx2;
#endif
#if defined(EKV_CPU_GROUP_TILE_AVX512)
    if (ekv::cpu_runs_avx512_tiles() && d % 16 == 0 && cap != "portable" && cap != "avx2") {
      want = ekv::CpuTileIsa::avx512;
    }
#endif
    CHECK(ekv::cpu_tile_isa(d) == want);
  }
#if defined(EKV_CPU_GROUP_TILE_AVX512)
  CHECK(ekv::cpu_runs_avx512_tiles() == (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")));
#endif
}
