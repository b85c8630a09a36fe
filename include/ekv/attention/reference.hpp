#pragma once
// Float64 CPU references for decode attention and state merging: what every kernel is
// tested against, and what the CPU backend and ekv-bench's accuracy figures reuse.
// LSE is the natural log of the sum of exp(score), score = scale * q.k.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/core/dtype.hpp"

namespace ekv {

// One attention state: the softmax-weighted mean of values, and its LSE.
struct RefState {
  std::vector<double> o;
  double lse = -std::numeric_limits<double>::infinity();
};

// Attention of one query head over tokens [begin, end) of (seq, kv_head) of a host view.
// An empty range gives o = 0 and lse = -inf.
template <typename T>
RefState reference_attend(const KVView<T>& kv, const T* q, int seq, int kv_head, int begin, int end,
                          double scale) {
  const int d = kv.head_dim;
  RefState st;
  st.o.assign(d, 0.0);
  if (end <= begin) return st;
  std::vector<double> scores(end - begin);
  double m = -std::numeric_limits<double>::infinity();
  for (int t = begin; t < end; ++t) {
    const T* k = kv.k + kv.offset(seq, kv_head, t);
    double s = 0;
    for (int i = 0; i < d; ++i) s += double(DTypeTraits<T>::to_float(q[i])) * DTypeTraits<T>::to_float(k[i]);
    scores[t - begin] = s * scale;
    m = std::max(m, scores[t - begin]);
  }
  double sum = 0;
  for (int t = begin; t < end; ++t) {
    const double p = std::exp(scores[t - begin] - m);
    sum += p;
    const T* v = kv.v + kv.offset(seq, kv_head, t);
    for (int i = 0; i < d; ++i) st.o[i] += p * DTypeTraits<T>::to_float(v[i]);
  }
  for (double& x : st.o) x /= sum;
  st.lse = m + std::log(sum);
  return st;
}

// Decode for a whole batch. q: [batch][q_heads][head_dim]; returns states [batch][q_heads].
template <typename T>
std::vector<RefState> reference_decode(const KVView<T>& kv, const T* q, int q_heads, double scale) {
  const int group = q_heads / kv.kv_heads;
  std::vector<RefState> out;
  out.reserve(static_cast<std::size_t>(kv.batch) * q_heads);
  for (int b = 0; b < kv.batch; ++b) {
    for (int h = 0; h < q_heads; ++h) {
      const T* qh = q + (static_cast<std::size_t>(b) * q_heads + h) * kv.head_dim;
      out.push_back(reference_attend(kv, qh, b, h / group, 0, kv.length(b, h / group), scale));
    }
  }
  return out;
}

// append_kv on the host: the same writes, the same capacity rule. Returns whether every
// token fit.
template <typename T>
bool reference_append(const KVView<T>& kv, const T* k_new, const T* v_new, int new_tokens) {
  bool all_fit = true;
  for (int b = 0; b < kv.batch; ++b) {
    const int start = kv.lengths[b];
    const int fits = std::max(0, std::min(new_tokens, kv.capacity() - start));
    all_fit = all_fit && fits == new_tokens;
    for (int t = 0; t < fits; ++t) {
      for (int h = 0; h < kv.kv_heads; ++h) {
        const std::size_t src = ((static_cast<std::size_t>(b) * new_tokens + t) * kv.kv_heads + h) * kv.head_dim;
        const std::int64_t dst = kv.offset(b, h, start + t);
        for (int d = 0; d < kv.head_dim; ++d) {
          kv.k[dst + d] = k_new[src + d];
          kv.v[dst + d] = v_new[src + d];
        }
      }
    }
    kv.lengths[b] = start + fits;
  }
  return all_fit;
}

// Merges states: m = max lse; w_i = exp(lse_i - m);
// o = sum w_i o_i / sum w_i; lse = m + log(sum w_i). Empty states (lse = -inf) weigh
// nothing; all empty gives o = 0, lse = -inf.
inline RefState reference_merge(const std::vector<RefState>& states, int head_dim) {
  RefState out;
  out.o.assign(head_dim, 0.0);
  double m = -std::numeric_limits<double>::infinity();
  for (const RefState& s : states) m = std::max(m, s.lse);
  if (m == -std::numeric_limits<double>::infinity()) return out;
  double sum = 0;
  for (const RefState& s : states) {
    const double w = std::exp(s.lse - m);
    sum += w;
    for (int i = 0; i < head_dim; ++i) out.o[i] += w * s.o[i];
  }
  for (double& x : out.o) x /= sum;
  out.lse = m + std::log(sum);
  return out;
}

}  // namespace ekv
