#pragma once
// Summary statistics of timing samples: what every ekv benchmark reports.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <vector>

#include "ekv/core/error.hpp"

namespace ekv::bench {

struct Stats {
  std::size_t count = 0;
  double mean = 0, median = 0, p5 = 0, p95 = 0, min = 0, max = 0;
  double stddev = 0;        // sample standard deviation (n - 1)
  double cv = 0;            // stddev / mean
  double trim = 0.1;        // the fraction of samples trimmed_mean drops at each end
  double trimmed_mean = 0;  // mean of the samples left after dropping floor(count * trim) at each end
};

// The q-quantile (0 <= q <= 1) of sorted samples, interpolating linearly between ranks.
inline double quantile_sorted(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) throw Error("quantile_sorted: no samples");
  if (!(q >= 0.0 && q <= 1.0)) throw Error("quantile_sorted: q must lie in [0, 1]");
  const double rank = q * static_cast<double>(sorted.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(std::floor(rank));
  const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (rank - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

// trim: the fraction dropped at each end for the trimmed mean, in [0, 0.5). Throws
// ekv::Error on no samples, a non-finite one (a NaN time is a broken measurement) or a
// trim outside that range.
inline Stats summarize(std::vector<double> samples, double trim = 0.1) {
  if (samples.empty()) throw Error("summarize: no samples");
  if (!(trim >= 0.0 && trim < 0.5)) throw Error("summarize: trim must lie in [0, 0.5)");
  for (double s : samples) {
    if (!std::isfinite(s)) throw Error("summarize: a sample is not finite");
  }
  std::sort(samples.begin(), samples.end());
  Stats st;
  st.count = samples.size();
  const double n = static_cast<double>(st.count);
  st.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / n;
  st.median = quantile_sorted(samples, 0.5);
  st.p5 = quantile_sorted(samples, 0.05);
  st.p95 = quantile_sorted(samples, 0.95);
  st.min = samples.front();
  st.max = samples.back();
  double ss = 0;
  for (double s : samples) ss += (s - st.mean) * (s - st.mean);
  st.stddev = st.count > 1 ? std::sqrt(ss / (n - 1.0)) : 0.0;
  st.cv = st.mean != 0.0 ? st.stddev / st.mean : 0.0;
  st.trim = trim;
  // 1e-9: in binary, 100 * 0.29 is 28.999999999999996
  const std::size_t drop = static_cast<std::size_t>(std::floor(n * trim + 1e-9));
  st.trimmed_mean = std::accumulate(samples.begin() + drop, samples.end() - drop, 0.0) /
                    static_cast<double>(st.count - 2 * drop);
  return st;
}

}  // namespace ekv::bench
