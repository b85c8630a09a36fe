#pragma once
// The accuracy half of a BenchReport: elastic's output against exact's from the same
// inputs, and the exact attention mass of the blocks elastic read, computed in float64 on
// the host (elastic/accuracy.hpp).

#include <algorithm>
#include <cmath>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "harness/bench_inputs.hpp"
#include "harness/bench_report.hpp"

namespace ekv::bench {

// Sequences the float64 mass is computed over: its cost is two exact passes per query head.
inline constexpr int kBenchMassSequences = 4;

// kv: a host view of the cache both ran on; q [batch][q_heads][head_dim]; exact_o and
// elastic_o [batch][q_heads][head_dim]; blocks(seq, kv_head): the ascending logical blocks
// elastic read; needles: where plant_needles put them (recall over every sequence).
template <typename T, typename Blocks>
BenchAccuracy bench_accuracy(const KVView<T>& kv, const T* q, int q_heads, const T* exact_o, const T* elastic_o,
                             Blocks&& blocks, const NeedleBlocks& needles) {
  BenchAccuracy a;
  for (int seq = 0; seq < kv.batch; ++seq) {
    for (int h = 0; h < kv.kv_heads; ++h) {
      const std::size_t row = static_cast<std::size_t>(seq) * kv.kv_heads + h;
      if (row >= needles.size() || needles[row].empty()) continue;
      const std::vector<int> read = blocks(seq, h);
      for (int block : needles[row]) {
        ++a.needle_blocks;
        if (std::binary_search(read.begin(), read.end(), block)) ++a.needle_blocks_read;
      }
    }
  }
  const L2Error error = relative_l2_error(elastic_o, exact_o, kv.batch * q_heads, kv.head_dim);
  a.relative_l2_error = error.pooled;
  a.relative_l2_error_worst = error.worst;
  const MassSummary mass = attention_mass_of_selection(kv, q, q_heads, std::min(kv.batch, kBenchMassSequences), blocks,
                                                       1.0 / std::sqrt(static_cast<double>(kv.head_dim)));
  a.attention_mass = mass.mean;
  a.attention_mass_min = mass.min;
  a.mass_sequences = mass.sequences;
  return a;
}

}  // namespace ekv::bench
