#pragma once
// RunTimes: the C API's timing report, the mean and sample standard deviation of a
// function's timed runs (what ekv_compress returns in avg_ms and std_ms).

#include <cmath>
#include <vector>

namespace ekv::capi {

struct RunTimes {
  double mean_ms = 0;
  double stddev_ms = 0;  // sample (n - 1); 0 for one run
};

inline RunTimes summarize_runs(const std::vector<double>& ms) {
  RunTimes t;
  if (ms.empty()) return t;
  for (double x : ms) t.mean_ms += x;
  t.mean_ms /= static_cast<double>(ms.size());
  if (ms.size() > 1) {
    double ss = 0;
    for (double x : ms) ss += (x - t.mean_ms) * (x - t.mean_ms);
    t.stddev_ms = std::sqrt(ss / static_cast<double>(ms.size() - 1));
  }
  return t;
}

}  // namespace ekv::capi
