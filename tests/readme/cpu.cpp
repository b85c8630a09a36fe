// README's CPU snippets, as written, on a paged host cache of three uneven sequences:
// cpu_decode against the float64 reference, then CpuElasticDecode with as many blocks read
// as the policy's counts at each length and its output against the float64 reference over
// those blocks. Tolerance: fp16 outputs round at about 5e-4 relative; 2e-3 per head.
// @README-INCLUDES@

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "ekv/attention/reference.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/block_sparse_view.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

constexpr int kBatch = 3, kQHeads = 16, kKvHeads = 4, kHeadDim = 128, kBlockLen = 16, kMaxBlocks = 40;
constexpr int kPoolBlocks = kBatch * kMaxBlocks, kRows = kBatch * kQHeads;
constexpr std::size_t kPoolElems = std::size_t{kPoolBlocks} * kKvHeads * kBlockLen * kHeadDim;
constexpr double kTolerance = 2e-3;

struct HostCache {
  explicit HostCache(std::uint64_t seed)
      : k(ekv::bench::random_uniform<__half>(kPoolElems, -1.0f, 1.0f, seed)),
        v(ekv::bench::random_uniform<__half>(kPoolElems, -1.0f, 1.0f, seed + 1)),
        q(ekv::bench::random_uniform<__half>(kRows * kHeadDim, -1.0f, 1.0f, seed + 2)),
        o(kRows * kHeadDim, ekv::DTypeTraits<__half>::from_float(std::numeric_limits<float>::quiet_NaN())),
        lse(kRows, std::numeric_limits<float>::quiet_NaN()),
        table(kPoolBlocks),
        lengths{kMaxBlocks * kBlockLen, 1, 333} {
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937_64(seed + 3));
  }
  ekv::KVView<__half> view() {
    return ekv::paged_kv<__half>(k.data(), v.data(), table.data(), lengths.data(), kBatch, kKvHeads, kHeadDim,
                                 kBlockLen, kMaxBlocks);
  }
  std::vector<__half> k, v, q, o;
  std::vector<float> lse;
  std::vector<std::int32_t> table, lengths;
};

double scale() { return 1.0 / std::sqrt(double{kHeadDim}); }

}  // namespace

TEST_CASE("README: decode, then elastic decode, on the CPU") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  HostCache cache(seed);
  const ekv::KVView<__half> host_kv = cache.view();
  const __half* q = cache.q.data();
  __half* o = cache.o.data();
  float* lse = cache.lse.data();
  const int q_heads = kQHeads, decode_step = 0;

  // @README cpu_decode@
  {
    const auto reference = ekv::reference_decode(host_kv, q, q_heads, scale());
    const ekv::L2Error error = ekv::relative_l2_error(o, reference, kHeadDim);
    INFO("decode: pooled " << error.pooled << ", worst head " << error.worst);
    CHECK(error.worst < kTolerance);  // NaN fails too: every poisoned output was written
    for (int r = 0; r < kRows; ++r) CHECK(std::abs(lse[r] - reference[r].lse) <= 1e-3);
  }

  std::fill(cache.o.begin(), cache.o.end(), ekv::DTypeTraits<__half>::from_float(std::nanf("")));
  // @README cpu_elastic@

  std::vector<std::int32_t> tables(static_cast<std::size_t>(kBatch) * kKvHeads * kMaxBlocks);
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(kBatch) * kKvHeads);
  for (int b = 0; b < kBatch; ++b) {
    const int blocks = ekv::sequence_blocks(cache.lengths[b], kBlockLen);
    for (int h = 0; h < kKvHeads; ++h) {
      INFO("sequence " << b << " kv head " << h);
      const std::vector<int>& read = elastic.attended(b, h);
      CHECK(static_cast<int>(read.size()) == policy.counts(blocks).total());
      const std::size_t row = static_cast<std::size_t>(b) * kKvHeads + h;
      lengths[row] = 0;
      for (std::size_t i = 0; i < read.size(); ++i) {
        REQUIRE(read[i] >= 0);
        REQUIRE(read[i] < blocks);
        tables[row * kMaxBlocks + i] = static_cast<std::int32_t>(host_kv.block_id(b, h, read[i]));
        lengths[row] += ekv::block_valid_tokens(cache.lengths[b], kBlockLen, read[i]);
      }
    }
  }
  const auto sparse = ekv::block_sparse_view<__half>(host_kv, tables.data(), lengths.data(), kMaxBlocks);
  const ekv::L2Error error = ekv::relative_l2_error(o, ekv::reference_decode(sparse, q, q_heads, scale()), kHeadDim);
  INFO("elastic: pooled " << error.pooled << ", worst head " << error.worst);
  CHECK(error.worst < kTolerance);
}
