// Concurrency on the CPU backend (issue 21): caches on threads of their own, each with its
// own CPUInfer pool, appending, attending (exact and elastic), dumping and loading all at
// once, give what each gives alone, bit for bit; and one pool takes tasks from several
// threads at once. A HostKVCache is one thread's at a time (as KTransformers' is); what
// runs at once is different caches. Under ThreadSanitizer in .ci/reliability (the tsan
// presets) every access they share is checked too.

#include <doctest/doctest.h>


#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#include "cache/kv_cache_checks.hpp"
#include "cache/reliability.hpp"
#include "ekv/cpu/host_kv_cache.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

using T = __half;
using ekv::DeviceKind;
using ekv::TensorView;

// One cache's life: twelve steps of a token appended to three sequences in every layer, each
// followed by exact and elastic attention; then a dump, a load of it and one more attention.
// What it attended, in order (outputs, then LSEs).
std::vector<float> life(int which, std::uint64_t seed) {
  ekv::KVCacheConfig c = ekv::test::small_config(ekv::DType::kFloat16);
  ekv::HostKVCache cache(c);
  const int kv = c.kv_head_num, d = c.head_dim, qh = c.q_head_num, batch = 3;
  std::vector<float> out;
  const auto attend = [&](ekv::HostKVCache& cache, int layer, int step, int pick) {
    const auto q = ekv::bench::random_uniform<T>(std::size_t{1} * batch * qh * d, -1, 1, seed + 31 * step + layer);
    std::vector<T> o(q.size());
    std::vector<float> lse(std::size_t{1} * batch * qh);
    cache.attn(TensorView::of(q.data(), {batch, qh, d}, DeviceKind::kHost),
               TensorView::of(o.data(), {batch, qh, d}, DeviceKind::kHost),
               TensorView::of(lse.data(), {batch, qh}, DeviceKind::kHost), layer, step, pick);
    for (const T& x : o) out.push_back(ekv::DTypeTraits<T>::to_float(x));
    out.insert(out.end(), lse.begin(), lse.end());
  };
  for (int layer = 0; layer < c.layer_num; ++layer) {  // a prefill of 100 tokens
    const auto k = ekv::bench::random_uniform<T>(std::size_t{1} * batch * 100 * kv * d, -1, 1, seed + 1000 * which);
    cache.append(layer, TensorView::of(k.data(), {batch, 100, kv, d}, DeviceKind::kHost),
                 TensorView::of(k.data(), {batch, 100, kv, d}, DeviceKind::kHost));
  }
  for (int step = 0; step < 12; ++step) {
    for (int layer = 0; layer < c.layer_num; ++layer) {
      const auto k = ekv::bench::random_uniform<T>(std::size_t{1} * batch * kv * d, -1, 1,
                                                   seed + 1000 * which + 10 * step + layer);
      cache.append(layer, TensorView::of(k.data(), {batch, 1, kv, d}, DeviceKind::kHost),
                   TensorView::of(k.data(), {batch, 1, kv, d}, DeviceKind::kHost));
      attend(cache, layer, step, -1);
      attend(cache, layer, step, 2);
    }
  }
  const std::string path = ekv::test::scratch_path("ekv_concurrency_test_" + std::to_string(which));
  cache.dump_kvcache(path);
  ekv::HostKVCache loaded(c);
  loaded.load_kvcache(path);
  std::remove(path.c_str());
  attend(loaded, 1, 12, -1);
  return out;
}

}  // namespace

TEST_CASE("four caches on four threads at once attend, dump and load as each does alone") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  constexpr int kCaches = 4;
  std::vector<std::vector<float>> alone(kCaches), together(kCaches);
  for (int i = 0; i < kCaches; ++i) alone[i] = life(i, seed);
  ekv::test::at_once(kCaches, [&](int i) { together[i] = life(i, seed); });
  for (int i = 0; i < kCaches; ++i) {
    INFO("cache " << i);
    REQUIRE(alone[i].size() == together[i].size());
    CHECK(alone[i] == together[i]);  // NaN nowhere: every row attends over 100 tokens or more
  }
}

TEST_CASE("one CPUInfer takes tasks from four threads at once, and each thread's sync waits for them") {
  ekv::CPUInfer pool(3);
  std::atomic<long> sum{0};
  ekv::test::at_once(4, [&](int i) {
    for (int round = 0; round < 50; ++round) {
      for (int t = 0; t < 100; ++t) pool.submit([&sum, i] { sum.fetch_add(i + 1, std::memory_order_relaxed); });
      pool.sync();
    }
  });
  pool.sync();
  CHECK(sum.load() == 50L * 100 * (1 + 2 + 3 + 4));
}
