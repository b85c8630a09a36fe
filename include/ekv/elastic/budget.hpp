#pragma once
// ElasticBudget: how many blocks a decode step may read from a sequence, given as a
// compression ratio or as a block count, sinks and window included.

#include <cmath>
#include <sstream>
#include <string>

#include "ekv/core/error.hpp"
#include "ekv/core/host_device.hpp"

namespace ekv {

class ElasticBudget {
 public:
  // ceil(num_blocks / compression) blocks; compression must be finite and at least 1.
  static ElasticBudget ratio(double compression) {
    if (!(compression >= 1.0) || !std::isfinite(compression)) {
      std::ostringstream os;
      os << "ElasticBudget::ratio: compression=" << compression << " must be finite and at least 1";
      throw Error(os.str());
    }
    return ElasticBudget(compression, 0);
  }

  // `count` blocks, or every block of a shorter sequence; count must be at least 1.
  static ElasticBudget blocks(int count) {
    if (count < 1) {
      throw Error("ElasticBudget::blocks: count=" + std::to_string(count) + " must be at least 1");
    }
    return ElasticBudget(0.0, count);
  }

  bool is_ratio() const { return compression_ > 0.0; }
  double compression() const { return compression_; }
  int block_count() const { return blocks_; }

  // Blocks to read from a sequence of num_blocks blocks, never more than num_blocks; a
  // kernel computing it from device-side lengths gets the same count as the host.
  EKV_HOST_DEVICE int budget_blocks(int num_blocks) const {
    if (compression_ == 0.0) return blocks_ < num_blocks ? blocks_ : num_blocks;
    // ceil(num_blocks / compression), where a quotient less than a relative 1e-12 above an
    // integer counts as that integer: a decimal ratio is stored inexactly (2.4 as
    // 2.39999999999999991), and 12 blocks at 2.4 should read 5, not 6. A division and a
    // multiplication, which nvcc cannot contract into an fma: host and device agree.
    const double quotient = num_blocks / compression_ * (1.0 - 1e-12);
    const int floor = static_cast<int>(quotient);
    return floor < quotient ? floor + 1 : floor;
  }

 private:
  ElasticBudget(double compression, int count) : compression_(compression), blocks_(count) {}

  double compression_;  // > 0 for a ratio budget
  int blocks_;          // used when compression_ == 0
};

}  // namespace ekv
