#pragma once
// Grid sizing shared by the streaming kernels: one full wave of resident CTAs, which a
// grid-stride loop then walks over any size.

#include <algorithm>
#include <cstddef>

#include "ekv/core/device.hpp"

namespace ekv {

inline int full_wave_ctas(const DeviceInfo& device, int cta_threads) {
  return device.sm_count * std::max(1, device.max_threads_per_sm / cta_threads);
}

// Enough CTAs to cover `work_items` with `items_per_cta`, capped at one full wave.
inline int streaming_grid(const DeviceInfo& device, int cta_threads, std::size_t work_items,
                          std::size_t items_per_cta) {
  const std::size_t needed = (work_items + items_per_cta - 1) / items_per_cta;
  return static_cast<int>(std::max<std::size_t>(
      1, std::min<std::size_t>(needed, static_cast<std::size_t>(full_wave_ctas(device, cta_threads)))));
}

}  // namespace ekv
