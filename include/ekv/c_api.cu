// libekv_c: the C API of c_api.h, one translation unit and nothing else. It lives beside
// the header, in the installed tree, because it is the file a user compiles to build the
// library without CMake, as the older core was built (one command, <include> the
// installed include directory):
//   nvcc -O3 -std=c++17 -arch=sm_90 -shared -Xcompiler -fPIC,-fvisibility=hidden
//        -I<include> <include>/ekv/c_api.cu -o libekv_c.so
// Each function is guarded() around its body in ekv/c_api/: no logic lives here.

#include "ekv/c_api.h"

#include <cstddef>
#include <cstdint>

#include "ekv/c_api/bandwidth.cuh"
#include "ekv/c_api/cache.cuh"
#include "ekv/c_api/cache_config.hpp"
#include "ekv/c_api/compress.cuh"
#include "ekv/c_api/compute_throughput.cuh"
#include "ekv/c_api/device_info.cuh"
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

ekv_status ekv_get_device_info(ekv_device_info* info, int measure_bandwidth) {
  return ekv::capi::guarded("ekv_get_device_info", [&] { ekv::capi::get_device_info(info, measure_bandwidth); });
}

ekv_status ekv_cache_config_default(ekv_cache_config* config) {
  return ekv::capi::guarded("ekv_cache_config_default", [&] { ekv::capi::config_default(config); });
}

ekv_status ekv_cache_config_parse(const char* text, ekv_cache_config* config) {
  return ekv::capi::guarded("ekv_cache_config_parse", [&] { ekv::capi::config_parse(text, config); });
}

ekv_status ekv_cache_config_to_string(const ekv_cache_config* config, char* text, std::size_t capacity) {
  return ekv::capi::guarded("ekv_cache_config_to_string",
                            [&] { ekv::capi::config_to_string(config, text, capacity); });
}

ekv_status ekv_cache_config_validate(const ekv_cache_config* config) {
  return ekv::capi::guarded("ekv_cache_config_validate", [&] { ekv::capi::valid_config(config, "config"); });
}

ekv_status ekv_cache_create(const ekv_cache_config* config, int device_type, int device_id, ekv_cache** cache) {
  return ekv::capi::guarded("ekv_cache_create",
                            [&] { ekv::capi::cache_create(config, device_type, device_id, cache); });
}

ekv_status ekv_cache_create_from_text(const char* config_text, int device_type, int device_id, ekv_cache** cache) {
  return ekv::capi::guarded("ekv_cache_create_from_text", [&] {
    ekv::capi::cache_create_from_text(config_text, device_type, device_id, cache);
  });
}

ekv_status ekv_cache_destroy(ekv_cache* cache) {
  return ekv::capi::guarded("ekv_cache_destroy", [&] { ekv::capi::cache_destroy(cache); });
}

ekv_status ekv_cache_get_config(const ekv_cache* cache, ekv_cache_config* config, int* device_type, int* device_id) {
  return ekv::capi::guarded("ekv_cache_get_config",
                            [&] { ekv::capi::cache_get_config(cache, config, device_type, device_id); });
}

ekv_status ekv_cache_append(ekv_cache* cache, int layer_idx, const ekv_tensor* k_new, const ekv_tensor* v_new) {
  return ekv::capi::guarded("ekv_cache_append", [&] { ekv::capi::cache_append(cache, layer_idx, k_new, v_new); });
}

ekv_status ekv_cache_attn(ekv_cache* cache, const ekv_tensor* q, const ekv_tensor* output, const ekv_tensor* attn_lse,
                          int layer_idx, int generate_token_idx, int pick_block_num, int init_block_num,
                          int local_block_num, int* attended_exactly) {
  return ekv::capi::guarded("ekv_cache_attn", [&] {
    ekv::capi::cache_attn(cache, q, output, attn_lse, layer_idx, generate_token_idx, pick_block_num, init_block_num,
                          local_block_num, attended_exactly);
  });
}

ekv_status ekv_cache_append_on_stream(ekv_cache* cache, int layer_idx, const ekv_tensor* k_new,
                                     const ekv_tensor* v_new, void* stream) {
  return ekv::capi::guarded("ekv_cache_append_on_stream", [&] {
    ekv::capi::cache_append(cache, layer_idx, k_new, v_new, ekv::capi::CallerStream{stream});
  });
}

ekv_status ekv_cache_attn_on_stream(ekv_cache* cache, const ekv_tensor* q, const ekv_tensor* output,
                                   const ekv_tensor* attn_lse, int layer_idx, int generate_token_idx,
                                   int pick_block_num, int init_block_num, int local_block_num,
                                   int* attended_exactly, void* stream) {
  return ekv::capi::guarded("ekv_cache_attn_on_stream", [&] {
    ekv::capi::cache_attn(cache, q, output, attn_lse, layer_idx, generate_token_idx, pick_block_num, init_block_num,
                          local_block_num, attended_exactly, ekv::capi::CallerStream{stream});
  });
}

ekv_status ekv_cache_get_cache_total_len(const ekv_cache* cache, int seq, int* cache_total_len) {
  return ekv::capi::guarded("ekv_cache_get_cache_total_len",
                            [&] { ekv::capi::cache_get_total_len(cache, seq, cache_total_len); });
}

ekv_status ekv_cache_update_cache_total_len(ekv_cache* cache, int cache_total_len, int seq) {
  return ekv::capi::guarded("ekv_cache_update_cache_total_len",
                            [&] { ekv::capi::cache_update_total_len(cache, cache_total_len, seq); });
}

ekv_status ekv_cache_free_sequence(ekv_cache* cache, int seq) {
  return ekv::capi::guarded("ekv_cache_free_sequence", [&] { ekv::capi::cache_free_sequence(cache, seq); });
}

ekv_status ekv_cache_get_block_table(const ekv_cache* cache, std::int32_t* block_table, std::int64_t capacity,
                                     int* max_seq_block_num) {
  return ekv::capi::guarded("ekv_cache_get_block_table", [&] {
    ekv::capi::cache_get_block_table(cache, block_table, capacity, max_seq_block_num);
  });
}

ekv_status ekv_cache_get_kvcache_one_block(const ekv_cache* cache, const ekv_tensor* k, const ekv_tensor* v,
                                           int layer_id, int block_idx) {
  return ekv::capi::guarded("ekv_cache_get_kvcache_one_block",
                            [&] { ekv::capi::cache_kv_block(cache, k, v, layer_id, block_idx, false); });
}

ekv_status ekv_cache_update_kvcache_one_block(ekv_cache* cache, const ekv_tensor* k, const ekv_tensor* v,
                                              int layer_id, int block_idx) {
  return ekv::capi::guarded("ekv_cache_update_kvcache_one_block",
                            [&] { ekv::capi::cache_kv_block(cache, k, v, layer_id, block_idx, true); });
}

ekv_status ekv_cache_get_importance_one_block(const ekv_cache* cache, const ekv_tensor* importance, int layer_id,
                                              int block_idx) {
  return ekv::capi::guarded("ekv_cache_get_importance_one_block", [&] {
    ekv::capi::cache_importance_block(cache, importance, layer_id, block_idx, false);
  });
}

ekv_status ekv_cache_update_importance_one_block(ekv_cache* cache, const ekv_tensor* importance, int layer_id,
                                                 int block_idx) {
  return ekv::capi::guarded("ekv_cache_update_importance_one_block", [&] {
    ekv::capi::cache_importance_block(cache, importance, layer_id, block_idx, true);
  });
}

ekv_status ekv_cache_get_anchor_one_block(const ekv_cache* cache, const ekv_tensor* anchor, int layer_id,
                                          int block_idx) {
  return ekv::capi::guarded("ekv_cache_get_anchor_one_block",
                            [&] { ekv::capi::cache_anchor_block(cache, anchor, layer_id, block_idx, false); });
}

ekv_status ekv_cache_update_anchor_one_block(ekv_cache* cache, const ekv_tensor* anchor, int layer_id,
                                             int block_idx) {
  return ekv::capi::guarded("ekv_cache_update_anchor_one_block",
                            [&] { ekv::capi::cache_anchor_block(cache, anchor, layer_id, block_idx, true); });
}

ekv_status ekv_cache_get_memory(const ekv_cache* cache, ekv_cache_memory* memory) {
  return ekv::capi::guarded("ekv_cache_get_memory", [&] { ekv::capi::cache_get_memory(cache, memory); });
}

ekv_status ekv_cache_dump_kvcache(const ekv_cache* cache, const char* tensor_file_path) {
  return ekv::capi::guarded("ekv_cache_dump_kvcache", [&] { ekv::capi::cache_dump(cache, tensor_file_path); });
}

ekv_status ekv_cache_load_kvcache(ekv_cache* cache, const char* tensor_file_path) {
  return ekv::capi::guarded("ekv_cache_load_kvcache", [&] { ekv::capi::cache_load(cache, tensor_file_path); });
}

}  // extern "C"
