// A soak of the CPU backend's KVCache (issue 21): tests/cache/soak.hpp's 100,000 steps of
// appends, frees and restarts over HostKVCache.

#include "cache/soak.hpp"

#include <memory>

#include "ekv/cpu/host_kv_cache.hpp"

namespace {

struct Host {
  using T = __half;
  static std::unique_ptr<ekv::HostKVCache> make(const ekv::KVCacheConfig& c) {
    return std::make_unique<ekv::HostKVCache>(c);
  }
  static void append(ekv::HostKVCache& cache, const std::vector<T>& k, const std::vector<T>& v) {
    const ekv::KVCacheConfig& c = cache.config();
    const auto shape = {std::int64_t{c.max_batch_size}, std::int64_t{1}, std::int64_t{c.kv_head_num},
                        std::int64_t{c.head_dim}};
    cache.append(0, ekv::TensorView::of(k.data(), shape, ekv::DeviceKind::kHost),
                 ekv::TensorView::of(v.data(), shape, ekv::DeviceKind::kHost));
  }
  static void attn(ekv::HostKVCache& cache, const std::vector<T>& q, std::vector<T>& o, std::vector<float>& lse,
                   int step) {
    const ekv::KVCacheConfig& c = cache.config();
    const int batch = c.max_batch_size;
    cache.attn(ekv::TensorView::of(q.data(), {batch, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost),
               ekv::TensorView::of(o.data(), {batch, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost),
               ekv::TensorView::of(lse.data(), {batch, c.q_head_num}, ekv::DeviceKind::kHost), 0, step);
  }
  static void free_sequence(ekv::HostKVCache& cache, int seq) { cache.free_sequence(seq); }
  static ekv::test::DeviceMemory device_memory() { return {ekv::testing::device_bytes_held(), 0}; }
};

}  // namespace

TEST_CASE("soak: 100,000 steps of appends, frees and restarts keep the accounting exact and the outputs exact") {
  ekv::test::soak<Host>();
}
