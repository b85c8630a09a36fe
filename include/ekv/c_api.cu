// libekv_c: the C API of c_api.h, one translation unit and nothing else. It lives beside
// the header, in the installed tree, because it is the file a user compiles to build the
// library without CMake, as the older core was built (one command, <include> the
// installed include directory):
//   nvcc -O3 -std=c++17 -arch=sm_90 -shared -Xcompiler -fPIC,-fvisibility=hidden
//        -I<include> <include>/ekv/c_api.cu -o libekv_c.so
// Each function is guarded() around its body in ekv/c_api/: no logic lives here.

#include "ekv/c_api.h"

#include <cstddef>

#include "ekv/c_api/bandwidth.cuh"
#include "ekv/c_api/compress.cuh"
#include "ekv/c_api/compute_throughput.cuh"
#include "ekv/c_api/gpu_info.hpp"
#include "ekv/c_api/inference_cycle.cuh"
#include "ekv/c_api/status.hpp"

extern "C" {

const char* ekv_last_error(void) { return ekv::capi::last_error().c_str(); }

const char* ekv_status_name(ekv_status status) { return ekv::capi::status_name(status); }

ekv_status ekv_compress(const float* kv_cache, float* compressed_cache, int* indices, float threshold,
                        int seq_length, int hidden_size, int* compressed_size, int repetitions,
                        int warmup_iterations, float* avg_ms, float* std_ms) {
  return ekv::capi::guarded("ekv_compress", [&] {
    ekv::capi::compress(kv_cache, compressed_cache, indices, threshold, seq_length, hidden_size, compressed_size,
                        repetitions, warmup_iterations, avg_ms, std_ms);
  });
}

ekv_status ekv_mem_bandwidth(float* input, float* output, int size, int iterations, float* gbps) {
  return ekv::capi::guarded("ekv_mem_bandwidth",
                            [&] { ekv::capi::mem_bandwidth(input, output, size, iterations, gbps); });
}

ekv_status ekv_mem_bandwidth_batched(float* input, float* output, int size, int iters_per_launch, int num_launches,
                                     float* gbps) {
  return ekv::capi::guarded("ekv_mem_bandwidth_batched", [&] {
    ekv::capi::mem_bandwidth_batched(input, output, size, iters_per_launch, num_launches, gbps);
  });
}

ekv_status ekv_compute_throughput(float* data, int size, int ops_per_element, float* gflops) {
  return ekv::capi::guarded("ekv_compute_throughput",
                            [&] { ekv::capi::compute_throughput(data, size, ops_per_element, gflops); });
}

ekv_status ekv_inference_cycle(const float* kv_cache, float* compressed_cache, int* indices, int seq_length,
                               int hidden_size, int decode_steps, float threshold_elastic, float* baseline_total_ms,
                               float* elastic_total_ms) {
  return ekv::capi::guarded("ekv_inference_cycle", [&] {
    ekv::capi::inference_cycle(kv_cache, compressed_cache, indices, seq_length, hidden_size, decode_steps,
                               threshold_elastic, baseline_total_ms, elastic_total_ms);
  });
}

ekv_status ekv_inference_cycle_ex(const float* kv_cache, float* compressed_cache, int* indices, int seq_length,
                                  int hidden_size, int decode_steps, float threshold_elastic, float* baseline_total_ms,
                                  float* elastic_total_ms, float* relative_error) {
  return ekv::capi::guarded("ekv_inference_cycle_ex", [&] {
    ekv::capi::inference_cycle_ex(kv_cache, compressed_cache, indices, seq_length, hidden_size, decode_steps,
                                  threshold_elastic, baseline_total_ms, elastic_total_ms, relative_error);
  });
}

ekv_status ekv_get_gpu_info(char* device_name, int* compute_major, int* compute_minor, std::size_t* total_memory,
                            int max_name_length) {
  return ekv::capi::guarded("ekv_get_gpu_info", [&] {
    ekv::capi::get_gpu_info(device_name, compute_major, compute_minor, total_memory, max_name_length);
  });
}

}  // extern "C"
