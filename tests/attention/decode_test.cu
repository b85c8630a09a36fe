// Decode attention against the float64 reference: dtype x head_dim x group x layout x
// ragged lengths, outputs poisoned before every launch, O and LSE checked, no NaN/Inf.
// Tolerances (decode_check.hpp; worst row's relative L2 error of O): float 1e-5, half
// 2e-3, bfloat16 1e-2 (the reference sees the same rounded inputs, so only accumulation
// and the output's rounding differ). LSE: absolute 1e-4 for every dtype.

#include <doctest/doctest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "device_cache.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/attention/reference.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/graph.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

using ekv::test::CacheShape;
using ekv::test::Layout;

// What one check varies beyond the shape.
struct DecodeCase {
  int forced_splits = 0;  // > 0 asks plan_decode for that many splits
  float scale = 0.0f;     // the user's softmax scale; 0 leaves plan_decode's default
  int planned_len = -1;   // the plan's max_seq_len; -1: the longest sequence
  // lengths the device sees where they differ from the shape's (past the view's capacity,
  // which decode clamps to the shape's lengths, the reference's)
  std::vector<std::int32_t> device_lengths;
  ekv::test::Inputs inputs = ekv::test::Inputs::kUniform;
  ekv::DecodeCopy copy = ekv::DecodeCopy::kAuto;
};

// Decode on the device over a random cache (decode_check.hpp), against reference_decode
// on the host copy, whose scale the test computes itself: 1/sqrt(head_dim) unless given.
template <typename T>
ekv::DecodePlan check_decode(const CacheShape& shape, std::uint64_t seed, const DecodeCase& c = {}) {
  ekv::test::HostCache<T> cache(shape, seed, c.inputs);
  ekv::test::DeviceCache<T> dev(cache);
  if (!c.device_lengths.empty()) dev.lengths.copy_from(c.device_lengths);
  ekv::Stream stream;
  ekv::DeviceBuffer<T> dout(cache.q.size());
  ekv::DeviceBuffer<float> dlse(static_cast<std::size_t>(shape.batch()) * shape.q_heads());
  ekv::DecodeProblem problem = ekv::test::decode_problem(shape, ekv::kDTypeOf<T>);
  if (c.planned_len >= 0) problem.max_seq_len = c.planned_len;
  problem.scale = c.scale;
  const ekv::DecodePlan plan = ekv::plan_decode(problem, ekv::DeviceInfo::current(), c.forced_splits, c.copy);
  INFO("inputs=" << ekv::test::name(c.inputs) << " splits=" << plan.num_splits << " split_tokens=" << plan.split_tokens
                 << " head_tile=" << plan.head_tile << " planned_len=" << problem.max_seq_len
                 << " copy=" << ekv::to_string(plan.copy));
  CHECK(plan.copy != ekv::DecodeCopy::kAuto);
  if (c.copy != ekv::DecodeCopy::kAuto) CHECK(plan.copy == c.copy);
  ekv::DeviceBuffer<unsigned char> workspace = ekv::make_decode_workspace(plan, stream);
  dout.fill_bytes(0xFF, stream);
  dlse.fill_bytes(0xFF, stream);
  ekv::run_decode<T>(plan, dev.view(cache), dev.q.data(), dout.data(), dlse.data(), workspace.data(), stream);
  stream.synchronize();
  std::vector<T> out(dout.size());
  std::vector<float> lse(dlse.size());
  dout.copy_to(out);
  dlse.copy_to(lse);
  const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const auto ref = ekv::reference_decode<T>(cache.host_view(), cache.q.data(), shape.q_heads(), scale);
  ekv::test::check_against_reference<T>(ref, out, lse, shape.head_dim, c.inputs);
  return plan;
}

}  // namespace

TEST_CASE_TEMPLATE("decode matches the reference over head_dim x group x layout x lengths", T, float, __half,
                   __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int groups[] = {1, 2, 3, 4, 8, 16};  // every head tile of the CUDA-core path: 1, 2, 4, 8
  int i = 0;
  for (int head_dim : ekv::kDecodeHeadDims) {
    for (Layout layout : ekv::test::kAllLayouts) {
      // 48: a block length that is not a power of two takes the division path
      const int block_len = ekv::test::is_paged(layout) ? (i % 3 == 0 ? 16 : i % 3 == 1 ? 48 : 64) : 0;
      const int bl = std::max(block_len, 16);
      const CacheShape c{2, groups[i % 6], head_dim, block_len, {1, 7, bl - 1, bl, 1000, i % 3 == 0 ? 33000 : 2500},
                         layout};
      INFO(ekv::test::describe(c));
      check_decode<T>(c, seed + i);
      ++i;
    }
  }
}

// Both ways of staging K and V (cp.async, and Hopper's bulk copies where the device has
// them) over head dims, layouts, block lengths, partial last tiles, splits and ragged
// batches: the rows past a sequence's end are where the two differ.
TEST_CASE_TEMPLATE("decode matches the reference with each copy engine", T, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  std::vector<ekv::DecodeCopy> copies = {ekv::DecodeCopy::kCpAsync};
  if (ekv::DeviceInfo::current().cc_major >= 9) copies.push_back(ekv::DecodeCopy::kBulk);
  int i = 0;
  for (ekv::DecodeCopy copy : copies) {
    for (int head_dim : ekv::kDecodeHeadDims) {
      for (Layout layout : ekv::test::kAllLayouts) {
        const int block_len = ekv::test::is_paged(layout) ? (i % 3 == 0 ? 16 : i % 3 == 1 ? 48 : 64) : 0;
        const CacheShape c{3, 4, head_dim, block_len, {1, 15, 17, 129, 0, 2049}, layout};
        INFO(ekv::test::describe(c) << " copy=" << ekv::to_string(copy));
        for (int splits : {1, 5, 0}) {
          DecodeCase dc;
          dc.copy = copy;
          dc.forced_splits = splits;
          check_decode<T>(c, seed + i++, dc);
        }
      }
    }
  }
}

TEST_CASE("plan_decode names the copies a dtype supports") {
  ekv::DecodeProblem p{ekv::DType::kFloat32, 1, 8, 8, 128, 100};
  CHECK_THROWS_WITH_AS(ekv::plan_decode(p, ekv::DeviceInfo::current(), 0, ekv::DecodeCopy::kBulk),
                       doctest::Contains("copy=bulk runs on the tensor-core kernel"), ekv::Error);
  CHECK(ekv::plan_decode(p, ekv::DeviceInfo::current()).copy == ekv::DecodeCopy::kCpAsync);
}

TEST_CASE_TEMPLATE("decode over batch 64 with ragged lengths, empty sequences included", T, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::vector<int> lengths(64);
  for (int& l : lengths) l = std::uniform_int_distribution<int>(0, 3000)(rng);
  lengths[5] = 0;
  lengths[17] = 1;
  const CacheShape c{8, 4, 128, 16, lengths, Layout::kPaged};
  INFO(ekv::test::describe(c));
  check_decode<T>(c, seed);
}

TEST_CASE_TEMPLATE("decode of a batch of one, short and long", T, float, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (int len : {1, 7, 33000}) {
    for (Layout layout : ekv::test::kAllLayouts) {
      const CacheShape c{2, 4, 128, 16, {len}, layout};
      INFO(ekv::test::describe(c));
      check_decode<T>(c, seed + len);
    }
  }
}

TEST_CASE("any split count gives the unsplit result") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (int splits : {1, 2, 7, 64, 0}) {
    INFO("forced splits=" << splits);
    CacheShape c{4, 2, 128, 32, {4099, 300, 1}, Layout::kPaged};
    DecodeCase forced;
    forced.forced_splits = splits;
    const ekv::DecodePlan plan = check_decode<__half>(c, seed, forced);
    // the count asked for, where splits stay at least kDecodeSplitAlign tokens long: a
    // 4099-token sequence takes at most ceil(4099 / 128) = 33
    const int most = (4099 + ekv::kDecodeSplitAlign - 1) / ekv::kDecodeSplitAlign;
    if (splits > 0) CHECK(plan.num_splits == std::min(splits, most));
    CHECK(plan.num_splits >= 1);
    CHECK(plan.num_splits <= most);
    c.lengths = {5000, 1, 0};
    const ekv::DecodePlan float_plan = check_decode<float>(c, seed, forced);
    if (splits > 0) CHECK(float_plan.num_splits == std::min(splits, (5000 + ekv::kDecodeSplitAlign - 1) / ekv::kDecodeSplitAlign));
  }
}

TEST_CASE_TEMPLATE("decode matches the reference on every input family, split or not", T, float, __half,
                   __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  int i = 0;
  for (ekv::test::Inputs inputs : ekv::test::kAllInputs) {
    for (int splits : {1, 8, 0}) {
      DecodeCase c;
      c.inputs = inputs;
      c.forced_splits = splits;
      const CacheShape paged{2, 4, 128, 16, {3001, 1, 700, 2048}, Layout::kPaged};
      INFO(ekv::test::describe(paged));
      check_decode<T>(paged, seed + i++, c);
      const CacheShape hnd{3, 1, 64, 0, {1500, 129}, Layout::kContiguousHnd};
      INFO(ekv::test::describe(hnd));
      check_decode<T>(hnd, seed + i++, c);
    }
  }
}

TEST_CASE("peaked inputs have the score spread they are named for") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  // group 1: the planted keys follow this head's own query signs (a group's heads share
  // theirs, and score about half as high)
  ekv::test::HostCache<__half> cache({2, 1, 128, 16, {3001}, Layout::kPaged}, seed, ekv::test::Inputs::kPeaked);
  const auto kv = cache.host_view();
  double sum = 0, sum2 = 0, top = -1e30;
  for (int t = 0; t < 3001; ++t) {
    double s = 0;
    for (int c = 0; c < 128; ++c) {
      s += __half2float(cache.q[c]) * static_cast<double>(__half2float(cache.k[kv.offset(0, 0, t) + c]));
    }
    s /= std::sqrt(128.0);
    sum += s;
    sum2 += s * s;
    top = std::max(top, s);
  }
  const double mean = sum / 3001, stddev = std::sqrt(sum2 / 3001 - mean * mean);
  INFO("score std " << stddev << ", top " << top);
  CHECK(stddev >= 5);
  CHECK(top >= 80);  // the planted keys: exp(top) summed over tokens overflows float unless the maximum is subtracted
}

TEST_CASE_TEMPLATE("a user-given scale reaches the kernel", T, float, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (float scale : {0.3f, 0.01f, 1.0f}) {
    DecodeCase c;
    c.scale = scale;
    INFO("scale=" << scale);
    check_decode<T>({2, 4, 128, 16, {2000, 5}, Layout::kPaged}, seed, c);
    c.forced_splits = 4;
    check_decode<T>({2, 2, 64, 0, {900}, Layout::kContiguousNhd}, seed + 1, c);
  }
}

TEST_CASE_TEMPLATE("lengths past the planned maximum stay exact (the last split takes the rest)", T, float, __half) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (int splits : {0, 3}) {
    DecodeCase c;
    c.forced_splits = splits;
    c.planned_len = 1000;  // the view holds 4096 tokens per sequence
    const CacheShape shape{2, 4, 128, 16, {4096, 3000, 1000, 999, 0}, Layout::kPaged};
    INFO(ekv::test::describe(shape));
    const ekv::DecodePlan plan = check_decode<T>(shape, seed, c);
    CHECK(plan.problem.max_seq_len == 1000);
  }
}

TEST_CASE_TEMPLATE("lengths past the view's capacity are clamped to it", T, float, __half) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (Layout layout : ekv::test::kAllLayouts) {
    if (layout == Layout::kPageIndex) continue;  // no lengths to run past: the index gives them
    // the shape's lengths are what decode must attend to: the capacity (2048, the longest)
    // for the two sequences whose device lengths run past it
    const CacheShape shape{2, 2, 128, 16, {2048, 2048, 77}, layout};
    INFO(ekv::test::describe(shape));
    DecodeCase c;
    c.device_lengths = {2049, 1 << 30, 77};
    check_decode<T>(shape, seed, c);
    c.forced_splits = 5;
    check_decode<T>(shape, seed + 1, c);
  }
}

TEST_CASE("plan_decode throws the supports() message for an unsupported problem") {
  ekv::DecodeProblem p;
  p.max_seq_len = 100;
  p.head_dim = 96;
  CHECK_THROWS_WITH_AS(ekv::plan_decode(p, ekv::DeviceInfo::current()),
                       "head_dim=96 not supported by decode; supported: [64, 128, 256]", ekv::Error);
}

TEST_CASE("run_decode rejects a view that disagrees with its plan") {
  ekv::DecodeProblem p;
  p.max_seq_len = 64;
  const ekv::DecodePlan plan = ekv::plan_decode(p, ekv::DeviceInfo::current());
  ekv::DeviceBuffer<__half> kv(static_cast<std::size_t>(8) * 64 * 128), q(32 * 128), o(32 * 128);
  ekv::DeviceBuffer<float> lse(32);
  ekv::DeviceBuffer<std::int32_t> lengths(1);
  ekv::Stream stream;
  const auto view = ekv::contiguous_hnd_kv<__half>(kv.data(), kv.data(), lengths.data(), 1, 8, 128, 64);
  auto small = view;
  small.block_len = 32;
  CHECK_THROWS_WITH_AS(ekv::run_decode<__half>(plan, small, q.data(), o.data(), lse.data(), nullptr, stream),
                       "run_decode: the view holds 32 tokens per sequence, the plan 64", ekv::Error);
  const auto float_view = ekv::contiguous_hnd_kv<float>(nullptr, nullptr, lengths.data(), 1, 8, 128, 64);
  CHECK_THROWS_AS(ekv::run_decode<float>(plan, float_view, nullptr, nullptr, nullptr, nullptr, stream), ekv::Error);
  CHECK_THROWS_AS(ekv::run_decode<__half>(plan, view, q.data() + 1, o.data(), lse.data(), nullptr, stream),
                  ekv::Error);  // misaligned q
}

TEST_CASE("decode captured in a CUDA Graph replays like direct launches, for new lengths too") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int batch = 3, kv_heads = 2, q_heads = 8, d = 128, capacity = 5000;
  const std::size_t pool = static_cast<std::size_t>(batch) * kv_heads * capacity * d;
  ekv::DeviceBuffer<__half> k(pool), v(pool), q(static_cast<std::size_t>(batch) * q_heads * d);
  ekv::DeviceBuffer<__half> o_direct(q.size()), o_graph(q.size());
  ekv::DeviceBuffer<float> lse_direct(batch * q_heads), lse_graph(batch * q_heads);
  ekv::DeviceBuffer<std::int32_t> lengths(batch);
  std::vector<__half> k_host = ekv::bench::random_uniform<__half>(pool, -1.0f, 1.0f, seed);
  std::vector<__half> v_host = ekv::bench::random_uniform<__half>(pool, -1.0f, 1.0f, seed + 1);
  std::vector<__half> q_host = ekv::bench::random_uniform<__half>(q.size(), -1.0f, 1.0f, seed + 2);
  k.copy_from(k_host);
  v.copy_from(v_host);
  q.copy_from(q_host);
  const auto view = ekv::contiguous_hnd_kv<__half>(k.data(), v.data(), lengths.data(), batch, kv_heads, d, capacity);
  ekv::DecodeProblem p;
  p.batch = batch;
  p.q_heads = q_heads;
  p.kv_heads = kv_heads;
  p.head_dim = d;
  p.max_seq_len = capacity;
  const ekv::DecodePlan plan = ekv::plan_decode(p, ekv::DeviceInfo::current());
  REQUIRE(plan.num_splits > 1);  // the graph holds decode and merge
  ekv::Stream stream;
  ekv::DeviceBuffer<unsigned char> workspace = ekv::make_decode_workspace(plan, stream);
  ekv::Graph graph = ekv::Graph::capture(stream, [&](const ekv::Stream& s) {
    ekv::run_decode<__half>(plan, view, q.data(), o_graph.data(), lse_graph.data(), workspace.data(), s);
  });
  for (const std::vector<std::int32_t>& lens : {std::vector<std::int32_t>{5000, 17, 0}, {1, 4999, 2048}}) {
    lengths.copy_from(lens);
    o_graph.fill_bytes(0xFF, stream);
    o_direct.fill_bytes(0xFF, stream);
    lse_graph.fill_bytes(0xFF, stream);
    lse_direct.fill_bytes(0xFF, stream);
    graph.launch(stream);
    ekv::run_decode<__half>(plan, view, q.data(), o_direct.data(), lse_direct.data(), workspace.data(), stream);
    stream.synchronize();
    std::vector<__half> a(q.size()), b(q.size());
    std::vector<float> la(batch * q_heads), lb(batch * q_heads);
    o_graph.copy_to(a);
    o_direct.copy_to(b);
    lse_graph.copy_to(la);
    lse_direct.copy_to(lb);
    for (std::size_t i = 0; i < a.size(); ++i) {
      REQUIRE(std::isfinite(__half2float(a[i])));
      REQUIRE(__half2float(a[i]) == __half2float(b[i]));  // same kernels, same inputs: bit-identical
    }
    for (std::size_t i = 0; i < la.size(); ++i) {
      REQUIRE_FALSE(std::isnan(la[i]));
      CHECK((la[i] == lb[i] || (std::isinf(la[i]) && std::isinf(lb[i]))));
    }
    // and the replay is right, not only equal to a launch: the reference at these lengths
    std::vector<std::int32_t> host_lens = lens;
    const auto host = ekv::contiguous_hnd_kv<__half>(k_host.data(), v_host.data(), host_lens.data(), batch, kv_heads,
                                                     d, capacity);
    const auto ref = ekv::reference_decode<__half>(host, q_host.data(), q_heads, 1.0 / std::sqrt(double{d}));
    ekv::test::check_against_reference<__half>(ref, a, la, d);
  }
}
