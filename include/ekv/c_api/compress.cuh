#pragma once
// ekv_compress: the older core's compression (keep |x| > threshold), on ekv's
// magnitude_select over every element, from host or device memory, timed per run.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "ekv/c_api/arguments.hpp"
#include "ekv/c_api/caller_memory.hpp"
#include "ekv/c_api/gpu.hpp"
#include "ekv/c_api/timing.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/pinned_buffer.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/magnitude_select.cuh"

namespace ekv::capi {

static_assert(sizeof(int) == sizeof(std::int32_t), "the C API's int outputs are magnitude_select's int32");

// The arguments as c_api.h documents them; throws (guarded() turns it into a status).
inline void compress(const float* kv_cache, float* compressed_cache, int* indices, float threshold, int seq_length,
                     int hidden_size, int* compressed_size, int repetitions, int warmup_iterations, float* avg_ms,
                     float* std_ms) {
  require_pointer(kv_cache, "kv_cache", "seq_length * hidden_size floats");
  require_pointer(compressed_cache, "compressed_cache", "room for seq_length * hidden_size floats");
  require_pointer(compressed_size, "compressed_size", "an int");
  require_pointer(avg_ms, "avg_ms", "a float");
  require_pointer(std_ms, "std_ms", "a float");
  require_not_nan(threshold, "threshold");
  require_at_least(seq_length, 1, "seq_length");
  require_at_least(hidden_size, 1, "hidden_size");
  require_at_least(repetitions, 1, "repetitions");
  require_at_least(warmup_iterations, 0, "warmup_iterations");
  const auto n = static_cast<std::size_t>(
      int_product(seq_length, "seq_length", hidden_size, "hidden_size", "compressed_size and indices are int"));
  const int device = require_gpu();

  Stream stream;  // before the stream-ordered buffers, which it must outlive
  DeviceSide<const float> in(kv_cache, n, "kv_cache", device, stream);
  DeviceSide<float> out(compressed_cache, n, "compressed_cache", device, stream);
  std::optional<DeviceSide<int>> positions;
  if (indices != nullptr) positions.emplace(indices, n, "indices", device, stream);
  DeviceBuffer<std::byte> workspace(magnitude_select_workspace_bytes(n, indices != nullptr), stream);
  DeviceBuffer<std::int32_t> kept_device(1, stream);
  PinnedBuffer<std::int32_t> kept(1);
  const bool copies_back = out.staged() || (positions && positions->staged());

  Event start, stop;
  std::vector<double> times;
  for (int run = 0; run < warmup_iterations + repetitions; ++run) {
    start.record(stream);
    in.copy_in(n, stream);
    magnitude_select(in.span(), threshold, out.data(), positions ? positions->data() : nullptr, kept_device.data(),
                     workspace.span(), stream);
    kept_device.copy_to(Span<std::int32_t>(kept.data(), 1), stream);
    if (copies_back) {
      stream.synchronize();  // the kept count sizes the copies back
      const auto k = static_cast<std::size_t>(kept[0]);
      out.copy_out(k, stream);
      if (positions) positions->copy_out(k, stream);
    }
    stop.record(stream);
    stop.synchronize();
    if (run >= warmup_iterations) times.push_back(Event::elapsed_ms(start, stop));
  }
  const RunTimes t = summarize_runs(times);
  *compressed_size = kept[0];
  *avg_ms = static_cast<float>(t.mean_ms);
  *std_ms = static_cast<float>(t.stddev_ms);
}

}  // namespace ekv::capi
