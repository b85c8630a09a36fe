#pragma once
// A HostCache (decode_check.hpp) copied to the device, for GPU tests.

#include <cstdint>

#include "decode_check.hpp"
#include "ekv/attention/decode_support.hpp"
#include "ekv/core/device_buffer.hpp"

namespace ekv::test {

template <typename T>
struct DeviceCache {
  DeviceBuffer<T> k, v, q;
  DeviceBuffer<std::int32_t> table, lengths;

  explicit DeviceCache(const HostCache<T>& c)
      : k(c.k.size()), v(c.v.size()), q(c.q.size()), table(c.table.size()), lengths(c.lengths.size()) {
    k.copy_from(c.k);
    v.copy_from(c.v);
    q.copy_from(c.q);
    table.copy_from(c.table);
    lengths.copy_from(c.lengths);
  }
  // The cache's layout over these buffers.
  KVView<T> view(const HostCache<T>& c) { return c.view(k.data(), v.data(), table.data(), lengths.data()); }
};

// The decode problem of a cache's shape, planned for its longest sequence.
inline DecodeProblem decode_problem(const CacheShape& shape, DType dtype) {
  const int max_len = shape.lengths.empty() ? 0 : *std::max_element(shape.lengths.begin(), shape.lengths.end());
  return DecodeProblem{dtype, shape.batch(), shape.q_heads(), shape.kv_heads, shape.head_dim, max_len};
}

}  // namespace ekv::test
