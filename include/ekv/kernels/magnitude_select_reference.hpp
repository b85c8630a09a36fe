#pragma once
// The host reference of magnitude_select (kernels/magnitude_select.cuh): the plain loop
// that its tests and the C API's tests compare against, bit for bit.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ekv {

struct MagnitudeSelection {
  std::vector<float> values;          // kept, in order, as they were
  std::vector<std::int32_t> indices;  // their positions in the input
};

// The elements x of in[0, n) with |x| > threshold (never NaN). Built without fast math,
// so denormals compare as they are, as on the device.
inline MagnitudeSelection reference_magnitude_select(const float* in, std::size_t n, float threshold) {
  MagnitudeSelection kept;
  for (std::size_t i = 0; i < n; ++i) {
    if (std::fabs(in[i]) > threshold) {
      kept.values.push_back(in[i]);
      kept.indices.push_back(static_cast<std::int32_t>(i));
    }
  }
  return kept;
}

}  // namespace ekv
