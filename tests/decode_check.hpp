#pragma once
// What decode tests share, whichever backend computes: a random host cache in each of the
// three layouts, the per-dtype tolerances, and the comparison with reference_decode.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/reference.hpp"
#include "harness/random.hpp"

namespace ekv::test {

enum class Layout { kPaged, kContiguousHnd, kContiguousNhd };
inline constexpr Layout kAllLayouts[] = {Layout::kPaged, Layout::kContiguousHnd, Layout::kContiguousNhd};

inline const char* name(Layout l) {
  return l == Layout::kPaged ? "paged" : l == Layout::kContiguousHnd ? "contiguous_hnd" : "contiguous_nhd";
}

// Relative L2 error of a row of O against the float64 reference: the reference sees the
// same rounded inputs, so only accumulation and the output's rounding differ.
template <typename T>
double tolerance() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  if constexpr (std::is_same_v<T, __half>) return 2e-3;
  return 1e-2;
}
// LSE, absolute, every dtype (float accumulation).
inline constexpr double kLseTolerance = 1e-4;

struct CacheShape {
  int kv_heads, group, head_dim, block_len;
  std::vector<int> lengths;
  Layout layout;
  int q_heads() const { return kv_heads * group; }
  int batch() const { return static_cast<int>(lengths.size()); }
};

inline std::string describe(const CacheShape& c) {
  std::string s = std::string(name(c.layout)) + " kv_heads=" + std::to_string(c.kv_heads) +
                  " group=" + std::to_string(c.group) + " head_dim=" + std::to_string(c.head_dim) +
                  " block_len=" + std::to_string(c.block_len) + " lengths=";
  for (int l : c.lengths) s += std::to_string(l) + ",";
  return s;
}

// Random K, V (uniform in [-1, 1)) and q (in [-2, 2)) for a shape; in the paged layout the
// pool's blocks are shuffled, so that block tables matter.
template <typename T>
struct HostCache {
  CacheShape shape;
  int block_len = 1, blocks_per_seq = 1;
  std::vector<T> k, v, q;
  std::vector<std::int32_t> table, lengths;

  HostCache(CacheShape s, std::uint64_t seed) : shape(std::move(s)) {
    const int max_len = std::max(1, *std::max_element(shape.lengths.begin(), shape.lengths.end()));
    block_len = shape.layout == Layout::kPaged ? shape.block_len : max_len;
    blocks_per_seq = (max_len + block_len - 1) / block_len;
    const int num_blocks = shape.batch() * blocks_per_seq;
    const std::size_t pool = static_cast<std::size_t>(num_blocks) * shape.kv_heads * block_len * shape.head_dim;
    k = bench::random_uniform<T>(pool, -1.0f, 1.0f, seed);
    v = bench::random_uniform<T>(pool, -1.0f, 1.0f, seed + 1);
    q = bench::random_uniform<T>(static_cast<std::size_t>(shape.batch()) * shape.q_heads() * shape.head_dim, -2.0f, 2.0f,
                          seed + 2);
    table.resize(num_blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<unsigned>(seed)));
    lengths.assign(shape.lengths.begin(), shape.lengths.end());
  }

  // The view of this cache's layout over k, v, table and lengths wherever they live.
  KVView<T> view(T* kp, T* vp, const std::int32_t* tp, std::int32_t* lp) const {
    switch (shape.layout) {
      case Layout::kPaged:
        return paged_kv<T>(kp, vp, tp, lp, shape.batch(), shape.kv_heads, shape.head_dim, block_len, blocks_per_seq);
      case Layout::kContiguousHnd:
        return contiguous_hnd_kv<T>(kp, vp, lp, shape.batch(), shape.kv_heads, shape.head_dim, block_len);
      case Layout::kContiguousNhd: break;
    }
    return contiguous_nhd_kv<T>(kp, vp, lp, shape.batch(), shape.kv_heads, shape.head_dim, block_len);
  }
  KVView<T> host_view() { return view(k.data(), v.data(), table.data(), lengths.data()); }
};

// Checks o T [rows][head_dim] and lse [rows] against the reference: every value finite (an
// empty row's LSE -inf), the worst row's relative L2 error of O (a pooled error would let
// short rows, whose outputs are larger, hide a wrong long row) and the worst LSE error.
template <typename T>
void check_against_reference(const std::vector<RefState>& ref, const std::vector<T>& o, const std::vector<float>& lse,
                             int head_dim) {
  REQUIRE(o.size() == ref.size() * head_dim);
  REQUIRE(lse.size() == ref.size());
  double worst = 0, lse_err = 0;
  for (std::size_t r = 0; r < ref.size(); ++r) {
    double err2 = 0, ref2 = 0;
    for (int d = 0; d < head_dim; ++d) {
      const double got = DTypeTraits<T>::to_float(o[r * head_dim + d]);
      REQUIRE(std::isfinite(got));
      err2 += (got - ref[r].o[d]) * (got - ref[r].o[d]);
      ref2 += ref[r].o[d] * ref[r].o[d];
    }
    worst = std::max(worst, ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2));
    if (std::isinf(ref[r].lse)) {
      CHECK(std::isinf(lse[r]));
      CHECK(lse[r] < 0);
    } else {
      REQUIRE(std::isfinite(lse[r]));
      lse_err = std::max(lse_err, std::abs(lse[r] - ref[r].lse));
    }
  }
  CHECK(worst <= tolerance<T>());
  CHECK(lse_err <= kLseTolerance);
}

}  // namespace ekv::test
