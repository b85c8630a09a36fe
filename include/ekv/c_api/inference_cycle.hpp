#pragma once
// ekv_inference_cycle's argument checks. The decode loop over ekv's KV cache that it is
// to run is not built yet (TODO issue 18): the call reports EKV_ERROR_NOT_IMPLEMENTED.

#include <cmath>
#include <string>

#include "ekv/c_api.h"
#include "ekv/c_api/arguments.hpp"
#include "ekv/c_api/status.hpp"

namespace ekv::capi {

inline void inference_cycle(const float* kv_cache, float* compressed_cache, int* /*indices: optional*/,
                            int seq_length, int hidden_size, int decode_steps, float threshold_elastic,
                            float* baseline_total_ms, float* elastic_total_ms) {
  require_pointer(kv_cache, "kv_cache", "seq_length * hidden_size floats");
  require_pointer(compressed_cache, "compressed_cache", "room for seq_length * hidden_size floats");
  require_pointer(baseline_total_ms, "baseline_total_ms", "a float");
  require_pointer(elastic_total_ms, "elastic_total_ms", "a float");
  require_at_least(seq_length, 1, "seq_length");
  require_at_least(hidden_size, 1, "hidden_size");
  require_at_least(decode_steps, 1, "decode_steps");
  int_product(seq_length, "seq_length", hidden_size, "hidden_size", "indices are int");
  if (!(threshold_elastic > 1.0f) || std::isinf(threshold_elastic)) {
    reject("threshold_elastic=" + std::to_string(threshold_elastic) +
           " not supported; supported: a finite compression ratio C > 1");
  }
  throw StatusError(EKV_ERROR_NOT_IMPLEMENTED,
                    "the exact and elastic decode loop is not implemented in this build (issue 18)");
}

}  // namespace ekv::capi
