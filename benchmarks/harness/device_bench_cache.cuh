#pragma once
// DeviceBenchCache: a decode benchmark's paged cache on the GPU: K and V uniform in
// [-1, 1) (filled on the device, at memory speed), queries and the shuffled block table
// from make_bench_inputs, needles planted where asked, every sequence at one length.

#include <cstdint>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/stream.hpp"
#include "harness/bench_inputs.hpp"
#include "harness/random_fill.cuh"

namespace ekv::bench {

template <typename T>
struct DeviceBenchCache {
  BenchShape shape;
  BenchInputs<T> host;  // q and the table, as copied to the device
  DeviceBuffer<T> k, v, q;
  DeviceBuffer<std::int32_t> table, lengths;
  NeedleBlocks needle_blocks;  // where the needles went (plant_needles)

  // Sequences of `length` tokens (at most the shape's capacity); needles in the blocks
  // holding those tokens. Waits for the fills. Throws ekv::Error where allocation fails.
  DeviceBenchCache(const BenchShape& s, int length, const BenchSeeds& seeds, int needles, const Stream& stream)
      : shape(s),
        host(make_bench_inputs<T>(s, seeds)),
        k(s.pool_elems()),
        v(s.pool_elems()),
        q(s.q_elems()),
        table(host.table.size()),
        lengths(s.batch) {
    random_uniform_fill<T>(k.span(), -1.0f, 1.0f, seeds.k, stream);
    random_uniform_fill<T>(v.span(), -1.0f, 1.0f, seeds.v, stream);
    stream.synchronize();
    q.copy_from(host.q);
    table.copy_from(host.table);
    set_lengths(length);
    needle_blocks = plant_needles(s, host, (length + s.block_len - 1) / s.block_len, needles, seeds.needles,
                  [&](std::int32_t physical, int head, const std::vector<T>& rows) {
                    EKV_CUDA_CHECK(cudaMemcpy(k.data() + physical * s.block_elems() +
                                                  static_cast<std::size_t>(head) * s.block_len * s.head_dim,
                                              rows.data(), rows.size() * sizeof(T), cudaMemcpyHostToDevice),
                                   "DeviceBenchCache: cannot plant a needle");
                  });
    EKV_CUDA_CHECK(cudaDeviceSynchronize(), "DeviceBenchCache: filling the cache failed");
  }

  // Every sequence back at `length` tokens (synchronous).
  void set_lengths(int length) { lengths.copy_from(std::vector<std::int32_t>(shape.batch, length)); }

  KVView<T> view() const {
    return paged_kv<T>(k.data(), v.data(), table.data(), lengths.data(), shape.batch, shape.kv_heads, shape.head_dim,
                       shape.block_len, shape.blocks_per_seq);
  }
};

}  // namespace ekv::bench
