// HybridDecode (GPU + CPU over an offloaded cache) against all-GPU run_decode over the same
// cache and against the float64 reference: float, half and bfloat16; GQA groups 1, 4 and
// 8; odd lengths and block lengths; no block, half the blocks (at random, with the partial
// last block forced onto either side and whole sequences on one side) and every block on
// the host, and the placement policy's half; three steps per object, so both slots and
// their reuse run; outputs poisoned (NaN) before each step.
// Tolerances, relative L2 of each row of O (decode_check.hpp): float 1e-5, half 2e-3,
// bfloat16 1e-2, against the reference and against all-GPU decode alike (each of the
// hybrid's two parts is rounded to T before the merge: one rounding more than all-GPU,
// well inside them); LSE absolute 1e-4.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "device_cache.cuh"
#include "ekv/core/pinned_buffer.hpp"
#include "ekv/cpu/hybrid_decode.cuh"
#include "hybrid_cache.hpp"
#include "test_seed.hpp"

namespace {

using ekv::BlockLocation;
using ekv::test::CacheShape;
using ekv::test::HostCache;
using ekv::test::Layout;

enum class Offload { kNone, kHalfRandom, kHalfPolicy, kAll };

const char* name(Offload m) {
  switch (m) {
    case Offload::kNone: return "none on host";
    case Offload::kHalfRandom: return "half on host, at random";
    case Offload::kHalfPolicy: return "half on host, by place_blocks";
    case Offload::kAll: break;
  }
  return "all on host";
}

template <typename T>
std::vector<BlockLocation> locations(const HostCache<T>& cache, Offload mode, std::uint64_t seed) {
  const int bps = cache.blocks_per_seq, block_len = cache.block_len;
  if (mode == Offload::kHalfPolicy) {
    int blocks = 0;
    for (int len : cache.lengths) blocks += ekv::sequence_blocks(len, block_len);
    const std::size_t block_bytes = 2 * sizeof(T) * cache.shape.kv_heads * block_len * cache.shape.head_dim;
    return ekv::place_blocks({1, 2}, cache.lengths, block_len, bps, block_bytes, block_bytes * (blocks / 2)).locations;
  }
  const double fraction = mode == Offload::kNone ? 0.0 : mode == Offload::kAll ? 1.0 : 0.5;
  std::vector<BlockLocation> out = ekv::test::random_locations(cache.lengths, block_len, bps, fraction, seed);
  if (mode == Offload::kHalfRandom) {
    // sequence 0's partial last block on the host, sequence 1's on the GPU, sequence 4
    // wholly on the host and sequence 5 wholly on the GPU
    const auto set = [&](int seq, int block, BlockLocation where) {
      out[static_cast<std::size_t>(seq) * bps + block] = where;
    };
    set(0, ekv::sequence_blocks(cache.lengths[0], block_len) - 1, BlockLocation::kHost);
    set(1, ekv::sequence_blocks(cache.lengths[1], block_len) - 1, BlockLocation::kGpu);
    for (int i = 0; i < ekv::sequence_blocks(cache.lengths[4], block_len); ++i) set(4, i, BlockLocation::kHost);
    for (int i = 0; i < ekv::sequence_blocks(cache.lengths[5], block_len); ++i) set(5, i, BlockLocation::kGpu);
  }
  return out;
}

// Worst relative L2 error of a row of `got` against `want`, and worst LSE difference
// (equal infinities count as no difference).
template <typename T>
void check_close(const std::vector<T>& got, const std::vector<float>& got_lse, const std::vector<T>& want,
                 const std::vector<float>& want_lse, int head_dim) {
  double worst = 0, lse_err = 0;
  for (std::size_t r = 0; r < want_lse.size(); ++r) {
    double err2 = 0, ref2 = 0;
    for (int d = 0; d < head_dim; ++d) {
      const double a = ekv::DTypeTraits<T>::to_float(got[r * head_dim + d]);
      const double b = ekv::DTypeTraits<T>::to_float(want[r * head_dim + d]);
      REQUIRE(std::isfinite(a));
      err2 += (a - b) * (a - b);
      ref2 += b * b;
    }
    worst = std::max(worst, ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2));
    if (std::isinf(want_lse[r])) {
      CHECK(got_lse[r] == want_lse[r]);
    } else {
      REQUIRE(std::isfinite(got_lse[r]));
      lse_err = std::max(lse_err, std::abs(got_lse[r] - want_lse[r]) / ekv::test::lse_tolerance(want_lse[r]));
    }
  }
  CHECK(worst <= ekv::test::tolerance<T>());
  CHECK(lse_err <= 1.0);  // in units of lse_tolerance
}

// The offloaded cache's pools where HybridDecode wants them: the GPU pool on the device
// (null when empty), the host pool pinned.
template <typename T>
struct HybridPools {
  ekv::DeviceBuffer<T> gpu_k, gpu_v;
  ekv::PinnedBuffer<T> host_k, host_v;

  explicit HybridPools(const ekv::test::OffloadedCache<T>& off, std::size_t block)
      : gpu_k(block * off.gpu_blocks), gpu_v(block * off.gpu_blocks), host_k(off.host_k.size()),
        host_v(off.host_v.size()) {
    if (off.gpu_blocks > 0) {
      gpu_k.copy_from(ekv::Span<const T>(off.gpu_k.data(), gpu_k.size()));
      gpu_v.copy_from(ekv::Span<const T>(off.gpu_v.data(), gpu_v.size()));
    }
    std::copy(off.host_k.begin(), off.host_k.end(), host_k.begin());
    std::copy(off.host_v.begin(), off.host_v.end(), host_v.begin());
  }
};

template <typename T>
void check_hybrid(ekv::CPUInfer& pool, const CacheShape& shape, Offload mode, std::uint64_t seed) {
  HostCache<T> cache(shape, seed);
  const ekv::test::OffloadedCache<T> off = ekv::test::offload(cache, locations(cache, mode, seed + 1), seed + 2);
  const std::size_t block = static_cast<std::size_t>(shape.kv_heads) * cache.block_len * shape.head_dim;
  HybridPools<T> pools(off, block);
  const ekv::HybridKV<T> kv = off.view(cache, pools.gpu_k.data(), pools.gpu_v.data(), pools.host_k.data(),
                                       pools.host_v.data());

  ekv::Stream stream;
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::test::DeviceCache<T> dev(cache);
  const ekv::DecodeProblem problem = ekv::test::decode_problem(shape, ekv::kDTypeOf<T>);
  const std::size_t rows = static_cast<std::size_t>(shape.batch()) * shape.q_heads();
  ekv::DeviceBuffer<T> dout(rows * shape.head_dim);
  ekv::DeviceBuffer<float> dlse(rows);
  std::vector<T> all_gpu(dout.size()), out(dout.size());
  std::vector<float> all_gpu_lse(rows), lse(rows);

  const ekv::DecodePlan plan = ekv::plan_decode(problem, device);
  ekv::DeviceBuffer<unsigned char> workspace = ekv::make_decode_workspace(plan, stream);
  dout.fill_bytes(0xFF, stream);
  dlse.fill_bytes(0xFF, stream);
  ekv::run_decode<T>(plan, dev.view(cache), dev.q.data(), dout.data(), dlse.data(), workspace.data(), stream);
  stream.synchronize();
  dout.copy_to(all_gpu);
  dlse.copy_to(all_gpu_lse);
  // the reference's own scale, never the plan's: a wrong default in plan_decode must show
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const auto ref = ekv::reference_decode<T>(cache.host_view(), cache.q.data(), shape.q_heads(), scale);

  ekv::HybridDecode<T> hybrid(problem, cache.block_len, cache.blocks_per_seq, pool, device, stream);
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    dout.fill_bytes(0xFF, stream);
    dlse.fill_bytes(0xFF, stream);
    const ekv::HybridSplit split = hybrid.run(kv, dev.q.data(), dout.data(), dlse.data(), stream);
    pool.sync_with_cuda_stream(stream);
    CHECK(split.gpu_tokens + split.host_tokens ==
          std::accumulate(shape.lengths.begin(), shape.lengths.end(), std::int64_t{0}));
    if (mode == Offload::kNone) CHECK(split.host_tokens == 0);
    if (mode == Offload::kAll) CHECK(split.gpu_tokens == 0);
    dout.copy_to(out);
    dlse.copy_to(lse);
    check_close(out, lse, all_gpu, all_gpu_lse, shape.head_dim);
    ekv::test::check_against_reference<T>(ref, out, lse, shape.head_dim);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("hybrid decode equals all-GPU decode and the reference", T, __half, __nv_bfloat16, float) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::CPUInfer pool(3);
  // batch of 6: lengths 0 and 1, partial last blocks; sequences 4 and 5 are the ones the
  // random half puts wholly on one side
  const CacheShape shapes[] = {{2, 4, 128, 16, {1000, 37, 2049, 0, 1, 300}, Layout::kPaged},
                               {3, 1, 64, 7, {50, 13, 0, 6, 22, 29}, Layout::kPaged},
                               {1, 8, 256, 32, {33, 100, 5, 1, 64, 95}, Layout::kPaged}};
  int i = 0;
  for (const CacheShape& shape : shapes) {
    for (Offload mode : {Offload::kNone, Offload::kHalfRandom, Offload::kHalfPolicy, Offload::kAll}) {
      INFO(ekv::test::describe(shape) << ", " << name(mode));
      check_hybrid<T>(pool, shape, mode, seed + 10 * i++);
    }
  }
}

TEST_CASE("HybridDecode: moves, and what run() rejects") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::CPUInfer pool(2);
  ekv::Stream stream;
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  const CacheShape shape{2, 2, 64, 16, {40, 17}, Layout::kPaged};
  HostCache<__half> cache(shape, seed);
  // blocks 0 and 2 of sequence 0 and block 1 of sequence 1 on the host
  const std::vector<BlockLocation> where = {BlockLocation::kHost, BlockLocation::kGpu, BlockLocation::kHost,
                                            BlockLocation::kGpu, BlockLocation::kHost, BlockLocation::kHost};
  const auto off = ekv::test::offload(cache, where, seed);
  HybridPools<__half> pools(off, static_cast<std::size_t>(2) * 16 * 64);
  const ekv::HybridKV<__half> kv =
      off.view(cache, pools.gpu_k.data(), pools.gpu_v.data(), pools.host_k.data(), pools.host_v.data());
  ekv::test::DeviceCache<__half> dev(cache);
  ekv::DeviceBuffer<__half> o(cache.q.size());
  ekv::DeviceBuffer<float> lse(static_cast<std::size_t>(shape.batch()) * shape.q_heads());
  const ekv::DecodeProblem problem = ekv::test::decode_problem(shape, ekv::DType::kFloat16);

  ekv::HybridDecode<__half> a(problem, 16, cache.blocks_per_seq, pool, device, stream);
  a.run(kv, dev.q.data(), o.data(), lse.data(), stream);  // in flight while a moves
  ekv::HybridDecode<__half> b(std::move(a));
  CHECK_THROWS_WITH_AS(a.run(kv, dev.q.data(), o.data(), lse.data(), stream),
                       "HybridDecode::run: this object was moved from", ekv::Error);
  ekv::HybridDecode<__half> c(problem, 16, cache.blocks_per_seq, pool, device, stream);
  c.run(kv, dev.q.data(), o.data(), lse.data(), stream);
  c = std::move(b);  // waits for c's step, then takes b's
  ekv::HybridDecode<__half>& alias = c;
  c = std::move(alias);
  CHECK_NOTHROW(c.run(kv, dev.q.data(), o.data(), lse.data(), stream));
  pool.sync_with_cuda_stream(stream);

  ekv::HybridKV<__half> wrong = kv;
  wrong.block_len = 8;
  CHECK_THROWS_WITH_AS(c.run(wrong, dev.q.data(), o.data(), lse.data(), stream),
                       "HybridDecode::run: the cache's batch, kv_heads, head_dim, block_len or max_blocks_per_seq "
                       "differ from the ones it was built for",
                       ekv::Error);
  wrong = kv;
  wrong.gpu_blocks = wrong.host_blocks = 0;
  CHECK_THROWS_WITH_AS(c.run(wrong, dev.q.data(), o.data(), lse.data(), stream),
                       "HybridDecode::run: the cache needs a GPU pool, a host pool or both, got gpu_blocks=0, "
                       "host_blocks=0",
                       ekv::Error);
  wrong = kv;
  wrong.host_blocks = 0;  // the table names host blocks the pool no longer has
  CHECK_THROWS_AS(c.run(wrong, dev.q.data(), o.data(), lse.data(), stream), ekv::Error);
  ekv::DecodeProblem other = problem;
  other.dtype = ekv::DType::kBFloat16;
  CHECK_THROWS_WITH_AS(ekv::HybridDecode<__half>(other, 16, cache.blocks_per_seq, pool, device, stream),
                       "HybridDecode: the problem is for bfloat16, the class for float16", ekv::Error);
  CHECK_THROWS_AS(ekv::HybridDecode<__half>(problem, 16, 1, pool, device, stream), ekv::Error);
}
