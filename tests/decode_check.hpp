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

// kPaged: ekv's pool [blocks][kv_heads][block_len][head_dim]; kPagedNhd: vLLM's blocks
// [blocks][block_len][kv_heads][head_dim]; kPageIndex: FlashInfer's NHD pages through
// indptr, indices and last_page_len; the contiguous layouts hold one sequence per row.
enum class Layout { kPaged, kPagedNhd, kPageIndex, kContiguousHnd, kContiguousNhd };
inline constexpr Layout kAllLayouts[] = {Layout::kPaged, Layout::kPagedNhd, Layout::kPageIndex,
                                         Layout::kContiguousHnd, Layout::kContiguousNhd};

inline const char* name(Layout l) {
  switch (l) {
    case Layout::kPaged: return "paged";
    case Layout::kPagedNhd: return "paged_nhd (vLLM)";
    case Layout::kPageIndex: return "page_index (FlashInfer)";
    case Layout::kContiguousHnd: return "contiguous_hnd";
    case Layout::kContiguousNhd: break;
  }
  return "contiguous_nhd";
}
// Whether a layout is made of blocks (a block table or page index): the shape's block_len holds.
inline bool is_paged(Layout l) { return l == Layout::kPaged || l == Layout::kPagedNhd || l == Layout::kPageIndex; }

// The input families every attention test draws from (tests/README.md):
// - kUniform: K, V uniform in [-1, 1), q in [-2, 2): scaled scores with std about 0.67, a
//   flat softmax;
// - kPeaked: K in [-8, 8) and, at 3 random tokens of every (sequence, kv head), a key
//   along the sign of the group's queries: score std >= 5 and a few scores of 40 to 90
//   (90 in a group of one), where exp overflows unless the maximum is subtracted and a
//   wrong rescale shows;
// - kLargeValues: V in [-60000, 60000), near the fp16 range (65504): partial sums of P.V
//   overflow fp16 unless accumulated in float;
// - kLateMax: uniform, plus keys along the queries at 2 tokens in the last 5% of each
//   sequence, so the maximum score sits in the last split and every earlier split's
//   partial state must be rescaled when merged.
enum class Inputs { kUniform, kPeaked, kLargeValues, kLateMax };
inline constexpr Inputs kAllInputs[] = {Inputs::kUniform, Inputs::kPeaked, Inputs::kLargeValues, Inputs::kLateMax};

inline const char* name(Inputs i) {
  switch (i) {
    case Inputs::kUniform: return "uniform";
    case Inputs::kPeaked: return "peaked";
    case Inputs::kLargeValues: return "large_values";
    case Inputs::kLateMax: return "late_max";
  }
  return "invalid";
}

// Relative L2 error of a row of O against the float64 reference: the reference sees the
// same rounded inputs, so only accumulation and the output's rounding differ. Half and
// bfloat16 are bound by their rounding (2^-11, 2^-8 relative); float by accumulation,
// whose error grows with the scores' magnitude: scores near 90 (peaked inputs) carry about
// 90 x 2^-24 x sqrt(head_dim) absolute error into the weights, hence 1e-4 there.
template <typename T>
double tolerance(Inputs inputs = Inputs::kUniform) {
  if constexpr (std::is_same_v<T, float>) return inputs == Inputs::kPeaked ? 1e-4 : 1e-5;
  if constexpr (std::is_same_v<T, __half>) return 2e-3;
  return 1e-2;
}
// LSE, every dtype (float accumulation): absolute 1e-4 for |LSE| up to 1, relative 1e-4
// beyond (float scores near 90 round at about 1e-5 x 90).
inline constexpr double kLseTolerance = 1e-4;
inline double lse_tolerance(double ref_lse) { return kLseTolerance * std::max(1.0, std::abs(ref_lse)); }

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

// Random K, V and q for a shape from one input family; in the paged layouts the pool's
// blocks are shuffled, so that block tables matter. The page-index layout keeps its index
// in `table`: indptr [batch + 1], then last_page_len [batch], then the indices, each
// sequence given just the pages its length needs (lengths stay the host's record).
template <typename T>
struct HostCache {
  CacheShape shape;
  Inputs inputs = Inputs::kUniform;
  int block_len = 1, blocks_per_seq = 1;
  std::vector<T> k, v, q;
  std::vector<std::int32_t> table, lengths;

  HostCache(CacheShape s, std::uint64_t seed, Inputs family = Inputs::kUniform) : shape(std::move(s)), inputs(family) {
    const int max_len = std::max(1, *std::max_element(shape.lengths.begin(), shape.lengths.end()));
    block_len = is_paged(shape.layout) ? shape.block_len : max_len;
    blocks_per_seq = (max_len + block_len - 1) / block_len;
    const int num_blocks = shape.batch() * blocks_per_seq;
    const std::size_t pool = static_cast<std::size_t>(num_blocks) * shape.kv_heads * block_len * shape.head_dim;
    const float key_range = inputs == Inputs::kPeaked ? 8.0f : 1.0f;
    const float value_range = inputs == Inputs::kLargeValues ? 60000.0f : 1.0f;
    k = bench::random_uniform<T>(pool, -key_range, key_range, seed);
    v = bench::random_uniform<T>(pool, -value_range, value_range, seed + 1);
    q = bench::random_uniform<T>(static_cast<std::size_t>(shape.batch()) * shape.q_heads() * shape.head_dim, -2.0f, 2.0f,
                          seed + 2);
    table.resize(num_blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<unsigned>(seed)));
    lengths.assign(shape.lengths.begin(), shape.lengths.end());
    if (shape.layout == Layout::kPageIndex) make_page_index();
    if (inputs == Inputs::kPeaked) plant_aligned_keys(3, 0.0, 8.0f, seed + 3);
    if (inputs == Inputs::kLateMax) plant_aligned_keys(2, 0.95, 4.0f, seed + 3);
  }

  // At `count` random tokens in the last (1 - from) of each (sequence, kv head), a key of
  // magnitude `size` along the sign of the sum of the group's queries.
  void plant_aligned_keys(int count, double from, float size, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    const KVView<T> kv = host_view();
    const int group = shape.group, d = shape.head_dim;
    for (int b = 0; b < shape.batch(); ++b) {
      const int len = std::min(lengths[b], kv.capacity());
      if (len == 0) continue;
      const int first = std::min(len - 1, static_cast<int>(from * len));
      for (int h = 0; h < shape.kv_heads; ++h) {
        for (int i = 0; i < count; ++i) {
          const int t = std::uniform_int_distribution<int>(first, len - 1)(rng);
          for (int c = 0; c < d; ++c) {
            double sum = 0;
            for (int g = 0; g < group; ++g) {
              sum += DTypeTraits<T>::to_float(q[(static_cast<std::size_t>(b) * shape.q_heads() + h * group + g) * d + c]);
            }
            k[kv.offset(b, h, t) + c] = DTypeTraits<T>::from_float(sum >= 0 ? size : -size);
          }
        }
      }
    }
  }

  // The shuffled pool ids dealt out in order, each sequence its pages, into FlashInfer's index.
  void make_page_index() {
    const int batch = shape.batch();
    std::vector<std::int32_t> index(static_cast<std::size_t>(2 * batch + 1), 0);
    int used = 0;
    for (int b = 0; b < batch; ++b) {
      const int len = std::min(lengths[b], block_len * blocks_per_seq);
      const int pages = (len + block_len - 1) / block_len;
      index[batch + 1 + b] = pages > 0 ? len - (pages - 1) * block_len : 1;
      used += pages;
      index[b + 1] = used;
    }
    index.insert(index.end(), table.begin(), table.begin() + used);
    table = std::move(index);
  }

  // The view of this cache's layout over k, v, table and lengths wherever they live.
  KVView<T> view(T* kp, T* vp, const std::int32_t* tp, std::int32_t* lp) const {
    const int batch = shape.batch();
    switch (shape.layout) {
      case Layout::kPaged:
        return paged_kv<T>(kp, vp, tp, lp, shape.batch(), shape.kv_heads, shape.head_dim, block_len, blocks_per_seq);
      case Layout::kPagedNhd:
        return paged_nhd_kv<T>(kp, vp, tp, lp, batch, shape.kv_heads, shape.head_dim, block_len, blocks_per_seq);
      case Layout::kPageIndex:
        return page_index_kv<T>(kp, vp, PageIndex{tp, tp + 2 * batch + 1, tp + batch + 1}, batch, shape.kv_heads,
                                shape.head_dim, block_len, blocks_per_seq);
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
// o_tolerance > 0 replaces the dtype's tolerance for O.
template <typename T>
void check_against_reference(const std::vector<RefState>& ref, const std::vector<T>& o, const std::vector<float>& lse,
                             int head_dim, Inputs inputs = Inputs::kUniform, double o_tolerance = 0) {
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
      lse_err = std::max(lse_err, std::abs(lse[r] - ref[r].lse) / lse_tolerance(ref[r].lse));
    }
  }
  CHECK(worst <= (o_tolerance > 0 ? o_tolerance : tolerance<T>(inputs)));
  CHECK(lse_err <= 1.0);  // in units of lse_tolerance
}

}  // namespace ekv::test
