#pragma once
// Roofline placement of measured work: its arithmetic intensity (flops per byte read),
// the rate the two measured roofs allow at that intensity, and the rate achieved.

#include <algorithm>

#include "ekv/core/error.hpp"

namespace ekv::bench {

struct RooflinePoint {
  double arithmetic_intensity = 0;  // flops per byte read
  double attainable_flops_per_s = 0;  // min(peak flops, intensity x read bandwidth)
  double achieved_flops_per_s = 0;
  bool memory_bound = true;  // the bandwidth roof is the lower one at this intensity
};

// flops and bytes of work that took `seconds`; read_bytes_per_s and peak_flops_per_s are
// the device's measured roofs. peak_flops_per_s = 0 means no compute roof was measured:
// attainable is then the bandwidth roof alone. Throws ekv::Error for a non-positive
// time, byte count or bandwidth.
inline RooflinePoint place_on_roofline(double flops, double bytes, double seconds, double read_bytes_per_s,
                                       double peak_flops_per_s) {
  if (!(seconds > 0 && bytes > 0 && read_bytes_per_s > 0)) {
    throw Error("place_on_roofline: needs positive seconds, bytes and read bandwidth");
  }
  RooflinePoint p;
  p.arithmetic_intensity = flops / bytes;
  const double bandwidth_roof = p.arithmetic_intensity * read_bytes_per_s;
  p.memory_bound = peak_flops_per_s <= 0 || bandwidth_roof <= peak_flops_per_s;
  p.attainable_flops_per_s = p.memory_bound ? bandwidth_roof : peak_flops_per_s;
  p.achieved_flops_per_s = flops / seconds;
  return p;
}

}  // namespace ekv::bench
