#pragma once
// What elastic attention costs in accuracy, measured against exact attention on the same
// inputs: the relative L2 error of its outputs, and the attention mass (exact
// softmax weight) of the tokens it read.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/reference.hpp"
#include "ekv/core/error.hpp"
#include "ekv/elastic/reference.hpp"
#include "ekv/elastic/reference_anchors.hpp"

namespace ekv {

// Per row |got - ref| / |ref|, or |got| where the reference row is zero (an empty
// attention state) and no ratio exists. worst: the largest row; pooled: |all got - all ref| / |all ref|.
struct L2Error {
  std::vector<double> rows;
  double worst = 0;
  double pooled = 0;
};

// The outputs o of states, stacked [states][head_dim], as kernels write them.
inline std::vector<double> stacked_outputs(const std::vector<RefState>& states) {
  std::vector<double> out;
  for (const RefState& s : states) out.insert(out.end(), s.o.begin(), s.o.end());
  return out;
}

// got and ref: [rows][head_dim]; got of any ekv dtype, float or double.
template <typename T>
L2Error relative_l2_error(const T* got, const double* ref, int rows, int head_dim) {
  const auto ratio = [](double diff2, double ref2) { return std::sqrt(ref2 > 0 ? diff2 / ref2 : diff2); };
  L2Error e;
  double diff_all = 0, ref_all = 0;
  for (std::size_t r = 0; r < static_cast<std::size_t>(rows); ++r) {
    double diff2 = 0, ref2 = 0;
    for (std::size_t i = r * head_dim; i < (r + 1) * head_dim; ++i) {
      const double d = detail::to_double(got[i]) - ref[i];
      diff2 += d * d;
      ref2 += ref[i] * ref[i];
    }
    e.rows.push_back(ratio(diff2, ref2));
    e.worst = std::max(e.worst, e.rows.back());
    diff_all += diff2;
    ref_all += ref2;
  }
  e.pooled = ratio(diff_all, ref_all);
  return e;
}

// Against another output of the same dtype, e.g. exact attention's from the same kernel
// family: both [rows][head_dim].
template <typename T>
L2Error relative_l2_error(const T* got, const T* ref, int rows, int head_dim) {
  std::vector<double> reference(static_cast<std::size_t>(rows) * head_dim);
  for (std::size_t i = 0; i < reference.size(); ++i) reference[i] = detail::to_double(ref[i]);
  return relative_l2_error(got, reference.data(), rows, head_dim);
}

// Against reference states, e.g. reference_decode's [batch][q_heads].
template <typename T>
L2Error relative_l2_error(const T* got, const std::vector<RefState>& ref, int head_dim) {
  return relative_l2_error(got, stacked_outputs(ref).data(), static_cast<int>(ref.size()), head_dim);
}

// The exact softmax weight, in float64, of the tokens in `blocks` (reference_attend_blocks'
// list rules) for query head q [head_dim] of sequence seq, which reads kv_head: exp of the
// blocks' LSE minus the whole sequence's. 1 when every block is listed. Throws for an empty
// sequence, which has no weight to capture.
template <typename T>
double attention_mass_captured(const KVView<T>& kv, const T* q, int seq, int kv_head, const std::vector<int>& blocks,
                               double scale) {
  const int length = kv.length(seq, kv_head);
  if (length == 0) throw Error("attention_mass_captured: sequence " + std::to_string(seq) + " is empty");
  const double whole = reference_attend(kv, q, seq, kv_head, 0, length, scale).lse;
  return std::exp(reference_attend_blocks(kv, q, seq, kv_head, blocks, scale).lse - whole);
}

// attention_mass_captured over the query heads of sequences [0, sequences) of a batch:
// query head h of sequence b read blocks(b, kv_head) (ascending logical blocks), q is
// [batch][q_heads][head_dim]. Throws for sequences outside [1, batch], q_heads not a
// positive multiple of kv_heads, and where attention_mass_captured throws.
struct MassSummary {
  double mean = 0;
  double min = 0;
  int sequences = 0;
};

template <typename T, typename Blocks>
MassSummary attention_mass_of_selection(const KVView<T>& kv, const T* q, int q_heads, int sequences, Blocks&& blocks,
                                        double scale) {
  if (sequences < 1 || sequences > kv.batch) {
    throw Error("attention_mass_of_selection: sequences=" + std::to_string(sequences) + " must be in [1, batch=" +
                std::to_string(kv.batch) + "]");
  }
  if (kv.kv_heads < 1 || q_heads < kv.kv_heads || q_heads % kv.kv_heads != 0) {
    throw Error("attention_mass_of_selection: q_heads=" + std::to_string(q_heads) +
                " must be a positive multiple of kv_heads=" + std::to_string(kv.kv_heads));
  }
  const int group = q_heads / kv.kv_heads;
  MassSummary m;
  m.sequences = sequences;
  m.min = 1.0;
  for (int b = 0; b < sequences; ++b) {
    for (int h = 0; h < q_heads; ++h) {
      const T* qh = q + (static_cast<std::size_t>(b) * q_heads + h) * kv.head_dim;
      const double mass = attention_mass_captured(kv, qh, b, h / group, blocks(b, h / group), scale);
      m.mean += mass;
      m.min = std::min(m.min, mass);
    }
  }
  m.mean /= static_cast<double>(sequences) * q_heads;
  return m;
}

}  // namespace ekv
