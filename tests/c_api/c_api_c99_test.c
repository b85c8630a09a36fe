/* ekv/c_api.h from C: this file is compiled as C99 with -Wall -Wextra -pedantic -Werror
 * (the header check) and run (label cpu): every function is called once, an argument
 * error is reported with its status and message, and a GPU call says there is no GPU,
 * or succeeds where there is one; a cache handle on the CPU backend attends from C. */
#include <ekv/c_api.h>

#include <stdio.h>
#include <string.h>

static int failures = 0;

static void expect(int ok, const char* what) {
  if (!ok) {
    printf("FAILED: %s (last error: \"%s\")\n", what, ekv_last_error());
    ++failures;
  }
}

/* EKV_SUCCESS, or EKV_ERROR_NO_DEVICE on a machine without a GPU */
static int ran_or_no_device(ekv_status status) {
  return status == EKV_SUCCESS || (status == EKV_ERROR_NO_DEVICE && strstr(ekv_last_error(), "no CUDA device"));
}

int main(void) {
  float data[300] = {0.0f};
  float out[300];
  int indices[300];
  int kept = -1, major = 0, minor = 0, want = 0;
  float avg = 0.0f, sd = 0.0f, rate = 0.0f, exact = 0.0f, elastic = 0.0f, error = 0.0f;
  size_t memory = 0;
  char name[256];
  ekv_status status;
  int i;
  for (i = 0; i < 300; ++i) {
    data[i] = (float)(i % 7) - 3.0f;
    want += data[i] < -2.5f || data[i] > 2.5f;
  }

  status = ekv_compress(NULL, out, indices, 0.5f, 10, 30, &kept, 1, 0, &avg, &sd);
  expect(status == EKV_ERROR_INVALID_ARGUMENT, "ekv_compress rejects a NULL kv_cache");
  expect(strstr(ekv_last_error(), "ekv_compress: kv_cache is NULL") == ekv_last_error(), "the message names it");
  expect(strcmp(ekv_status_name(status), "EKV_ERROR_INVALID_ARGUMENT") == 0, "ekv_status_name");

  status = ekv_get_gpu_info(name, &major, &minor, &memory, (int)sizeof name);
  expect(ran_or_no_device(status), "ekv_get_gpu_info runs or finds no device");
  if (status == EKV_SUCCESS) printf("device: %s, sm_%d%d, %zu bytes\n", name, major, minor, memory);
  expect(ran_or_no_device(ekv_compress(data, out, indices, 0.5f, 10, 30, &kept, 2, 1, &avg, &sd)), "ekv_compress");
  if (ekv_compress(data, out, NULL, 2.5f, 10, 30, &kept, 1, 0, &avg, &sd) == EKV_SUCCESS) {
    expect(kept == want, "ekv_compress keeps each |x| > 2.5 (x = -3 and 3)");
  }
  expect(ran_or_no_device(ekv_mem_bandwidth(data, out, 300, 2, &rate)), "ekv_mem_bandwidth");
  expect(ran_or_no_device(ekv_mem_bandwidth_batched(data, out, 300, 2, 2, &rate)), "ekv_mem_bandwidth_batched");
  expect(ran_or_no_device(ekv_compute_throughput(out, 300, 32, &rate)), "ekv_compute_throughput");
  /* 300 floats: 3 tokens of hidden_size 64 (one head), and 64 of them out */
  expect(ran_or_no_device(ekv_inference_cycle(data, out, NULL, 3, 64, 2, 4.0f, &exact, &elastic)),
         "ekv_inference_cycle");
  expect(ran_or_no_device(ekv_inference_cycle_ex(data, out, NULL, 3, 64, 2, 4.0f, &exact, &elastic, &error)),
         "ekv_inference_cycle_ex");

  {
    /* the cache handle on the CPU backend: 2 tokens, exact attention of one query head
     * over them (each token's value is its key, so the output is a mix of the two) */
    ekv_cache* cache = NULL;
    ekv_cache_config config;
    ekv_cache_memory memory;
    float kv[2 * 64], q[64], o[64], lse[1];
    int64_t kv_shape[4] = {1, 2, 1, 64}, q_shape[3] = {1, 1, 64}, lse_shape[2] = {1, 1};
    ekv_tensor k_t, q_t, o_t, lse_t;
    int exact = -1, len = -1;
    for (i = 0; i < 2 * 64; ++i) kv[i] = i < 64 ? 1.0f : -1.0f;
    for (i = 0; i < 64; ++i) q[i] = 0.0f;
    k_t.data = kv;
    k_t.dtype = EKV_DTYPE_FLOAT32;
    k_t.ndim = 4;
    k_t.shape = kv_shape;
    k_t.strides = NULL;
    k_t.device_type = EKV_DEVICE_CPU;
    k_t.device_id = 0;
    q_t = k_t;
    q_t.data = q;
    q_t.ndim = 3;
    q_t.shape = q_shape;
    o_t = q_t;
    o_t.data = o;
    lse_t = q_t;
    lse_t.data = lse;
    lse_t.ndim = 2;
    lse_t.shape = lse_shape;
    expect(ekv_cache_config_parse("kv_head_num=1 q_head_num=1 head_dim=64 kv_type=fp32 max_block_num=4", &config) ==
               EKV_SUCCESS,
           "ekv_cache_config_parse");
    expect(ekv_cache_create(&config, EKV_DEVICE_CPU, 0, &cache) == EKV_SUCCESS, "ekv_cache_create on the CPU");
    expect(ekv_cache_append(cache, 0, &k_t, &k_t) == EKV_SUCCESS, "ekv_cache_append");
    expect(ekv_cache_get_cache_total_len(cache, 0, &len) == EKV_SUCCESS && len == 2, "2 tokens");
    expect(ekv_cache_attn(cache, &q_t, &o_t, &lse_t, 0, 0, -1, 1, 1, &exact) == EKV_SUCCESS && exact == 1,
           "ekv_cache_attn");
    /* q = 0: equal weights, so o = (1 + -1) / 2 = 0 and lse = log 2 */
    expect(o[0] == 0.0f && lse[0] > 0.693f && lse[0] < 0.694f, "attention of a zero query averages the values");
    expect(ekv_cache_get_memory(cache, &memory) == EKV_SUCCESS && memory.blocks_used == 1, "ekv_cache_get_memory");
    expect(ekv_cache_append(cache, 1, &k_t, &k_t) == EKV_ERROR_INVALID_ARGUMENT, "a layer out of range");
    expect(strstr(ekv_last_error(), "ekv_cache_append: HostKVCache::append: layer 1") == ekv_last_error(),
           "the message names the layer");
    expect(ekv_cache_destroy(cache) == EKV_SUCCESS, "ekv_cache_destroy");
  }

  if (failures == 0) printf("the C API from C99: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
