// A soak of the GPU's KVCache (issue 21): tests/cache/soak.hpp's steps (100,000, or
// EKV_SOAK_STEPS: .ci/device's longer run on the H200) of appends, frees and restarts, the
// device's free memory equal from the thousandth step to the end.

#include "cache/soak.hpp"

#include <memory>

#include <ekv/ekv.cuh>

namespace {

struct Gpu {
  using T = __half;
  struct Cache {  // the cache, its stream and the step's device buffers, made once
    explicit Cache(const ekv::KVCacheConfig& c)
        : cache(c, ekv::DeviceInfo::current(), stream),
          k(std::size_t{1} * c.max_batch_size * c.kv_head_num * c.head_dim),
          v(k.size()),
          q(std::size_t{1} * c.max_batch_size * c.q_head_num * c.head_dim),
          o(q.size()),
          lse(std::size_t{1} * c.max_batch_size * c.q_head_num) {}
    int get_cache_total_len(int seq) const { return cache.get_cache_total_len(seq); }
    ekv::KVCacheMemory memory() const { return cache.memory(); }
    ekv::Stream stream;
    ekv::KVCache cache;
    ekv::DeviceBuffer<T> k, v, q, o;
    ekv::DeviceBuffer<float> lse;
  };
  static std::unique_ptr<Cache> make(const ekv::KVCacheConfig& c) { return std::make_unique<Cache>(c); }
  static void append(Cache& x, const std::vector<T>& k, const std::vector<T>& v) {
    const ekv::KVCacheConfig& c = x.cache.config();
    x.k.copy_from(k, x.stream);
    x.v.copy_from(v, x.stream);
    const auto shape = {std::int64_t{c.max_batch_size}, std::int64_t{1}, std::int64_t{c.kv_head_num},
                        std::int64_t{c.head_dim}};
    x.cache.append(0, ekv::TensorView::of(x.k.data(), shape, ekv::DeviceKind::kCuda),
                   ekv::TensorView::of(x.v.data(), shape, ekv::DeviceKind::kCuda), x.stream);
    x.stream.synchronize();  // k and v are the caller's again
  }
  static void attn(Cache& x, const std::vector<T>& q, std::vector<T>& o, std::vector<float>& lse, int step) {
    const ekv::KVCacheConfig& c = x.cache.config();
    const int batch = c.max_batch_size;
    x.q.copy_from(q, x.stream);
    x.o.fill_bytes(0xFF, x.stream);  // poisoned: NaN where attn writes nothing
    x.cache.attn(ekv::TensorView::of(x.q.data(), {batch, c.q_head_num, c.head_dim}, ekv::DeviceKind::kCuda),
                 ekv::TensorView::of(x.o.data(), {batch, c.q_head_num, c.head_dim}, ekv::DeviceKind::kCuda),
                 ekv::TensorView::of(x.lse.data(), {batch, c.q_head_num}, ekv::DeviceKind::kCuda), 0, step, x.stream);
    x.o.copy_to(o, x.stream);
    x.lse.copy_to(lse, x.stream);
    x.stream.synchronize();
  }
  static void free_sequence(Cache& x, int seq) { x.cache.free_sequence(seq, x.stream); }
  static ekv::test::DeviceMemory device_memory() { return ekv::test::device_memory(); }
};

}  // namespace

TEST_CASE("soak on the GPU: appends, frees and restarts keep the accounting, the outputs and the memory exact") {
  ekv::test::soak<Gpu>();
}
