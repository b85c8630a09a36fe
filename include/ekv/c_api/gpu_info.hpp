#pragma once
// ekv_get_gpu_info: the calling thread's current device, as ekv::DeviceInfo reads it.

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "ekv/c_api/arguments.hpp"
#include "ekv/c_api/gpu.hpp"
#include "ekv/core/device.hpp"

namespace ekv::capi {

inline void get_gpu_info(char* device_name, int* compute_major, int* compute_minor, std::size_t* total_memory,
                         int max_name_length) {
  require_pointer(device_name, "device_name", "max_name_length chars");
  require_pointer(compute_major, "compute_major", "an int");
  require_pointer(compute_minor, "compute_minor", "an int");
  require_pointer(total_memory, "total_memory", "a size_t");
  require_at_least(max_name_length, 1, "max_name_length");
  const DeviceInfo info = DeviceInfo::query(require_gpu());
  const std::size_t length = std::min(info.name.size(), static_cast<std::size_t>(max_name_length) - 1);
  std::memcpy(device_name, info.name.data(), length);
  device_name[length] = '\0';
  *compute_major = info.cc_major;
  *compute_minor = info.cc_minor;
  *total_memory = info.global_memory_bytes;
}

}  // namespace ekv::capi
