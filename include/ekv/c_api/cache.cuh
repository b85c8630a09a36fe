#pragma once
// ekv_cache, the C API's opaque cache handle (c_api.h): the CPU backend's HostKVCache or
// the GPU's KVCache with a stream of its own, and the C calls on it. Every call checks its
// arguments in the order the header lists them; the caches check the tensors against the
// config (kv_cache_args.hpp), naming the call and the argument.

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "ekv/c_api.h"
#include "ekv/c_api/arguments.hpp"
#include "ekv/c_api/cache_config.hpp"
#include "ekv/c_api/caller_memory.hpp"
#include "ekv/c_api/gpu.hpp"
#include "ekv/c_api/tensor.hpp"
#include "ekv/cache/kv_cache.cuh"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/kv_cache_file.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/core/device.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/cpu/host_kv_cache.hpp"

namespace ekv::capi {

inline constexpr NamedValue kCacheDevices[] = {{EKV_DEVICE_CPU, "EKV_DEVICE_CPU"},
                                               {EKV_DEVICE_CUDA, "EKV_DEVICE_CUDA"}};

// The calling thread's current device is `device` while this lives, and the one it was
// before afterwards: a handle's calls run on its device, whatever the caller's is.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) {
    EKV_CUDA_CHECK(cudaGetDevice(&previous_), "cannot read the calling thread's current device");
    if (previous_ != device) {
      EKV_CUDA_CHECK(cudaSetDevice(device), "cannot make device " + std::to_string(device) + " current");
      changed_ = true;
    }
  }
  ScopedDevice(const ScopedDevice&) = delete;  // the previous device is restored once
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  ~ScopedDevice() {
    if (changed_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// The caller's stream, for the _on_stream calls (where none is given, std::nullopt: the
// synchronous calls, on the handle's own stream after the legacy default stream's work).
struct CallerStream {
  void* stream;
};

// The GPU cache, the stream its calls are ordered on, and the event by which that stream
// waits for the legacy default stream (where torch and CuPy queue by default).
struct GpuCache {
  GpuCache(const KVCacheConfig& config, int device_id)
      : device(device_id), cache(config, DeviceInfo::query(device_id), stream) {
    stream.synchronize();  // the pools are zeroed before the handle is returned
  }

  int device;
  Stream stream;
  Event queued{cudaEventDisableTiming};
  KVCache cache;
};

}  // namespace ekv::capi

// The handle: exactly one of host and gpu is set. Owned by the C caller through
// ekv_cache_create and ekv_cache_destroy; never copied.
struct ekv_cache {
  std::unique_ptr<ekv::HostKVCache> host;
  std::unique_ptr<ekv::capi::GpuCache> gpu;

  // The argument `name` as a view for this cache. Device memory given to the GPU cache is
  // checked to be what the descriptor says, on the cache's device, so that a kernel never
  // reads a host pointer; the caches check the rest.
  ekv::TensorView view(const ekv_tensor* t, const char* name) const {
    const ekv::TensorView v = ekv::capi::tensor_view(t, name);
    if (gpu && t->device_type == EKV_DEVICE_CUDA && t->data != nullptr) {
      if (t->device_id != gpu->device) {
        ekv::capi::reject(std::string(name) + ".device_id=" + std::to_string(t->device_id) +
                          " not supported; supported: " + std::to_string(gpu->device) + " (the cache's device)");
      }
      if (ekv::capi::memory_kind(t->data, name, gpu->device) != ekv::capi::MemoryKind::kDevice) {
        ekv::capi::reject(std::string(name) + " is host memory, but " + name +
                          ".device_type is EKV_DEVICE_CUDA; supported: device memory for EKV_DEVICE_CUDA, "
                          "EKV_DEVICE_CPU for host memory");
      }
    }
    return v;
  }

  // on_host(HostKVCache&) or, on the cache's device, on_gpu(KVCache&, stream) after the
  // legacy default stream's queued work, returning once the stream is done. const like C's
  // const ekv_cache* readers (the block getters, dump), which synchronize too: the caches
  // are reached through the owning pointers, whose constness is the handle's, not theirs.
  template <typename OnHost, typename OnGpu>
  void run(OnHost&& on_host, OnGpu&& on_gpu) const {
    if (host) return on_host(*host);
    ekv::capi::ScopedDevice current(gpu->device);
    gpu->queued.record(ekv::Stream::borrow(cudaStreamLegacy));
    gpu->queued.make_wait(gpu->stream);
    on_gpu(gpu->cache, gpu->stream);
    gpu->stream.synchronize();
  }
  // on_host(HostKVCache&) (`caller` must then be NULL), or on_gpu(KVCache&, stream) on the
  // caller's stream, after nothing and waiting for nothing (the _on_stream calls).
  template <typename OnHost, typename OnGpu>
  void run(const std::optional<ekv::capi::CallerStream>& caller, OnHost&& on_host, OnGpu&& on_gpu) const {
    if (!caller) return run(on_host, on_gpu);
    auto* stream = static_cast<cudaStream_t>(caller->stream);
    if (host) {
      if (stream != nullptr) {
        ekv::capi::reject("stream is not NULL; supported: NULL for a CPU cache (EKV_DEVICE_CPU: no streams)");
      }
      return on_host(*host);
    }
    ekv::capi::ScopedDevice current(gpu->device);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    const bool created = stream != nullptr && stream != cudaStreamLegacy && stream != cudaStreamPerThread;
    if (created) EKV_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture), "stream: cannot tell whether it captures");
    // cudaStreamGetDevice invalidates a capture (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED), so
    // a capturing stream's device goes unchecked
    if (created && capture == cudaStreamCaptureStatusNone) {
      int device = -1;
      EKV_CUDA_CHECK(cudaStreamGetDevice(stream, &device), "stream: cannot read its device");
      if (device != gpu->device) {
        ekv::capi::reject("stream is a stream of device " + std::to_string(device) +
                          "; supported: a stream of device " + std::to_string(gpu->device) + " (the cache's)");
      }
    }
    on_gpu(gpu->cache, ekv::Stream::borrow(stream));
  }
  // f(cache) for what both caches answer on the host alone (config, lengths, tables).
  template <typename F>
  void read(F&& f) const {
    if (host) return f(std::as_const(*host));
    f(std::as_const(gpu->cache));
  }
};

namespace ekv::capi {

// The handle argument, checked.
inline const ekv_cache& handle(const ekv_cache* cache) {
  require_pointer(cache, "cache", "an ekv_cache from ekv_cache_create");
  return *cache;
}

inline ekv_cache* make_cache(const KVCacheConfig& config, int device_type, int device_id) {
  require_one_of(device_type, "device_type", kCacheDevices);
  auto made = std::make_unique<ekv_cache>();
  if (device_type == EKV_DEVICE_CPU) {
    made->host = std::make_unique<HostKVCache>(config);
    return made.release();
  }
  require_gpu();
  const int count = device_count();
  if (device_id < 0 || device_id >= count) {
    reject("device_id=" + std::to_string(device_id) + " not supported; supported: 0 to " +
           std::to_string(count - 1) + " (the visible CUDA devices)");
  }
  ScopedDevice current(device_id);
  made->gpu = std::make_unique<GpuCache>(config, device_id);
  return made.release();
}

inline void cache_create(const ekv_cache_config* config, int device_type, int device_id, ekv_cache** cache) {
  require_pointer(cache, "cache", "an ekv_cache* to receive the handle");
  *cache = nullptr;
  const KVCacheConfig c = valid_config(config, "config");
  *cache = make_cache(c, device_type, device_id);
}

inline void cache_create_from_text(const char* config_text, int device_type, int device_id, ekv_cache** cache) {
  require_pointer(cache, "cache", "an ekv_cache* to receive the handle");
  *cache = nullptr;
  const KVCacheConfig c = parse_config(config_text, "config_text");
  if (Support s = c.validate(); !s) reject(s.why);
  *cache = make_cache(c, device_type, device_id);
}

inline void cache_destroy(ekv_cache* cache) {
  std::unique_ptr<ekv_cache> owned(cache);  // freed whatever happens below
  if (owned && owned->gpu) {
    ScopedDevice current(owned->gpu->device);
    owned->gpu.reset();
  }
}

inline void cache_get_config(const ekv_cache* cache, ekv_cache_config* config, int* device_type, int* device_id) {
  const ekv_cache& h = handle(cache);
  require_pointer(config, "config", "an ekv_cache_config");
  h.read([&](const auto& c) { *config = to_c(c.config()); });
  if (device_type != nullptr) *device_type = h.host ? EKV_DEVICE_CPU : EKV_DEVICE_CUDA;
  if (device_id != nullptr) *device_id = h.host ? 0 : h.gpu->device;
}

inline void cache_append(ekv_cache* cache, int layer_idx, const ekv_tensor* k_new, const ekv_tensor* v_new,
                         const std::optional<CallerStream>& caller = std::nullopt) {
  const ekv_cache& h = handle(cache);
  const TensorView k = h.view(k_new, "k_new"), v = h.view(v_new, "v_new");
  h.run(caller, [&](HostKVCache& c) { c.append(layer_idx, k, v); },
        [&](KVCache& c, const Stream& s) { c.append(layer_idx, k, v, s); });
}

inline void cache_attn(ekv_cache* cache, const ekv_tensor* q, const ekv_tensor* output, const ekv_tensor* attn_lse,
                       int layer_idx, int generate_token_idx, int pick_block_num, int init_block_num,
                       int local_block_num, int* attended_exactly,
                       const std::optional<CallerStream>& caller = std::nullopt) {
  const ekv_cache& h = handle(cache);
  const TensorView qv = h.view(q, "q"), ov = h.view(output, "output"), lv = h.view(attn_lse, "attn_lse");
  bool exact = pick_block_num < 0;  // the CPU backend attends elastically whenever asked
  h.run(
      caller,
      [&](HostKVCache& c) {
        c.attn(qv, ov, lv, layer_idx, generate_token_idx, pick_block_num, init_block_num, local_block_num);
      },
      [&](KVCache& c, const Stream& s) {
        c.attn(qv, ov, lv, layer_idx, generate_token_idx, s, pick_block_num, init_block_num, local_block_num);
        exact = c.last_attn_exact();
      });
  if (attended_exactly != nullptr) *attended_exactly = exact ? 1 : 0;
}

inline void cache_get_total_len(const ekv_cache* cache, int seq, int* cache_total_len) {
  const ekv_cache& h = handle(cache);
  require_pointer(cache_total_len, "cache_total_len", "an int");
  h.read([&](const auto& c) { *cache_total_len = c.get_cache_total_len(seq); });
}

inline void cache_update_total_len(ekv_cache* cache, int cache_total_len, int seq) {
  handle(cache).run([&](HostKVCache& c) { c.update_cache_total_len(cache_total_len, seq); },
                    [&](KVCache& c, const Stream& s) { c.update_cache_total_len(cache_total_len, s, seq); });
}

inline void cache_free_sequence(ekv_cache* cache, int seq) {
  handle(cache).run([&](HostKVCache& c) { c.free_sequence(seq); },
                    [&](KVCache& c, const Stream& s) { c.free_sequence(seq, s); });
}

inline void cache_get_block_table(const ekv_cache* cache, std::int32_t* block_table, std::int64_t capacity,
                                  int* max_seq_block_num) {
  const ekv_cache& h = handle(cache);
  require_pointer(max_seq_block_num, "max_seq_block_num", "an int");
  h.read([&](const auto& c) {
    const auto& tables = c.allocator().tables();
    *max_seq_block_num = c.allocator().max_blocks_per_seq();
    if (block_table == nullptr) return;
    const auto needed = static_cast<std::int64_t>(tables.size());
    if (capacity < needed) {
      reject("capacity=" + std::to_string(capacity) + " not supported; supported: >= max_batch_size * " +
             "max_seq_block_num = " + std::to_string(needed));
    }
    std::copy(tables.begin(), tables.end(), block_table);
  });
}

// The block accessors: update writes the caller's block into the pool, else reads it out.
inline void cache_kv_block(const ekv_cache* cache, const ekv_tensor* k, const ekv_tensor* v, int layer_id,
                           int block_idx, bool update) {
  const ekv_cache& h = handle(cache);
  const TensorView kv = h.view(k, "k"), vv = h.view(v, "v");
  h.run(
      [&](HostKVCache& c) {
        update ? c.update_kvcache_one_block(kv, vv, layer_id, block_idx)
               : c.get_kvcache_one_block(kv, vv, layer_id, block_idx);
      },
      [&](KVCache& c, const Stream& s) {
        update ? c.update_kvcache_one_block(kv, vv, layer_id, block_idx, s)
               : c.get_kvcache_one_block(kv, vv, layer_id, block_idx, s);
      });
}

inline void cache_importance_block(const ekv_cache* cache, const ekv_tensor* importance, int layer_id, int block_idx,
                                   bool update) {
  const ekv_cache& h = handle(cache);
  const TensorView t = h.view(importance, "importance");
  h.run(
      [&](HostKVCache& c) {
        update ? c.update_importance_one_block(t, layer_id, block_idx)
               : c.get_importance_one_block(t, layer_id, block_idx);
      },
      [&](KVCache& c, const Stream& s) {
        update ? c.update_importance_one_block(t, layer_id, block_idx, s)
               : c.get_importance_one_block(t, layer_id, block_idx, s);
      });
}

inline void cache_anchor_block(const ekv_cache* cache, const ekv_tensor* anchor, int layer_id, int block_idx,
                               bool update) {
  const ekv_cache& h = handle(cache);
  const TensorView t = h.view(anchor, "anchor");
  h.run(
      [&](HostKVCache& c) {
        update ? c.update_anchor_one_block(t, layer_id, block_idx) : c.get_anchor_one_block(t, layer_id, block_idx);
      },
      [&](KVCache& c, const Stream& s) {
        update ? c.update_anchor_one_block(t, layer_id, block_idx, s)
               : c.get_anchor_one_block(t, layer_id, block_idx, s);
      });
}

inline void cache_get_memory(const ekv_cache* cache, ekv_cache_memory* memory) {
  const ekv_cache& h = handle(cache);
  require_pointer(memory, "memory", "an ekv_cache_memory");
  h.read([&](const auto& c) {
    const KVCacheMemory m = c.memory();
    *memory = ekv_cache_memory{m.bytes_per_layer, m.bytes_per_token, m.total_bytes, m.blocks_used, m.blocks_free};
  });
}

inline void cache_dump(const ekv_cache* cache, const char* tensor_file_path) {
  const ekv_cache& h = handle(cache);
  require_pointer(tensor_file_path, "tensor_file_path", "a NUL-terminated path");
  const std::string path = tensor_file_path;
  h.run([&](HostKVCache& c) { c.dump_kvcache(path); }, [&](KVCache& c, const Stream& s) { c.dump_kvcache(path, s); });
}

inline void cache_load(ekv_cache* cache, const char* tensor_file_path) {
  const ekv_cache& h = handle(cache);
  require_pointer(tensor_file_path, "tensor_file_path", "a NUL-terminated path");
  const std::string path = tensor_file_path;
  h.run([&](HostKVCache& c) { c.load_kvcache(path); }, [&](KVCache& c, const Stream& s) { c.load_kvcache(path, s); });
}

}  // namespace ekv::capi
