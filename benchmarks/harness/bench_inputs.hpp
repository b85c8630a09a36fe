#pragma once
// The host side of a decode benchmark's inputs: the shape of its paged cache, random
// queries, a shuffled block table, and optional needles (blocks whose keys point along a
// query, which elastic selection should find). K and V themselves are filled where they
// live (random_uniform_fill on the GPU, random_uniform on the host).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "harness/bench_options.hpp"
#include "harness/random.hpp"

namespace ekv::bench {

struct BenchShape {
  int batch = 1;
  int q_heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int block_len = 64;
  int blocks_per_seq = 1;  // the capacity of each sequence, in blocks

  std::size_t block_elems() const { return static_cast<std::size_t>(kv_heads) * block_len * head_dim; }
  std::size_t pool_elems() const { return static_cast<std::size_t>(batch) * blocks_per_seq * block_elems(); }
  std::size_t q_elems() const { return static_cast<std::size_t>(batch) * q_heads * head_dim; }
};

// The cache a run needs: room for --seq tokens, plus the decode loop's with --inference.
inline BenchShape bench_shape(const BenchOptions& o) {
  return {o.batch, o.q_heads(), o.kv_head_count(), o.dim, o.block_len,
          (o.capacity_tokens() + o.block_len - 1) / o.block_len};
}

// Seeds of each input, derived from one, so that a printed seed replays the whole run.
struct BenchSeeds {
  std::uint64_t k, v, q, table, needles;
  explicit BenchSeeds(std::uint64_t seed) : k(seed), v(seed + 1), q(seed + 2), table(seed + 3), needles(seed + 4) {}
};

template <typename T>
struct BenchInputs {
  std::vector<T> q;                   // [batch][q_heads][head_dim], uniform in [-1, 1)
  std::vector<std::int32_t> table;    // [batch][blocks_per_seq]: a shuffled permutation of the pool's blocks
};

// Shuffled so that a sequence's logical neighbours are not physical neighbours, as in a
// pool that has served many requests.
template <typename T>
BenchInputs<T> make_bench_inputs(const BenchShape& shape, const BenchSeeds& seeds) {
  BenchInputs<T> in;
  in.q = random_uniform<T>(shape.q_elems(), -1.0f, 1.0f, seeds.q);
  in.table.resize(static_cast<std::size_t>(shape.batch) * shape.blocks_per_seq);
  std::iota(in.table.begin(), in.table.end(), 0);
  std::shuffle(in.table.begin(), in.table.end(), std::mt19937_64(seeds.table));
  return in;
}

// The logical blocks holding needles, ascending, per (sequence, kv head): [batch * kv_heads].
using NeedleBlocks = std::vector<std::vector<int>>;

// For every (sequence, kv head), `needles` distinct random logical blocks among
// 1 .. blocks - 2 (never a sink or the window) get keys that point along the group's
// queries: token t of the block takes 12 q / |q| + uniform noise in [-0.1, 0.1), q the
// group's query head t % group, so that every query head of the group has tokens there.
// Calls write(physical_block, kv_head, keys [block_len][head_dim]) and returns where the
// needles went. Throws ekv::Error where a sequence of `blocks` blocks has no room for them.
template <typename T, typename Write>
NeedleBlocks plant_needles(const BenchShape& shape, const BenchInputs<T>& in, int blocks, int needles,
                           std::uint64_t seed, Write&& write) {
  NeedleBlocks planted(static_cast<std::size_t>(shape.batch) * shape.kv_heads);
  if (needles == 0) return planted;
  if (needles > blocks - 2) {
    throw Error("needles go in distinct blocks between the first and the last; a sequence of " +
                std::to_string(blocks) + " blocks has room for " + std::to_string(std::max(0, blocks - 2)) +
                ", not " + std::to_string(needles));
  }
  std::mt19937_64 rng(seed);
  const int group = shape.q_heads / shape.kv_heads, d = shape.head_dim;
  std::vector<T> rows(static_cast<std::size_t>(shape.block_len) * d);
  std::vector<int> middle(blocks - 2);
  std::iota(middle.begin(), middle.end(), 1);
  std::uniform_real_distribution<float> noise(-0.1f, 0.1f);
  for (int b = 0; b < shape.batch; ++b) {
    for (int h = 0; h < shape.kv_heads; ++h) {
      for (int t = 0; t < shape.block_len; ++t) {
        const T* qh = in.q.data() + (static_cast<std::size_t>(b) * shape.q_heads + h * group + t % group) * d;
        double norm = 0;
        for (int c = 0; c < d; ++c) norm += std::pow(DTypeTraits<T>::to_float(qh[c]), 2);
        for (int c = 0; c < d; ++c) {
          rows[static_cast<std::size_t>(t) * d + c] = DTypeTraits<T>::from_float(
              static_cast<float>(DTypeTraits<T>::to_float(qh[c]) * 12.0 / std::sqrt(norm)) + noise(rng));
        }
      }
      std::shuffle(middle.begin(), middle.end(), rng);
      std::vector<int>& at = planted[static_cast<std::size_t>(b) * shape.kv_heads + h];
      for (int n = 0; n < needles; ++n) {
        write(in.table[static_cast<std::size_t>(b) * shape.blocks_per_seq + middle[n]], h, rows);
        at.push_back(middle[n]);
      }
      std::sort(at.begin(), at.end());
    }
  }
  return planted;
}

}  // namespace ekv::bench
