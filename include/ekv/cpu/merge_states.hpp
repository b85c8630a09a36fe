#pragma once
// merge_row_host: merges the attention states of one row computed over disjoint token sets
// (the chunks of a long sequence; later the host and GPU parts of an offloaded cache)
// into one, through their LSE, on the host: reference_merge's rule
// (attention/reference.hpp), in float.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ekv/core/dtype.hpp"

namespace ekv {

// states_o float [num_states][head_dim], states_lse float [num_states] (natural log);
// writes o [head_dim] (T) and *lse. An empty state (lse = -inf) weighs nothing; only empty
// states give o = 0, lse = -inf, never NaN. num_states >= 1.
template <typename T>
void merge_row_host(const float* states_o, const float* states_lse, int num_states, int head_dim, T* o, float* lse) {
  const float top = *std::max_element(states_lse, states_lse + num_states);
  if (top == -std::numeric_limits<float>::infinity()) {
    for (int i = 0; i < head_dim; ++i) o[i] = DTypeTraits<T>::from_float(0.0f);
    *lse = top;
    return;
  }
  std::vector<float> weights(num_states);
  float sum = 0.0f;
  for (int s = 0; s < num_states; ++s) {
    weights[s] = std::exp(states_lse[s] - top);
    sum += weights[s];
  }
  for (int s = 0; s < num_states; ++s) weights[s] /= sum;
  for (int i = 0; i < head_dim; ++i) {
    float x = 0.0f;
    for (int s = 0; s < num_states; ++s) x += weights[s] * states_o[static_cast<std::size_t>(s) * head_dim + i];
    o[i] = DTypeTraits<T>::from_float(x);
  }
  *lse = top + std::log(sum);
}

}  // namespace ekv
