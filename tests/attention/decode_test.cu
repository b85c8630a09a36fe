// Decode attention against the float64 reference: dtype x head_dim x group x layout x
// ragged lengths, outputs poisoned before every launch, O and LSE checked, no NaN/Inf.
// Tolerances (relative L2 of O over the batch): float 1e-5, half 2e-3, bfloat16 1e-2
// (the reference sees the same rounded inputs, so only accumulation and the output's
// rounding differ). LSE: absolute 1e-4 for every dtype (float accumulation).

#include <doctest/doctest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ekv/attention/decode.cuh"
#include "ekv/attention/reference.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/random.hpp"
#include "test_seed.hpp"

namespace {

enum class Layout { kPaged, kContiguousHnd, kContiguousNhd };
const char* name(Layout l) {
  return l == Layout::kPaged ? "paged" : l == Layout::kContiguousHnd ? "contiguous_hnd" : "contiguous_nhd";
}

template <typename T>
double tolerance() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  if constexpr (std::is_same_v<T, __half>) return 2e-3;
  return 1e-2;
}

struct Case {
  int kv_heads, group, head_dim, block_len;
  std::vector<int> lengths;
  Layout layout;
  int forced_splits = 0;
};

// Builds a cache of random K/V on host and device (the paged pool's blocks shuffled, so
// block tables matter), runs decode, compares with reference_decode on the host copy.
template <typename T>
void check_decode(const Case& c, std::uint64_t seed) {
  const int batch = static_cast<int>(c.lengths.size());
  const int q_heads = c.kv_heads * c.group;
  const int max_len = *std::max_element(c.lengths.begin(), c.lengths.end());
  const int block_len = c.layout == Layout::kPaged ? c.block_len : std::max(1, max_len);
  const int blocks_per_seq = (std::max(1, max_len) + block_len - 1) / block_len;
  const int num_blocks = batch * blocks_per_seq;
  const std::size_t pool = static_cast<std::size_t>(num_blocks) * c.kv_heads * block_len * c.head_dim;
  const std::vector<T> k = ekv::random_uniform<T>(pool, -1.0f, 1.0f, seed);
  const std::vector<T> v = ekv::random_uniform<T>(pool, -1.0f, 1.0f, seed + 1);
  const std::vector<T> q = ekv::random_uniform<T>(static_cast<std::size_t>(batch) * q_heads * c.head_dim, -2.0f, 2.0f,
                                                 seed + 2);
  std::vector<std::int32_t> table(num_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<unsigned>(seed)));
  const std::vector<std::int32_t> lengths(c.lengths.begin(), c.lengths.end());

  ekv::DeviceBuffer<T> dk(pool), dv(pool), dq(q.size()), dout(q.size());
  ekv::DeviceBuffer<std::int32_t> dtable(table.size()), dlengths(batch);
  ekv::DeviceBuffer<float> dlse(static_cast<std::size_t>(batch) * q_heads);
  dk.copy_from(k);
  dv.copy_from(v);
  dq.copy_from(q);
  dtable.copy_from(table);
  dlengths.copy_from(lengths);

  auto make_view = [&](const T* kp, const T* vp, const std::int32_t* tp, const std::int32_t* lp) {
    switch (c.layout) {
      case Layout::kPaged:
        return ekv::paged_kv<T>(kp, vp, tp, lp, batch, c.kv_heads, c.head_dim, block_len, blocks_per_seq);
      case Layout::kContiguousHnd:
        return ekv::contiguous_hnd_kv<T>(kp, vp, lp, batch, c.kv_heads, c.head_dim, block_len);
      case Layout::kContiguousNhd: break;
    }
    return ekv::contiguous_nhd_kv<T>(kp, vp, lp, batch, c.kv_heads, c.head_dim, block_len);
  };

  ekv::DecodeProblem problem;
  problem.dtype = ekv::kDTypeOf<T>;
  problem.batch = batch;
  problem.q_heads = q_heads;
  problem.kv_heads = c.kv_heads;
  problem.head_dim = c.head_dim;
  problem.max_seq_len = max_len;
  const ekv::DecodePlan plan = ekv::plan_decode(problem, ekv::DeviceInfo::current(), c.forced_splits);
  INFO("splits=" << plan.num_splits << " split_tokens=" << plan.split_tokens << " head_tile=" << plan.head_tile);
  ekv::DeviceBuffer<unsigned char> workspace(plan.workspace_bytes());
  ekv::Stream stream;
  dout.fill_bytes(0xFF, stream);
  dlse.fill_bytes(0xFF, stream);
  ekv::run_decode<T>(plan, make_view(dk.data(), dv.data(), dtable.data(), dlengths.data()), dq.data(), dout.data(),
                     dlse.data(), workspace.data(), stream);
  stream.synchronize();
  std::vector<T> out(dout.size());
  std::vector<float> lse(dlse.size());
  dout.copy_to(out);
  dlse.copy_to(lse);

  const auto ref = ekv::reference_decode<T>(make_view(k.data(), v.data(), table.data(), lengths.data()), q.data(),
                                            q_heads, plan.scale);
  double err2 = 0, ref2 = 0, lse_err = 0;
  for (std::size_t r = 0; r < ref.size(); ++r) {
    for (int d = 0; d < c.head_dim; ++d) {
      const double got = ekv::DTypeTraits<T>::to_float(out[r * c.head_dim + d]);
      REQUIRE(std::isfinite(got));
      err2 += (got - ref[r].o[d]) * (got - ref[r].o[d]);
      ref2 += ref[r].o[d] * ref[r].o[d];
    }
    if (std::isinf(ref[r].lse)) {
      CHECK(std::isinf(lse[r]));
      CHECK(lse[r] < 0);
    } else {
      REQUIRE(std::isfinite(lse[r]));
      lse_err = std::max(lse_err, std::abs(lse[r] - ref[r].lse));
    }
  }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  CHECK(rel <= tolerance<T>());
  CHECK(lse_err <= 1e-4);
}

std::string describe(const Case& c) {
  std::string s = std::string(name(c.layout)) + " kv_heads=" + std::to_string(c.kv_heads) +
                  " group=" + std::to_string(c.group) + " head_dim=" + std::to_string(c.head_dim) +
                  " block_len=" + std::to_string(c.block_len) + " lengths=";
  for (int l : c.lengths) s += std::to_string(l) + ",";
  return s;
}

}  // namespace

TEST_CASE_TEMPLATE("decode matches the reference over head_dim x group x layout x lengths", T, float, __half,
                   __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int groups[] = {1, 3, 4, 8, 16};
  const Layout layouts[] = {Layout::kPaged, Layout::kContiguousHnd, Layout::kContiguousNhd};
  int i = 0;
  for (int head_dim : ekv::kDecodeHeadDims) {
    for (Layout layout : layouts) {
      const int block_len = layout == Layout::kPaged ? (i % 2 ? 16 : 64) : 0;
      const int bl = std::max(block_len, 16);
      Case c{2, groups[i % 5], head_dim, block_len, {1, 7, bl - 1, bl, 1000, i % 3 == 0 ? 33000 : 2500}, layout};
      INFO(describe(c));
      check_decode<T>(c, seed + i);
      ++i;
    }
  }
}

TEST_CASE_TEMPLATE("decode over batch 64 with ragged lengths, empty sequences included", T, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::vector<int> lengths(64);
  for (int& l : lengths) l = std::uniform_int_distribution<int>(0, 3000)(rng);
  lengths[5] = 0;
  lengths[17] = 1;
  Case c{8, 4, 128, 16, lengths, Layout::kPaged};
  INFO(describe(c));
  check_decode<T>(c, seed);
}

TEST_CASE("any split count gives the unsplit result") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (int splits : {1, 2, 7, 64, 0}) {
    INFO("forced splits=" << splits);
    Case c{4, 2, 128, 32, {4099, 300, 1}, Layout::kPaged, splits};
    check_decode<__half>(c, seed);
  }
}

TEST_CASE("unsupported problems raise the message listing what is supported") {
  ekv::DecodeProblem p;
  p.max_seq_len = 100;
  p.head_dim = 96;
  CHECK_FALSE(ekv::supports(p).ok);
  CHECK_THROWS_WITH_AS(ekv::plan_decode(p, ekv::DeviceInfo::current()),
                       "head_dim=96 not supported by decode; supported: [64, 128, 256]", ekv::Error);
  p.head_dim = 128;
  p.dtype = ekv::DType::kFloat8E4M3;
  CHECK(ekv::supports(p).why == "dtype=float8_e4m3 not supported by decode; supported: [float32, float16, bfloat16]");
  p.dtype = ekv::DType::kFloat16;
  p.q_heads = 12;
  p.kv_heads = 8;
  CHECK_FALSE(ekv::supports(p).ok);
  p.q_heads = 17 * 8;
  CHECK(ekv::supports(p).why == "group size 17 not supported by decode; supported: 1 to 16");
}
